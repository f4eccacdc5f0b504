"""Applying what the backend reports: progress, results, failures, lost workers, finished batches.

Events are applied one at a time, in the order they came. One that needs the database waits
out an outage (`QueueDatabase.retry`) and the events behind it wait with it, so results that
finished while the database was away are recorded, in order, once it is back.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from ..storage import GenerationStatus, Session, delete_upload, get_generation, hand_back_running, mark_done, mark_failed
from ..storage.queue import fail_request
from .api import JobDone, JobFailed, JobProgress, Stage
from .backend import (
    BackendEvent,
    BatchFinished,
    MadeLoop,
    ModelUnavailable,
    WorkDone,
    WorkerLost,
    WorkerReady,
    WorkFailed,
    WorkProgress,
    WorkReturned,
)
from .dispatch import Dispatcher
from .events import EventBus
from .fair import QueuedJob
from .outage import QueueDatabase
from .recovery import recover_lost_batch
from .rows import report_fields

log = logging.getLogger(__name__)


def store_loops(session: Session, event: WorkDone) -> list[MadeLoop]:
    """Record a job's loops (and its silent ones as failed); the loops stored, none if it was cancelled."""
    for failure in event.failures:
        mark_failed(session, failure.job_id, failure.reason)
    return [
        loop for loop in event.loops
        if mark_done(session, loop.loop_id, audio_path=loop.audio_path, report=report_fields(loop.report), seed=loop.seed)
        # Done already: a retry after an outage whose commit went through but was never acknowledged.
        or _is_done(session, loop.loop_id)
    ]


def _is_done(session: Session, loop_id: str) -> bool:
    row = get_generation(session, loop_id)
    return row is not None and row.status is GenerationStatus.DONE


def discard_upload(job: QueuedJob | None, data_dir: Path) -> None:
    """A loopify's uploaded file is of no more use once its job ended: done, failed or cancelled."""
    if job is not None:
        delete_upload(data_dir, job.item.source_audio)


class ResultApplier:
    """The backend's event sink (`put`) and the task applying its events (`run`)."""

    def __init__(self, database: QueueDatabase, dispatcher: Dispatcher, bus: EventBus, data_dir: Path) -> None:
        self.database = database
        self.dispatcher = dispatcher
        self.bus = bus
        self.data_dir = data_dir
        self._events: asyncio.Queue[BackendEvent] = asyncio.Queue()

    def put(self, event: BackendEvent) -> None:
        self._events.put_nowait(event)

    async def run(self) -> None:
        while True:
            event = await self._events.get()
            try:
                await self.apply(event)
            except Exception:  # a fault of ours, not an outage (those are waited out): the next event still goes
                log.exception("could not apply %s", event)

    async def apply(self, event: BackendEvent) -> None:
        running = self.dispatcher.running
        if isinstance(event, WorkProgress):
            stage = Stage(event.stage)
            for job_id in event.job_ids:
                if job_id in running:
                    self.bus.publish(JobProgress(job_id, stage, event.percent))
        elif isinstance(event, WorkDone):
            stored = await self.database.retry(store_loops, event)
            self.dispatcher.job_left(running.get(event.job_id))
            if stored and (job := running.pop(event.job_id, None)) is not None:
                discard_upload(job, self.data_dir)
                self.bus.publish(JobDone(
                    event.job_id, [self.data_dir / loop.audio_path for loop in stored], stored[0].report, stored[0].seed,
                    seeds=[loop.seed for loop in stored], reports=[loop.report for loop in stored],
                    loop_ids=[loop.loop_id for loop in stored],
                ))
        elif isinstance(event, WorkFailed):
            failed = await self.database.retry(fail_request, event.job_id, event.reason)
            job = running.pop(event.job_id, None)
            self.dispatcher.job_left(job)
            discard_upload(job, self.data_dir)
            if job is not None or failed:
                self.bus.publish(JobFailed(event.job_id, event.reason))
        elif isinstance(event, WorkerLost):
            await self._requeue_lost(event)
        elif isinstance(event, WorkReturned):
            handed_back = await self.database.retry(hand_back_running, event.job_ids)
            self._requeue([job_id for job_id in event.job_ids if job_id in handed_back])
            self.dispatcher.job_left(None)
        elif isinstance(event, BatchFinished):
            self.dispatcher.batch_finished()
            self.bus.publish_batch(event.jobs, event.seconds)
        elif isinstance(event, WorkerReady):
            self.dispatcher.worker_ready(event.batch_size)
        elif isinstance(event, ModelUnavailable):
            log.error("worker %s: %s", event.worker, event.reason)

    def _requeue(self, job_ids: list[str]) -> None:
        """Running jobs back to the front of their users' lines, in their order: they keep their turn."""
        running = self.dispatcher.running
        for job_id in reversed(job_ids):
            job = running.pop(job_id, None)
            if job is not None:
                self.dispatcher.queue.push(QueuedJob(job.item, job.user_id), front=True)
                self.bus.publish(JobProgress(job_id, Stage.QUEUED, 0.0, self.dispatcher.queue.position(job_id)))

    async def _requeue_lost(self, event: WorkerLost) -> None:
        """The worker died: its jobs go back to the front of their users' lines once, then fail."""
        lost = await self.database.retry(recover_lost_batch, event.worker)
        running = self.dispatcher.running
        self._requeue(lost.requeued)
        for job_id, reason in lost.failed:
            discard_upload(running.pop(job_id, None), self.data_dir)
            self.bus.publish(JobFailed(job_id, reason))
        self.dispatcher.batch_finished()
