"""Helpers for the queue tests: settings for the tiny model, a migrated SQLite database, waiting on events."""

from __future__ import annotations

import asyncio
from pathlib import Path

from generation.config import GenerationSettings, LoopSettings, ModelSettings, QueueSettings, Settings, StorageSettings
from generation.jobs import FINAL_EVENT_TYPES, JobEvent, QueueService
from generation.storage import Database

BROKEN_MODEL = "/nonexistent/loopjam-broken-model"
EVENT_TIMEOUT_S = 90.0
HAS_PROC = Path("/proc/self/stat").is_file()
"""Whether child processes can be listed (Linux's /proc), to check that none outlives its worker."""


def tiny_settings(model_dir: Path, data_dir: Path, **queue: object) -> Settings:
    """Short loops (1 bar at 120 BPM), one candidate, no retries: each job is about a second on CPU.

    Loops are cut in the worker process itself: loop-engine processes take seconds to start, in
    every worker, and only tests about them need them.
    """
    return Settings(
        model=ModelSettings(name=str(model_dir), allowed=[str(model_dir), BROKEN_MODEL], device="cpu", warmup=False),
        generation=GenerationSettings(extra_seconds=0.5, candidates=1, retry_budget=0),
        loop=LoopSettings(processes=1),
        queue=QueueSettings(**{"batch_size": 2, "batch_wait_ms": 100, **queue}),
        storage=StorageSettings(data_dir=data_dir),
    )


def _state_and_parent(stat: Path) -> tuple[str, int] | None:
    """A process's state letter and parent pid from its /proc/PID/stat; None once it is gone."""
    try:
        state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
    except (OSError, IndexError):
        return None
    return state, int(ppid)


def is_running(pid: int) -> bool:
    """Whether the process exists and is not a zombie (Linux's /proc)."""
    found = _state_and_parent(Path(f"/proc/{pid}/stat"))
    return found is not None and found[0] != "Z"


def live_children(parent: int) -> list[int]:
    """The running processes whose parent is `parent` (Linux's /proc)."""
    return [
        int(stat.parent.name) for stat in Path("/proc").glob("[0-9]*/stat")
        if (found := _state_and_parent(stat)) is not None and found[1] == parent and found[0] != "Z"
    ]


def descendants(pid: int) -> list[int]:
    """Every running process below `pid`: children, grandchildren and so on."""
    found = live_children(pid)
    return found + [grandchild for child in found for grandchild in descendants(child)]


async def still_running(pids: list[int], within_s: float = 10.0) -> list[int]:
    """Those of `pids` still running after waiting up to `within_s` for all of them to end."""
    deadline = asyncio.get_running_loop().time() + within_s
    while (left := [pid for pid in pids if is_running(pid)]) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
    return left


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
