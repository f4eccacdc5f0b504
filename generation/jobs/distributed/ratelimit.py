"""A per-user sliding-window rate limit kept in Redis, exact when several bot processes share it.

One Lua script does the whole check-and-take (Redis runs a script alone), and it reads the
clock of the Redis server, so the bot machines' clocks need not agree. Each user's window is a
sorted set of the times of the requests it let through; it expires with the window.

`SharedRateCounter` is the limiter as admission's `RateCounter` (`jobs.admission`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from redis.asyncio import Redis

from ..api import QUEUE_UNREACHABLE, QueueUnavailable
from ..outage import Outage, first_line
from .queue import REDIS_ERRORS

log = logging.getLogger(__name__)

_TAKE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local window_ms, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - window_ms)
local count = redis.call('ZCARD', KEYS[1])
if count >= limit then
    -- Allowed again when the request that keeps the window full leaves it.
    local blocking = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
    return tonumber(blocking[2]) + window_ms - now_ms
end
redis.call('ZADD', KEYS[1], now_ms, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window_ms)
return -1
"""


class RedisRateLimiter:
    """`limit` requests per `window_s` and key (a user), shared by every process using `prefix`."""

    def __init__(self, redis: Redis, prefix: str = "loopjam:ratelimit") -> None:
        self.redis = redis
        self.prefix = prefix
        self._take = redis.register_script(_TAKE)
        self.outage = Outage("Redis", "new requests are refused until it is back", "requests are taken again", log)

    async def take(self, key: str, limit: int, window_s: float) -> float | None:
        """Count one request and return None, or return the seconds until one would be allowed.

        Call it last, once every other check has passed: a refused request is not counted.
        Raises `QueueUnavailable` (a sentence for the user) while Redis is unreachable.
        """
        tried_at = time.monotonic()
        try:
            wait_ms = await self._take(
                keys=[f"{self.prefix}:{key}"], args=[max(1, round(window_s * 1000)), limit, uuid.uuid4().hex]
            )
        except REDIS_ERRORS as error:
            self.outage.began(first_line(error), tried_at)
            raise QueueUnavailable(QUEUE_UNREACHABLE) from error
        self.outage.ended()
        return None if wait_ms < 0 else wait_ms / 1000


class SharedRateCounter:
    """`RedisRateLimiter` as admission's `RateCounter`, for distributed mode.

    Admission decides a group in a worker thread, inside its unit of work; each `take` runs on
    the event loop that owns the Redis client, and the thread waits for its answer.
    """

    def __init__(self, limiter: RedisRateLimiter, loop: asyncio.AbstractEventLoop) -> None:
        self.limiter = limiter
        self.loop = loop

    def take(self, user_id: int, limit: int, window_s: float) -> float | None:
        return asyncio.run_coroutine_threadsafe(self.limiter.take(str(user_id), limit, window_s), self.loop).result()
