"""Fixtures shared by integration modules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from queue_helpers import migrated_database, tiny_settings

from generation.config import GenerationSettings
from generation.jobs import QueueService


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def worker_service(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[QueueService]:
    """A queue with a real worker process and the tiny model, started once for the modules that run jobs of every
    kind (test_jam_jobs, test_job_kinds): a worker's start and its first batch cost about 45 s on this machine.

    Best-of-2 (the delivered seed may be the second candidate's); 2 requests and 3 waiting per user, so each
    test uses user ids of its own. Those modules run in the session's event loop, where the service lives.
    """
    data_dir = tmp_path_factory.mktemp("worker-service")
    settings = tiny_settings(tiny_model_dir, data_dir, rate_limit_jobs=2, max_queued_per_user=3)
    settings = settings.model_copy(update={"generation": GenerationSettings(extra_seconds=0.5, candidates=2, retry_budget=0)})
    database = migrated_database(data_dir)
    running = QueueService(settings, database)
    await running.start()
    yield running
    await running.stop()
    database.dispose()
