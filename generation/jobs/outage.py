"""The queue's way to the database: units of work in a thread, with database outages waited out.

PostgreSQL restarting, a lost connection or SQLite's "database is locked" (another writer held
the lock past the busy timeout) pass. The queue's background tasks keep what they could not
record and retry it (`retry`), waiting 0.5 s, then twice as long each time up to 10 s; a user's
request gets `QueueUnavailable` at once instead (`attempt`). One warning when an outage begins
and one line when it ends, not a traceback per try.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Concatenate, ParamSpec, TypeVar

from ..storage import Database, Session, is_unavailable, redact
from .api import QueueUnavailable

log = logging.getLogger(__name__)

FIRST_RETRY_S = 0.5
LONGEST_RETRY_S = 10.0

P = ParamSpec("P")
R = TypeVar("R")


def retry_delays() -> Iterator[float]:
    """0.5, 1, 2, 4, 8, 10, 10, ... seconds."""
    delay = FIRST_RETRY_S
    while True:
        yield delay
        delay = min(delay * 2, LONGEST_RETRY_S)


def first_line(error: BaseException) -> str:
    """The driver's own message (SQLAlchemy's adds the SQL and a link), first line only."""
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class QueueDatabase:
    """Runs `work(session, *args)` as one unit of work in a thread, and notices outages."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._outage_since: float | None = None

    async def retry(self, work: Callable[Concatenate[Session, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the unit of work until the database takes it; errors other than an outage are raised."""
        delays = retry_delays()
        while True:
            try:
                return await self.attempt(work, *args, **kwargs)
            except QueueUnavailable:
                await asyncio.sleep(next(delays))

    async def attempt(self, work: Callable[Concatenate[Session, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the unit of work once; `QueueUnavailable` (nothing changed) when the database cannot take it."""
        try:
            result = await asyncio.to_thread(partial(self._unit_of_work, work, *args, **kwargs))
        except Exception as error:
            if not is_unavailable(error):
                raise
            self._began(error)
            raise QueueUnavailable() from error
        self._ended()
        return result

    def _unit_of_work(self, work: Callable[Concatenate[Session, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        with self.database.session() as session:
            return work(session, *args, **kwargs)

    def _began(self, error: BaseException) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning("database unreachable (%s): the queue keeps its results and retries until it is back",
                        redact(first_line(error), self.database.url))

    def _ended(self) -> None:
        if self._outage_since is not None:
            log.info("database reachable again after %.0f s; the queue carries on", time.monotonic() - self._outage_since)
            self._outage_since = None
