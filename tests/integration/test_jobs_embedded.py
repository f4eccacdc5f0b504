"""The queue end to end with the tiny model in a real worker process: order, failures, crashes, restarts."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from queue_helpers import BROKEN_MODEL, HAS_PROC, final_event, live_children, migrated_database, still_running, tiny_settings

from generation.config import LoopSettings
from generation.jobs import (
    Accepted,
    CancelOutcome,
    JobCancelled,
    JobDone,
    JobEvent,
    JobFailed,
    JobProgress,
    JobRequest,
    QueueService,
    RefusalKind,
    Stage,
)
from generation.shape import LoopShape
from generation.storage import GenerationStatus, get_generation, mark_running


def loop(user_id: int, **changes: object) -> JobRequest:
    return JobRequest(user_id=user_id, **{"prompt": "dusty boom bap", "shape": LoopShape(120.0, 1), **changes})  # type: ignore[arg-type]


@pytest.fixture
async def service(tiny_model_dir, tmp_path):
    """A running service with B=2 (the CPU default) and its worker process."""
    database = migrated_database(tmp_path)
    service = QueueService(tiny_settings(tiny_model_dir, tmp_path), database)
    await service.start()
    yield service
    await service.stop()
    database.dispose()


def row(service: QueueService, job_id: str):
    with service.database.session() as session:
        return get_generation(session, job_id)


async def test_ten_jobs_from_three_users_finish_in_fair_order(tiny_model_dir, tmp_path) -> None:
    database = migrated_database(tmp_path)
    settings = tiny_settings(tiny_model_dir, tmp_path, max_queued_per_user=4, rate_limit_jobs=4, max_queue=10)
    service = QueueService(settings, database)
    started: dict[str, None] = {}  # job ids in the order they started generating (an ordered set)
    service.add_listener(
        lambda e: started.setdefault(e.job_id) if isinstance(e, JobProgress) and e.stage is Stage.GENERATING else None
    )
    # Submitted in bursts before the worker is up: A's 4, then B's 4, then C's 2.
    jobs: dict[str, list[str]] = {}
    for user, name, count in ((1, "A", 4), (2, "B", 4), (3, "C", 2)):
        results = [await service.submit(loop(user)) for _ in range(count)]
        jobs[name] = [r.job_id for r in results if isinstance(r, Accepted)]
        assert len(jobs[name]) == count
        if name == "B":  # past the limits, exactly: A has 4 waiting
            assert (await service.submit(loop(1))).reason is RefusalKind.TOO_MANY_QUEUED
    assert (await service.submit(loop(4))).reason is RefusalKind.QUEUE_FULL  # 10 waiting

    await service.start()
    try:
        finals = await asyncio.gather(*(final_event(service, job_id) for job_ids in jobs.values() for job_id in job_ids))
        assert all(isinstance(event, JobDone) for event in finals), finals
        a, b, c = jobs["A"], jobs["B"], jobs["C"]
        assert list(started) == [a[0], b[0], c[0], a[1], b[1], c[1], a[2], b[2], a[3], b[3]]
        for event in finals:
            assert event.files[0].is_file() and event.report["verdict"] in ("good", "usable", "unusable")
            assert row(service, event.job_id).status is GenerationStatus.DONE
        # A's jobs are done, so a place in the queue is free again, but the rate limit (4) is not.
        assert (await service.submit(loop(1))).reason is RefusalKind.RATE_LIMITED
        status = await service.status()
        assert (status.depth, status.running, status.workers_alive) == (0, 0, 1)
        assert status.seconds_per_job is not None and 0 < status.seconds_per_job < 60
        print(f"seconds per job: {status.seconds_per_job:.2f}")
    finally:
        await service.stop()
        database.dispose()


async def test_a_model_that_fails_to_load_fails_its_jobs_with_a_reason(service) -> None:
    broken = await service.submit(loop(1, model=BROKEN_MODEL))
    fine = await service.submit(loop(2))
    failed, done = await asyncio.gather(final_event(service, broken.job_id), final_event(service, fine.job_id))
    assert isinstance(failed, JobFailed)
    assert failed.reason == (  # the operator's path is not the users' business: the worker's log has it
        "The model 'loopjam-broken-model' could not be loaded. An admin has to fix the bot's model settings (the worker's log says why)."
    )
    assert row(service, broken.job_id).error == failed.reason
    assert isinstance(done, JobDone)  # the worker stays up for the others


async def test_a_job_that_comes_while_another_decodes_joins_it_instead_of_waiting(service) -> None:
    long = await service.submit(loop(1, shape=LoopShape(60.0, 4)))  # 16 s of audio
    events = service.subscribe(long.job_id)
    while not (isinstance(event := await asyncio.wait_for(events.get(), 60), JobProgress)
               and event.stage is Stage.GENERATING and event.percent > 0):
        pass
    short = await service.submit(loop(2))  # 2 s, of a batch of its own (another length)

    assert isinstance(await final_event(service, short.job_id), JobDone)
    # It joined the running batch and left it with its loop: the long job is still decoding.
    assert row(service, long.job_id).status is GenerationStatus.RUNNING
    assert row(service, short.job_id).worker == row(service, long.job_id).worker
    assert isinstance(await final_event(service, long.job_id, events), JobDone)


@pytest.mark.skipif(not HAS_PROC, reason="finding the worker's children needs Linux's /proc")
async def test_worker_killed_mid_job_is_restarted_and_the_job_finishes(tiny_model_dir, tmp_path) -> None:
    # As deployed: the worker cuts loops in loop-engine processes, which must not outlive it.
    database = migrated_database(tmp_path)
    settings = tiny_settings(tiny_model_dir, tmp_path).model_copy(update={"loop": LoopSettings(processes=2)})
    service = QueueService(settings, database)
    await service.start()
    try:
        await worker_killed_mid_job(service)
    finally:
        await service.stop()
        database.dispose()


async def worker_killed_mid_job(service: QueueService) -> None:
    job = await service.submit(loop(1, shape=LoopShape(120.0, 4)))  # 8 s of audio: long enough to be killed in
    events = service.subscribe(job.job_id)
    victim, orphans = None, []
    while victim is None:
        event: JobEvent = await asyncio.wait_for(events.get(), 60)
        if isinstance(event, JobProgress) and event.stage is Stage.GENERATING and event.percent > 0:
            victim = service.backend.worker_pids()[0]
            orphans = live_children(victim)
            os.kill(victim, signal.SIGKILL)
    final = await final_event(service, job.job_id, events)
    assert isinstance(final, JobDone), final
    assert row(service, job.job_id).attempts == 2
    assert service.backend.worker_pids() and victim not in service.backend.worker_pids()
    assert len(orphans) >= 2  # the two loop-engine processes (and multiprocessing's resource tracker)
    assert not await still_running(orphans), "the killed worker's processes are still running"

    # The owner cancels a running job: it stops between decoding steps, and the worker goes on.
    long = await service.submit(loop(1, shape=LoopShape(60.0, 4)))
    events = service.subscribe(long.job_id)
    while not (isinstance(event := await asyncio.wait_for(events.get(), 60), JobProgress)
               and event.stage is Stage.GENERATING and event.percent > 0):
        pass
    assert (await service.cancel(long.job_id, user_id=2, guild_id=None)).outcome is CancelOutcome.NOT_OWNER
    assert (await service.cancel(long.job_id, user_id=1, guild_id=None)).ok
    assert await final_event(service, long.job_id, events) == JobCancelled(long.job_id)
    after = await service.submit(loop(1))
    assert isinstance(await final_event(service, after.job_id), JobDone)
    assert row(service, long.job_id).status is GenerationStatus.CANCELLED


async def test_jobs_queued_before_a_restart_finish_after_it(tiny_model_dir, tmp_path) -> None:
    settings = tiny_settings(tiny_model_dir, tmp_path)
    database = migrated_database(tmp_path)
    before = QueueService(settings, database)  # never started: as if it stopped right after accepting
    job_ids = [(await before.submit(loop(user))).job_id for user in (1, 2, 3)]
    with database.session() as session:  # the first was running when the process died
        assert mark_running(session, job_ids[0], "embedded-0.1")
    database.dispose()

    database = migrated_database(tmp_path)
    after = QueueService(settings, database)
    await after.start()
    try:
        finals = await asyncio.gather(*(final_event(after, job_id) for job_id in job_ids))
        assert all(isinstance(event, JobDone) for event in finals), finals
        assert [row(after, job_id).attempts for job_id in job_ids] == [2, 1, 1]
    finally:
        await after.stop()
        database.dispose()
