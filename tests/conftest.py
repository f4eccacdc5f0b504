"""Fixtures shared by every test layer: the tiny MusicGen, the databases, Redis.

Helpers that are not fixtures live in tests/support/ (on the path through `pythonpath` in
pyproject.toml): the Discord API double, the MIDI corpus, and the queue and storage helpers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError
from storage_helpers import in_ci

from generation.storage import Base, Database, redact

POSTGRES_URL_ENV = "LOOPJAM_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS_URL_ENV = "LOOPJAM_TEST_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MusicGen written by `loopjam model tiny`'s code, loaded like real weights."""
    from generation.model import TINY, write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("models") / "tiny", TINY, seed=0)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path):
    """One engine for the session: loading is the slow part, and the engine keeps no request state."""
    from generation.engine import MusicGenEngine

    return MusicGenEngine.load(str(tiny_model_dir), "cpu")


# --- databases: every storage test runs on SQLite and on PostgreSQL ---------------------------
# PostgreSQL comes from `LOOPJAM_TEST_POSTGRES_URL` (default: the local server's `postgres`
# database); each test module gets a throwaway database of its own, dropped at the end. Without a
# server the PostgreSQL cases skip with the reason, except in CI (`CI` set), where they fail.


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[URL]:
    """The URL of a fresh PostgreSQL database, for this test module only."""
    server_url = make_url(os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL))
    name = f"loopjam_test_{uuid.uuid4().hex[:12]}"
    # CREATE/DROP DATABASE cannot run inside a transaction.
    server = create_engine(server_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    unreachable = None
    try:
        with server.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except OperationalError as error:
        unreachable = redact(str(error.orig).strip().splitlines()[0], server_url)
    if unreachable is not None:
        server.dispose()
        reason = f"PostgreSQL unreachable at {server_url.render_as_string(hide_password=True)} ({unreachable})"
        if in_ci():
            pytest.fail(f"{reason}; CI must run the PostgreSQL tests", pytrace=False)
        pytest.skip(f"{reason}; set {POSTGRES_URL_ENV} to run them")
    try:
        yield server_url.set(database=name)
    finally:
        with server.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        server.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path) -> URL:
    """A URL of an empty (SQLite) or module-shared (PostgreSQL) database."""
    if request.param == "sqlite":
        return URL.create("sqlite+pysqlite", database=str(tmp_path / "loopjam.db"))
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def database(db_url: URL) -> Iterator[Database]:
    """A migrated database, emptied after the test (the PostgreSQL one is shared by the module)."""
    db = Database(db_url)
    db.upgrade()
    try:
        yield db
    finally:
        with db.session() as session:
            for table in reversed(Base.metadata.sorted_tables):
                session.execute(table.delete())
        db.dispose()


@pytest.fixture(scope="module")
def redis_url() -> str:
    """The test Redis; skips (fails in CI) when it does not answer."""
    from redis import Redis
    from redis.exceptions import RedisError

    url = os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL)
    try:
        Redis.from_url(url, socket_connect_timeout=3).ping()
    except RedisError as error:
        reason = f"Redis unreachable at {url} ({error})"
        if in_ci():
            pytest.fail(f"{reason}; CI must run the distributed tests", pytrace=False)
        pytest.skip(f"{reason}; set {REDIS_URL_ENV} to run them")
    return url
