"""The saq queue as the bot and the workers use it, through Redis outages.

While Redis is unreachable every loop that talks to it (`repeat`, a worker's wait for a batch)
backs off, 0.5 s doubling up to 10 s, and the process logs one warning for the outage and one
line when it ends (`Outage`), not a traceback per try. saq's sweep, which hands the batches of
dead workers back, holds off while a worker may not have been able to show it is alive: right
after an outage, and while a worker is taking a batch (`BatchQueue.sweep`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from saq.job import Job, Status
from saq.queue.redis import RedisQueue

from ..outage import LONGEST_RETRY_S, Outage, first_line, retry_delays
from .wire import RESULT_TTL_S

log = logging.getLogger(__name__)

REDIS_ERRORS = (RedisError, OSError)
AFTER_OUTAGE_S = 2 * LONGEST_RETRY_S
"""No sweep for this long after an outage: every live worker has touched its batch again by then."""
CONNECT_TIMEOUT_S = 5.0
HEALTH_CHECK_S = 2
INTERACTIVE_TIMEOUT_S = 0.8
ACTIVE_JOBS = """
local found = {}
if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('SETEX', KEYS[1], ARGV[1], 1)
    for i, id in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
        found[i] = {id, redis.call('GET', id)}
    end
end
return found
"""
"""saq's sweep script: unless another process swept within `lock` seconds, each active batch id with its record."""


def redis_client(url: str) -> Redis:
    """A Redis client that gives up connecting after `CONNECT_TIMEOUT_S` (a dropped network does not answer at all).

    A pooled connection idle for `HEALTH_CHECK_S` is pinged (and replaced if dead) before it is used:
    after an outage, connections the network dropped meanwhile would fail once more, and be
    reported as a second outage just after the first one ended.
    """
    return Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S, health_check_interval=HEALTH_CHECK_S)


def interactive_redis_client(url: str) -> Redis:
    """A Redis client for what a user waits on (the rate limit of a `/loop`): one quick retry and
    `INTERACTIVE_TIMEOUT_S` per try, so an outage is answered well within Discord's 3 s.
    redis-py's default retries back off for about 4 s."""
    return Redis.from_url(
        url, socket_connect_timeout=INTERACTIVE_TIMEOUT_S, socket_timeout=INTERACTIVE_TIMEOUT_S, retry=Retry(NoBackoff(), 1)
    )


async def append(redis: Redis, key: str, entry: str) -> None:
    """Add `entry` at the end of the list `key`, which expires `RESULT_TTL_S` after its last entry."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.rpush(key, entry)
        pipe.expire(key, RESULT_TTL_S)
        await pipe.execute()


async def repeat(
    name: str, step: Callable[[], Awaitable[Any]], every_s: float, outage: Outage, until: asyncio.Event, *,
    always_asks_redis: bool = True,
) -> None:
    """Run `step` every `every_s` until `until` is set.

    While Redis is unreachable the tries back off and `outage` tells it once; any other error is
    logged with its traceback, and the loop goes on. A step that has nothing to ask Redis at times
    (not `always_asks_redis`) cannot tell that an outage ended. The loop ends on `until` and not
    only when cancelled: redis-py can lose a cancellation that lands during a command (redis/redis-py#2028).
    """
    delays = retry_delays()
    while not until.is_set():
        pause = every_s
        tried_at = time.monotonic()
        try:
            await step()
        except REDIS_ERRORS as error:
            outage.began(first_line(error), tried_at)
            pause = max(every_s, next(delays))
        except Exception:
            outage.log.exception("%s failed", name)
        else:
            if always_asks_redis:
                outage.ended()
            delays = retry_delays()
        with suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), pause)


class BatchQueue(RedisQueue):
    """saq's Redis queue, with LoopJam's outage handling and a sweep that hands back only lost batches."""

    def __init__(self, redis: Redis, *, name: str, outage: Outage) -> None:
        super().__init__(redis, name=name)
        self.outage = outage
        self._dequeue_delays = retry_delays()
        self._taking: set[bytes] = set()
        self._active_jobs = redis.register_script(ACTIVE_JOBS)

    async def dequeue(self, timeout: float = 0.0, poll_interval: float = 0.0) -> Job | None:
        """saq's dequeue; during an outage, None after a pause that grows (saq would try again at once, silently)."""
        tried_at = time.monotonic()
        try:
            job = await super().dequeue(timeout, poll_interval)
        except REDIS_ERRORS as error:
            self.outage.began(first_line(error), tried_at)
            await asyncio.sleep(next(self._dequeue_delays))
            return None
        self.outage.ended()
        self._dequeue_delays = retry_delays()
        return job

    async def _finish(self, job: Job, status: Status, *, result: Any = None, error: str | None = None) -> None:
        """saq's last write of a batch, tried until Redis takes it: a finished batch is not lost to an outage."""
        delays = retry_delays()
        while True:
            tried_at = time.monotonic()
            try:
                return await super()._finish(job, status, result=result, error=error)
            except REDIS_ERRORS as failure:
                self.outage.began(first_line(failure), tried_at)
                await asyncio.sleep(next(delays))

    async def sweep(self, lock: int = 60, abort: float = 5.0) -> list[str]:
        """saq's sweep (hand back the batches of dead workers), unless a batch may look lost only
        because its worker could not say otherwise.

        Right after an outage, workers have not touched their batches for a while. And saq moves a
        batch to the active list a moment before its worker marks it active: saq's own sweep would
        take such a batch for abandoned, abort it and run it again. A batch seen not yet active is
        left for the next sweep (of this process); still not active then, it is swept.
        """
        snapshot = await self._active_jobs(keys=[self._sweep, self._active], args=[lock], client=self.redis)
        if not snapshot or not self.outage.calm_for(AFTER_OUTAGE_S):  # none active, or another process sweeps
            return []
        swept, taking = [], set()
        for job_id, data in snapshot:
            job = self.deserialize(data)
            if job is None:  # its record expired: forget it
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.lrem(self._active, 0, job_id)
                    pipe.zrem(self._incomplete, job_id)
                    await pipe.execute()
            elif job.status is not Status.ACTIVE and job_id not in self._taking:
                taking.add(job_id)
                continue
            elif job.status is Status.ACTIVE and not job.stuck:
                continue
            else:
                log.info("sweeping %s", job.info())
                await self.abort(job, error=self.swept_error_message)
                with suppress(asyncio.TimeoutError):
                    await job.refresh(abort)
                if job.retryable:
                    await self.retry(job, error=self.swept_error_message)
                else:
                    await self.finish(job, Status.ABORTED, error=self.swept_error_message)
            swept.append(job_id.decode())
        self._taking = taking
        return swept
