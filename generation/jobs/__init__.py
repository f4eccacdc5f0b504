"""The job queue: fair admission and order, batching GPU workers, progress and results.

Imports neither torch nor discord: the bot uses it directly, and the worker process imports
torch inside itself (`worker.worker_main`).
"""

from .api import (
    FINAL_EVENT_TYPES,
    Accepted,
    CancelOutcome,
    CancelResult,
    JobCancelled,
    JobDone,
    JobEvent,
    JobFailed,
    JobKind,
    JobProgress,
    JobRequest,
    QueueStatus,
    QueueUnavailable,
    RefusalKind,
    Refused,
    Stage,
    SubmitResult,
)
from .backend import JobBackend
from .pool import ProcessWorkerPool
from .service import QueueService

__all__ = [
    "FINAL_EVENT_TYPES", "Accepted", "CancelOutcome", "CancelResult", "JobBackend", "JobCancelled", "JobDone", "JobEvent", "JobFailed",
    "JobKind", "JobProgress", "JobRequest", "ProcessWorkerPool", "QueueService", "QueueStatus", "QueueUnavailable",
    "RefusalKind", "Refused", "Stage", "SubmitResult",
]
