"""Discord's error responses: `{"code": ..., "message": ..., "errors": ...}` with the status it uses."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

# discord.py treats a 429 without a Via header as a Cloudflare ban and raises instead of retrying;
# real Discord responses all carry one.
VIA_HEADER = {"Via": "1.1 google"}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON with `Content-Type: application/json` and no charset parameter: discord.py compares the
    header for equality and would otherwise hand the body to its caller as a string."""
    return web.Response(
        body=json.dumps(body).encode(), status=status, content_type="application/json", headers={**VIA_HEADER, **(headers or {})}
    )


class DiscordAPIError(Exception):
    """Raised by the double's handlers; the REST layer turns it into Discord's error response."""

    def __init__(self, status: int, code: int, message: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def response(self) -> web.Response:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.errors is not None:
            body["errors"] = self.errors
        return json_response(body, self.status)


def invalid_form_body(field_path: str, code: str, message: str) -> DiscordAPIError:
    """400/50035 with the nested `errors` object Discord uses, e.g. `invalid_form_body("content", ...)`."""
    errors: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for part in reversed(field_path.split(".")):
        errors = {part: errors}
    return DiscordAPIError(400, 50035, "Invalid Form Body", errors)


def unknown(kind: str, code: int) -> DiscordAPIError:
    """404 "Unknown Message" (10008), "Unknown Channel" (10003), "Unknown Webhook" (10015)..."""
    return DiscordAPIError(404, code, f"Unknown {kind}")


UNKNOWN_CHANNEL = 10003
UNKNOWN_GUILD = 10004
UNKNOWN_MEMBER = 10007
UNKNOWN_MESSAGE = 10008
UNKNOWN_WEBHOOK = 10015
UNKNOWN_USER = 10013
UNKNOWN_INTERACTION = 10062
UNKNOWN_APPLICATION_COMMAND = 10063
