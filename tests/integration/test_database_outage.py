"""The queue rides out a database outage: PostgreSQL stopped while batches run, SQLite locked past its busy timeout.

Each test runs the real embedded worker with the tiny model, breaks the database while the
first batch runs, and mends it: every job must still end with its loop, stored as `done`, with
one warning line for the outage and one line when it ends. While the database is away, a new
request gets `QueueUnavailable` and changes nothing.

PostgreSQL runs in a throwaway cluster of the test's own (`initdb`, `pg_ctl`) on a free port,
as the `postgres` OS user when the tests run as root (initdb refuses root). Without the binaries
the test skips, except in CI (`CI` set), where failing to start the cluster fails it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from queue_helpers import final_event, tiny_settings
from sqlalchemy import func, select
from sqlalchemy.engine import URL
from storage_helpers import in_ci
from tcp_proxy import free_port

from generation.jobs import JobDone, JobEvent, JobProgress, JobRequest, QueueService, QueueUnavailable, Stage
from generation.shape import LoopShape
from generation.storage import Database, Generation, GenerationStatus

JOBS = 8
OUTAGE_S = 5.0
"""How long PostgreSQL stays down once the first batch has finished: several retries of every background task."""
SQLITE_BUSY_TIMEOUT_MS = 200
UNREACHABLE = "database unreachable"
REACHABLE_AGAIN = "database reachable again"


# --- a PostgreSQL cluster of the test's own ---------------------------------------------------------


def pg_binary(name: str) -> str | None:
    """`name` from the newest /usr/lib/postgresql/*/bin, else from PATH."""
    installed = [path for path in Path("/usr/lib/postgresql").glob(f"*/bin/{name}") if path.parts[-3].isdigit()]
    return str(max(installed, key=lambda path: int(path.parts[-3]))) if installed else shutil.which(name)


@dataclass
class Cluster:
    """A PostgreSQL server in `root`, run by `pg_ctl` as `user` (None: as ourselves)."""

    root: Path
    port: int
    pg_ctl: str
    user: str | None

    @property
    def url(self) -> URL:
        return URL.create("postgresql+psycopg", username="postgres", host="127.0.0.1", port=self.port, database="postgres")

    def _run(self, *args: str) -> None:
        command = [*(["runuser", "-u", self.user, "--"] if self.user else []), *args]
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=60)

    def start(self) -> None:
        options = f"-k {self.root / 'sockets'} -p {self.port} -c listen_addresses=127.0.0.1"
        self._run(self.pg_ctl, "-D", str(self.root / "data"), "-l", str(self.root / "server.log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")


@pytest.fixture
def own_postgres() -> Iterator[Cluster]:
    initdb, pg_ctl = pg_binary("initdb"), pg_binary("pg_ctl")
    user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="loopjam-pg-"))  # not under pytest's root-only tmp dirs: postgres must enter it
    cluster: Cluster | None = None
    try:
        if initdb is None or pg_ctl is None:
            raise RuntimeError("initdb and pg_ctl are not installed")
        (root / "sockets").mkdir()
        if user is not None:
            account = pwd.getpwnam(user)
            for path in (root, root / "sockets"):
                os.chown(path, account.pw_uid, account.pw_gid)
        cluster = Cluster(root, free_port(), pg_ctl, user)
        cluster._run(initdb, "-D", str(root / "data"), "-A", "trust", "-U", "postgres", "--no-sync")
        cluster.start()
    except (RuntimeError, OSError, KeyError, subprocess.SubprocessError) as error:
        shutil.rmtree(root, ignore_errors=True)
        detail = getattr(error, "stderr", None) or error
        if in_ci():
            pytest.fail(f"cannot start a PostgreSQL cluster of our own: {detail}", pytrace=False)
        pytest.skip(f"cannot start a PostgreSQL cluster of our own: {detail}")
    try:
        yield cluster
    finally:
        try:
            cluster.stop()
        except subprocess.SubprocessError:
            pass  # already stopped
        shutil.rmtree(root, ignore_errors=True)


# --- the scenario ---------------------------------------------------------------------------------


def loop(user_id: int) -> JobRequest:
    return JobRequest(user_id=user_id, prompt="dusty boom bap", shape=LoopShape(120.0, 1))


def settings_for(tiny_model_dir: Path, data_dir: Path):
    return tiny_settings(tiny_model_dir, data_dir, rate_limit_jobs=100, max_queued_per_user=100, max_queue=100)


def outage_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name.startswith("generation.jobs") and text in record.getMessage()]


def rows_by_status(database: Database) -> dict[GenerationStatus, int]:
    with database.session() as session:
        query = select(Generation.status, func.count()).group_by(Generation.status)
        return dict(session.execute(query).all())


async def ride_out_an_outage(
    service: QueueService,
    database: Database,
    caplog: pytest.LogCaptureFixture,
    break_database: Callable[[], Awaitable[None]],
    mend_database: Callable[[], Awaitable[None]],
) -> None:
    """Submit `JOBS` jobs, break the database while the first batch runs, mend it, and check that nothing was lost."""
    generating = asyncio.Event()
    service.add_listener(lambda e: generating.set() if isinstance(e, JobProgress) and e.stage is Stage.GENERATING else None)
    await service.start()
    events: dict[str, asyncio.Queue[JobEvent]] = {}
    for user_id in range(JOBS):
        accepted = await service.submit(loop(user_id))
        events[accepted.job_id] = service.subscribe(accepted.job_id)  # type: ignore[union-attr]
    await asyncio.wait_for(generating.wait(), 180)

    await break_database()
    with pytest.raises(QueueUnavailable) as refused:
        await service.submit(loop(99))
    assert str(refused.value) == "The queue's database is unreachable right now; please try again in a minute."
    for _ in range(1200):  # the first batch finishes while the database is away: its results cannot be stored yet
        if service.backend.running() == 0:
            break
        await asyncio.sleep(0.1)
    await mend_database()

    finals = await asyncio.gather(*(final_event(service, job_id, queue) for job_id, queue in events.items()))
    assert [type(event).__name__ for event in finals] == ["JobDone"] * JOBS
    assert all(isinstance(event, JobDone) and event.files[0].is_file() for event in finals)
    assert rows_by_status(database) == {GenerationStatus.DONE: JOBS}  # none running or queued, and the refused one not stored
    status = await service.status()
    assert (status.depth, status.running) == (0, 0)
    assert len(outage_lines(caplog, UNREACHABLE)) == 1 and len(outage_lines(caplog, REACHABLE_AGAIN)) == 1
    tracebacks = [r.getMessage() for r in caplog.records if r.name.startswith("generation.jobs") and r.levelno >= logging.ERROR]
    assert tracebacks == []


async def test_a_postgres_outage_while_batches_run_loses_no_job(
    own_postgres: Cluster, tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="generation")
    database = Database(own_postgres.url)
    database.upgrade()
    service = QueueService(settings_for(tiny_model_dir, tmp_path), database)

    async def stop_postgres() -> None:
        await asyncio.to_thread(own_postgres.stop)

    async def start_postgres_later() -> None:
        await asyncio.sleep(OUTAGE_S)
        await asyncio.to_thread(own_postgres.start)

    try:
        await ride_out_an_outage(service, database, caplog, stop_postgres, start_postgres_later)
    finally:
        await service.stop()
        database.dispose()


async def test_sqlite_locked_past_its_busy_timeout_loses_no_job(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="generation")
    path = tmp_path / "loopjam.db"
    database = Database(URL.create("sqlite+pysqlite", database=str(path)), sqlite_busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS)
    database.upgrade()
    service = QueueService(settings_for(tiny_model_dir, tmp_path), database)
    other_writer = sqlite3.connect(path, isolation_level=None)

    async def hold_the_write_lock() -> None:
        other_writer.execute("BEGIN IMMEDIATE")

    async def release_it() -> None:
        await asyncio.sleep(2.0)  # a few tries of storing the result, past the busy timeout each
        other_writer.execute("ROLLBACK")

    try:
        await ride_out_an_outage(service, database, caplog, hold_the_write_lock, release_it)
    finally:
        other_writer.close()
        await service.stop()
        database.dispose()


def test_the_bot_shows_a_user_why_the_queue_refused_during_an_outage() -> None:
    from bot.errors import describe

    assert describe(QueueUnavailable()) == ("The queue's database is unreachable right now; please try again in a minute.", None)
