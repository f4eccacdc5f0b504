"""The delivery outbox: results that finished while the bot was away, or that Discord refused.

The real bot runs in this process against the Discord API double, on a database seeded with
finished jobs (its queue never runs one), so every post here comes from the outbox pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from bot_helpers import InProcessBot, NoWorkers
from discord_double import DiscordDouble, RecordedRequest
from discord_double.inprocess import running_client
from sqlalchemy import update
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError
from storage_helpers import loop_request
from typer.testing import CliRunner

from bot import delivery
from bot.background import Periodic
from generation.cli import app
from generation.config import Settings
from generation.jobs import QueueService
from generation.storage import (
    Database,
    Delivery,
    Generation,
    LoopReportFields,
    create_request_groups,
    due_deliveries,
    get_generation,
    mark_done,
    mark_running,
    record_delivery_failure,
    repository,
    utcnow,
)

CHANNEL_MESSAGE = "POST /channels/{channel_id}/messages"
GET_CHANNEL = "GET /channels/{channel_id}"
UNKNOWN_CHANNEL_ID = 424242424242424242


def job_id_of(request: RecordedRequest) -> str:
    return request.json["embeds"][0]["footer"]["text"].split()[1]


def finished_jobs(db: Database, data_dir: Path, count: int, *, channel_id: int, guild_id: int, user_id: int) -> list[str]:
    """`count` done jobs whose results were never posted (all with the same short WAV)."""
    wav = data_dir / "loop.wav"
    if not wav.exists():
        sf.write(wav, np.zeros(3200, dtype=np.float32), 32000)
    with db.session() as session:
        groups = create_request_groups(
            session, [[loop_request(channel_id=channel_id, guild_id=guild_id, user_id=user_id)] for _ in range(count)]
        )
        job_ids = [group[0].short_id for group in groups]
        for job_id in job_ids:
            mark_running(session, job_id, "gpu-0")
            mark_done(session, job_id, audio_path="loop.wav", report=LoopReportFields(verdict="good"))
    return job_ids


@contextlib.asynccontextmanager
async def outbox_bot(tmp_path: Path, seed: Callable[[Database], object], redelivery_interval_s: float) -> AsyncIterator[InProcessBot]:
    """The bot on a database that `seed` filled before it started."""
    settings = Settings(storage={"data_dir": tmp_path}, discord={"redelivery_interval_s": redelivery_interval_s})
    db = Database.from_settings(settings.storage)
    db.upgrade()
    seed(db)
    bot = InProcessBot(settings, QueueService(settings, db, backend=NoWorkers()), db)
    bot._connection.guild_ready_timeout = 0.05  # type: ignore[attr-defined]
    try:
        yield bot
    finally:
        db.dispose()


def outbox_row(db: Database, job_id: str) -> tuple[Delivery, str | None]:
    with db.session() as session:
        row = get_generation(session, job_id)
        assert row is not None
        delivery = session.query(Delivery).filter_by(generation_id=row.id).one()
        session.expunge(delivery)
        return delivery, row.delivery_error


async def test_a_refused_post_is_retried_with_growing_pauses_until_given_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repository, "MAX_DELIVERY_ATTEMPTS", 4)
    async with DiscordDouble() as double:
        where = {"channel_id": double.channel.id, "guild_id": double.world.guild.id, "user_id": double.member("alice").user.id}
        jobs: list[str] = []
        double.fail(CHANNEL_MESSAGE, status=503, code=0, message="Service Unavailable", times=1000)
        async with outbox_bot(tmp_path, lambda db: jobs.extend(finished_jobs(db, tmp_path, 1, **where)), 0.3) as bot:
            async with running_client(bot, double, timeout=20):
                await asyncio.sleep(6.0)  # 0.3 + 0.6 + 1.2 s of pauses, then well past the next 2.4 s
                tries = double.requests.matching(lambda r: r.route == CHANNEL_MESSAGE)
            delivery, delivery_error = outbox_row(bot.database, jobs[0])
    assert len(tries) == 4, "four attempts, then no more"
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(tries)]
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6 and gaps[2] >= 1.2, gaps
    assert gaps[0] < gaps[1] < gaps[2], gaps
    assert delivery.attempts == 4 and delivery.given_up_at is not None and delivery.delivered_at is None
    assert delivery_error is not None and "Service Unavailable" in delivery_error


async def test_an_unknown_channel_is_given_up_at_once_logged_once_and_shown_in_history(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with DiscordDouble() as double:
        where = {"channel_id": UNKNOWN_CHANNEL_ID, "guild_id": double.world.guild.id, "user_id": double.member("bob").user.id}
        jobs: list[str] = []
        async with outbox_bot(tmp_path, lambda db: jobs.extend(finished_jobs(db, tmp_path, 1, **where)), 0.2) as bot:
            async with running_client(bot, double, timeout=20):
                await asyncio.sleep(2.0)  # ten passes
                lookups = double.requests.matching(lambda r: r.route == GET_CHANNEL)
                history = await double.slash("history", {"scope": "server"}, user="bob")
                listed = (await history.wait_callback(timeout=3)).json["data"]["embeds"][0]["fields"]
            delivery, delivery_error = outbox_row(bot.database, jobs[0])
    assert [r.status for r in lookups] == [404], "asked Discord once, then gave up"
    lines = [r for r in caplog.records if jobs[0] in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING and "10003" in lines[0].getMessage()
    assert delivery.given_up_at is not None and delivery.attempts == 1
    assert delivery_error is not None and "Unknown Channel" in delivery_error
    (entry,) = [f for f in listed if jobs[0] in f["name"]]
    assert "done, not posted" in entry["name"]


async def test_a_row_naming_a_file_outside_the_data_directory_gets_a_failure_not_that_file(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The outbox posts what a row names: checked again right before the upload (a row can carry any path)."""
    caplog.set_level(logging.INFO)
    secret = tmp_path_factory.mktemp("outside") / "secret.wav"
    sf.write(secret, np.zeros(3200, dtype=np.float32), 32000)
    async with DiscordDouble() as double:
        where = {"channel_id": double.channel.id, "guild_id": double.world.guild.id, "user_id": double.member("carol").user.id}
        jobs: list[str] = []

        def seed(db: Database) -> None:
            jobs.extend(finished_jobs(db, tmp_path, 3, **where))
            names = [str(secret), f"../{secret.parent.name}/secret.wav", "loop.txt"]
            (tmp_path / "loop.txt").write_text("not audio")
            with db.session() as session:
                for job_id, name in zip(jobs, names):
                    session.execute(update(Generation).where(Generation.short_id == job_id).values(audio_path=name))

        async with outbox_bot(tmp_path, seed, 0.2) as bot:
            async with running_client(bot, double, timeout=20):
                await asyncio.sleep(1.5)
                posts = double.requests.matching(lambda r: r.route == CHANNEL_MESSAGE)
    assert sorted(post.json["embeds"][0]["footer"]["text"] for post in posts) == sorted(jobs), "each outcome posted once"
    assert not [post.files for post in posts if post.files], "no file uploaded"
    assert all("not one I can post" in post.json["embeds"][0]["description"] for post in posts)
    refused = [r for r in caplog.records if "refused to post" in r.getMessage()]
    assert len(refused) == 3 and all(any(job in r.getMessage() for r in refused) for job in jobs), "one line per job"


async def test_two_hundred_dead_deliveries_do_not_hold_back_a_new_result(tmp_path: Path) -> None:
    async with DiscordDouble() as double:
        graveyard = double.world.add_channel(double.world.guild, "graveyard")
        user_id = double.member("carol").user.id
        double.fail(CHANNEL_MESSAGE, status=503, code=0, message="Service Unavailable", times=10_000,
                    when=lambda r: r.path_params.get("channel_id") == str(graveyard.id))
        fresh: list[str] = []

        def seed(db: Database) -> None:
            finished_jobs(db, tmp_path, 210, channel_id=graveyard.id, guild_id=double.world.guild.id, user_id=user_id)
            fresh.extend(finished_jobs(db, tmp_path, 1, channel_id=double.channel.id, guild_id=double.world.guild.id,
                                       user_id=user_id))

        async with outbox_bot(tmp_path, seed, 0.5) as bot, running_client(bot, double, timeout=20):
            posted = await double.wait_for_request(
                CHANNEL_MESSAGE, lambda r: bool(r.files) and job_id_of(r) == fresh[0], status=200, timeout=60
            )
    assert posted.json["content"] == f"<@{user_id}>"


async def test_a_database_error_in_a_redelivery_pass_does_not_stop_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with DiscordDouble() as double:
        where = {"channel_id": double.channel.id, "guild_id": double.world.guild.id, "user_id": double.member("alice").user.id}
        jobs: list[str] = []
        async with outbox_bot(tmp_path, lambda db: jobs.extend(finished_jobs(db, tmp_path, 1, **where)), 0.2) as bot:
            reading, outage = bot.database.reading, [3]

            def failing_reading():  # the first three reads hit an outage
                if outage[0]:
                    outage[0] -= 1
                    raise OperationalError("SELECT ...", {}, Exception("database is locked"))
                return reading()

            monkeypatch.setattr(bot.database, "reading", failing_reading)
            async with running_client(bot, double, timeout=20):
                posted = await double.wait_for_request(
                    CHANNEL_MESSAGE, lambda r: bool(r.files) and job_id_of(r) == jobs[0], status=200, timeout=20
                )
    assert posted.json["content"] == f"<@{where['user_id']}>"
    outage_lines = [r for r in caplog.records if "database is locked" in r.getMessage()]
    assert len(outage_lines) == 1, "one line for the whole outage"


async def test_a_post_the_database_could_not_record_is_recorded_later_never_posted_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with DiscordDouble() as double:
        where = {"channel_id": double.channel.id, "guild_id": double.world.guild.id, "user_id": double.member("alice").user.id}
        jobs: list[str] = []
        async with outbox_bot(tmp_path, lambda db: jobs.extend(finished_jobs(db, tmp_path, 1, **where)), 0.2) as bot:
            record, outage = delivery._record_posted, [3]

            def failing_record(*args, **kwargs):  # the database goes away right after the post, for three tries
                if outage[0]:
                    outage[0] -= 1
                    raise OperationalError("UPDATE ...", {}, Exception("database is locked"))
                return record(*args, **kwargs)

            monkeypatch.setattr(delivery, "_record_posted", failing_record)
            async with running_client(bot, double, timeout=20):
                posted = await double.wait_for_request(
                    CHANNEL_MESSAGE, lambda r: bool(r.files) and job_id_of(r) == jobs[0], status=200, timeout=20
                )
                for _ in range(100):
                    with bot.database.session() as session:
                        if get_generation(session, jobs[0]).posted_message_id is not None:
                            break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.0)  # several more outbox passes
        with bot.database.session() as session:
            row = get_generation(session, jobs[0])
            assert (row.posted_message_id, row.delivery_error) == (int(posted.response["id"]), None)
    assert outage == [0]
    assert len(double.requests.matching(lambda r: r.route == CHANNEL_MESSAGE and bool(r.files))) == 1


async def test_a_periodic_task_survives_any_exception_and_logs_once_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    outcomes = iter([RuntimeError("down"), RuntimeError("still down"), None, None])
    passes = asyncio.Event()
    done = []

    async def work() -> None:
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome
        done.append(1)
        if len(done) == 2:
            passes.set()

    periodic = Periodic("sweep", work, 0.01)
    periodic.start()
    await asyncio.wait_for(passes.wait(), 5)
    await periodic.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == "bot.background"]
    assert len(messages) == 2 and "down" in messages[0] and "works again after 2" in messages[1]


# --- the outbox's queries, on SQLite and PostgreSQL -----------------------------------------------


def test_new_results_come_before_old_ones_that_keep_failing(database: Database, tmp_path: Path) -> None:
    dead = finished_jobs(database, tmp_path, 250, channel_id=1, guild_id=2, user_id=3)
    with database.session() as session:
        for delivery in due_deliveries(session, limit=1000):
            record_delivery_failure(session, delivery.id, "503", first_delay_s=30)
        # Their backoff is over: all 250 are due again, and one new result has arrived.
        session.execute(update(Delivery).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    (new,) = finished_jobs(database, tmp_path, 1, channel_id=1, guild_id=2, user_id=3)
    with database.session() as session:
        due = [d.generation.short_id for d in due_deliveries(session, limit=200)]
    assert due[0] == new and len(due) == 200 and set(due[1:]) <= set(dead)


def test_each_failure_doubles_the_pause_up_to_an_hour_then_gives_up(database: Database, tmp_path: Path) -> None:
    (job,) = finished_jobs(database, tmp_path, 1, channel_id=1, guild_id=2, user_id=3)
    pauses = []
    with database.session() as session:
        (delivery,) = due_deliveries(session)
        for _ in range(repository.MAX_DELIVERY_ATTEMPTS - 1):
            before = utcnow()
            assert not record_delivery_failure(session, delivery.id, "503 Service Unavailable", first_delay_s=30)
            pauses.append(round((delivery.next_attempt_at - before).total_seconds() / 30) * 30)
            assert due_deliveries(session) == []  # not due before its pause is over
        assert record_delivery_failure(session, delivery.id, "503 Service Unavailable", first_delay_s=30)
    assert pauses == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600][: len(pauses)]
    with database.session() as session:
        row = get_generation(session, job)
        assert row is not None and row.delivery_error == "503 Service Unavailable"
        session.execute(update(Delivery).values(next_attempt_at=utcnow() - timedelta(days=1)))
        assert due_deliveries(session) == [], "given up: never due again"


def test_loopjam_history_says_which_results_were_never_posted(
    db_url: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOOPJAM_CONFIG", raising=False)
    monkeypatch.setenv("LOOPJAM_STORAGE__DATABASE_URL", db_url.render_as_string(hide_password=False))
    db = Database(db_url)
    db.upgrade()
    try:
        lost, posted = finished_jobs(db, tmp_path, 2, channel_id=1, guild_id=2, user_id=3)
        with db.session() as session:
            (delivery,) = [d for d in due_deliveries(session) if d.generation.short_id == lost]
            record_delivery_failure(session, delivery.id, "NotFound: 404 Not Found (error code: 10003): Unknown Channel",
                                    permanent=True)
        result = CliRunner().invoke(app, ["history", "--json"])
        rows = {row["short_id"]: row for row in json.loads(result.output.splitlines()[-1])}
        table = CliRunner().invoke(app, ["history"], env={"COLUMNS": "200"}).output
    finally:
        db.downgrade("base")
        db.dispose()
    assert "Unknown Channel" in rows[lost]["delivery_error"] and rows[posted]["delivery_error"] is None
    assert "done, not posted" in table
