"""Outages of what the queue depends on, and the queue's way to the database through them.

PostgreSQL restarting, a lost connection or SQLite's "database is locked" (another writer held
the lock past the busy timeout) pass. The queue's background tasks keep what they could not
record and retry it (`retry`), waiting 0.5 s, then twice as long each time up to 10 s; a user's
request gets `QueueUnavailable` at once instead (`attempt`). One warning when an outage begins
and one line when it ends, not a traceback per try (`Outage`, for Redis as well).
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


class Outage:
    """Says once that `what` is unreachable and once that it is back, however many tries fail meanwhile."""

    def __init__(self, what: str, meanwhile: str, afterwards: str, logger: logging.Logger = log) -> None:
        self.what = what
        self.meanwhile = meanwhile
        """What goes on while it is away, for the warning."""
        self.afterwards = afterwards
        self.log = logger
        self.since: float | None = None
        self.ended_at: float | None = None

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    def began(self, reason: str, tried_at: float | None = None) -> None:
        """A try (begun at `tried_at`, `time.monotonic()`) failed because `what` is unreachable.

        Only the first failure of an outage is logged; a try begun before the last outage ended
        (a slow one, in another task) tells nothing new.
        """
        if tried_at is not None and self.ended_at is not None and tried_at < self.ended_at:
            return
        if self.since is None:
            self.since = time.monotonic()
            self.log.warning("%s unreachable (%s): %s", self.what, reason, self.meanwhile)

    def ended(self) -> None:
        """A try went through."""
        if self.since is not None:
            self.ended_at = time.monotonic()
            self.log.info("%s reachable again after %.0f s; %s", self.what, self.ended_at - self.since, self.afterwards)
            self.since = None

    def calm_for(self, seconds: float) -> bool:
        """Reachable, and for at least `seconds` since the last outage (or never away)."""
        return self.since is None and (self.ended_at is None or time.monotonic() - self.ended_at >= seconds)


class QueueDatabase:
    """Runs `work(session, *args)` as one unit of work in a thread, and notices outages."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._outage = Outage("database", "the queue keeps its results and retries until it is back", "the queue carries on")

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
            self._outage.began(redact(first_line(error), self.database.url))
            raise QueueUnavailable() from error
        self._outage.ended()
        return result

    def _unit_of_work(self, work: Callable[Concatenate[Session, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        with self.database.session() as session:
            return work(session, *args, **kwargs)
