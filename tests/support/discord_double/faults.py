"""Injected failures: 429 rate limits and arbitrary Discord errors on chosen routes, and held requests."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from .errors import json_response
from .recording import RecordedRequest


@dataclass
class Fault:
    """Answer the next `times` requests on `route` (matching `when`, if given) with an error."""

    route: str
    times: int
    respond: Callable[[], web.Response]
    when: Callable[[RecordedRequest], bool] | None = None

    def applies_to(self, request: RecordedRequest) -> bool:
        return self.times > 0 and request.route == self.route and (self.when is None or self.when(request))


@dataclass
class Hold:
    """Keep the next request on `route` (matching `when`, if given) unanswered until `release` is set.

    Makes an order of events certain that timing alone would only make likely, e.g. that an
    interaction arrives while the bot is still stopping.
    """

    route: str
    release: asyncio.Event
    when: Callable[[RecordedRequest], bool] | None = None
    taken: bool = False

    def applies_to(self, request: RecordedRequest) -> bool:
        return not self.taken and request.route == self.route and (self.when is None or self.when(request))


def rate_limited_response(retry_after: float, *, is_global: bool, bucket: str) -> web.Response:
    """A 429 as Discord sends it: JSON `retry_after` plus the `X-RateLimit-*` and `Retry-After` headers."""
    scope = "global" if is_global else "user"
    headers = {
        "Retry-After": str(math.ceil(retry_after)),
        "X-RateLimit-Limit": "5",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
        "X-RateLimit-Reset-After": f"{retry_after:.3f}",
        "X-RateLimit-Bucket": bucket,
        "X-RateLimit-Scope": scope,
    }
    if is_global:
        headers["X-RateLimit-Global"] = "true"
    body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": is_global, "code": 0}
    return json_response(body, 429, headers)


class FaultInjector:
    """The faults tests have armed; the REST layer asks it before handling each request."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._holds: list[Hold] = []

    def arm(self, fault: Fault) -> Fault:
        self._faults.append(fault)
        return fault

    def hold(self, hold: Hold) -> Hold:
        self._holds.append(hold)
        return hold

    async def wait_if_held(self, request: RecordedRequest) -> None:
        """Wait for the release of the first armed hold matching this request (using it up)."""
        for hold in self._holds:
            if hold.applies_to(request):
                hold.taken = True
                await hold.release.wait()
                return

    def take(self, request: RecordedRequest) -> web.Response | None:
        """The injected response for this request, if an armed fault matches (using up one of its times)."""
        for fault in self._faults:
            if fault.applies_to(request):
                fault.times -= 1
                return fault.respond()
        return None
