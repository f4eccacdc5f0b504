"""The boundary between the queue service and whatever runs the jobs.

The service decides *what* runs next (limits, fair order, batching); a backend decides *where*:
`ProcessWorkerPool` runs worker processes on this machine, and a Redis-backed backend can take
its place behind the same interface. Everything that crosses it is a plain, picklable dataclass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..shape import LoopShape

DURATION_BUCKET_S = 4.0
"""Jobs whose loops fall in the same 4-second bucket share a batch (a batch runs for its longest)."""


@dataclass(frozen=True)
class ParentLoop:
    """The loop a variation continues: its kept audio, or how to make it again."""

    audio_path: str | None
    """Relative to the data directory; None (or a missing file) once the retention sweep took it."""
    remake: WorkItem | None
    """The parent as an exact-seed job, to regenerate it; None when it cannot be (a loopified upload)."""


@dataclass(frozen=True)
class MixLayer:
    """One layer of a mix: a finished loop of the jam's shape, its kept audio, or how to make it again."""

    loop_id: str
    """The layer's loop (its public short id)."""
    prompt: str
    """As its user typed it: what the layer is called in the stems and jam.json."""
    seed: int
    model: str
    audio_path: str | None
    """Relative to the data directory; None (or a missing file) once the retention sweep took it."""
    remake: WorkItem | None
    """The loop as an exact-seed job, to regenerate it; None when it cannot be (a loopified upload, a mix)."""


@dataclass(frozen=True)
class WorkItem:
    """One job (one request, 1-4 loops) as a worker needs it: what to make, and nothing about who asked."""

    job_id: str
    """The request's id: its first loop's short id."""
    model: str
    prompt_sent: str
    shape: LoopShape
    temperature: float
    top_k: int
    top_p: float
    cfg_coef: float
    loop_ids: tuple[str, ...]
    """The short id of each loop (history row) of the request, in order; the first is `job_id`."""
    seeds: tuple[int, ...]
    """One seed per loop."""
    exact_seed: bool = False
    audio_format: str = "wav"
    source_audio: str | None = None
    """Loopify: loop this file as it is, with no model."""
    parent: ParentLoop | None = None
    """Variation: the loop to continue."""
    key: str | None = None
    """The key the loops are moved into ("A minor", as `music.Key.name` writes it), or None to leave them in theirs."""
    mix: tuple[MixLayer, ...] | None = None
    """Mix: the layers to layer into one loop of `shape` (moved into `key`), with its stems; no model."""

    @property
    def seed(self) -> int:
        """The first loop's seed."""
        return self.seeds[0]

    @property
    def batch_key(self) -> tuple[Any, ...]:
        """Jobs with equal keys can share one `generate` call: same model and sampling, similar length.

        A loopify, a mix or a variation (its prompt audio fixes the batch's prompt length) runs alone.
        """
        join_key = self.join_key
        if join_key is None or self.parent is not None:
            return ("alone", self.job_id)
        return (*join_key, math.ceil(self.shape.seconds / DURATION_BUCKET_S))

    @property
    def join_key(self) -> tuple[Any, ...] | None:
        """Jobs with equal keys can decode together with continuous batching, whatever their
        lengths: same model and sampling. None for a loopify or a mix (no model)."""
        if self.source_audio is not None or self.mix is not None:
            return None
        return (self.model, self.temperature, self.top_k, self.top_p, self.cfg_coef)


def shared_join_key(items: Iterable[WorkItem]) -> tuple[Any, ...] | None:
    """The join key every one of `items` has, which jobs joining them must have too; None when
    they have none (a loopify, a mix) or not all the same."""
    keys = {item.join_key for item in items}
    return keys.pop() if len(keys) == 1 else None


@dataclass(frozen=True)
class Opening:
    """A running batch that jobs of `join_key` may join (`JobBackend.run` under its `batch_key`)."""

    batch_key: str
    join_key: tuple[Any, ...]
    running: int
    """Jobs in it now: the dispatcher adds up to its batch size minus these."""


# --- what a backend reports -------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerReady:
    worker: str
    batch_size: int
    """The batch size this worker suggests for its device (8 on a GPU, 2 on a CPU)."""
    model: str
    joins: bool = False
    """Jobs may join its running batch (continuous batching: the fast decoder)."""


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
class WorkFailed:
    """A job failed because of the request or took too long: not retried."""

    job_id: str
    reason: str


@dataclass(frozen=True)
class MadeLoop:
    """One loop file a worker wrote."""

    loop_id: str
    audio_path: str
    """Relative to the data directory; the waveform PNG lies beside it."""
    report: dict[str, Any]
    seed: int
    """The seed of the delivered candidate (best-of-N may deliver another than the one asked for)."""


@dataclass(frozen=True)
class WorkDone:
    """A job made at least one loop; `failures` are its other loops (by loop id), which came out silent."""

    job_id: str
    loops: tuple[MadeLoop, ...]
    failures: tuple[WorkFailed, ...] = ()


@dataclass(frozen=True)
class BatchFinished:
    worker: str
    jobs: int
    seconds: float
    job_ids: tuple[str, ...] = ()
    """The jobs it ran, those that joined it included (the embedded worker's; a saq batch's are its own)."""


@dataclass(frozen=True)
class WorkerLost:
    """The worker process died; the jobs it held are the service's to retry or fail."""

    worker: str
    job_ids: tuple[str, ...]


@dataclass(frozen=True)
class WorkReturned:
    """Jobs sent to join a running batch that ended before it took them: they wait again, their
    turn kept and their start refunded (no fault of theirs, unlike `WorkerLost`)."""

    worker: str
    job_ids: tuple[str, ...]


BackendEvent = WorkerReady | ModelUnavailable | WorkProgress | WorkDone | WorkFailed | BatchFinished | WorkerLost | WorkReturned
EventSink = Callable[[BackendEvent], None]


class JobBackend(Protocol):
    """Runs batches of work items and reports back through the sink given to `start`."""

    stops_its_batches: bool
    """True when `stop` ends the running batches (their jobs are the service's to hand back),
    False when they go on without the service and the next `start` resumes them."""

    async def start(self, sink: EventSink) -> None: ...

    async def stop(self) -> None: ...

    def next_batch_key(self) -> str | None:
        """The key the next batch would run under, or None while no worker could take one.

        The key names the batch in the history (rows' `worker`) and in `WorkerLost`: the embedded
        pool's is the free worker's name, the saq backend's a fresh batch id. Asking again before
        `run` gives the same key.
        """

    def run(self, batch_key: str, batch: Sequence[WorkItem]) -> None:
        """Run `batch` under `batch_key` (from `next_batch_key`, or an `Opening`'s: the jobs join
        the batch running under it); results come back as events."""

    def openings(self) -> list[Opening]:
        """Running batches that more jobs may join between two decoding steps (none for saq's workers)."""

    def cancel(self, job_id: str) -> None:
        """Stop a running job between decoding steps when it is alone in its batch; its result is dropped otherwise."""

    def workers_alive(self) -> int: ...

    def running(self) -> int:
        """Jobs being worked on now."""

    def models(self) -> list[str]: ...

    def resumed(self) -> dict[str, tuple[str, ...]]:
        """Batches a previous run left that still run (worker name -> job ids), known once `start` returns."""
