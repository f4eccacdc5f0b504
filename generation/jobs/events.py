"""The queue's event bus: per-job subscriptions, listeners of every job's events, and batch timings.

A listener may be a coroutine function: each coroutine runs as a task the bus keeps until it
ends (an unreferenced task can be collected mid-flight), and its exception is logged. A listener
that raises is logged too; the others still get the event.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable

from .api import FINAL_EVENT_TYPES, JobEvent

log = logging.getLogger(__name__)

Listener = Callable[[JobEvent], object]
"""Called with every job event; may be a coroutine function."""
BatchListener = Callable[[int, float], object]
"""Called with every finished batch's job count and wall seconds; may be a coroutine function."""


class EventBus:
    def __init__(self) -> None:
        self._subscribers: dict[str, list[asyncio.Queue[JobEvent]]] = {}
        self._listeners: list[Listener] = []
        self._batch_listeners: list[BatchListener] = []
        self._tasks: set[asyncio.Future[object]] = set()

    def subscribe(self, job_id: str) -> asyncio.Queue[JobEvent]:
        """A queue of the job's events; the last one is JobDone, JobFailed or JobCancelled."""
        events: asyncio.Queue[JobEvent] = asyncio.Queue()
        self._subscribers.setdefault(job_id, []).append(events)
        return events

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def add_batch_listener(self, listener: BatchListener) -> None:
        self._batch_listeners.append(listener)

    @property
    def has_audience(self) -> bool:
        """Whether anyone listens to job events (else there is no point in announcing positions)."""
        return bool(self._subscribers or self._listeners)

    def publish(self, event: JobEvent) -> None:
        final = isinstance(event, FINAL_EVENT_TYPES)
        subscribers = self._subscribers.pop(event.job_id, []) if final else self._subscribers.get(event.job_id, [])
        for events in subscribers:
            events.put_nowait(event)
        for listener in self._listeners:
            self._call(listener, event)

    def publish_batch(self, jobs: int, seconds: float) -> None:
        for listener in self._batch_listeners:
            self._call(listener, jobs, seconds)

    def _call(self, listener: Callable[..., object], *args: object) -> None:
        try:
            result = listener(*args)
        except Exception:
            log.exception("event listener %r failed on %r", listener, args)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Future[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("event listener failed", exc_info=error)
