"""What the bot sent: every REST request and every gateway frame, with waiting helpers."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

JSON = dict[str, Any]


@dataclass(frozen=True)
class RecordedFile:
    """One uploaded file of a multipart request (`files[n]` form field)."""

    field_name: str
    filename: str
    content_type: str | None
    data: bytes


@dataclass
class RecordedRequest:
    """One REST request as the double received it.

    `route` is the method and the path template without the API prefix, e.g.
    `"POST /interactions/{interaction_id}/{token}/callback"`; `json` is the JSON body or the
    multipart `payload_json`; `at` is a `time.perf_counter()` reading taken on arrival, comparable
    with `SentInteraction.dispatched_at`; `routed` is False for a path the double does not serve.
    """

    method: str
    path: str
    route: str
    path_params: dict[str, str]
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    files: list[RecordedFile]
    at: float
    received: dt.datetime
    routed: bool = True
    status: int | None = None
    response: Any = None

    def file(self, filename: str) -> RecordedFile:
        """The uploaded file with that name."""
        for recorded in self.files:
            if recorded.filename == filename:
                return recorded
        raise KeyError(f"{self.route} uploaded no {filename!r}; files: {[f.filename for f in self.files]}")


@dataclass(frozen=True)
class GatewayFrame:
    """One payload the client sent over the gateway (IDENTIFY, RESUME, heartbeats, presence...)."""

    op: int
    data: Any
    at: float
    path: str


Entry = TypeVar("Entry")


@dataclass
class Log(Generic[Entry]):
    """An append-only log that tests can wait on."""

    entries: list[Entry] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def __len__(self) -> int:
        return len(self.entries)

    async def append(self, entry: Entry) -> None:
        async with self._changed:
            self.entries.append(entry)
            self._changed.notify_all()

    async def touch(self) -> None:
        """Wake waiters after an entry was updated in place (e.g. a response status was set)."""
        async with self._changed:
            self._changed.notify_all()

    def matching(self, predicate: Callable[[Entry], bool], *, since: int = 0) -> list[Entry]:
        return [e for e in self.entries[since:] if predicate(e)]

    async def wait_for(self, predicate: Callable[[Entry], bool], *, timeout: float = 5.0, since: int = 0) -> Entry:
        """The first entry from index `since` on that satisfies `predicate`, waiting up to `timeout` s.

        Pass `since=len(log)` taken before an action to see only what the action caused.
        """

        def first() -> Entry | None:
            return next(iter(self.matching(predicate, since=since)), None)

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: first() is not None), timeout)
            except TimeoutError:
                seen = "\n  ".join(_describe(e) for e in self.entries[since:]) or "nothing"
                raise AssertionError(f"no matching entry within {timeout} s; seen since {since}:\n  {seen}") from None
        found = first()
        assert found is not None
        return found


def _describe(entry: object) -> str:
    if isinstance(entry, RecordedRequest):
        return f"{entry.route} -> {entry.status}"
    if isinstance(entry, GatewayFrame):
        return f"op {entry.op} on {entry.path}"
    return repr(entry)


def route_is(route: str, *, status: int | None = None) -> Callable[[RecordedRequest], bool]:
    """A predicate for `Log.wait_for`: this route (`"PATCH /channels/{channel_id}/messages/{message_id}"`)."""

    def matches(request: RecordedRequest) -> bool:
        return request.route == route and (status is None or request.status == status)

    return matches
