"""The loop engine on several cores: a batch's candidates are cut into loops at the same time.

A worker generates a whole batch in one model call, then every candidate goes through the loop
engine (tempo, stretch, seam, loudness), tens to hundreds of milliseconds of CPU each. Done one
after the other, that tail, not the model, bounds what a batch gains. `LoopProcesses` keeps a few
spawned processes for it. They import the loop engine, never torch, and leave by themselves when
their parent dies, even by kill -9, so a crashed worker leaves nothing running.
"""

from __future__ import annotations

import atexit
import functools
import logging
import multiprocessing
import os
import signal
import threading
import time
import typing as tp
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import threadpoolctl

log = logging.getLogger(__name__)

MAX_AUTO_PROCESSES = 8
PARENT_CHECK_S = 0.5
T = tp.TypeVar("T")


def auto_processes() -> int:
    """One process per core, up to `MAX_AUTO_PROCESSES`."""
    return max(1, min(MAX_AUTO_PROCESSES, os.cpu_count() or 1))


def leave_with_parent(parent: int) -> None:
    """End this process (at once, exit code 0) as soon as `parent` is gone, even by kill -9, or the
    process that started this one is (a forkserver ends with its owner). Watched on a daemon
    thread, so it works whatever the main thread is doing."""
    started_by = os.getppid()

    def watch() -> None:
        while os.getppid() == started_by and _alive(parent):
            time.sleep(PARENT_CHECK_S)
        log.info("process %d, which started this one, is gone; leaving", parent)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: the pid was reused, ours is gone
        return False
    return True


def warm_up() -> None:
    """Make one loop and find its key, so that the next pays no import or just-in-time compilation.

    The first call after an install compiles librosa's numba code into numba's on-disk cache (and
    takes hundreds of MB while it does). `./setup` calls it once, alone: processes that compile at
    the same moment can leave a cache behind whose index does not match its code, and loading that
    crashes every later process.
    """
    from ..config import LoopSettings
    from ..music import parse_key
    from ..shape import LoopShape
    from .engine import make_loop
    from .keyed import in_key

    rate, shape = 8000, LoopShape(bpm=120.0, bars=1)
    seconds = np.arange(rate * 3) / rate
    chord = sum(np.sin(2 * np.pi * hertz * seconds) for hertz in (220.0, 261.6, 329.6)) / 6  # A minor
    clicks = np.zeros(rate * 3)
    clicks[:: round(rate * shape.beat_seconds)] = 1.0
    in_key(make_loop((chord + clicks).astype(np.float32), rate, shape), parse_key("C major"), LoopSettings())


def _start_process(parent: int) -> None:
    """Each process's initialiser: leave with the parent, ignore Ctrl-C (it reaches the whole
    process group; the parent ends these), one BLAS thread (see `_cut_here`; the processes share
    the cores already), and `warm_up`."""
    leave_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Tearing numba's and numpy's modules down one by one takes seconds (the owner waits for it on
    # close), and these processes have nothing to flush: leave without it.
    atexit.register(os._exit, 0)
    threadpoolctl.threadpool_limits(1, user_api="blas")
    warm_up()


def _cut_here(call: tp.Callable[[], T]) -> T:
    # With one BLAS thread, as in the processes: how many threads split a sum changes its last
    # bits, and a loop must come out the same wherever it is cut (a replay remakes it elsewhere).
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        return call()


class LoopProcesses:
    """Runs picklable loop-engine calls (e.g. `functools.partial(make_loop, ...)`) in parallel.

    With one process everything runs here, in the caller. The processes start (and warm up, a few
    seconds) with the object; `wait_ready` waits for them.
    """

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._executor: ProcessPoolExecutor | None = None
        self._started: list[Future[int]] = []
        if processes > 1:
            self._start()

    def _start(self) -> None:
        self._executor = ProcessPoolExecutor(
            self.processes, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_process, initargs=(os.getpid(),),
        )
        # Each submit while no process is idle starts one; each of these ends once its process is warm.
        self._started = [self._executor.submit(int) for _ in range(self.processes)]

    def wait_ready(self) -> None:
        """Block until every process has started and warmed up; if they cannot, loops are cut here."""
        try:
            for started in self._started:
                started.result()
        except BrokenProcessPool:
            log.exception("the loop-engine processes could not start; loops are cut in the worker process")
            self.close()

    def run_all(self, calls: tp.Iterable[tp.Callable[[], T]]) -> list[T]:
        """Each call's result, in order. Calls are sent off as `calls` yields them, so producing
        the next (decoding its audio) overlaps with the work on the previous ones. An exception
        raised by a call is raised here. If a process dies, new ones are started and the calls it
        held are made here (`Cut`)."""
        cuts = [self.submit(call) for call in calls]
        return [cut.result() for cut in cuts]

    def submit(self, call: tp.Callable[[], T]) -> Cut[T]:
        """Send one call off and go on; its `Cut` says when it is done and gives its result."""
        executor = self._executor
        if executor is not None:
            try:
                return Cut(call, executor.submit(call), functools.partial(self._replace, executor))
            except BrokenProcessPool:
                self._replace(executor)
        return Cut(call, _made_here(call), lambda: None)

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """`broken` lost a process: start new ones, unless that was done already."""
        if self._executor is broken:
            log.warning("a loop-engine process died; starting new ones, and finishing its calls in the worker")
            broken.shutdown(wait=False, cancel_futures=True)
            self._start()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None




class Cut(tp.Generic[T]):
    """One call sent off by `LoopProcesses.submit`: its `future` (for `concurrent.futures.wait`) and its result.

    A call whose process died is made again here, in the caller, as `run_all` finishes a batch.
    """

    def __init__(self, call: tp.Callable[[], T], future: Future[T], on_broken: tp.Callable[[], None]) -> None:
        self.future = future
        self._call = call
        self._on_broken = on_broken

    def result(self) -> T:
        """The call's result, waiting for it; an exception the call raised is raised here."""
        try:
            return self.future.result()
        except BrokenProcessPool:
            self._on_broken()
            self.future = _made_here(self._call)
            return self.future.result()


def _made_here(call: tp.Callable[[], T]) -> Future[T]:
    """A done future holding what `call` gives (or raises) in this process."""
    future: Future[T] = Future()
    try:
        future.set_result(_cut_here(call))
    except Exception as error:
        future.set_exception(error)
    return future
