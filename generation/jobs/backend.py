"""The boundary between the queue service and whatever runs the jobs.

The service decides *what* runs next (limits, fair order, batching); a backend decides *where*:
`ProcessWorkerPool` runs worker processes on this machine, and a Redis-backed backend can take
its place behind the same interface. Everything that crosses it is a plain, picklable dataclass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..prompts import loop_seconds

DURATION_BUCKET_S = 4.0
"""Jobs whose loops fall in the same 4-second bucket share a batch (a batch runs for its longest)."""


@dataclass(frozen=True)
class WorkItem:
    """One job as a worker needs it: what to generate, and nothing about who asked."""

    job_id: str
    model: str
    prompt_sent: str
    bpm: float
    bars: int
    beats_per_bar: int
    seed: int
    temperature: float
    top_k: int
    top_p: float
    cfg_coef: float

    @property
    def batch_key(self) -> tuple[Any, ...]:
        """Jobs with equal keys can share one `generate` call: same model and sampling, similar length."""
        seconds = loop_seconds(self.bpm, self.bars, self.beats_per_bar)
        bucket = math.ceil(seconds / DURATION_BUCKET_S)
        return (self.model, self.temperature, self.top_k, self.top_p, self.cfg_coef, bucket)


# --- what a backend reports -------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerReady:
    worker: str
    batch_size: int
    """The batch size this worker suggests for its device (8 on a GPU, 2 on a CPU)."""
    model: str


@dataclass(frozen=True)
class ModelUnavailable:
    """A model failed to load; its jobs fail with `reason` instead of the worker restarting."""

    worker: str
    model: str
    reason: str


@dataclass(frozen=True)
class WorkProgress:
    job_ids: tuple[str, ...]
    stage: str
    percent: float


@dataclass(frozen=True)
class WorkDone:
    job_id: str
    audio_path: str
    """Relative to the data directory."""
    report: dict[str, Any]
    seed: int


@dataclass(frozen=True)
class WorkFailed:
    """A job failed because of the request or took too long: not retried."""

    job_id: str
    reason: str


@dataclass(frozen=True)
class BatchFinished:
    worker: str
    jobs: int
    seconds: float


@dataclass(frozen=True)
class WorkerLost:
    """The worker process died; the jobs it held are the service's to retry or fail."""

    worker: str
    job_ids: tuple[str, ...]


BackendEvent = WorkerReady | ModelUnavailable | WorkProgress | WorkDone | WorkFailed | BatchFinished | WorkerLost
EventSink = Callable[[BackendEvent], None]


class JobBackend(Protocol):
    """Runs batches of work items and reports back through the sink given to `start`."""

    async def start(self, sink: EventSink) -> None: ...

    async def stop(self) -> None: ...

    def free_worker(self) -> str | None:
        """The name of a worker ready for a batch, or None when all are busy or starting."""

    def run(self, worker: str, batch: Sequence[WorkItem]) -> None:
        """Hand `batch` to `worker` (from `free_worker`); results come back as events."""

    def cancel(self, job_id: str) -> None:
        """Stop a running job between decoding steps when it is alone in its batch; its result is dropped otherwise."""

    def workers_alive(self) -> int: ...

    def running(self) -> int:
        """Jobs being worked on now."""

    def models(self) -> list[str]: ...
