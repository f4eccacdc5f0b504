"""The embedded backend: worker processes on this machine, restarted when they die.

Each worker is a process holding the model, forked from a forkserver: a fresh interpreter that
imported torch and audiocraft once and holds no event loop or socket of the bot's, so a worker
that died is replaced in the time it takes to load the model, not to import torch again. The
pool reads its events on the event loop with `add_reader`, so no thread of the bot ever blocks
on a worker.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerProcess
from pathlib import Path

from ..config import Settings
from .backend import (
    BackendEvent,
    BatchFinished,
    EventSink,
    ModelUnavailable,
    Opening,
    WorkDone,
    WorkerLost,
    WorkerReady,
    WorkFailed,
    WorkItem,
    shared_join_key,
)
from .runner import WorkerConfig
from .worker import CancelJobs, RunBatch, Stop, worker_main

log = logging.getLogger(__name__)

PRELOADED = ["generation.jobs.worker", "generation.engine"]
"""What the forkserver imports once, for every worker it starts (the bot itself never imports torch)."""
MONITOR_INTERVAL_S = 0.25
STOP_GRACE_S = 5.0
MAX_RESTART_DELAY_S = 30.0


def timeout_message(seconds: float) -> str:
    return f"This loop took longer than {seconds / 60:g} minutes to make and was stopped. Please try again."


@dataclass
class _Worker:
    index: int
    name: str
    process: ForkServerProcess
    tasks: Connection
    events: Connection
    ready: bool = False
    joins: bool = False
    """Jobs may join its running batch (`WorkerReady.joins`)."""
    running: dict[str, tuple[WorkItem, float]] = field(default_factory=dict)
    """Its jobs, by job id, with when each was sent: those of its batch and those that joined it."""
    models: list[str] = field(default_factory=list)

    def job_ids(self) -> tuple[str, ...]:
        return tuple(self.running)


class ProcessWorkerPool:
    """`JobBackend` with `workers` local processes (one per GPU; one on a CPU-only machine)."""

    stops_its_batches = True

    def __init__(self, settings: Settings, *, workers: int = 1, device: str | None = None) -> None:
        self.settings = settings
        self.count = workers
        self.device = device or settings.model.device
        self.job_timeout_s = settings.queue.job_timeout_s
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(PRELOADED)
        self._workers: dict[int, _Worker] = {}
        self._incarnations = 0
        self._quick_deaths: dict[int, int] = {}
        self._sink: EventSink | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._launching: asyncio.Task[None] | None = None
        self._stopping = False

    # --- JobBackend ---------------------------------------------------------------------------

    async def start(self, sink: EventSink) -> None:
        """Start the workers in the background: the first start waits for the forkserver to import torch."""
        self._sink = sink
        self._launching = asyncio.create_task(self._launch_all(), name="worker-pool-launch")
        self._monitor = asyncio.create_task(self._watch(), name="worker-pool-monitor")

    async def stop(self) -> None:
        """Ask every worker to leave and wait for it; a running batch stops at its next decoding step.

        Events still come to the sink meanwhile; the jobs of a batch a worker did not finish are
        reported as `WorkerLost`, so they go back to waiting.
        """
        self._stopping = True
        if self._monitor is not None:
            self._monitor.cancel()
        if self._launching is not None:
            await asyncio.wait([self._launching])  # a worker being started is stopped with the others
        await asyncio.gather(*(self._stop_worker(worker) for worker in self._workers.values()))
        self._workers.clear()

    def next_batch_key(self) -> str | None:
        """The name of a worker ready for a batch: a batch here is keyed by the worker running it."""
        for worker in self._workers.values():
            if worker.ready and not worker.running:
                return worker.name
        return None

    def openings(self) -> list[Opening]:
        """Workers decoding a batch of one join key (`WorkItem.join_key`), which jobs of that key may join."""
        openings = []
        for worker in self._workers.values():
            key = shared_join_key(item for item, _ in worker.running.values())
            if worker.ready and worker.joins and key is not None:
                openings.append(Opening(worker.name, key, len(worker.running)))
        return openings

    def run(self, batch_key: str, batch: Sequence[WorkItem]) -> None:
        """Send `batch` to the worker `batch_key`: a new batch when it is free, jobs that join its batch otherwise."""
        worker = self._by_name(batch_key)
        sent = time.monotonic()
        worker.running.update((item.job_id, (item, sent)) for item in batch)
        worker.tasks.send(RunBatch(tuple(batch)))

    def cancel(self, job_id: str) -> None:
        for worker in self._workers.values():
            if worker.running.pop(job_id, None) is not None:
                worker.tasks.send(CancelJobs((job_id,)))

    def workers_alive(self) -> int:
        return sum(1 for worker in self._workers.values() if worker.process.is_alive())

    def running(self) -> int:
        return sum(len(worker.running) for worker in self._workers.values())

    def models(self) -> list[str]:
        return sorted({model for worker in self._workers.values() for model in worker.models})

    def resumed(self) -> dict[str, tuple[str, ...]]:
        return {}  # the workers die with the service: nothing outlives it

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for tests and operators)."""
        return [w.process.pid for w in self._workers.values() if w.process.pid is not None and w.process.is_alive()]

    # --- processes ----------------------------------------------------------------------------

    async def _launch_all(self) -> None:
        for index in range(self.count):
            # In a thread: starting a process blocks until the forkserver is ready, seconds the
            # first time (it imports torch), which the event loop must not wait for.
            try:
                self._attach(await asyncio.to_thread(self._launch, index))
            except OSError:
                log.exception("cannot start worker %d", index)

    def _launch(self, index: int) -> _Worker:
        """Start worker process `index` (no event-loop work: may run in a thread)."""
        self._incarnations += 1
        name = f"embedded-{index}.{self._incarnations}"
        config = WorkerConfig(
            name=name, model=self.settings.model.name, device=self.device,
            generation=self.settings.generation, loop=self.settings.loop,
            data_dir=Path(self.settings.storage.data_dir).resolve(), decoder=self.settings.model.decoder,
        )
        tasks_recv, tasks_send = self._context.Pipe(duplex=False)
        events_recv, events_send = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=worker_main, args=(config, tasks_recv, events_send, os.getpid()), name=name, daemon=True
        )
        process.start()
        # The child has its own copies; closing ours lets a dead child show up as EOF.
        tasks_recv.close()
        events_send.close()
        return _Worker(index, name, process, tasks_send, events_recv)

    def _attach(self, worker: _Worker) -> None:
        """Follow a started worker: its events are read on the event loop."""
        self._workers[worker.index] = worker
        asyncio.get_running_loop().add_reader(worker.events.fileno(), self._on_readable, worker)
        log.info("started worker %s (pid %s)", worker.name, worker.process.pid)

    def _detach(self, worker: _Worker) -> None:
        try:
            asyncio.get_running_loop().remove_reader(worker.events.fileno())
        except (OSError, ValueError):
            pass

    def _by_name(self, name: str) -> _Worker:
        return next(worker for worker in self._workers.values() if worker.name == name)

    def _on_readable(self, worker: _Worker) -> None:
        try:
            while worker.events.poll():
                self._handle(worker, worker.events.recv())
        except (EOFError, OSError):
            self._detach(worker)  # the pipe stays readable at its end: stop watching it
            self._on_death(worker)

    def _handle(self, worker: _Worker, event: BackendEvent) -> None:
        if isinstance(event, WorkerReady):
            worker.ready, worker.joins = True, event.joins
            worker.models.append(event.model)
            self._quick_deaths.pop(worker.index, None)
        elif isinstance(event, ModelUnavailable) and event.model in worker.models:
            worker.models.remove(event.model)
        elif isinstance(event, WorkDone | WorkFailed):
            worker.running.pop(event.job_id, None)
        elif isinstance(event, BatchFinished):
            for job_id in event.job_ids:  # cancelled jobs, whose batch made nothing of them
                worker.running.pop(job_id, None)
        self._emit(event)

    def _emit(self, event: BackendEvent) -> None:
        assert self._sink is not None
        self._sink(event)

    def _on_death(self, worker: _Worker) -> None:
        """Report the worker's jobs as lost and start a new worker in its place."""
        if self._workers.get(worker.index) is not worker or self._stopping:
            return
        self._detach(worker)
        worker.events.close()
        worker.tasks.close()
        worker.process.join(timeout=1.0)
        log.warning("worker %s died (exit code %s)", worker.name, worker.process.exitcode)
        del self._workers[worker.index]
        self._emit(WorkerLost(worker.name, worker.job_ids()))
        # A worker that keeps dying before it is ready waits longer each time: no tight crash loop.
        deaths = self._quick_deaths.get(worker.index, 0) + (0 if worker.ready else 1)
        self._quick_deaths[worker.index] = deaths
        delay = min(MAX_RESTART_DELAY_S, 2.0 ** deaths - 1.0)
        asyncio.get_running_loop().call_later(delay, self._respawn, worker.index)

    async def _stop_worker(self, worker: _Worker) -> None:
        try:
            worker.tasks.send(Stop())
        except OSError:
            pass  # it is dead already
        await asyncio.to_thread(worker.process.join, STOP_GRACE_S)
        if worker.process.is_alive():
            log.warning("worker %s did not stop within %g s; killing it", worker.name, STOP_GRACE_S)
            worker.process.kill()
            await asyncio.to_thread(worker.process.join)
        self._on_readable(worker)  # what it sent last, up to the pipe's end
        worker.events.close()
        worker.tasks.close()
        if worker.running:
            self._emit(WorkerLost(worker.name, worker.job_ids()))

    def _respawn(self, index: int) -> None:
        if not self._stopping and index not in self._workers:
            self._attach(self._launch(index))  # the forkserver runs already: starting is quick

    async def _watch(self) -> None:
        """Kill workers past the job timeout, and catch deaths the pipe did not report."""
        while True:
            await asyncio.sleep(MONITOR_INTERVAL_S)
            now = time.monotonic()
            for worker in list(self._workers.values()):
                stuck = [job_id for job_id, (_, sent) in worker.running.items() if now - sent > self.job_timeout_s]
                if stuck:
                    # Its other jobs are lost with it (`WorkerLost`): back to waiting, once.
                    for job_id in stuck:
                        del worker.running[job_id]
                        self._emit(WorkFailed(job_id, timeout_message(self.job_timeout_s)))
                    worker.process.kill()
                if not worker.process.is_alive():
                    self._on_death(worker)
