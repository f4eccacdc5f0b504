"""The embedded worker process: a `BatchRunner` served over two one-way pipes.

`worker_main` is the child's entry point (multiprocessing, spawn context). Tasks come in
(`RunBatch`, `CancelJobs`, `Stop`), `backend` events go out. A `RunBatch` that comes while a batch
decodes joins it (continuous batching; the pool sends only jobs that can). The process lives no longer than
the bot: `Stop` cuts a running batch short at its next decoding step (the pool reports that
batch as lost, so its jobs go back to waiting), and once the bot is gone, even by kill -9, the
process leaves by itself within a second, taking its loop-engine processes with it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

from .backend import BackendEvent, BatchFinished, WorkItem
from .runner import BatchRunner, WorkerConfig

log = logging.getLogger(__name__)

NICENESS = 10
"""The worker and its loop-engine processes (which inherit it) yield the CPU to the bot: on a
machine where they compute on the CPU, the bot still answers interactions within Discord's 3 s."""


@dataclass(frozen=True)
class RunBatch:
    items: tuple[WorkItem, ...]


@dataclass(frozen=True)
class CancelJobs:
    job_ids: tuple[str, ...]


@dataclass(frozen=True)
class Stop:
    pass


class _Tasks:
    """Reads the task pipe on a thread, so a cancel or a stop arrives while the main thread generates.

    It is also the running batch's cancelled jobs (a `Container`): those the bot cancelled, and
    all of them once the bot asked the worker to stop.
    """

    def __init__(self, connection: Connection) -> None:
        self.batches: queue.Queue[RunBatch | None] = queue.Queue()
        self.stopping = False
        self._cancelled: set[str] = set()
        self._connection = connection
        threading.Thread(target=self._read, name="tasks", daemon=True).start()

    def __contains__(self, job_id: object) -> bool:
        return self.stopping or job_id in self._cancelled

    def joining(self) -> list[WorkItem]:
        """The jobs sent since the last call, without waiting: they join the running batch."""
        joining: list[WorkItem] = []
        while True:
            try:
                task = self.batches.get_nowait()
            except queue.Empty:
                return joining
            if task is None:  # Stop: stays for `serve` to see
                self.batches.put(None)
                return joining
            joining += task.items

    def _read(self) -> None:
        while True:
            try:
                task = self._connection.recv()
            except (EOFError, OSError):
                task = Stop()
            if isinstance(task, CancelJobs):
                self._cancelled.update(task.job_ids)
            elif isinstance(task, RunBatch):
                self.batches.put(task)
            else:
                self.stopping = True
                self.batches.put(None)
                return


class _Events:
    """The event pipe. A write that fails means the bot is gone: the process leaves, quietly."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def send(self, event: BackendEvent) -> None:
        try:
            self._connection.send(event)
        except OSError:  # BrokenPipeError: nobody reads any more
            log.info("the bot is gone; leaving")
            os._exit(0)


def serve(runner: BatchRunner, tasks: _Tasks, events: _Events) -> None:
    """Announce the worker, then run batches until asked to stop."""
    events.send(runner.start(events.send))
    while (task := tasks.batches.get()) is not None:
        started = time.perf_counter()
        ran = runner.run(task.items, events.send, tasks, tasks.joining)
        if not tasks.stopping:  # a batch cut short by Stop did not finish: the pool reports it lost
            events.send(BatchFinished(runner.config.name, len(ran), time.perf_counter() - started, ran))


def worker_main(config: WorkerConfig, tasks: Connection, events: Connection, bot: int) -> None:
    """Entry point of the worker process; `bot` is the pid of the process that owns it."""
    from ..loop.parallel import leave_with_parent

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {config.name} %(levelname)s %(message)s")
    # Ctrl-C reaches the whole process group; the bot decides when its worker stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(NICENESS)
    leave_with_parent(bot)
    # The pool starts this process as a daemon, so that it never outlives the bot; multiprocessing
    # then forbids children, lest they be orphaned. The loop-engine processes leave by themselves
    # when this one dies (`loop.parallel`), so they are allowed here.
    multiprocessing.current_process().daemon = False
    runner = BatchRunner(config)
    try:
        serve(runner, _Tasks(tasks), _Events(events))
    finally:
        runner.close()
    # Tearing torch's modules down takes seconds, which the bot would wait for, and nothing is
    # left to flush but the standard streams.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
