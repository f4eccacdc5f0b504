"""Interactions the double dispatched, their tokens, deadlines and the bot's answers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from .errors import UNKNOWN_INTERACTION, UNKNOWN_WEBHOOK, DiscordAPIError, unknown
from .model import JSON
from .recording import RecordedRequest

INITIAL_RESPONSE_DEADLINE_S = 3.0
TOKEN_LIFETIME_S = 15 * 60.0


@dataclass
class SentInteraction:
    """One INTERACTION_CREATE the double sent, and what the bot did with it.

    `dispatched_at` and the recorded requests' `at` are `time.perf_counter()` readings.
    """

    payload: JSON
    dispatched_at: float
    token_expires_at: float
    callback: RecordedRequest | None = None
    original_message_id: int | None = None
    _answered: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def id(self) -> int:
        return int(self.payload["id"])

    @property
    def token(self) -> str:
        return self.payload["token"]

    @property
    def type(self) -> int:
        return self.payload["type"]

    @property
    def channel_id(self) -> int:
        return int(self.payload["channel_id"])

    @property
    def ack_latency_s(self) -> float:
        """Seconds from dispatch to the arrival of the interaction callback."""
        if self.callback is None:
            raise AssertionError(f"interaction {self.id} has no callback yet")
        return self.callback.at - self.dispatched_at

    async def wait_callback(self, timeout: float = INITIAL_RESPONSE_DEADLINE_S) -> RecordedRequest:
        """The accepted `POST /interactions/{id}/{token}/callback`, waiting up to `timeout` s."""
        try:
            await asyncio.wait_for(self._answered.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"no callback for interaction {self.id} within {timeout} s") from None
        assert self.callback is not None
        return self.callback

    def expire_token(self) -> None:
        """Make the token stale now, as if 15 minutes had passed: follow-ups and edits get 404."""
        self.token_expires_at = 0.0

    def record_callback(self, request: RecordedRequest) -> None:
        self.callback = request
        self._answered.set()


class InteractionTracker:
    """Finds interactions by id and token for the callback and webhook routes."""

    def __init__(self, response_deadline_s: float | None) -> None:
        self.response_deadline_s = response_deadline_s
        self.sent: list[SentInteraction] = []
        self._by_token: dict[str, SentInteraction] = {}

    def add(self, payload: JSON) -> SentInteraction:
        now = time.perf_counter()
        sent = SentInteraction(payload, now, now + TOKEN_LIFETIME_S)
        self.sent.append(sent)
        self._by_token[sent.token] = sent
        return sent

    def for_callback(self, interaction_id: int, token: str) -> SentInteraction:
        """The interaction a callback is for: 404/10062 if unknown or past the deadline, 400/40060 if answered."""
        sent = self._by_token.get(token)
        if sent is None or sent.id != interaction_id:
            raise unknown("interaction", UNKNOWN_INTERACTION)
        late = self.response_deadline_s is not None and time.perf_counter() - sent.dispatched_at > self.response_deadline_s
        if late or time.perf_counter() > sent.token_expires_at:
            raise unknown("interaction", UNKNOWN_INTERACTION)
        if sent.callback is not None:
            raise DiscordAPIError(400, 40060, "Interaction has already been acknowledged.")
        return sent

    def for_webhook(self, application_id: int, token: str) -> SentInteraction:
        """The interaction behind `/webhooks/{application_id}/{token}`: 404/10015 if unknown, expired or unanswered."""
        sent = self._by_token.get(token)
        if sent is None or int(sent.payload["application_id"]) != application_id:
            raise unknown("Webhook", UNKNOWN_WEBHOOK)
        if time.perf_counter() > sent.token_expires_at or sent.callback is None:
            raise unknown("Webhook", UNKNOWN_WEBHOOK)
        return sent
