"""`SaqBackend`: the service's batches run by `loopjam worker` processes anywhere, through Redis and saq.

The service still decides everything (limits, fair order, batching); this backend turns each
batch into one saq job and saq's job states back into backend events:

    ACTIVE with new progress  -> WorkProgress
    COMPLETE                  -> the runner's WorkDone / WorkFailed, then BatchFinished
    FAILED past its timeout   -> WorkFailed (timeout) for each job
    FAILED otherwise, ABORTED -> WorkerLost: the worker died (a killed worker's job is swept once
    (swept), or vanished         its heartbeat stops); the service retries its jobs once

The saq job key is the batch's "worker" name, so the history rows record which batch ran them
and `WorkerLost` names exactly those rows. While a batch runs, jobs may join it (continuous
batching, `openings`): they go on the batch's joins list (`wire.joins_key`) and are claimed under its
key; the worker sends each job's outcome and files ahead as soon as the job is done
(`wire.finished_key`), and its result names the joining jobs it took. One it did not take (the batch
ended first) is handed back (`WorkReturned`), and a job it took and never reported fails.

Batches live in Redis, not in this process: after a restart `start` finds the ones not yet
collected (with the jobs sent to join them) and `resumed` tells the service to keep their rows
running, so their results are delivered and nothing runs twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from saq.job import Job, Status

from ...config import Settings
from ..api import QueueUnavailable
from ..backend import (
    BackendEvent,
    BatchFinished,
    EventSink,
    Opening,
    WorkDone,
    WorkerLost,
    WorkerReady,
    WorkFailed,
    WorkItem,
    WorkProgress,
    WorkReturned,
    shared_join_key,
)
from ..outage import Outage, first_line, retry_delays
from ..pool import timeout_message
from .queue import REDIS_ERRORS, BatchQueue, append, redis_client, repeat
from .wire import (
    COLLECTED_TTL_S,
    DEFAULT_QUEUE,
    RESULT_TTL_S,
    RUN_BATCH,
    SWEEP_S,
    RogueItem,
    RogueResult,
    cancel_key,
    check_result,
    decode_items,
    encode_items,
    finished_key,
    input_files,
    joins_key,
    reported_progress,
    unpack_files,
)

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0
ROGUE_RESULT = "The worker that ran this loop sent back something I can't use, so there is no loop. Please try again."


def timed_out(job: Job) -> bool:
    """saq failed the job because it ran past its timeout, not because its function raised."""
    return bool(job.timeout) and (job.duration("process") or 0) >= job.timeout * 1000


@dataclass(frozen=True)
class Timing:
    heartbeat_s: int = 30
    """A running batch whose worker has not touched it for this long is swept (and retried)."""
    sweep_s: int = SWEEP_S
    poll_s: float = 0.25
    """How often the states of the batches in flight are read."""
    workers_poll_s: float = 2.0


@dataclass
class _Batch:
    items: tuple[WorkItem, ...]
    enqueued: bool = False
    progress: dict[str, tuple[str, float]] = field(default_factory=dict)
    """The latest progress the worker reported, by job id."""
    joining: list[WorkItem] = field(default_factory=list)
    """Jobs sent to join it while it runs (`wire.joins_key`); its result says which it took."""
    sent: float = field(default_factory=time.monotonic)
    worker: str | None = None
    """The worker running it, once one does."""
    finished_read: int = 0
    """Entries of its finished-jobs list (`wire.finished_key`) taken so far."""
    delivered: set[str] = field(default_factory=set)
    """Jobs whose outcome came ahead of the batch's result."""
    delivered_events: list[dict[str, Any]] = field(default_factory=list)
    """Those outcomes as they came, kept with the collected batch so that a replay has them too."""

    @property
    def job_ids(self) -> tuple[str, ...]:
        return tuple(item.job_id for item in (*self.items, *self.joining))

    @property
    def join_key(self) -> tuple[Any, ...] | None:
        """What jobs may join it (`backend.shared_join_key`)."""
        return shared_join_key((*self.items, *self.joining))


class SaqBackend:
    """`JobBackend` whose workers are `loopjam worker` processes reading the saq queue `queue_name`."""

    stops_its_batches = False

    def __init__(
        self, settings: Settings, *, queue_name: str = DEFAULT_QUEUE, redis_url: str | None = None,
        timing: Timing = Timing(),
    ) -> None:
        self.queue_name = queue_name
        self.redis_url = redis_url or settings.queue.redis_url
        self.data_dir = Path(settings.storage.data_dir).resolve()
        self.job_timeout_s = math.ceil(settings.queue.job_timeout_s)
        self.timing = timing
        self._queue: BatchQueue | None = None
        self._sink: EventSink | None = None
        self._batches: dict[str, _Batch] = {}
        self._resumed: dict[str, tuple[str, ...]] = {}
        self._given_up: dict[str, float] = {}
        """Batches declared lost or failed, watched until their job timeout is past (monotonic deadline):
        should their first worker finish one after all, that is noticed, and its result dropped."""
        self._workers: dict[str, dict[str, Any]] = {}
        self._next_key: str | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.outage = Outage("Redis", "the queue waits for it; batches in flight go on", "the queue carries on", log)
        self._pending: set[asyncio.Task[None]] = set()

    # --- JobBackend ---------------------------------------------------------------------------

    async def start(self, sink: EventSink) -> None:
        self._sink = sink
        self._stopping.clear()
        queue = BatchQueue(redis_client(self.redis_url), name=self.queue_name, outage=self.outage)
        try:
            await queue.connect()
            async for job in queue.iter_jobs():
                if job.function == RUN_BATCH and job.kwargs is not None:
                    self._resume(job.key, job.kwargs["items"], await queue.redis.lrange(joins_key(self.queue_name, job.key), 0, -1))
            self._queue = queue
            await self._refresh_workers()
        except REDIS_ERRORS as error:  # at start there is nothing to wait for: the operator must know at once
            self._queue = None
            raise QueueUnavailable(f"Cannot reach Redis: {first_line(error)}") from None
        self._resumed = {key: batch.job_ids for key, batch in self._batches.items()}
        loops = {  # name: (step, every_s, always asks Redis)
            "saq-batches": (self._follow_batches, self.timing.poll_s, False),
            "saq-workers": (self._refresh_workers, self.timing.workers_poll_s, True),
            "saq-sweep": (self._sweep, self.timing.sweep_s, True),
        }
        self._loops = [
            asyncio.create_task(repeat(name, step, every_s, self.outage, self._stopping, always_asks_redis=asks), name=name)
            for name, (step, every_s, asks) in loops.items()
        ]
        log.info("saq queue %s: %d worker(s), %d batch(es) resumed", self.queue_name, len(self._workers), len(self._resumed))

    async def stop(self) -> None:
        """Stop following; the batches go on in Redis and the next `start` resumes them."""
        self._stopping.set()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._pending:  # enqueues in progress: let them land, so their batches can be resumed
            await asyncio.wait(self._pending, timeout=STOP_GRACE_S)
        if self._queue is not None:
            await self._queue.disconnect()
            self._queue = None

    def _resume(self, key: str, items: list[dict[str, Any]], joins: list[bytes | str]) -> None:
        """Follow a batch a previous run enqueued, with the jobs it sent to join it; one whose items the
        bot would never have sent is left out (its rows are recovered like a lost batch's)."""
        try:
            joining = [item for entry in joins for item in decode_items(json.loads(entry)["items"])]
            self._batches[key] = _Batch(decode_items(items), enqueued=True, joining=joining)
        except (RogueItem, ValueError, KeyError, TypeError) as rogue:
            log.warning("batch %s in Redis is not one this bot queued (%s); not resuming it", key, rogue)

    def resumed(self) -> dict[str, tuple[str, ...]]:
        """Batches from before this `start` still in Redis: their key (the rows' worker) -> job ids."""
        return dict(self._resumed)

    def next_batch_key(self) -> str | None:
        """A new batch key while fewer batches are in flight than workers are alive."""
        if self._queue is None or len(self._batches) >= len(self._workers):
            return None
        if self._next_key is None:  # the same name until `run` uses it: the service asks twice
            self._next_key = f"batch-{uuid.uuid4().hex[:12]}"
        return self._next_key

    def run(self, batch_key: str, batch: Sequence[WorkItem]) -> None:
        """Enqueue a new batch, or send jobs to join the running batch `batch_key` (an `Opening`'s)."""
        if (running := self._batches.get(batch_key)) is not None:
            running.joining += batch
            self._spawn(self._send_joining(batch_key, tuple(batch)))
            return
        if batch_key == self._next_key:
            self._next_key = None
        self._batches[batch_key] = _Batch(tuple(batch))
        self._spawn(self._enqueue(batch_key, self._batches[batch_key]))

    def openings(self) -> list[Opening]:
        """Batches in flight that jobs may join: the worker running it (or, before one took it, every
        worker) batches continuously (saq metadata `joins`), and the batch is young enough that
        joining cannot make it run past the job timeout."""
        openings = []
        for key, batch in self._batches.items():
            runs_it = [self._workers[batch.worker]] if batch.worker in self._workers else list(self._workers.values())
            joins = bool(runs_it) and all(worker.get("joins") is True for worker in runs_it)
            young = time.monotonic() - batch.sent < self.job_timeout_s / 2
            if joins and young and (join_key := batch.join_key) is not None:
                openings.append(Opening(key, join_key, len(batch.job_ids)))
        return openings

    def cancel(self, job_id: str) -> None:
        if self._queue is not None and any(job_id in batch.job_ids for batch in self._batches.values()):
            self._spawn(self._flag_cancelled(job_id))

    def workers_alive(self) -> int:
        return len(self._workers)

    def running(self) -> int:
        return sum(len(batch.job_ids) for batch in self._batches.values())

    def models(self) -> list[str]:
        return sorted({model for info in self._workers.values() for model in info.get("models", ())})

    async def worker_of(self, job_id: str) -> str | None:
        """The name of the worker running the job now, if one is (for operators and tests)."""
        key = next((key for key, batch in self._batches.items() if job_id in batch.job_ids), None)
        job = await self._queue.job(key) if key is not None and self._queue is not None else None
        return job.worker_id if job is not None and job.status is Status.ACTIVE else None

    # --- following the batches ----------------------------------------------------------------

    def _emit(self, event: BackendEvent) -> None:
        assert self._sink is not None
        self._sink(event)

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        """Forget a finished write; one that failed past its own Redis handling is logged, not lost."""
        self._pending.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("saq queue %s: a background write failed", self.queue_name, exc_info=error)

    async def _flag_cancelled(self, job_id: str) -> None:
        """Tell the worker; while Redis is away the job's result is dropped instead (the service forgot the job)."""
        assert self._queue is not None
        try:
            await self._queue.redis.set(cancel_key(self.queue_name, job_id), 1, ex=self.job_timeout_s + 60)
        except REDIS_ERRORS as error:
            self.outage.began(first_line(error))

    async def _send_joining(self, key: str, items: tuple[WorkItem, ...]) -> None:
        """Add jobs to the batch's joins list; while Redis is away they wait for it (the batch may end
        meanwhile: its result then does not take them, and they are handed back)."""
        assert self._queue is not None
        inputs = await asyncio.to_thread(input_files, self.data_dir, items)
        entry = json.dumps({"items": encode_items(items), "inputs": inputs})
        await self._until_redis_takes(partial(append, self._queue.redis, joins_key(self.queue_name, key), entry))

    async def _enqueue(self, key: str, batch: _Batch) -> None:
        assert self._queue is not None
        inputs = await asyncio.to_thread(input_files, self.data_dir, batch.items)
        job = Job(
            RUN_BATCH, kwargs={"items": encode_items(batch.items), "inputs": inputs, "ahead": True}, key=key,
            timeout=self.job_timeout_s,
            heartbeat=self.timing.heartbeat_s, retries=1, ttl=RESULT_TTL_S,
        )
        await self._until_redis_takes(partial(self._queue.enqueue, job))
        batch.enqueued = True

    async def _until_redis_takes(self, write: Callable[[], Awaitable[Any]]) -> None:
        """`write`, tried again after a pause while Redis is down (the outage logged once)."""
        delays = retry_delays()
        while True:
            tried_at = time.monotonic()
            try:
                await write()
                return
            except REDIS_ERRORS as error:
                self.outage.began(first_line(error), tried_at)
                await asyncio.sleep(next(delays))

    async def _follow_batches(self) -> None:
        assert self._queue is not None
        keys = [key for key, batch in self._batches.items() if batch.enqueued]
        given_up = list(self._given_up)
        if keys or given_up:
            jobs = await self._queue.jobs(keys + given_up)
            for key, job in zip(keys, jobs):
                await self._observe(key, job)
            for key, job in zip(given_up, jobs[len(keys):]):
                await self._watch_given_up(key, job)

    async def _observe(self, key: str, job: Job | None) -> None:
        batch = self._batches[key]
        if job is None:
            self._finish(key, WorkerLost(key, batch.job_ids))
        elif job.status is Status.ACTIVE:
            batch.worker = job.worker_id
            for job_id, progress in reported_progress(job.meta.get("progress"), batch.job_ids).items():
                if batch.progress.get(job_id) != progress:
                    batch.progress[job_id] = progress
                    self._emit(WorkProgress((job_id,), *progress))
            await self._take_finished(key, batch)
        elif job.status is Status.COMPLETE:
            await self._collect(key, job)
        elif job.status is Status.FAILED and timed_out(job):
            await self._set_collected(job)
            self._give_up(key)
            for job_id in batch.job_ids:
                self._emit(WorkFailed(job_id, timeout_message(job.timeout)))
            self._finish(key, WorkerLost(key, ()))
        elif job.status in (Status.FAILED, Status.ABORTED):
            await self._set_collected(job)
            self._give_up(key)
            log.warning("batch %s %s: %s", key, job.status.value, (job.error or "").strip().splitlines()[-1:])
            self._finish(key, WorkerLost(key, batch.job_ids))

    async def _collect(self, key: str, job: Job) -> None:
        """Check the batch's result, write its files under the data directory, then pass its events on.

        The result expires (without its audio) before its events go: an outage in between leaves
        it to be collected again, and never without an expiry. A result that no worker would send
        is refused whole, with one line, and its jobs fail.
        """
        assert self._queue is not None
        batch = self._batches[key]
        await self._take_finished(key, batch)  # those sent ahead since the last look
        try:
            result = check_result(job.result, batch.items, batch.joining)
            await asyncio.to_thread(unpack_files, self.data_dir, result.files)
        except RogueResult as rogue:
            log.warning("batch %s: refused the result from worker %s (%s); its jobs fail", key, job.worker_id, rogue)
            await self._set_collected(job, dropped=f"result refused: {rogue}")
            for job_id in batch.job_ids:
                if job_id not in batch.delivered:
                    self._emit(WorkFailed(job_id, ROGUE_RESULT))
            self._finish(key, WorkerLost(key, ()))
            return
        job.result["files"] = {}  # written: the audio need not wait in Redis any longer
        job.result["events"] = batch.delivered_events + job.result["events"]
        await self._set_collected(job)
        # Its finished-jobs list is in the collected result now. Its joins list stays (it expires by
        # itself): a restart that replays the collected batch checks the result against it.
        await self._queue.redis.delete(finished_key(self.queue_name, key))
        ran = [*batch.items, *(item for item in batch.joining if item.job_id in result.joined)]
        self._emit_outcomes(batch, result.events)
        for item in ran:  # a job the worker took and never reported (or reported in something refused)
            if item.job_id not in batch.delivered:
                self._emit(WorkFailed(item.job_id, ROGUE_RESULT))
        if missed := tuple(item.job_id for item in batch.joining if item not in ran):
            self._emit(WorkReturned(key, missed))
        self._finish(key, BatchFinished(result.worker, len(ran), result.seconds))

    async def _take_finished(self, key: str, batch: _Batch) -> None:
        """Deliver the jobs the worker finished and sent ahead of the batch; an entry it would never
        send is refused with one line (its jobs fail when the batch ends without them)."""
        assert self._queue is not None
        entries = await self._queue.redis.lrange(finished_key(self.queue_name, key), batch.finished_read, -1)
        for entry in entries:
            batch.finished_read += 1
            try:
                sent = json.loads(entry)
                result = check_result(sent, [*batch.items, *batch.joining])
                await asyncio.to_thread(unpack_files, self.data_dir, result.files)
            except (RogueResult, ValueError) as rogue:
                log.warning("batch %s: refused jobs sent ahead by worker %s (%s)", key, batch.worker, str(rogue)[:200])
                continue
            batch.delivered_events += sent["events"]
            self._emit_outcomes(batch, result.events)

    def _emit_outcomes(self, batch: _Batch, events: Sequence[BackendEvent]) -> None:
        """Pass a result's events on, each job's outcome once (one sent ahead may come again with the batch)."""
        for event in events:
            if isinstance(event, (WorkDone, WorkFailed)):
                if event.job_id in batch.delivered:
                    continue
                batch.delivered.add(event.job_id)
            self._emit(event)

    def _give_up(self, key: str) -> None:
        self._given_up[key] = time.monotonic() + self.job_timeout_s + STOP_GRACE_S

    async def _watch_given_up(self, key: str, job: Job | None) -> None:
        """A batch given up on: its first worker may still finish it (it was away, not dead). Its jobs
        have been retried or failed since, so its result is dropped, with one line, and expires."""
        if job is not None and job.status is Status.COMPLETE:
            log.warning("batch %s was finished by worker %s after it was given up; its jobs went on without it, "
                        "so its result is dropped", key, job.worker_id)
            await self._set_collected(job, dropped="finished after it was given up")
        elif job is not None and time.monotonic() < self._given_up[key]:
            return
        del self._given_up[key]

    def _finish(self, key: str, event: BackendEvent) -> None:
        del self._batches[key]
        self._emit(event)

    async def _set_collected(self, job: Job, *, dropped: str | None = None) -> None:
        """Keep a collected batch (without audio) a while: a restart before the service stored it replays it.

        A result `dropped` is kept as an aborted batch with the reason: a replay changes nothing.
        """
        assert self._queue is not None
        if dropped is not None:
            job.status, job.error, job.result = Status.ABORTED, dropped, None
        await self._queue.redis.set(job.id, self._queue.serialize(job), ex=COLLECTED_TTL_S)

    # --- workers ------------------------------------------------------------------------------

    async def _refresh_workers(self) -> None:
        assert self._queue is not None
        info = await self._queue.info()
        workers = {worker_id: worker.get("metadata") or {} for worker_id, worker in info["workers"].items()}
        for worker_id in workers.keys() - self._workers.keys():
            metadata = workers[worker_id]
            self._emit(WorkerReady(worker_id, metadata.get("batch_size", 1), metadata.get("model", "")))
        self._workers = workers

    async def _sweep(self) -> None:
        """saq's sweep, here too: a batch whose workers all died is still found (and retried)."""
        assert self._queue is not None
        await self._queue.sweep(lock=self.timing.sweep_s, abort=1.0)
