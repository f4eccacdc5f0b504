"""A job's options live in its rows: a restart rebuilds it in its format, exact-seed or not, with its upload.

No worker runs here: a recording backend takes every batch and never finishes one, so what it is
handed before and after a restart is exactly what the service rebuilt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from queue_helpers import migrated_database, tiny_settings
from sqlalchemy.engine import URL

from generation.audio_io import write_audio
from generation.jobs import Accepted, JobKind, JobRequest, QueueService
from generation.jobs.backend import EventSink, Opening, WorkerReady, WorkItem
from generation.shape import LoopShape
from generation.storage import Database, GenerationKind, get_generation


class RecordingBackend:
    """One worker that takes every batch and never reports back: the jobs stay running until a restart."""

    stops_its_batches = False

    def __init__(self) -> None:
        self.items: dict[str, WorkItem] = {}

    async def start(self, sink: EventSink) -> None:
        sink(WorkerReady("recorder", batch_size=1, model="tiny"))

    async def stop(self) -> None: ...
    def next_batch_key(self) -> str | None: return "recorder"
    def run(self, batch_key: str, batch: Sequence[WorkItem]) -> None: self.items.update((item.job_id, item) for item in batch)
    def cancel(self, job_id: str) -> None: ...
    def workers_alive(self) -> int: return 1
    def running(self) -> int: return len(self.items)
    def openings(self) -> list[Opening]: return []
    def models(self) -> list[str]: return []
    def resumed(self) -> dict[str, tuple[str, ...]]: return {}

    async def wait_for(self, count: int) -> dict[str, WorkItem]:
        """The items handed over, once there are `count` of them."""
        async def arrived() -> None:
            while len(self.items) < count:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(arrived(), 30)
        return self.items


def loop(user_id: int, **changes: object) -> JobRequest:
    fields = {"prompt": "dusty boom bap", "shape": LoopShape(120.0, 1), **changes}
    return JobRequest(user_id=user_id, **fields)  # type: ignore[arg-type]


async def dispatched(
    service: QueueService, backend: RecordingBackend, requests: Sequence[JobRequest], count: int
) -> tuple[list[str], dict[str, WorkItem]]:
    """Start the service, submit `requests`, and stop it once its worker holds `count` jobs: the ids, and those jobs."""
    await service.start()
    try:
        results = [await service.submit(request) for request in requests]
        job_ids = [result.job_id for result in results if isinstance(result, Accepted)]
        assert len(job_ids) == len(requests), results
        return job_ids, dict(await backend.wait_for(count))
    finally:
        await service.stop()


async def test_a_restart_rebuilds_each_job_with_its_options(tmp_path: Path) -> None:
    settings = tiny_settings(tmp_path / "model", tmp_path, batch_size=1, batch_wait_ms=0, max_queued_per_user=10)
    upload = write_audio(tmp_path / "uploads" / "groove.wav", np.zeros((1, 8000), dtype=np.float32), 8000)
    database = migrated_database(tmp_path)
    parent = QueueService(settings, database, backend=RecordingBackend())  # never started: its job stays queued
    flac = await parent.submit(loop(1, audio_format="flac", variations=2, seed=500))
    assert isinstance(flac, Accepted)
    requests = [
        loop(2, kind=JobKind.REPLAY, parent_loop_id=flac.job_id, seed=777, exact_seed=True, audio_format="ogg"),
        loop(3, kind=JobKind.REPLAY, parent_loop_id=flac.job_id),  # a replay with a new seed: not exact
        loop(4, prompt="loopify: groove.wav", source_audio=str(upload)),
    ]
    before = RecordingBackend()
    # This service hands every job to its worker and stops with them running, as if it died.
    (exact, new_seed, loopify), items = await dispatched(QueueService(settings, database, backend=before), before, requests, 4)
    database.dispose()

    database = migrated_database(tmp_path)
    after = RecordingBackend()
    try:
        _, rebuilt = await dispatched(QueueService(settings, database, backend=after), after, [], 4)
        with database.session() as session:
            rows = {job_id: get_generation(session, job_id) for job_id in rebuilt}
            attempts = {job_id: row.attempts for job_id, row in rows.items() if row is not None}
            upload_row = rows[loopify]
            assert upload_row is not None and (upload_row.kind, upload_row.source_path) == (GenerationKind.LOOPIFY, str(upload))
            assert upload_row.prompt_sent == "loopify: groove.wav, 120 bpm"  # the upload's path is no prompt
    finally:
        database.dispose()

    assert rebuilt == items
    assert attempts == dict.fromkeys(items, 2)  # interrupted once, started again
    options = {job_id: (item.audio_format, item.exact_seed, item.source_audio, item.seeds) for job_id, item in rebuilt.items()}
    assert options == {
        flac.job_id: ("flac", False, None, (500, 1500)),
        exact: ("ogg", True, None, (777,)),
        new_seed: ("wav", False, None, rebuilt[new_seed].seeds),
        loopify: ("wav", False, str(upload), (0,)),
    }


def test_the_migration_moves_loopify_uploads_out_of_prompt_sent_and_back(db_url: URL) -> None:
    """Rows from before 0002 upgrade to options that rebuild them as the old code did, and downgrade back."""
    database = Database(db_url)
    try:
        database.upgrade("0001")
        generations = sa.Table("generations", sa.MetaData(), autoload_with=database.engine)
        common = {"user_id": 1, "prompt": "loopify: groove.wav", "prompt_sent": "dusty, 120 bpm", "bpm": 120.0,
                  "bars": 1, "beats_per_bar": 4, "temperature": 1.0, "top_k": 250, "top_p": 0.0, "cfg_coef": 3.0,
                  "seed": 0, "model": "tiny", "created_at": datetime.now(UTC), "attempts": 0}
        old_rows = {  # short id: kind, status, prompt_sent
            "loopify1": ("loopify", "done", "uploads/groove.wav"),
            "replay01": ("replay", "queued", "dusty, 120 bpm"),
            "replay02": ("replay", "done", "dusty, 120 bpm"),
            "loop0001": ("loop", "running", "dusty, 120 bpm"),
        }
        with database.engine.begin() as connection:
            connection.execute(generations.insert(), [
                {**common, "short_id": short_id, "request_group": short_id, "kind": kind, "status": status,
                 "prompt_sent": prompt_sent}
                for short_id, (kind, status, prompt_sent) in old_rows.items()
            ])

        database.upgrade()
        with database.session() as session:
            upgraded = {short_id: get_generation(session, short_id) for short_id in old_rows}
            options = {short_id: (row.audio_format, row.exact_seed, row.source_path, row.prompt_sent)
                       for short_id, row in upgraded.items() if row is not None}
        assert options == {
            "loopify1": ("wav", False, "uploads/groove.wav", "loopify: groove.wav"),
            "replay01": ("wav", True, None, "dusty, 120 bpm"),  # waiting replays were rebuilt exact-seed
            "replay02": ("wav", False, None, "dusty, 120 bpm"),
            "loop0001": ("wav", False, None, "dusty, 120 bpm"),
        }

        database.downgrade("0001")
        with database.engine.connect() as connection:
            downgraded = dict(connection.execute(sa.select(generations.c.short_id, generations.c.prompt_sent)).all())
        assert downgraded == {short_id: prompt_sent for short_id, (_, _, prompt_sent) in old_rows.items()}
    finally:
        database.downgrade("base")  # the PostgreSQL database is shared by this module
        database.dispose()
