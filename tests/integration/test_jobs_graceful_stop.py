"""Stopping the queue gracefully: the worker and its loop-engine processes end, running jobs wait for the next start."""

from __future__ import annotations

import asyncio

import pytest
from queue_helpers import EVENT_TIMEOUT_S, HAS_PROC, final_event, live_children, migrated_database, still_running, tiny_settings

from generation.config import LoopSettings
from generation.jobs import JobDone, JobEvent, JobProgress, JobRequest, QueueService, Stage
from generation.shape import LoopShape
from generation.storage import GenerationStatus, get_generation


@pytest.mark.skipif(not HAS_PROC, reason="lists child processes through /proc")
async def test_stop_ends_the_workers_and_hands_the_running_job_back_with_its_attempt(tiny_model_dir, tmp_path) -> None:
    # As deployed: the worker cuts loops in loop-engine processes, which must end with it.
    settings = tiny_settings(tiny_model_dir, tmp_path).model_copy(update={"loop": LoopSettings(processes=2)})
    database = migrated_database(tmp_path)
    service = QueueService(settings, database)
    await service.start()
    job = await service.submit(JobRequest(user_id=1, prompt="long drone", shape=LoopShape(120.0, 4)))
    events = service.subscribe(job.job_id)
    while not (isinstance(event := await asyncio.wait_for(events.get(), EVENT_TIMEOUT_S), JobProgress)
               and event.stage is Stage.GENERATING and event.percent > 0):
        pass
    worker = service.backend.worker_pids()[0]
    ours = [worker, *live_children(worker)]
    assert len(ours) >= 3  # the worker and its two loop-engine processes
    await service.stop()
    assert not await still_running(ours, within_s=10), "processes of the stopped queue are still running"
    with database.session() as session:
        row = get_generation(session, job.job_id)
        assert (row.status, row.attempts, row.worker) == (GenerationStatus.QUEUED, 0, None)
    database.dispose()

    database = migrated_database(tmp_path)
    after = QueueService(tiny_settings(tiny_model_dir, tmp_path), database)
    await after.start()
    try:
        done: JobEvent = await final_event(after, job.job_id)
        assert isinstance(done, JobDone), done
        with database.session() as session:
            assert get_generation(session, job.job_id).attempts == 1
    finally:
        await after.stop()
        database.dispose()
