"""The queue service: admission, fair order, batching, progress and results. Knows nothing of Discord.

    service = QueueService(settings, database)        # embedded: worker processes on this machine
    await service.start()                             # recovers what a previous run left behind
    result = await service.submit(JobRequest(user_id=1, prompt="dusty boom bap", bpm=92, bars=4))
    events = service.subscribe(result.job_id)         # JobProgress ... then JobDone / JobFailed

Every job is a row in the history (`generation.storage`) from the moment it is accepted, so a
restart loses nothing: `start()` puts interrupted jobs back in line (one retry) and queues again
whatever was waiting. The backend (`backend.JobBackend`) only runs batches; all decisions are here.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from ..config import Settings
from ..storage import (
    Database,
    Generation,
    GenerationKind,
    GenerationStatus,
    LoopReportFields,
    get_generation,
    hand_back_running,
    list_request_group,
    mark_cancelled,
    mark_done,
    mark_failed,
    mark_running,
    recover_interrupted,
)
from .admission import AdmissionLedger, Checked, admit_group, check_requests, insert_admitted, take_shared_rate_limit
from .api import (
    FINAL_EVENT_TYPES,
    Accepted,
    CancelOutcome,
    CancelResult,
    JobCancelled,
    JobDone,
    JobEvent,
    JobFailed,
    JobProgress,
    JobRequest,
    QueueStatus,
    Refused,
    Stage,
    SubmitResult,
)
from .backend import (
    BackendEvent,
    BatchFinished,
    JobBackend,
    MadeLoop,
    ModelUnavailable,
    ParentLoop,
    WorkDone,
    WorkerLost,
    WorkerReady,
    WorkFailed,
    WorkItem,
    WorkProgress,
)
from .fair import FairQueue, QueuedJob

if TYPE_CHECKING:
    from .distributed.ratelimit import RedisRateLimiter

log = logging.getLogger(__name__)

RECENT_BATCHES = 20
"""How many recent batch timings the ETA is estimated from."""
ADMISSION_GROUP = 100
"""The most requests decided in one unit of work."""

Listener = Callable[[JobEvent], object]
"""Called with every job event; may be a coroutine function."""


def work_item(rows: Sequence[Generation]) -> WorkItem:
    """A request's rows (one per variation, in order) as the job a worker runs; call it in a session.

    The rows keep every option of the job, so one rebuilt after a restart is the job as asked for.
    """
    first = rows[0]
    return WorkItem(
        job_id=first.short_id, model=first.model, prompt_sent=first.prompt_sent, bpm=first.bpm, bars=first.bars,
        beats_per_bar=first.beats_per_bar, temperature=first.temperature, top_k=first.top_k, top_p=first.top_p,
        cfg_coef=first.cfg_coef, loop_ids=tuple(row.short_id for row in rows), seeds=tuple(row.seed for row in rows),
        exact_seed=first.exact_seed, audio_format=first.audio_format, source_audio=first.source_path,
        parent=parent_loop(first.parent) if first.kind is GenerationKind.VARIATION and first.parent else None,
    )


def work_items(decisions: Sequence[list[Generation] | Refused]) -> list[WorkItem | Refused]:
    """Admission's decisions with each admitted request's rows as its job; call it in a session."""
    return [work_item(rows) if isinstance(rows, list) else rows for rows in decisions]


def parent_loop(parent: Generation) -> ParentLoop:
    """The loop a variation continues: its file while kept, and the parent as an exact-seed job to make it again."""
    return ParentLoop(audio_path=parent.audio_path, remake=replace(work_item([parent]), exact_seed=True))


def request_groups(rows: Sequence[Generation]) -> list[list[Generation]]:
    """Rows (ordered by id) gathered into their requests, in order of each request's first row."""
    groups: dict[str, list[Generation]] = {}
    for row in rows:
        groups.setdefault(row.request_group, []).append(row)
    return list(groups.values())


def claim_rows(session: Session, item: WorkItem, worker: str) -> bool:
    """Mark every row of the job running on `worker`; False when they are no longer queued (cancelled)."""
    return all(mark_running(session, loop_id, worker) for loop_id in item.loop_ids)


def fail_request(session: Session, job_id: str, reason: str) -> bool:
    """Fail every row of the request `job_id` that is still queued or running."""
    return any(mark_failed(session, row.short_id, reason) for row in list_request_group(session, job_id))


def job_failures(session: Session, row_ids: Sequence[str]) -> list[tuple[str, str]]:
    """(job id, reason) of the requests among failed rows: a request's other rows are not jobs of their own."""
    rows = [get_generation(session, row_id) for row_id in row_ids]
    return [(row.short_id, row.error or "") for row in rows if row is not None and row.short_id == row.request_group]


def report_fields(report: dict[str, object]) -> LoopReportFields:
    """The loop report (`LoopReport.as_dict()`) as the history stores it."""
    names = set(LoopReportFields.__dataclass_fields__) - {"verdict_reason"}
    return LoopReportFields(**{name: report.get(name) for name in names}, verdict_reason=report.get("reason"))  # type: ignore[arg-type]


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
            from redis.asyncio import Redis

            from .distributed import RedisRateLimiter

            rate_limiter = RedisRateLimiter(Redis.from_url(settings.queue.redis_url))
        self.settings = settings
        self.database = database
        self.backend = backend
        self.rate_limiter = rate_limiter
        self.data_dir = Path(settings.storage.data_dir).resolve()
        self._queue = FairQueue()
        self._running: dict[str, QueuedJob] = {}
        self._arriving: list[tuple[JobRequest, asyncio.Future[WorkItem | Refused]]] = []
        self._admitting: asyncio.Task[None] | None = None
        self._subscribers: dict[str, list[asyncio.Queue[JobEvent]]] = {}
        self._listeners: list[Listener] = []
        self._batch_listeners: list[Callable[[int, float], object]] = []
        self._backend_events: asyncio.Queue[BackendEvent] = asyncio.Queue()
        self._worker_free = asyncio.Event()
        self._arrived = asyncio.Event()
        self._batch_seconds: deque[float] = deque(maxlen=RECENT_BATCHES)
        self._suggested_batch_size: int | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover what a previous run left, start the workers and begin dispatching."""
        # The backend starts first: a distributed one finds the batches still running from before.
        await self.backend.start(self._backend_events.put_nowait)
        jobs, running, failed = await asyncio.to_thread(self._recover, list(self.backend.resumed()))
        for job in jobs:
            # Jobs submitted before `start` are in both the queue and the database.
            if self._queue.position(job.job_id) is None:
                self._queue.push(job)
        self._running.update((job.job_id, job) for job in running)
        for job_id, reason in failed:
            self._publish(JobFailed(job_id, reason))
        self._tasks = [
            asyncio.create_task(self._apply_backend_events(), name="queue-results"),
            asyncio.create_task(self._dispatch(), name="queue-dispatch"),
        ]
        log.info("queue started with %d job(s) waiting", len(self._queue))

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
        for task in self._tasks:
            with suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.backend.stop()
        if self.backend.stops_its_batches and self._running:
            handed_back = await asyncio.to_thread(self._hand_back, list(self._running))
            log.info("handed %d running loop(s) back to the queue", len(handed_back))
            self._running.clear()
        if self.rate_limiter is not None:
            await self.rate_limiter.redis.aclose()

    def _hand_back(self, job_ids: Sequence[str]) -> list[str]:
        with self.database.session() as session:
            return hand_back_running(session, job_ids)

    def _recover(self, resumed: Collection[str]) -> tuple[list[QueuedJob], list[QueuedJob], list[tuple[str, str]]]:
        """Jobs to queue, jobs still running in batches the backend resumed, and jobs failed for good."""
        with self.database.session() as session:
            recovery = recover_interrupted(session, keep_workers=resumed)

            def jobs(*conditions: ColumnElement[bool]) -> list[QueuedJob]:
                rows = list(session.scalars(select(Generation).where(*conditions).order_by(Generation.id)))
                return [QueuedJob(work_item(group), group[0].user_id) for group in request_groups(rows)]

            running = jobs(Generation.status == GenerationStatus.RUNNING, Generation.worker.in_(resumed))
            return jobs(Generation.status == GenerationStatus.QUEUED), running, job_failures(session, recovery.failed)

    # --- the public API -----------------------------------------------------------------------

    async def submit(self, request: JobRequest) -> SubmitResult:
        """Queue a loop, or say why not (`Refused`) in words the user can act on.

        Requests that arrive while a group is being decided wait for the next group: a burst of
        requests costs a few database round trips, not a few per request.
        """
        decided: asyncio.Future[WorkItem | Refused] = asyncio.get_running_loop().create_future()
        self._arriving.append((request, decided))
        if self._admitting is None or self._admitting.done():
            self._admitting = asyncio.create_task(self._admit_arrivals(), name="queue-admission")
        admitted = await decided
        if isinstance(admitted, Refused):
            return admitted
        position = self._queue.position(admitted.job_id) or 1
        return Accepted(admitted.job_id, position, self._eta(position))

    async def _admit_arrivals(self) -> None:
        """Decide the waiting requests, a group at a time, until none waits."""
        while self._arriving:
            group, self._arriving = self._arriving[:ADMISSION_GROUP], self._arriving[ADMISSION_GROUP:]
            try:
                decisions = await self._admit([request for request, _ in group])
            except Exception as error:  # the database is down, say: each caller gets the error
                for _, decided in group:
                    if not decided.done():
                        decided.set_exception(error)
                continue
            for (request, decided), decision in zip(group, decisions):
                if not isinstance(decision, Refused):
                    self._queue.push(QueuedJob(decision, request.user_id))
                if not decided.done():  # a caller that gave up still has its job queued, as it was accepted
                    decided.set_result(decision)
            self._arrived.set()
            self._worker_free.set()

    async def _admit(self, requests: Sequence[JobRequest]) -> list[WorkItem | Refused]:
        """Check and insert a group; distributed, the shared rate limit is taken between the two."""
        if self.rate_limiter is None:
            return await asyncio.to_thread(self._admit_counting_in_database, requests)
        checked, ledger = await asyncio.to_thread(self._check, requests)
        decided: list[Checked | Refused] = []
        for item in checked:
            refusal = item if isinstance(item, Refused) else ledger.capacity_refusal(self.settings, item)
            if refusal is None:
                refusal = await take_shared_rate_limit(self.rate_limiter, item.request, item.limits)
            if refusal is None:
                ledger.admit(item)
            decided.append(refusal or item)
        return await asyncio.to_thread(self._insert, decided)

    def _admit_counting_in_database(self, requests: Sequence[JobRequest]) -> list[WorkItem | Refused]:
        """Embedded: the checks, the rate limit and the insert in one unit of work."""
        with self.database.session() as session:
            return work_items(admit_group(session, self.settings, requests))

    def _check(self, requests: Sequence[JobRequest]) -> tuple[list[Checked | Refused], AdmissionLedger]:
        with self.database.session() as session:
            checked = check_requests(session, self.settings, requests)
            return checked, AdmissionLedger.read(session, checked)

    def _insert(self, decided: Sequence[Checked | Refused]) -> list[WorkItem | Refused]:
        with self.database.session() as session:
            return work_items(insert_admitted(session, decided))

    async def cancel(self, job_id: str, user_id: int) -> CancelResult:
        """Cancel a waiting or running job; only the user who asked for it may."""
        outcome = await asyncio.to_thread(self._cancel_row, job_id, user_id)
        if outcome is CancelOutcome.CANCELLED:
            self._queue.remove(job_id)
            if self._running.pop(job_id, None) is not None:
                self.backend.cancel(job_id)
            self._publish(JobCancelled(job_id))
        return CancelResult(outcome, CANCEL_MESSAGES[outcome])

    def _cancel_row(self, job_id: str, user_id: int) -> CancelOutcome:
        with self.database.session() as session:
            row = get_generation(session, job_id)
            if row is None:
                return CancelOutcome.NOT_FOUND
            if row.user_id != user_id:
                return CancelOutcome.NOT_OWNER
            cancelled = [mark_cancelled(session, loop.short_id) for loop in list_request_group(session, row.request_group)]
            return CancelOutcome.CANCELLED if any(cancelled) else CancelOutcome.ALREADY_FINISHED

    async def status(self) -> QueueStatus:
        depth = len(self._queue)
        return QueueStatus(
            depth=depth, running=len(self._running), workers_alive=self.backend.workers_alive(),
            models=self.backend.models(), eta_by_position=[self._eta(p) for p in range(1, depth + 1)],
            seconds_per_batch=self._seconds_per_batch(),
        )

    def position(self, job_id: str) -> int | None:
        return self._queue.position(job_id)

    def subscribe(self, job_id: str) -> asyncio.Queue[JobEvent]:
        """A queue of the job's events; the last one is JobDone, JobFailed or JobCancelled."""
        events: asyncio.Queue[JobEvent] = asyncio.Queue()
        self._subscribers.setdefault(job_id, []).append(events)
        return events

    def add_listener(self, listener: Listener) -> None:
        """Receive every job's events (the bot's single entry point for progress messages)."""
        self._listeners.append(listener)

    def add_batch_listener(self, listener: Callable[[int, float], object]) -> None:
        """Receive every finished batch's job count and wall seconds (metrics)."""
        self._batch_listeners.append(listener)

    def set_uploading(self, job_id: str, percent: float = 0.0) -> None:
        """The bot reports its upload of a finished loop, so subscribers see the last stage too."""
        self._publish(JobProgress(job_id, Stage.UPLOADING, percent))

    # --- events -------------------------------------------------------------------------------

    def _publish(self, event: JobEvent) -> None:
        final = isinstance(event, FINAL_EVENT_TYPES)
        subscribers = self._subscribers.pop(event.job_id, []) if final else self._subscribers.get(event.job_id, [])
        for events in subscribers:
            events.put_nowait(event)
        for listener in self._listeners:
            result = listener(event)
            if inspect.isawaitable(result):
                asyncio.ensure_future(result)

    async def _apply_backend_events(self) -> None:
        while True:
            event = await self._backend_events.get()
            try:
                await self._apply(event)
            except Exception:
                log.exception("could not apply %s", event)

    async def _apply(self, event: BackendEvent) -> None:
        if isinstance(event, WorkProgress):
            stage = Stage(event.stage)
            for job_id in event.job_ids:
                if job_id in self._running:
                    self._publish(JobProgress(job_id, stage, event.percent))
        elif isinstance(event, WorkDone):
            stored = await asyncio.to_thread(self._store_done, event)
            if stored and self._running.pop(event.job_id, None):
                self._publish(JobDone(
                    event.job_id, [self.data_dir / loop.audio_path for loop in stored], stored[0].report, stored[0].seed,
                    seeds=[loop.seed for loop in stored], reports=[loop.report for loop in stored],
                    loop_ids=[loop.loop_id for loop in stored],
                ))
        elif isinstance(event, WorkFailed):
            if await asyncio.to_thread(self._store_failed, event.job_id, event.reason):
                self._running.pop(event.job_id, None)
                self._publish(JobFailed(event.job_id, event.reason))
        elif isinstance(event, WorkerLost):
            await self._requeue_lost(event)
        elif isinstance(event, BatchFinished):
            self._batch_seconds.append(event.seconds)
            for listener in self._batch_listeners:
                listener(event.jobs, event.seconds)
            self._worker_free.set()
        elif isinstance(event, WorkerReady):
            self._suggested_batch_size = event.batch_size
            self._worker_free.set()
        elif isinstance(event, ModelUnavailable):
            log.error("worker %s: %s", event.worker, event.reason)

    def _store_done(self, event: WorkDone) -> list[MadeLoop]:
        """Record the job's loops (and its silent ones as failed); the loops stored, none if it was cancelled."""
        with self.database.session() as session:
            for failure in event.failures:
                mark_failed(session, failure.job_id, failure.reason)
            return [
                loop for loop in event.loops
                if mark_done(session, loop.loop_id, audio_path=loop.audio_path, report=report_fields(loop.report), seed=loop.seed)
            ]

    def _store_failed(self, job_id: str, reason: str) -> bool:
        with self.database.session() as session:
            return fail_request(session, job_id, reason)

    async def _requeue_lost(self, event: WorkerLost) -> None:
        """The worker died: its jobs go back to the front of their users' lines once, then fail."""
        def recover() -> tuple[list[str], list[tuple[str, str]]]:
            with self.database.session() as session:
                recovery = recover_interrupted(session, worker=event.worker)
                return recovery.requeued, job_failures(session, recovery.failed)

        requeued, failed = await asyncio.to_thread(recover)
        for job_id in reversed(requeued):
            job = self._running.pop(job_id, None)
            if job is not None:
                self._queue.push(QueuedJob(job.item, job.user_id), front=True)
                self._publish(JobProgress(job_id, Stage.QUEUED, 0.0, self._queue.position(job_id)))
        for job_id, reason in failed:
            self._running.pop(job_id, None)
            self._publish(JobFailed(job_id, reason))
        self._worker_free.set()

    # --- dispatching --------------------------------------------------------------------------

    def batch_size(self) -> int:
        return self.settings.queue.batch_size or self._suggested_batch_size or 1

    async def _dispatch(self) -> None:
        while True:
            await self._worker_free.wait()
            self._worker_free.clear()
            while len(self._queue) and self.backend.free_worker() is not None:
                batch = await self._next_batch()
                worker = self.backend.free_worker()
                if worker is None:  # it died while the batch filled: the jobs keep their turn
                    for job in reversed(batch):
                        self._queue.push(job, front=True)
                    break
                await self._start_batch(worker, batch)

    async def _next_batch(self) -> list[QueuedJob]:
        """Up to B compatible jobs, waiting at most `batch_wait_ms` after the head joined for more."""
        limit = self.batch_size()
        wait_s = self.settings.queue.batch_wait_ms / 1000
        while (head := self._queue.head()) is not None:
            remaining = head.queued_at + wait_s - time.monotonic()
            if remaining <= 0 or self._queue.compatible_with_head(limit) >= limit:
                return self._queue.take_batch(limit)
            self._arrived.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return []

    async def _start_batch(self, worker: str, batch: Sequence[QueuedJob]) -> None:
        def claim() -> list[str]:
            with self.database.session() as session:
                return [job.job_id for job in batch if claim_rows(session, job.item, worker)]

        claimed = set(await asyncio.to_thread(claim))
        jobs = [job for job in batch if job.job_id in claimed]  # the others were cancelled meanwhile
        if not jobs:
            self._worker_free.set()
            return
        for job in jobs:
            self._running[job.job_id] = job
        self.backend.run(worker, [job.item for job in jobs])
        for job in jobs:
            self._publish(JobProgress(job.job_id, Stage.GENERATING, 0.0))
        self._announce_positions()

    def _announce_positions(self) -> None:
        """Tell the waiting jobs where they now stand (the bot shows it on each "Queued" message)."""
        if not self._subscribers and not self._listeners:
            return
        for position, job in enumerate(self._queue.in_order(), 1):
            self._publish(JobProgress(job.job_id, Stage.QUEUED, 0.0, position))

    # --- estimates ----------------------------------------------------------------------------

    def _seconds_per_batch(self) -> float | None:
        return sum(self._batch_seconds) / len(self._batch_seconds) if self._batch_seconds else None

    def _eta(self, position: int) -> float | None:
        """Seconds until the job at `position` is done: its batch and those before it, over the workers."""
        per_batch = self._seconds_per_batch()
        if per_batch is None:
            return None
        batches = math.ceil(position / self.batch_size())
        return batches * per_batch / max(1, self.backend.workers_alive())


CANCEL_MESSAGES = {
    CancelOutcome.CANCELLED: "Your loop was cancelled.",
    CancelOutcome.NOT_OWNER: "Only the person who asked for this loop can cancel it.",
    CancelOutcome.NOT_FOUND: "There is no loop with that id.",
    CancelOutcome.ALREADY_FINISHED: "That loop has already finished, so there is nothing to cancel.",
}
