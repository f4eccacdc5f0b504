"""Recovery: the jobs a stopped service or a dead worker left `running` go back in line once, then fail.

At `start`, whatever a previous run left queued is queued again, and its interrupted jobs are
retried (`storage.recover_interrupted`); batches a distributed backend still runs (`resumed`)
keep their rows running. When a worker dies (`WorkerLost`), the jobs of its batch go back to the
front of their users' lines.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from ..storage import Session, recover_interrupted
from ..storage.queue import failed_requests, queued_rows, running_rows_of
from .fair import QueuedJob
from .rows import queued_jobs


@dataclass(frozen=True)
class Recovered:
    """What recovery found, as jobs: those back in line, those still running, and those failed for good."""

    queued: list[QueuedJob]
    running: list[QueuedJob]
    failed: list[tuple[str, str]]
    """(job id, reason)."""


def recover_at_start(session: Session, resumed: Collection[str]) -> Recovered:
    """After a restart: retry the interrupted jobs (except those of the batches in `resumed`), then read the line."""
    recovery = recover_interrupted(session, keep_workers=resumed)
    return Recovered(
        queued=queued_jobs(queued_rows(session)),
        running=queued_jobs(running_rows_of(session, resumed)),
        failed=failed_requests(session, recovery.failed),
    )


@dataclass(frozen=True)
class LostBatch:
    """The rows of a dead worker's batch after recovery: short ids put back in line, and failed requests."""

    requeued: list[str]
    failed: list[tuple[str, str]]


def recover_lost_batch(session: Session, batch_key: str) -> LostBatch:
    """A worker died running the batch `batch_key`: its jobs go back in line once, then fail."""
    recovery = recover_interrupted(session, worker=batch_key)
    return LostBatch(recovery.requeued, failed_requests(session, recovery.failed))
