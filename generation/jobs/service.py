"""The queue service: admission, fair order, batching, progress and results. Knows nothing of Discord.

    service = QueueService(settings, database)        # embedded: worker processes on this machine
    await service.start()                             # recovers what a previous run left behind
    result = await service.submit(JobRequest(user_id=1, prompt="dusty boom bap", shape=LoopShape(bpm=92, bars=4)))
    events = service.subscribe(result.job_id)         # JobProgress ... then JobDone / JobFailed

Every job is a row in the history (`generation.storage`) from the moment it is accepted, so a
restart loses nothing: `start()` puts interrupted jobs back in line (one retry) and queues again
whatever was waiting. The backend (`backend.JobBackend`) only runs batches; all decisions are here,
in parts by concern: `admission` (limits), `dispatch` (line, batches, ETA), `results` (the
backend's events), `recovery`, `events` (the bus), `outage` (waiting out a database outage).
While the database is unreachable, `submit` and `cancel` raise `QueueUnavailable` and change
nothing; the background tasks wait for it and carry on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Settings
from ..storage import Database, Session, get_guild_generation, hand_back_running, list_request_group, mark_cancelled
from .admission import RateCounter, admit_group
from .api import (
    Accepted,
    CancelOutcome,
    CancelResult,
    JobCancelled,
    JobEvent,
    JobFailed,
    JobProgress,
    JobRequest,
    QueueStatus,
    QueueUnavailable,
    Refused,
    Stage,
    SubmitResult,
)
from .backend import JobBackend, WorkItem
from .dispatch import Dispatcher
from .events import BatchListener, EventBus, Listener
from .fair import QueuedJob
from .outage import QueueDatabase
from .recovery import recover_at_start
from .results import ResultApplier, discard_upload
from .rows import work_items

if TYPE_CHECKING:
    from .distributed.ratelimit import RedisRateLimiter

log = logging.getLogger(__name__)

ADMISSION_GROUP = 100
"""The most requests decided in one unit of work."""
ANSWER_SLICE = 10
"""Callers woken per event-loop turn: each then builds and sends its reply; 100 at once stall the loop."""


class QueueService:
    def __init__(
        self,
        settings: Settings,
        database: Database,
        backend: JobBackend | None = None,
        rate_limiter: RedisRateLimiter | None = None,
    ) -> None:
        """`backend` and `rate_limiter` default to those of `settings.queue.mode`.

        Distributed (`redis`), the per-user rate limit is the `RedisRateLimiter` every bot process
        shares; embedded, `rate_limiter` is None and the database counts the user's jobs.
        """
        distributed = settings.queue.mode == "redis"
        if backend is None and distributed:
            from .distributed import SaqBackend

            backend = SaqBackend(settings)
        elif backend is None:
            from .pool import ProcessWorkerPool

            backend = ProcessWorkerPool(settings)
        if rate_limiter is None and distributed:
            from .distributed import RedisRateLimiter
            from .distributed.queue import interactive_redis_client

            rate_limiter = RedisRateLimiter(interactive_redis_client(settings.queue.redis_url))
        self.settings = settings
        self.database = database
        self.backend = backend
        self.rate_limiter = rate_limiter
        self.data_dir = Path(settings.storage.data_dir).resolve()
        self._units = QueueDatabase(database)
        self._bus = EventBus()
        self._dispatcher = Dispatcher(settings, self._units, backend, self._bus)
        self._results = ResultApplier(self._units, self._dispatcher, self._bus, self.data_dir)
        self._arriving: list[tuple[JobRequest, asyncio.Future[WorkItem | Refused]]] = []
        self._admitting: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover what a previous run left, start the workers and begin dispatching."""
        # The backend starts first: a distributed one finds the batches still running from before.
        await self.backend.start(self._results.put)
        recovered = await self._units.attempt(recover_at_start, list(self.backend.resumed()))
        queue = self._dispatcher.queue
        # Jobs submitted before `start` are in both the queue and the database.
        self._dispatcher.add(job for job in recovered.queued if queue.position(job.job_id) is None)
        self._dispatcher.running.update((job.job_id, job) for job in recovered.running)
        for job_id, reason in recovered.failed:
            self._bus.publish(JobFailed(job_id, reason))
        self._tasks = [
            asyncio.create_task(self._results.run(), name="queue-results"),
            asyncio.create_task(self._dispatcher.run(), name="queue-dispatch"),
        ]
        for task in self._tasks:
            task.add_done_callback(_report_death)
        log.info("queue started with %d job(s) waiting", len(queue))

    async def stop(self) -> None:
        """Stop dispatching and the workers; running jobs go back to waiting for the next `start`.

        When the backend's batches end with it (embedded), their jobs are handed back with their
        attempt refunded: a graceful stop is not the job's fault, unlike a crash. Batches that go
        on without the service (distributed) are resumed by the next `start`. The rate limiter's
        Redis connections are closed too; a later submit opens new ones.
        """
        if self._admitting is not None:
            await self._admitting  # the requests being decided get their answer
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)  # a task that died was logged when it did
        self._tasks = []
        await self.backend.stop()
        running = self._dispatcher.running
        if self.backend.stops_its_batches and running:
            try:
                handed_back = await self._units.attempt(hand_back_running, list(running))
                log.info("handed %d running loop(s) back to the queue", len(handed_back))
            except QueueUnavailable:  # the next start recovers them, as after a crash
                log.warning("could not hand %d running job(s) back: the database is unreachable", len(running))
            running.clear()
        if self.rate_limiter is not None:
            await self.rate_limiter.redis.aclose()

    # --- the public API -----------------------------------------------------------------------

    async def submit(self, request: JobRequest) -> SubmitResult:
        """Queue a loop, or say why not (`Refused`) in words the user can act on.

        Requests that arrive while a group is being decided wait for the next group: a burst of
        requests costs a few database round trips, not a few per request. Raises
        `QueueUnavailable` while the database is unreachable: nothing is queued.
        """
        decided: asyncio.Future[WorkItem | Refused] = asyncio.get_running_loop().create_future()
        self._arriving.append((request, decided))
        if self._admitting is None or self._admitting.done():
            self._admitting = asyncio.create_task(self._admit_arrivals(), name="queue-admission")
        admitted = await decided
        if isinstance(admitted, Refused):
            return admitted
        position = self._dispatcher.queue.position(admitted.job_id) or 1
        return Accepted(admitted.job_id, position, self._dispatcher.eta(position))

    async def _admit_arrivals(self) -> None:
        """Decide the waiting requests, a group at a time, until none waits."""
        while self._arriving:
            group, self._arriving = self._arriving[:ADMISSION_GROUP], self._arriving[ADMISSION_GROUP:]
            requests = [request for request, _ in group]
            try:
                decisions = await self._units.attempt(self._admit_group, requests, self._rate_counter())
            except Exception as error:  # QueueUnavailable, say: each caller gets the error
                for _, decided in group:
                    if not decided.done():
                        decided.set_exception(error)
                continue
            # A caller that gave up still has its job queued, as it was accepted.
            self._dispatcher.add(QueuedJob(item, request.user_id) for request, item in zip(requests, decisions)
                                 if not isinstance(item, Refused))
            for start in range(0, len(group), ANSWER_SLICE):
                for (_, decided), decision in zip(group[start:start + ANSWER_SLICE], decisions[start:start + ANSWER_SLICE]):
                    if not decided.done():
                        decided.set_result(decision)
                await asyncio.sleep(0)  # the callers answered so far reply to Discord before the next ones wake

    def _rate_counter(self) -> RateCounter | None:
        """Distributed: Redis counts the rate for every bot process; embedded (None): the group's unit of work does."""
        if self.rate_limiter is None:
            return None
        from .distributed.ratelimit import SharedRateCounter

        return SharedRateCounter(self.rate_limiter, asyncio.get_running_loop())

    def _admit_group(self, session: Session, requests: Sequence[JobRequest], counter: RateCounter | None) -> list[WorkItem | Refused]:
        return work_items(admit_group(session, self.settings, requests, counter))

    async def cancel(self, job_id: str, user_id: int, *, guild_id: int | None) -> CancelResult:
        """Cancel a waiting or running job; only the user who asked for it may, in the server it was asked in.

        Raises `QueueUnavailable` (nothing cancelled) while the database is unreachable.
        """
        outcome = await self._units.attempt(cancel_request, job_id, user_id, guild_id)
        if outcome is CancelOutcome.CANCELLED:
            waiting = self._dispatcher.queue.remove(job_id)
            running = self._dispatcher.running.pop(job_id, None)
            if running is not None:
                self.backend.cancel(job_id)
            discard_upload(waiting or running, self.data_dir)
            self._bus.publish(JobCancelled(job_id))
        return CancelResult(outcome, CANCEL_MESSAGES[outcome])

    async def status(self) -> QueueStatus:
        dispatcher = self._dispatcher
        depth = len(dispatcher.queue)
        return QueueStatus(
            depth=depth, running=len(dispatcher.running), workers_alive=self.backend.workers_alive(),
            models=self.backend.models(), eta_by_position=[dispatcher.eta(p) for p in range(1, depth + 1)],
            seconds_per_job=dispatcher.seconds_per_job(),
        )

    def position(self, job_id: str) -> int | None:
        return self._dispatcher.queue.position(job_id)

    def subscribe(self, job_id: str) -> asyncio.Queue[JobEvent]:
        """A queue of the job's events; the last one is JobDone, JobFailed or JobCancelled."""
        return self._bus.subscribe(job_id)

    def add_listener(self, listener: Listener) -> None:
        """Receive every job's events (the bot's single entry point for progress messages)."""
        self._bus.add_listener(listener)

    def add_batch_listener(self, listener: BatchListener) -> None:
        """Receive every finished batch's job count and wall seconds (metrics)."""
        self._bus.add_batch_listener(listener)

    def set_uploading(self, job_id: str, percent: float = 0.0) -> None:
        """The bot reports its upload of a finished loop, so subscribers see the last stage too."""
        self._bus.publish(JobProgress(job_id, Stage.UPLOADING, percent))


def _report_death(task: asyncio.Task[None]) -> None:
    """The background tasks survive their errors; should one end anyway, say so rather than go quiet."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("queue task %s stopped", task.get_name(), exc_info=error)


def cancel_request(session: Session, job_id: str, user_id: int, guild_id: int | None) -> CancelOutcome:
    """Cancel every row of the request `job_id` of `guild_id` still waiting or running, when `user_id` owns it."""
    row = get_guild_generation(session, job_id, guild_id)
    if row is None:
        return CancelOutcome.NOT_FOUND
    if row.user_id != user_id:
        return CancelOutcome.NOT_OWNER
    cancelled = [mark_cancelled(session, loop.short_id) for loop in list_request_group(session, row.request_group)]
    return CancelOutcome.CANCELLED if any(cancelled) else CancelOutcome.ALREADY_FINISHED


CANCEL_MESSAGES = {
    CancelOutcome.CANCELLED: "Your loop was cancelled.",
    CancelOutcome.NOT_OWNER: "Only the person who asked for this loop can cancel it.",
    CancelOutcome.NOT_FOUND: "There is no loop with that id.",
    CancelOutcome.ALREADY_FINISHED: "That loop has already finished, so there is nothing to cancel.",
}
