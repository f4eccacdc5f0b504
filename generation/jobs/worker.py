"""The worker process: loads MusicGen once and turns batches of work items into loop files.

`worker_main` is the child's entry point (multiprocessing, spawn context). torch, audiocraft and
the loop engine are imported inside it, never when this module is imported: the bot imports the
jobs package and must stay light. The child talks to its pool through two one-way pipes: tasks
come in (`RunBatch`, `CancelJobs`, `Stop`), `backend` events go out.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..config import GenerationSettings, LoopSettings
from .backend import (
    BackendEvent,
    BatchFinished,
    ModelUnavailable,
    WorkDone,
    WorkerReady,
    WorkFailed,
    WorkItem,
    WorkProgress,
)

log = logging.getLogger(__name__)

LOOPS_DIR = "loops"
GPU_BATCH_SIZE, CPU_BATCH_SIZE = 8, 2
PROGRESS_STEP = 5.0  # percent; finer updates would only flood the pipe
CRASH_MESSAGE = "Something went wrong while making this loop. Please try again."


@dataclass(frozen=True)
class WorkerConfig:
    name: str
    model: str
    """Loaded at start; other allowed models are loaded when a batch asks for them."""
    device: str
    generation: GenerationSettings
    loop: LoopSettings
    data_dir: Path


@dataclass(frozen=True)
class RunBatch:
    items: tuple[WorkItem, ...]


@dataclass(frozen=True)
class CancelJobs:
    job_ids: tuple[str, ...]


@dataclass(frozen=True)
class Stop:
    pass


def model_error_message(model: str, error: BaseException) -> str:
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"The model {model!r} could not be loaded ({first_line[:200]}). An admin has to fix the bot's model settings."


class _Tasks:
    """Reads the task pipe on a thread, so a cancel arrives while the main thread generates."""

    def __init__(self, connection: Connection) -> None:
        self.batches: queue.Queue[RunBatch | None] = queue.Queue()
        self.cancelled: set[str] = set()
        self._connection = connection
        threading.Thread(target=self._read, name="tasks", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                task = self._connection.recv()
            except (EOFError, OSError):
                task = Stop()
            if isinstance(task, CancelJobs):
                self.cancelled.update(task.job_ids)
            elif isinstance(task, RunBatch):
                self.batches.put(task)
            else:
                self.batches.put(None)
                return


class _Worker:
    def __init__(self, config: WorkerConfig, events: Connection, tasks: _Tasks) -> None:
        self.config = config
        self.events = events
        self.tasks = tasks
        self.makers: dict[str, Any] = {}
        self.unavailable: dict[str, str] = {}

    def send(self, event: BackendEvent) -> None:
        self.events.send(event)

    def maker(self, model: str) -> Any:
        """The LoopMaker for `model`, loading it on first use; None (and the reason kept) if it fails."""
        if model in self.makers or model in self.unavailable:
            return self.makers.get(model)
        from ..engine import MusicGenEngine
        from ..pipeline import LoopMaker

        try:
            engine = MusicGenEngine.load(model, self.config.device)
        except Exception as error:  # any loader error is the model's, not the request's
            log.exception("cannot load %s", model)
            self.unavailable[model] = model_error_message(model, error)
            self.send(ModelUnavailable(self.config.name, model, self.unavailable[model]))
            return None
        self.makers[model] = LoopMaker(engine, self.config.generation, self.config.loop)
        return self.makers[model]

    def serve(self) -> None:
        maker = self.maker(self.config.model)
        if maker is not None:
            on_gpu = not maker.engine.device.startswith("cpu")
            self.send(WorkerReady(self.config.name, GPU_BATCH_SIZE if on_gpu else CPU_BATCH_SIZE, self.config.model))
        else:
            # Still serve: batches for other models may work, and this one's jobs fail with the reason.
            self.send(WorkerReady(self.config.name, CPU_BATCH_SIZE, self.config.model))
        while (task := self.tasks.batches.get()) is not None:
            started = time.perf_counter()
            self.run(task.items)
            self.send(BatchFinished(self.config.name, len(task.items), time.perf_counter() - started))

    def run(self, items: Sequence[WorkItem]) -> None:
        from ..engine import GenerationCancelled, SamplingParams
        from ..pipeline import LoopSpec

        maker = self.maker(items[0].model)
        if maker is None:
            for item in items:
                self.send(WorkFailed(item.job_id, self.unavailable[item.model]))
            return
        job_ids = tuple(item.job_id for item in items)
        specs = [
            LoopSpec(item.prompt_sent, item.bpm, item.bars, item.beats_per_bar, item.seed,
                     SamplingParams(item.temperature, item.top_k, item.top_p, item.cfg_coef))
            for item in items
        ]
        last: list[Any] = [None, -PROGRESS_STEP]

        def on_stage(stage: str, percent: float) -> None:
            if stage != last[0] or percent - last[1] >= PROGRESS_STEP or percent >= 100.0:
                last[:] = [stage, percent]
                self.send(WorkProgress(job_ids, "generating" if stage == "retrying" else stage, percent))

        def should_cancel() -> bool:
            # Stop the batch only when all its jobs are cancelled; otherwise the others still need it.
            return all(job_id in self.tasks.cancelled for job_id in job_ids)

        try:
            outcomes = maker.make(specs, on_stage, should_cancel)
        except GenerationCancelled:
            return
        except Exception:
            log.exception("batch %s failed", job_ids)
            for job_id in job_ids:
                self.send(WorkFailed(job_id, CRASH_MESSAGE))
            return
        for item, outcome in zip(items, outcomes):
            self.deliver(item, outcome)

    def deliver(self, item: WorkItem, outcome: Any) -> None:
        from ..audio_io import write_audio

        if not outcome.ok:
            self.send(WorkFailed(item.job_id, outcome.error))
            return
        relative = Path(LOOPS_DIR) / f"{item.job_id}.wav"
        write_audio(self.config.data_dir / relative, outcome.loop.audio, outcome.loop.sample_rate)
        self.send(WorkDone(item.job_id, relative.as_posix(), outcome.loop.report.as_dict(), outcome.seed))


def worker_main(config: WorkerConfig, tasks: Connection, events: Connection) -> None:
    """Entry point of the worker process."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {config.name} %(levelname)s %(message)s")
    _Worker(config, events, _Tasks(tasks)).serve()
