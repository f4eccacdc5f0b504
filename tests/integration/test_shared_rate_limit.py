"""Distributed mode: bot processes share each user's rate limit through Redis, and count only what they accept.

Two services stand for two bot processes: one database (two engines on it), one Redis, never
started (nothing runs; admission is what is tested). Each test has a rate-limit key prefix of its
own. Without Redis these tests skip with the reason, except in CI (`CI` set), where they fail.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from queue_helpers import tiny_settings
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.engine import URL

from generation.config import Settings
from generation.jobs import Accepted, JobRequest, QueueService, RefusalKind, Refused
from generation.jobs.distributed import RedisRateLimiter
from generation.shape import LoopShape
from generation.storage import Base, Database, Generation

WINDOW_S = 60.0


@pytest.fixture
def databases(db_url: URL) -> Iterator[tuple[Database, Database]]:
    """One migrated database seen by two engines, as two bot processes see it; emptied after the test."""
    first, second = Database(db_url), Database(db_url)
    first.upgrade()
    yield first, second
    with first.session() as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(table.delete())
    first.dispose()
    second.dispose()


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    """A rate-limit key prefix of this test's own; its keys are deleted at the end."""
    name = f"loopjam-test-{uuid.uuid4().hex[:8]}:ratelimit"
    yield name
    redis = Redis.from_url(redis_url)
    async for key in redis.scan_iter(f"{name}:*"):
        await redis.delete(key)
    await redis.aclose()


def distributed_settings(tmp_path: Path, redis_url: str, **queue: object) -> Settings:
    return tiny_settings(tmp_path / "model", tmp_path, mode="redis", redis_url=redis_url,
                         rate_limit_window_s=WINDOW_S, max_queue=1000, **queue)


def bot_processes(settings: Settings, databases: tuple[Database, Database], prefix: str) -> list[QueueService]:
    """One service per database engine, each with a Redis client of its own on the shared keys."""
    return [
        QueueService(settings, database, rate_limiter=RedisRateLimiter(Redis.from_url(settings.queue.redis_url), prefix))
        for database in databases
    ]


def loop(user_id: int, **changes: object) -> JobRequest:
    fields = {"prompt": "dusty boom bap", "shape": LoopShape(120.0, 1), **changes}
    return JobRequest(user_id=user_id, **fields)  # type: ignore[arg-type]


async def window_count(redis_url: str, prefix: str, user_id: int) -> int:
    """The requests Redis counts in the user's window."""
    redis = Redis.from_url(redis_url)
    try:
        return await redis.zcard(f"{prefix}:{user_id}")
    finally:
        await redis.aclose()


def rows_of(database: Database, user_id: int) -> int:
    with database.session() as session:
        return session.scalar(select(func.count()).where(Generation.user_id == user_id)) or 0


@pytest.mark.redis
async def test_two_bot_processes_share_a_users_rate_limit_exactly(
    databases: tuple[Database, Database], prefix: str, redis_url: str, tmp_path: Path
) -> None:
    settings = distributed_settings(tmp_path, redis_url, rate_limit_jobs=3, max_queued_per_user=100)
    services = bot_processes(settings, databases, prefix)
    try:
        results = await asyncio.gather(*(services[i % 2].submit(loop(7)) for i in range(12)))
        assert sum(isinstance(result, Accepted) for result in results) == 3
        refused = [result for result in results if isinstance(result, Refused)]
        assert {result.reason for result in refused} == {RefusalKind.RATE_LIMITED}
        assert all(result.retry_after is not None and 0 < result.retry_after <= WINDOW_S for result in refused)
        assert refused[0].message.startswith("You've made 3 loops recently; you can ask for another in ")
        assert isinstance(await services[1].submit(loop(8)), Accepted)  # the limit is per user
    finally:
        for service in services:
            await service.stop()
    assert rows_of(databases[0], 7) == 3 and await window_count(redis_url, prefix, 7) == 3


@pytest.mark.redis
async def test_refused_requests_are_not_counted_and_the_other_checks_come_first(
    databases: tuple[Database, Database], prefix: str, redis_url: str, tmp_path: Path
) -> None:
    settings = distributed_settings(tmp_path, redis_url, rate_limit_jobs=2, max_queued_per_user=1)
    first, second = bot_processes(settings, databases, prefix)
    try:
        for _ in range(3):
            assert (await first.submit(loop(7, shape=LoopShape(1000.0, 1)))).reason is RefusalKind.INVALID  # type: ignore[union-attr]
        accepted = await first.submit(loop(7))
        assert isinstance(accepted, Accepted)
        for _ in range(3):  # one waiting already: refused before the rate limit is taken
            assert (await second.submit(loop(7))).reason is RefusalKind.TOO_MANY_QUEUED  # type: ignore[union-attr]
        assert await window_count(redis_url, prefix, 7) == 1

        assert (await second.cancel(accepted.job_id, 7, guild_id=None)).ok  # its place in the queue, not in the window, is free
        again = await second.submit(loop(7))
        assert isinstance(again, Accepted) and (await first.cancel(again.job_id, 7, guild_id=None)).ok
        limited = await first.submit(loop(7))
        assert isinstance(limited, Refused) and limited.reason is RefusalKind.RATE_LIMITED
        assert limited.retry_after is not None and 0 < limited.retry_after <= WINDOW_S
    finally:
        await first.stop()
        await second.stop()
    assert await window_count(redis_url, prefix, 7) == 2


def test_distributed_mode_takes_the_rate_limit_from_the_configured_redis(tmp_path: Path) -> None:
    """No Redis needed: the client connects on first use."""
    database = Database(URL.create("sqlite+pysqlite", database=str(tmp_path / "loopjam.db")))
    try:
        distributed = QueueService(distributed_settings(tmp_path, "redis://redis.internal:6390/3"), database)
        assert isinstance(distributed.rate_limiter, RedisRateLimiter)
        connection = distributed.rate_limiter.redis.connection_pool.connection_kwargs
        assert (connection["host"], connection["port"], connection["db"]) == ("redis.internal", 6390, 3)
        assert QueueService(tiny_settings(tmp_path / "model", tmp_path), database).rate_limiter is None  # embedded
    finally:
        database.dispose()
