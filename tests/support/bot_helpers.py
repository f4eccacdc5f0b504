"""The real bot in the test process against the Discord API double, with a queue that never runs a job.

Import from test modules with `from bot_helpers import ...`.
"""

from __future__ import annotations

from collections.abc import Sequence

from bot.client import LoopJamBot
from generation.jobs.backend import EventSink, Opening, WorkItem


class NoWorkers:
    """A backend with no worker: jobs wait in the queue for ever, which is what these tests count."""

    stops_its_batches = False

    async def start(self, sink: EventSink) -> None: ...
    async def stop(self) -> None: ...
    def next_batch_key(self) -> str | None: return None
    def run(self, batch_key: str, batch: Sequence[WorkItem]) -> None: raise AssertionError("no worker")
    def cancel(self, job_id: str) -> None: ...
    def workers_alive(self) -> int: return 0
    def openings(self) -> list[Opening]: return []
    def running(self) -> int: return 0
    def models(self) -> list[str]: return []
    def resumed(self) -> dict[str, tuple[str, ...]]: return {}


class InProcessBot(LoopJamBot):
    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """No 5 s pause before re-identifying: the double has no identify limit."""
