"""The history and job state, on SQLite and on PostgreSQL (the database fixtures are in tests/conftest.py)."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from storage_helpers import LOOP_REQUEST, loop_request

from generation.config import StorageSettings
from generation.storage import (
    UPLOADS_DIR,
    Database,
    Generation,
    GenerationKind,
    GenerationStatus,
    LoopReportFields,
    count_queued,
    create_generation,
    create_generations,
    database_url,
    due_deliveries,
    get_generation,
    get_guild_settings,
    list_history,
    list_request_group,
    mark_cancelled,
    mark_delivered,
    mark_done,
    mark_failed,
    mark_running,
    record_delivery_failure,
    recover_interrupted,
    repository,
    sweep_audio,
    sweep_uploads,
    upsert_guild_settings,
)
from generation.storage.repository import MAX_DELIVERY_ATTEMPTS

REPORT = LoopReportFields(
    source_bpm=95.5,
    stretch_ratio=0.963,
    source_start_seconds=0.42,
    downbeat_confidence=0.81,
    seam_score=0.93,
    tempo_stability=0.97,
    grid_error_ms=2.5,
    loudness_lufs=-14.1,
    verdict="clean",
    verdict_reason="steady tempo, seamless seam",
    source_key="F# minor",
    key_confidence=0.72,
    target_key="A minor",
    key_shift_semitones=3,
)


def set_times(db: Database, short_id: str, **times: datetime) -> None:
    """Move a row's timestamps, as if it had been made earlier."""
    with db.session() as session:
        session.execute(update(Generation).where(Generation.short_id == short_id).values(**times))


def test_a_finished_generation_keeps_every_field(database: Database) -> None:
    with database.session() as session:
        parent = create_generation(session, LOOP_REQUEST)
    with database.session() as session:
        child = create_generation(session, loop_request(kind=GenerationKind.VARIATION, parent_id=parent.id, target_key=REPORT.target_key))
        short_id = child.short_id
    with database.session() as session:
        assert mark_running(session, short_id, worker="gpu-1")
        assert mark_done(session, short_id, audio_path="loops/abc.wav", report=REPORT)

    with database.session() as session:
        stored = get_generation(session, short_id)
        assert stored is not None
        for name, value in vars(loop_request(kind=GenerationKind.VARIATION, parent_id=parent.id, target_key=REPORT.target_key)).items():
            assert getattr(stored, name) == value, name
        for name, value in vars(REPORT).items():
            assert getattr(stored, name) == pytest.approx(value) if isinstance(value, float) else value, name
        assert stored.parent is not None and stored.parent.short_id == parent.short_id
        assert stored.status is GenerationStatus.DONE
        assert (stored.worker, stored.attempts, stored.audio_path, stored.error) == ("gpu-1", 1, "loops/abc.wav", None)
        for moment in (stored.created_at, stored.started_at, stored.finished_at):
            assert moment is not None and moment.tzinfo is not None and moment.utcoffset() == timedelta(0)
        assert stored.created_at <= stored.started_at <= stored.finished_at
        assert stored.request_group != parent.request_group


def test_short_ids_are_unique_url_safe_and_enforced(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    with database.session() as session:
        rows = create_generations(session, [LOOP_REQUEST] * 50)
        existing = rows[0].short_id
    short_ids = {row.short_id for row in rows}
    assert len(short_ids) == 50
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{8}", short_id) for short_id in short_ids)

    # A drawn id that is taken is drawn again.
    drawn = iter([existing, "fresh-01"])
    monkeypatch.setattr(repository, "new_short_id", lambda: next(drawn))
    with database.session() as session:
        fresh = create_generation(session, LOOP_REQUEST)
        assert (fresh.short_id, fresh.request_group) == ("fresh-01", "fresh-01")

    with pytest.raises(IntegrityError), database.session() as session:
        session.add(Generation(**vars(LOOP_REQUEST), short_id=existing, request_group="x", status=GenerationStatus.QUEUED))


def test_variations_share_one_request_group(database: Database) -> None:
    with database.session() as session:
        rows = create_generations(session, [loop_request(seed=seed) for seed in (1, 2, 3)])
        group = rows[0].request_group
    with database.session() as session:
        assert [row.seed for row in list_request_group(session, group)] == [1, 2, 3]
    assert {row.request_group for row in rows} == {group}


def test_history_filters_searches_and_pages_newest_first(database: Database) -> None:
    prompts = ["LoFi piano", "dark techno", "lofi HIP hop", "100% lofi", "jazz_brush"]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    short_ids = []
    with database.session() as session:
        for index, prompt in enumerate(prompts):
            row = create_generation(session, loop_request(prompt=prompt, user_id=index % 2, guild_id=7 if index < 3 else 8))
            row.created_at = start + timedelta(minutes=index)
            short_ids.append(row.short_id)

    def history(**filters) -> list[str]:
        with database.session() as session:
            return [row.short_id for row in list_history(session, **filters)]

    newest_first = short_ids[::-1]
    assert history() == newest_first
    assert history(user_id=0) == [short_ids[4], short_ids[2], short_ids[0]]
    assert history(guild_id=8) == [short_ids[4], short_ids[3]]
    assert history(search="LOFI") == [short_ids[3], short_ids[2], short_ids[0]]
    assert history(search="hip Hop", user_id=0, guild_id=7) == [short_ids[2]]
    assert history(search="100%") == [short_ids[3]]  # LIKE wildcards match themselves
    assert history(search="z_b") == [short_ids[4]]
    assert history(search="0% L") == [short_ids[3]]
    assert history(search="%") == [short_ids[3]]
    assert history(limit=2) + history(limit=2, offset=2) + history(limit=2, offset=4) == newest_first
    with pytest.raises(ValueError):
        history(limit=0)


def test_count_queued_per_user(database: Database) -> None:
    with database.session() as session:
        first, second, _ = create_generations(session, [LOOP_REQUEST] * 3)
        create_generation(session, loop_request(user_id=5))
        mark_running(session, first.short_id, "gpu-1")
        mark_cancelled(session, second.short_id)
    with database.session() as session:
        assert count_queued(session, LOOP_REQUEST.user_id) == 1
        assert count_queued(session, LOOP_REQUEST.user_id, include_running=True) == 2
        assert count_queued(session, 5) == 1
        assert count_queued(session, 6) == 0


def test_status_changes_are_conditional(database: Database) -> None:
    with database.session() as session:
        job = create_generation(session, LOOP_REQUEST).short_id
    with database.session() as session:
        assert mark_running(session, job, "gpu-1")
        assert not mark_running(session, job, "gpu-2"), "a running job cannot be claimed twice"
        assert mark_cancelled(session, job)
        assert not mark_done(session, job, audio_path="late.wav", report=REPORT), "cancel wins"
        assert not mark_failed(session, job, "too late")
    with database.session() as session:
        stored = get_generation(session, job)
        assert stored is not None
        assert (stored.status, stored.worker, stored.audio_path) == (GenerationStatus.CANCELLED, "gpu-1", None)
        assert due_deliveries(session) == []


def test_results_wait_for_delivery_until_posted(database: Database) -> None:
    with database.session() as session:
        done, failed, hopeless = (row.short_id for row in create_generations(session, [LOOP_REQUEST] * 3))
        for job in (done, hopeless):
            mark_running(session, job, "gpu-1")
            mark_done(session, job, audio_path=f"{job}.wav", report=REPORT)
        mark_failed(session, failed, "The model could not be loaded.")

    # A bot restart: a new Database on the same URL finds them.
    restarted = Database(database.url)
    with restarted.session() as session:
        pending = due_deliveries(session)
        assert [(d.generation.short_id, d.generation.status) for d in pending] == [
            (done, GenerationStatus.DONE), (hopeless, GenerationStatus.DONE), (failed, GenerationStatus.FAILED)
        ]
        assert pending[2].generation.error == "The model could not be loaded."
        mark_delivered(session, pending[0].id, message_id=999, channel_id=888)
        mark_delivered(session, pending[2].id)
        for _ in range(MAX_DELIVERY_ATTEMPTS):
            record_delivery_failure(session, pending[1].id, "Missing Access")
    with restarted.session() as session:
        assert due_deliveries(session) == []
        posted = get_generation(session, done)
        assert posted is not None and (posted.posted_message_id, posted.posted_channel_id) == (999, 888)
    restarted.dispose()


def test_guild_settings_round_trip(database: Database) -> None:
    guild = 2**62 + 3
    roles = [2**63 - 1, 1234567890123456789]
    with database.session() as session:
        assert get_guild_settings(session, guild) is None
        created = upsert_guild_settings(session, guild, rate_limit_jobs=3, exempt_role_ids=roles)
        assert (created.rate_limit_jobs, created.allowed_channel_ids, created.max_bars) == (3, [], None)
    with database.session() as session:
        upsert_guild_settings(
            session, guild, max_queued_per_user=1, allowed_channel_ids=[42], default_model="m", max_bars=8,
            rate_limit_window_s=60.0,
        )
    with database.session() as session:
        stored = get_guild_settings(session, guild)
        assert stored is not None
        assert (stored.rate_limit_jobs, stored.rate_limit_window_s, stored.max_queued_per_user) == (3, 60.0, 1)
        assert (stored.exempt_role_ids, stored.allowed_channel_ids) == (roles, [42])
        assert (stored.default_model, stored.max_bars) == ("m", 8)
        assert stored.updated_at.tzinfo is not None
        with pytest.raises(ValueError, match="colour"):
            upsert_guild_settings(session, guild, colour="red")  # type: ignore[call-arg]


def test_retention_deletes_old_audio_and_its_waveform_and_keeps_metadata(database: Database, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "loops").mkdir(parents=True)
    outside = tmp_path / "elsewhere.wav"
    outside.write_bytes(b"not ours")
    now = datetime.now(UTC)
    paths = {"old": "loops/old.wav", "new": "loops/new.wav", "gone": "loops/gone.wav", "outside": "../elsewhere.wav"}
    ids = {}
    with database.session() as session:
        for name, audio_path in paths.items():
            job = create_generation(session, loop_request(prompt=name)).short_id
            mark_running(session, job, "gpu-1")
            mark_done(session, job, audio_path=audio_path, report=REPORT)
            ids[name] = job
    for name in ("old", "new"):
        (data_dir / paths[name]).write_bytes(b"RIFF")
        (data_dir / paths[name]).with_suffix(".png").write_bytes(b"\x89PNG")
    for name in ("old", "gone", "outside"):
        set_times(database, ids[name], finished_at=now - timedelta(days=8))
    set_times(database, ids["new"], finished_at=now - timedelta(days=6))

    with database.session() as session:
        result = sweep_audio(session, data_dir, retention_days=7, now=now)
    assert (result.cleared, result.skipped) == (2, 1)
    assert not (data_dir / paths["old"]).exists() and not (data_dir / "loops/old.png").exists()
    assert (data_dir / paths["new"]).exists() and (data_dir / "loops/new.png").exists() and outside.exists()
    with database.session() as session:
        stored = {name: get_generation(session, job) for name, job in ids.items()}
    assert stored["old"] is not None and stored["old"].audio_path is None
    assert stored["old"].prompt == "old" and stored["old"].seed == LOOP_REQUEST.seed and stored["old"].verdict == "clean"
    assert stored["gone"] is not None and stored["gone"].audio_path is None
    assert stored["new"] is not None and stored["new"].audio_path == paths["new"]
    assert stored["outside"] is not None and stored["outside"].audio_path == paths["outside"]


def test_retention_deletes_old_uploads_that_no_waiting_or_running_job_reads(database: Database, tmp_path: Path) -> None:
    uploads = tmp_path / "data" / UPLOADS_DIR
    uploads.mkdir(parents=True)
    files = {name: uploads / f"{name}.wav" for name in ("orphan", "waiting", "running", "finished", "fresh")}
    for path in files.values():
        path.write_bytes(b"RIFF")
    week_ago = (datetime.now(UTC) - timedelta(days=8)).timestamp()
    for name in ("orphan", "waiting", "running", "finished"):
        os.utime(files[name], (week_ago, week_ago))
    with database.session() as session:
        for name in ("waiting", "running", "finished"):
            job = create_generation(session, loop_request(kind=GenerationKind.LOOPIFY, source_path=str(files[name]))).short_id
            if name != "waiting":
                mark_running(session, job, "gpu-1")
            if name == "finished":
                mark_done(session, job, audio_path="loops/x.wav", report=REPORT)

    with database.session() as session:
        swept = sweep_uploads(session, tmp_path / "data", retention_days=7)

    assert swept == 2
    assert sorted(path.stem for path in uploads.iterdir()) == ["fresh", "running", "waiting"]


def test_restart_requeues_interrupted_jobs_once_then_fails_them(database: Database) -> None:
    with database.session() as session:
        first, second, other_worker, queued = (row.short_id for row in create_generations(session, [LOOP_REQUEST] * 4))
        mark_running(session, first, "gpu-1")
        mark_running(session, other_worker, "gpu-2")
    with database.session() as session:
        result = recover_interrupted(session, worker="gpu-1")
    assert (result.requeued, result.failed) == ([first], [])

    with database.session() as session:
        requeued = get_generation(session, first)
        assert requeued is not None
        assert (requeued.status, requeued.attempts, requeued.worker, requeued.started_at) == (
            GenerationStatus.QUEUED, 1, None, None
        )
        assert mark_running(session, first, "gpu-3")  # the retry
        mark_running(session, second, "gpu-3")
    with database.session() as session:
        result = recover_interrupted(session)
    assert sorted(result.requeued) == sorted([second, other_worker]) and result.failed == [first]

    with database.session() as session:
        failed = get_generation(session, first)
        assert failed is not None and failed.status is GenerationStatus.FAILED and failed.attempts == 2
        assert failed.error and "try again" in failed.error and failed.finished_at is not None
        assert [d.generation.short_id for d in due_deliveries(session)] == [first]
        untouched = get_generation(session, queued)
        assert untouched is not None and untouched.status is GenerationStatus.QUEUED and untouched.attempts == 0


def test_naive_datetimes_are_refused(database: Database) -> None:
    with pytest.raises(Exception, match="naive datetime"), database.session() as session:
        row = create_generation(session, LOOP_REQUEST)
        row.started_at = datetime(2026, 1, 1)
        session.flush()


def test_default_database_is_sqlite_in_the_data_dir_with_wal(tmp_path: Path) -> None:
    url = database_url(StorageSettings(data_dir=tmp_path / "data"))
    assert url.get_backend_name() == "sqlite" and url.database == str(tmp_path / "data" / "loopjam.db")
    db = Database(url)
    db.upgrade()
    with db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    db.dispose()
    assert (tmp_path / "data" / "loopjam.db").is_file()


def test_a_bare_postgresql_url_uses_psycopg_3() -> None:
    storage = StorageSettings(database_url="postgresql://loopjam:pw@db.example/loopjam")
    assert database_url(storage).drivername == "postgresql+psycopg"
    assert Database(database_url(storage)).display_url == "postgresql+psycopg://loopjam:***@db.example/loopjam"


def test_concurrent_workers_claim_each_job_once(database: Database) -> None:
    with database.session() as session:
        jobs = [row.short_id for row in create_generations(session, [LOOP_REQUEST] * 20)]

    def claim_all(worker: str) -> list[str]:
        claimed = []
        for job in jobs:
            with database.session() as session:
                if mark_running(session, job, worker):
                    claimed.append(job)
        return claimed

    with ThreadPoolExecutor(max_workers=4) as pool:
        claims = list(pool.map(claim_all, [f"gpu-{n}" for n in range(4)]))
    assert sorted(job for claimed in claims for job in claimed) == sorted(jobs)


def test_a_reader_does_not_wait_for_a_writer(database: Database) -> None:
    """The bot's lookups (`Database.reading`) answer while the queue holds a write transaction open."""
    with database.session() as session:
        queued = create_generation(session, LOOP_REQUEST).short_id
    with database.session() as writer, ThreadPoolExecutor(max_workers=1) as pool:
        mark_running(writer, queued, "gpu-0")  # written, not committed: the writer holds its lock

        def read() -> str:
            with database.reading() as session:
                row = get_generation(session, queued)
                assert row is not None
                return row.status.value

        # A reader that waited for the lock would time out here (SQLite waits up to 10 s).
        assert pool.submit(read).result(timeout=2) == "queued"  # it sees the last committed state


def test_claiming_and_failing_a_request_touch_every_one_of_its_loops(database: Database) -> None:
    """A request of three variations: claimed, all three run; failed, all three fail (none left running)."""
    from generation.storage.queue import claim_loops, fail_request

    with database.session() as session:
        rows = create_generations(session, [loop_request(seed=seed) for seed in (1, 2, 3)])
        loop_ids = [row.short_id for row in rows]
    with database.session() as session:
        assert claim_loops(session, loop_ids, "worker-1")
    with database.session() as session:
        assert [get_generation(session, loop_id).status for loop_id in loop_ids] == [GenerationStatus.RUNNING] * 3
        assert fail_request(session, loop_ids[0], "The worker stopped.")
    with database.session() as session:
        assert [get_generation(session, loop_id).status for loop_id in loop_ids] == [GenerationStatus.FAILED] * 3
