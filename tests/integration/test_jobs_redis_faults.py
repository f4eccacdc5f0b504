"""Distributed mode when Redis misbehaves: results written by anything that can write to it, and outages.

No `loopjam worker` runs here: a `FakeWorker` in the test speaks saq on the test Redis as one
does, and finishes each batch with the result the test crafts. The bot side is the real queue
service with its `SaqBackend`; outages are a `TcpProxy` between it and Redis, cut and mended.
Without Redis these tests skip with the reason, except in CI (`CI` set), where they fail.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from queue_helpers import final_event, migrated_database, tiny_settings
from redis.asyncio import Redis
from saq.job import Job, Status
from saq.queue.redis import RedisQueue
from saq.utils import now
from tcp_proxy import TcpProxy

from generation.jobs import Accepted, JobDone, JobFailed, JobRequest, QueueService, QueueUnavailable
from generation.jobs.api import QUEUE_UNREACHABLE
from generation.jobs.backend import MadeLoop, WorkDone, WorkItem
from generation.jobs.distributed import RedisRateLimiter, SaqBackend, Timing
from generation.jobs.distributed.backend import ROGUE_RESULT
from generation.jobs.distributed.queue import BatchQueue, interactive_redis_client, redis_client
from generation.jobs.distributed.wire import (
    COLLECTED_TTL_S,
    RUN_BATCH,
    decode_items,
    encode_event,
    finished_key,
    joins_key,
    pack_files,
)
from generation.jobs.distributed.worker import _DrainingWorker
from generation.jobs.outage import Outage
from generation.shape import LoopShape
from generation.storage import GenerationStatus, get_generation

pytestmark = pytest.mark.redis

FAST = Timing(heartbeat_s=3, sweep_s=1, poll_s=0.2, workers_poll_s=0.5)
OUTAGE_S = 6.0
"""Long enough for redis-py to give up its own retries (about 4 s) in every loop."""
BACKEND_LOG = "generation.jobs.distributed.backend"


class FakeWorker:
    """Takes batches from the saq queue as `loopjam worker` does, and finishes them as the test says."""

    def __init__(self, redis_url: str, queue_name: str, name: str = "fake-gpu") -> None:
        self.name = name
        self.queue = RedisQueue(Redis.from_url(redis_url), name=queue_name)

    async def register(self) -> None:
        await self.queue.worker_info(self.name, queue_key=self.queue.name, metadata={"batch_size": 1, "model": "tiny"}, ttl=600)

    async def take(self, within_s: float = 30.0) -> tuple[Job, tuple[WorkItem, ...]]:
        deadline = asyncio.get_running_loop().time() + within_s
        while (job := await self.queue.dequeue(timeout=1)) is None:
            assert asyncio.get_running_loop().time() < deadline, "no batch came"
        job.attempts += 1
        job.worker_id, job.started = self.name, now()
        await job.update(status=Status.ACTIVE)
        assert job.kwargs is not None
        return job, decode_items(job.kwargs["items"])

    async def finish(self, job: Job, result: dict[str, Any]) -> None:
        await job.finish(Status.COMPLETE, result=result)

    async def close(self) -> None:
        await self.queue.disconnect()


def result(events: list[Any], files: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"worker": "fake-gpu", "seconds": 0.1, "events": events, "files": files or {}}


def made(item: WorkItem, audio_path: str, loop_id: str | None = None, job_id: str | None = None) -> dict[str, Any]:
    loop = MadeLoop(loop_id or item.job_id, audio_path, {"verdict": "good"}, item.seed)
    return encode_event(WorkDone(job_id or item.job_id, (loop,)))


def raw(data: bytes) -> dict[str, str]:
    return {"as": "raw", "data": base64.b64encode(data).decode()}


def real_loops(scratch: Path, item: WorkItem) -> dict[str, Any]:
    """What a worker sends for a job it made: a short WAV and its waveform per loop."""
    import soundfile as sf

    (scratch / "loops").mkdir(parents=True, exist_ok=True)
    for loop_id in item.loop_ids:
        sf.write(scratch / "loops" / f"{loop_id}.wav", np.zeros(3200, dtype=np.float32), 32000)
        (scratch / "loops" / f"{loop_id}.png").write_bytes(b"\x89PNG")
    return result([made(item, f"loops/{item.job_id}.wav")], pack_files(scratch))


def loop(user_id: int) -> JobRequest:
    return JobRequest(user_id=user_id, prompt="dusty boom bap", shape=LoopShape(120.0, 1))


async def submit(service: QueueService, request: JobRequest) -> str:
    accepted = await service.submit(request)
    assert isinstance(accepted, Accepted), accepted
    return accepted.job_id


@pytest.fixture
async def queue_name(redis_url: str) -> AsyncIterator[str]:
    """A saq queue of the test's own; its keys are deleted at the end."""
    name = f"loopjam-test-{uuid.uuid4().hex[:8]}"
    yield name
    redis = Redis.from_url(redis_url)
    for pattern in (f"saq:{name}:*", f"saq:job:{name}:*", f"loopjam:{name}:*"):
        async for key in redis.scan_iter(pattern):
            await redis.delete(key)
    await redis.aclose()


@pytest.fixture
async def fake_worker(redis_url: str, queue_name: str) -> AsyncIterator[FakeWorker]:
    worker = FakeWorker(redis_url, queue_name)
    await worker.register()
    yield worker
    await worker.close()


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    """A line to the test Redis that the test can cut: (the proxy, the Redis URL through it)."""
    proxy, url = await TcpProxy.to_url(redis_url)
    yield proxy, url
    await proxy.close()


def service_on(tmp_path: Path, queue_name: str, redis_url: str, rate_limiter: RedisRateLimiter | None = None) -> QueueService:
    settings = tiny_settings(tmp_path / "model", tmp_path / "data", batch_size=1, batch_wait_ms=0)
    backend = SaqBackend(settings, queue_name=queue_name, redis_url=redis_url, timing=FAST)
    return QueueService(settings, migrated_database(tmp_path / "db"), backend, rate_limiter)


def files_under(root: Path) -> list[str]:
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())


async def expiries(redis_url: str, queue_name: str) -> dict[str, int]:
    """Each batch record's time to live in seconds (-1: none)."""
    redis = Redis.from_url(redis_url)
    try:
        return {key.decode(): await redis.ttl(key) async for key in redis.scan_iter(f"saq:job:{queue_name}:*")}
    finally:
        await redis.aclose()


# --- results ----------------------------------------------------------------------------------


async def test_a_rogue_result_is_refused_whole_and_its_job_fails(
    tmp_path: Path, queue_name: str, redis_url: str, fake_worker: FakeWorker, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever can write to Redis can finish a batch: names outside the data directory, a file that is no
    audio, another job's loop. Each result is refused whole with one line; its job fails; nothing is read."""
    caplog.set_level(logging.INFO)
    data_dir = tmp_path / "data"
    secret = tmp_path / "secret.wav"
    secret.write_bytes(b"RIFF a file of the bot's machine")
    crafted: list[tuple[str, Callable[[WorkItem, str], dict[str, Any]]]] = [
        ("an absolute path", lambda item, _: result([made(item, str(secret))])),
        ("a path out of the data directory", lambda item, _: result(
            [made(item, "../secret.wav")], {"../secret.wav": raw(b"RIFF")})),
        ("a file that is no audio", lambda item, _: result(
            [made(item, f"loops/{item.job_id}.sh")], {f"loops/{item.job_id}.sh": raw(b"#!/bin/sh\n")})),
        ("another job's loop", lambda item, other: result([made(item, f"loops/{other}.wav", loop_id=other, job_id=other)])),
        ("no result at all", lambda item, _: {"events": "nope"}),
    ]
    service = service_on(tmp_path, queue_name, redis_url)
    await service.start()
    try:
        rogue_jobs = [await submit(service, loop(user)) for user in range(1, len(crafted) + 1)]
        honest = await submit(service, loop(99))
        finals = {job_id: asyncio.ensure_future(final_event(service, job_id)) for job_id in [*rogue_jobs, honest]}
        for _ in finals:  # one batch at a time: there is one worker
            job, (item,) = await fake_worker.take()
            if item.job_id == honest:
                await fake_worker.finish(job, real_loops(tmp_path / "scratch", item))
            else:
                await fake_worker.finish(job, crafted[rogue_jobs.index(item.job_id)][1](item, honest))
        outcomes = {job_id: await final for job_id, final in finals.items()}
    finally:
        await service.stop()

    assert all(outcomes[job_id] == JobFailed(job_id, ROGUE_RESULT) for job_id in rogue_jobs), outcomes
    assert isinstance(outcomes[honest], JobDone) and outcomes[honest].files == [data_dir / "loops" / f"{honest}.wav"]
    with service.database.session() as session:
        assert all(get_generation(session, job_id).status is GenerationStatus.FAILED for job_id in rogue_jobs)
    assert files_under(data_dir) == [f"loops/{honest}.png", f"loops/{honest}.wav"], "nothing else written"
    assert files_under(tmp_path) == sorted([*(f"data/{name}" for name in files_under(data_dir)), "secret.wav",
                                            *(f"db/{name}" for name in files_under(tmp_path / "db"))]), "nothing outside"
    refused = [record for record in caplog.records if "refused the result" in record.getMessage()]
    assert len(refused) == len(crafted) and all(record.levelno == logging.WARNING for record in refused)
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert all(0 < ttl <= COLLECTED_TTL_S for ttl in (await expiries(redis_url, queue_name)).values())


async def test_joining_jobs_come_back_early_are_handed_back_when_not_taken_and_replay_once_after_a_restart(
    tmp_path: Path, queue_name: str, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Continuous batching's protocol against a worker the test plays: jobs join a running batch
    through its joins list, a finished job's loop comes back ahead of its batch, a joining job the
    batch never took waits again with its start refunded, and a restart that replays the collected
    batch refuses nothing and fails nothing."""
    caplog.set_level(logging.INFO)
    worker = FakeWorker(redis_url, queue_name)
    await worker.queue.worker_info(worker.name, queue_key=worker.queue.name, ttl=600,
                                   metadata={"batch_size": 3, "model": "tiny", "joins": True})
    settings = tiny_settings(tmp_path / "model", tmp_path / "data", batch_size=3, batch_wait_ms=0)

    def service() -> QueueService:
        return QueueService(settings, migrated_database(tmp_path / "db"),
                            SaqBackend(settings, queue_name=queue_name, redis_url=redis_url, timing=FAST))

    first = service()
    await first.start()
    try:
        host = await submit(first, loop(1))
        finals = {host: asyncio.ensure_future(final_event(first, host))}
        job, (host_item,) = await worker.take()
        joined, missed = await submit(first, loop(2)), await submit(first, loop(3))
        finals |= {job_id: asyncio.ensure_future(final_event(first, job_id)) for job_id in (joined, missed)}
        sent: list[WorkItem] = []
        while len(sent) < 2:
            entries = await worker.queue.redis.lrange(joins_key(queue_name, job.key), 0, -1)
            sent = [item for entry in entries for item in decode_items(json.loads(entry)["items"])]
            await asyncio.sleep(0.05)
        assert [item.job_id for item in sent] == [joined, missed]
        with first.database.session() as session:
            assert {get_generation(session, job_id).worker for job_id in (host, joined, missed)} == {job.key}

        # The host job is done: its loop travels ahead, and is delivered while the batch still runs.
        ahead = real_loops(tmp_path / "scratch", host_item)
        await worker.queue.redis.rpush(finished_key(queue_name, job.key), json.dumps(ahead))
        assert isinstance(await finals[host], JobDone)
        assert not finals[joined].done()

        # The batch ends having taken one joining job: the other waits again, its start refunded.
        last = {**real_loops(tmp_path / "scratch", sent[0]), "joined": [joined]}
        await worker.finish(job, last)
        assert isinstance(await finals[joined], JobDone)
        again, (item,) = await worker.take()
        assert item.job_id == missed
        with first.database.session() as session:
            assert get_generation(session, missed).attempts == 1  # refunded, then started once
        await worker.finish(again, real_loops(tmp_path / "scratch", item))
        assert isinstance(await finals[missed], JobDone)
    finally:
        await first.stop()

    # A restart replays the collected batches (their events, the early one's included): nothing twice.
    second = service()
    heard: list[Any] = []
    second.add_listener(heard.append)
    await second.start()
    try:
        await asyncio.sleep(1.0)
    finally:
        await second.stop()
        await worker.close()
    assert not [event for event in heard if isinstance(event, JobFailed)]
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING], "nothing refused, nothing lost"
    with second.database.session() as session:
        rows = [get_generation(session, job_id) for job_id in (host, joined, missed)]
    assert [(row.status, row.attempts) for row in rows] == [(GenerationStatus.DONE, 1)] * 3
    assert files_under(tmp_path / "data" / "loops") == sorted(
        f"{job_id}{suffix}" for job_id in (host, joined, missed) for suffix in (".png", ".wav"))


# --- outages ----------------------------------------------------------------------------------


async def back(outage: Outage) -> None:
    while outage.ongoing:
        await asyncio.sleep(0.1)


def outage_lines(caplog: pytest.LogCaptureFixture, logger: str) -> tuple[int, int]:
    """(warnings that Redis is unreachable, lines that it is back) logged by `logger`."""
    mine = [record.getMessage() for record in caplog.records if record.name == logger]
    return sum("Redis unreachable" in line for line in mine), sum("Redis reachable again" in line for line in mine)


async def test_a_redis_outage_is_one_line_each_way_and_a_friendly_refusal(
    tmp_path: Path, queue_name: str, redis_url: str, fake_worker: FakeWorker, proxy: tuple[TcpProxy, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis away for a while, with a batch in flight: the bot logs one warning and one line when it is
    back, a new request is refused with a sentence and changes nothing, the batch is delivered once."""
    caplog.set_level(logging.INFO)
    line, through_proxy = proxy
    limiter = RedisRateLimiter(interactive_redis_client(through_proxy), prefix=f"loopjam:{queue_name}:ratelimit")
    service = service_on(tmp_path, queue_name, through_proxy, limiter)
    await service.start()
    try:
        job_id = await submit(service, loop(1))
        final = asyncio.ensure_future(final_event(service, job_id))
        job, (item,) = await fake_worker.take()
        line.down()
        asked = time.monotonic()
        with pytest.raises(QueueUnavailable) as refused:
            await service.submit(loop(2))
        refused_within_s = time.monotonic() - asked
        await fake_worker.finish(job, real_loops(tmp_path / "scratch", item))  # the worker's own line holds
        await asyncio.sleep(OUTAGE_S)
        line.up()
        assert isinstance(await asyncio.wait_for(final, 30), JobDone)
        with service.database.session() as session:
            assert get_generation(session, job_id).status is GenerationStatus.DONE
        await asyncio.wait_for(back(service.backend.outage), 15)
        assert isinstance(await service.submit(loop(2)), Accepted)
    finally:
        await service.stop()

    assert str(refused.value) == QUEUE_UNREACHABLE
    assert refused_within_s < 3, "the user is answered within Discord's 3 s"
    assert line.connections_refused > 0, "the bot did try meanwhile"
    assert outage_lines(caplog, BACKEND_LOG) == (1, 1)
    assert outage_lines(caplog, "generation.jobs.distributed.ratelimit") == (1, 1)
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert all(0 < ttl <= COLLECTED_TTL_S for ttl in (await expiries(redis_url, queue_name)).values())


async def test_an_idle_worker_logs_a_redis_outage_once_and_carries_on(
    queue_name: str, proxy: tuple[TcpProxy, str], caplog: pytest.LogCaptureFixture
) -> None:
    """saq's worker logged a traceback for every failed poll of its upkeep loops; `loopjam worker` one line each way."""
    caplog.set_level(logging.INFO)
    line, through_proxy = proxy
    outage = Outage("Redis", "the worker waits for it", "the worker carries on", logging.getLogger("test.worker"))
    queue = BatchQueue(redis_client(through_proxy), name=queue_name, outage=outage)
    worker = _DrainingWorker(queue, functions=[(RUN_BATCH, lambda ctx: None)], id="idle-gpu", concurrency=1,
                             timers={"worker_info": 1, "sweep": 1}, grace_s=0)
    await queue.connect()
    serving = asyncio.ensure_future(worker.start())
    try:
        await asyncio.sleep(1.5)
        line.down()
        await asyncio.sleep(OUTAGE_S)
        line.up()
        await asyncio.wait_for(back(outage), 15)
        async def listed() -> None:
            while "idle-gpu" not in (await queue.info())["workers"]:
                await asyncio.sleep(0.2)

        await asyncio.wait_for(listed(), 15)  # the worker is back
    finally:
        worker.event.set()
        await asyncio.wait_for(serving, 10)
        await queue.disconnect()

    # One line each way; a pooled connection the outage closed may fail once more just after Redis is back,
    # a second outage of 0 s (seen once in six full runs). Known wart, left for a retry on stale connections.
    downs, ups = outage_lines(caplog, "test.worker")
    blips = [record for record in caplog.records if record.name == "test.worker" and "reachable again after 0 s" in record.getMessage()]
    assert downs == ups and (downs == 1 or (downs == 2 and len(blips) >= 1)), (downs, ups)
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR], "no traceback"


async def test_a_batch_given_up_and_then_finished_by_its_first_worker_is_noticed_and_dropped(
    tmp_path: Path, queue_name: str, redis_url: str, fake_worker: FakeWorker, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker cut off from Redis stops touching its batch: the batch is declared lost and its job runs
    again. Should the first worker finish it after all, the bot says so once and delivers only the retry."""
    caplog.set_level(logging.INFO)
    service = service_on(tmp_path, queue_name, redis_url)
    await service.start()
    try:
        job_id = await submit(service, loop(1))
        final = asyncio.ensure_future(final_event(service, job_id))
        first, (item,) = await fake_worker.take()  # and never touched again: swept after its 3 s heartbeat
        retry, (again,) = await fake_worker.take()
        assert again.job_id == job_id and retry.key != first.key
        await fake_worker.finish(first, real_loops(tmp_path / "first", item))
        await asyncio.sleep(1.0)
        await fake_worker.finish(retry, real_loops(tmp_path / "retry", again))
        assert isinstance(await asyncio.wait_for(final, 30), JobDone)
        await asyncio.sleep(1.0)
    finally:
        await service.stop()

    with service.database.session() as session:
        row = get_generation(session, job_id)
        assert row.status is GenerationStatus.DONE and row.attempts == 2
    dropped = [record for record in caplog.records if "after it was given up" in record.getMessage()]
    assert len(dropped) == 1 and first.key in dropped[0].getMessage()
    ttls = await expiries(redis_url, queue_name)
    assert all(0 < ttl <= COLLECTED_TTL_S for ttl in ttls.values()), ttls
    late = await fake_worker.queue.job(first.key)
    assert late is not None and late.result is None, "its audio does not wait in Redis"


async def test_a_batch_a_worker_is_just_taking_is_not_swept(redis_url: str, queue_name: str) -> None:
    """saq moves a batch to the active list a moment before its worker marks it active; a sweep in
    that moment took it for abandoned and ran it twice. Only one still not active a sweep later is."""
    queue = BatchQueue(redis_client(redis_url), name=queue_name, outage=Outage("Redis", "", ""))
    await queue.connect()
    try:
        await queue.enqueue(Job(RUN_BATCH, kwargs={"items": [], "inputs": {}}, key="batch-taken", heartbeat=30))
        await queue.redis.lmove(queue.namespace("queued"), queue.namespace("active"), "LEFT", "RIGHT")  # dequeue's move
        assert await queue.sweep(lock=1) == []
        assert (await queue.job("batch-taken")).error is None
        await asyncio.sleep(1.1)  # the sweep lock passes
        assert await queue.sweep(lock=1, abort=0.1) == [queue.job_id("batch-taken")]
        assert (await queue.job("batch-taken")).error == queue.swept_error_message
    finally:
        await queue.disconnect()


async def test_a_background_write_that_fails_past_its_redis_handling_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Enqueues, joins and cancel flags are written by tasks of their own; they handle Redis's errors,
    # and any other error (a bug) is logged with its traceback rather than lost with the task.
    settings = tiny_settings(tmp_path / "model", tmp_path / "data")
    backend = SaqBackend(settings, queue_name="never-connected", redis_url="redis://127.0.0.1:1", timing=FAST)

    async def broken_write() -> None:
        raise RuntimeError("a bug in a write")

    with caplog.at_level(logging.ERROR, logger="generation.jobs.distributed.backend"):
        backend._spawn(broken_write())
        await asyncio.wait(set(backend._pending))
        await asyncio.sleep(0)  # its done callback runs on the loop's next turn
    assert not backend._pending
    (record,) = [r for r in caplog.records if "a background write failed" in r.getMessage()]
    assert record.exc_info is not None and "a bug in a write" in str(record.exc_info[1])
