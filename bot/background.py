"""Tasks the bot starts: each one owned until it ends, its errors logged, periodic ones unkillable.

A task nobody references can be garbage-collected mid-flight, and an exception in it is lost;
`TaskSet` keeps every task it starts and logs how each one failed. `Periodic` runs a pass again
and again and survives any exception (a database outage, a bug in one pass): it logs one line
when passes start failing and one when they work again, and pauses longer while they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from generation.jobs.outage import first_line

log = logging.getLogger(__name__)

MAX_FAILURE_PAUSE_S = 300.0


def one_line(error: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message (no traceback, no SQL)."""
    cause = getattr(error, "orig", None) or error  # SQLAlchemy wraps the driver's error
    return f"{type(cause).__name__}: {first_line(cause)}" if str(cause).strip() else type(cause).__name__


class TaskSet:
    """Every task started through it stays referenced until it ends; an exception is logged once."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _OwnedLoop:
    """One task, started once, kept referenced, and cancelled (and awaited) by `stop`."""

    name = "background"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        raise NotImplementedError


class Periodic(_OwnedLoop):
    """`work()` every `interval_s` seconds, for ever; while it fails, the pause doubles up to 5 minutes."""

    def __init__(self, name: str, work: Callable[[], Awaitable[None]], interval_s: float,
                 *, describe: Callable[[BaseException], str] = one_line) -> None:
        super().__init__()
        self.name = name
        self.work = work
        self.interval_s = interval_s
        self.describe = describe
        self.failures = 0
        """Passes that failed in a row (0 while they work)."""

    async def _run(self) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(self.pause_s())

    async def run_once(self) -> None:
        """One pass; an exception is counted and logged (once per run of failures), never raised."""
        try:
            await self.work()
        except Exception as error:
            self.failures += 1
            if self.failures == 1:
                log.warning("%s failed; retrying with backoff until it works: %s", self.name, self.describe(error))
            return
        if self.failures:
            log.info("%s works again after %d failed pass(es)", self.name, self.failures)
        self.failures = 0

    def pause_s(self) -> float:
        if not self.failures:
            return self.interval_s
        return min(self.interval_s * 2 ** self.failures, max(MAX_FAILURE_PAUSE_S, self.interval_s))


class LagMonitor(_OwnedLoop):
    """The bot's own measure of its event loop: how late a task that sleeps 10 ms is woken.

    Any synchronous work on the loop (encoding audio, a blocking call) shows up as lateness. The
    worst since the last read is exported as `loopjam_event_loop_lag_max_seconds`.
    """

    name = "event-loop-lag"

    def __init__(self, tick_s: float = 0.01) -> None:
        super().__init__()
        self.tick_s = tick_s
        self.worst_s = 0.0

    def take_worst_s(self) -> float:
        """The longest stall since the previous call, and start over."""
        worst, self.worst_s = self.worst_s, 0.0
        return worst

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asleep = loop.time()
            await asyncio.sleep(self.tick_s)
            self.worst_s = max(self.worst_s, loop.time() - asleep - self.tick_s)
