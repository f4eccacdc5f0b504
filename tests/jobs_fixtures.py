"""Helpers for the queue tests: settings for the tiny model, a migrated SQLite database, waiting on events."""

from __future__ import annotations

import asyncio
from pathlib import Path

from generation.config import GenerationSettings, ModelSettings, QueueSettings, Settings, StorageSettings
from generation.jobs import FINAL_EVENT_TYPES, JobEvent, QueueService
from generation.storage import Database

BROKEN_MODEL = "/nonexistent/loopjam-broken-model"
EVENT_TIMEOUT_S = 90.0


def tiny_settings(model_dir: Path, data_dir: Path, **queue: object) -> Settings:
    """Short loops (1 bar at 120 BPM), one candidate, no retries: each job is about a second on CPU."""
    return Settings(
        model=ModelSettings(name=str(model_dir), allowed=[str(model_dir), BROKEN_MODEL], device="cpu", warmup=False),
        generation=GenerationSettings(extra_seconds=0.5, candidates=1, retry_budget=0),
        queue=QueueSettings(**{"batch_size": 2, "batch_wait_ms": 100, **queue}),
        storage=StorageSettings(data_dir=data_dir),
    )


def migrated_database(data_dir: Path) -> Database:
    database = Database.from_settings(StorageSettings(data_dir=data_dir))
    database.upgrade()
    return database


async def final_event(service: QueueService, job_id: str, events: asyncio.Queue[JobEvent] | None = None) -> JobEvent:
    """The job's JobDone, JobFailed or JobCancelled."""
    events = events or service.subscribe(job_id)
    while True:
        event = await asyncio.wait_for(events.get(), EVENT_TIMEOUT_S)
        if isinstance(event, FINAL_EVENT_TYPES):
            return event
