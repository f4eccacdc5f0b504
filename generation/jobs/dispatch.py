"""Dispatch: the waiting line, batching compatible jobs, claiming them for a worker, and the ETA.

Jobs wait in a `FairQueue` (users take turns) and run in batches of up to B compatible jobs
(`WorkItem.batch_key`): the head of the line waits up to `batch_wait_ms` for company. While a
worker decodes a batch with room (`JobBackend.openings`), the head of the line and the jobs that
decode with it (`WorkItem.join_key`) join that batch at once. A batch is claimed in the history
(its rows `running` under the batch key) before the backend runs it.
When the database cannot take the claim, the batch's jobs go back to the front of the line with
their turn, and dispatch tries again after a pause (`outage.retry_delays`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from contextlib import suppress

from ..config import Settings
from ..storage import Session
from ..storage.queue import claim_loops
from .api import JobProgress, QueueUnavailable, Stage
from .backend import JobBackend
from .events import EventBus
from .fair import FairQueue, QueuedJob
from .outage import QueueDatabase, retry_delays

log = logging.getLogger(__name__)

RECENT_JOBS = 20
"""How many recent jobs' timings (from a worker taking one to its outcome) the ETA is estimated from."""


class Dispatcher:
    """Owns the jobs waiting (`queue`) and running (`running`, by job id) in this service."""

    def __init__(self, settings: Settings, database: QueueDatabase, backend: JobBackend, bus: EventBus) -> None:
        self.settings = settings
        self.database = database
        self.backend = backend
        self.bus = bus
        self.queue = FairQueue()
        self.running: dict[str, QueuedJob] = {}
        self._worker_free = asyncio.Event()
        self._arrived = asyncio.Event()
        self._job_seconds: deque[float] = deque(maxlen=RECENT_JOBS)
        self._suggested_batch_size: int | None = None

    # --- what the rest of the service tells it ------------------------------------------------

    def add(self, jobs: Iterable[QueuedJob]) -> None:
        """Queue jobs at the back of their users' lines."""
        for job in jobs:
            self.queue.push(job)
        self._arrived.set()
        self._worker_free.set()

    def put_back(self, jobs: Sequence[QueuedJob]) -> None:
        """Put jobs taken from the line back at its front, in their order: they keep their turn."""
        for job in reversed(jobs):
            self.queue.push(job, front=True)

    def worker_ready(self, suggested_batch_size: int) -> None:
        self._suggested_batch_size = suggested_batch_size
        self._worker_free.set()

    def batch_finished(self) -> None:
        """A worker is free again."""
        self._worker_free.set()

    # --- dispatching --------------------------------------------------------------------------

    def batch_size(self) -> int:
        return self.settings.queue.batch_size or self._suggested_batch_size or 1

    async def run(self) -> None:
        """Start batches while jobs wait and a worker is free; survives database outages and its own errors."""
        delays = retry_delays()
        while True:
            await self._worker_free.wait()
            self._worker_free.clear()
            try:
                await self._fill_free_workers()
            except Exception as error:
                if not isinstance(error, QueueUnavailable):  # an outage is logged once, where it is noticed
                    log.exception("dispatch failed; retrying")
                await asyncio.sleep(next(delays))
                self._worker_free.set()
            else:
                delays = retry_delays()

    def job_left(self, job: QueuedJob | None) -> None:
        """A running job finished or failed: its batch may have room for another; how long it took
        counts for the ETA (None: a job this service no longer follows)."""
        if job is not None and job.started_at is not None:
            self._job_seconds.append(time.monotonic() - job.started_at)
        self._worker_free.set()

    async def _fill_free_workers(self) -> None:
        while len(self.queue):
            if self.backend.next_batch_key() is not None:
                batch = await self._next_batch()
                batch_key = self.backend.next_batch_key()
                if batch_key is None:  # the worker died while the batch filled: the jobs keep their turn
                    self.put_back(batch)
                    return
            elif (joining := self._joining()) is not None:
                batch_key, batch = joining
            else:
                return
            await self._start_batch(batch_key, batch)

    def _joining(self) -> tuple[str, list[QueuedJob]] | None:
        """Jobs that join a running batch with room (continuous batching), under its key.

        Only the head of the line and jobs after it that decode with it: a job that cannot join
        holds the others back until a worker is free, so joining never jumps the line.
        """
        head = self.queue.head()
        if head is None or head.item.join_key is None:
            return None
        for opening in self.backend.openings():
            room = self.batch_size() - opening.running
            if opening.join_key == head.item.join_key and room > 0:
                return opening.batch_key, self.queue.take_batch(room, key_of=lambda item: item.join_key)
        return None

    async def _next_batch(self) -> list[QueuedJob]:
        """Up to B compatible jobs, waiting at most `batch_wait_ms` after the head joined for more."""
        limit = self.batch_size()
        wait_s = self.settings.queue.batch_wait_ms / 1000
        while (head := self.queue.head()) is not None:
            remaining = head.queued_at + wait_s - time.monotonic()
            if remaining <= 0 or self.queue.compatible_with_head(limit) >= limit:
                return self.queue.take_batch(limit)
            self._arrived.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return []

    async def _start_batch(self, batch_key: str, batch: Sequence[QueuedJob]) -> None:
        def claim(session: Session) -> list[str]:
            return [job.job_id for job in batch if claim_loops(session, job.item.loop_ids, batch_key)]

        try:
            claimed = set(await self.database.attempt(claim))
        except BaseException:
            self.put_back(batch)  # nothing was claimed: the unit of work rolled back
            raise
        jobs = [job for job in batch if job.job_id in claimed]  # the others were cancelled meanwhile
        if not jobs:
            self._worker_free.set()
            return
        started = time.monotonic()
        for job in jobs:
            job.started_at = started
            self.running[job.job_id] = job
        self.backend.run(batch_key, [job.item for job in jobs])
        for job in jobs:
            self.bus.publish(JobProgress(job.job_id, Stage.GENERATING, 0.0))
        self._announce_positions()

    def _announce_positions(self) -> None:
        """Tell the waiting jobs where they now stand (the bot shows it on each "Queued" message)."""
        if not self.bus.has_audience:
            return
        for position, job in enumerate(self.queue.in_order(), 1):
            self.bus.publish(JobProgress(job.job_id, Stage.QUEUED, 0.0, position))

    # --- estimates ----------------------------------------------------------------------------

    def seconds_per_job(self) -> float | None:
        """How long a job takes once a worker has it (the recent jobs' mean)."""
        return sum(self._job_seconds) / len(self._job_seconds) if self._job_seconds else None

    def eta(self, position: int) -> float | None:
        """Seconds until the job at `position` is done: the workers decode a batch's worth of jobs
        each at a time (joining as others leave, or batch after batch), each job `seconds_per_job`,
        so the job's own decoding comes after the rounds of those before it that fill every slot."""
        per_job = self.seconds_per_job()
        if per_job is None:
            return None
        slots = self.batch_size() * max(1, self.backend.workers_alive())
        return math.ceil(position / slots) * per_job
