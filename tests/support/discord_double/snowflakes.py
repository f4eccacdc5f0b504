"""Discord snowflake ids: 42 bits of milliseconds since 2015, then worker, process and increment."""

from __future__ import annotations

import time

DISCORD_EPOCH_MS = 1_420_070_400_000


class SnowflakeGenerator:
    """Hands out strictly increasing snowflakes whose embedded timestamp is the current time.

    discord.py reads the time out of ids (`discord.utils.snowflake_time`), e.g. to pick the
    rate-limit bucket for deleting a message, so the ids carry real timestamps.
    """

    def __init__(self, worker_id: int = 1, process_id: int = 1) -> None:
        self._worker_id = worker_id & 0x1F
        self._process_id = process_id & 0x1F
        self._last = 0

    def next(self) -> int:
        """A fresh snowflake, greater than every one handed out before."""
        millis = int(time.time() * 1000) - DISCORD_EPOCH_MS
        candidate = (millis << 22) | (self._worker_id << 17) | (self._process_id << 12)
        self._last = max(candidate, self._last + 1)
        return self._last
