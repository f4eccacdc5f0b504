"""Fixtures for the storage tests: every test runs on SQLite and on PostgreSQL.

PostgreSQL comes from `LOOPJAM_TEST_POSTGRES_URL` (default: the local server's `postgres`
database); each test module gets a throwaway database of its own, dropped at the end. Without a
server the PostgreSQL cases skip with the reason, except in CI (`CI` set), where they fail.
Import the fixtures into a test module with `from storage_fixtures import ...`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError

from generation.storage import Base, Database, NewGeneration, redact

POSTGRES_URL_ENV = "LOOPJAM_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


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


LOOP_REQUEST = NewGeneration(
    user_id=111111111111111111,
    guild_id=222222222222222222,
    channel_id=333333333333333333,
    prompt="dusty boom bap, vinyl crackle",
    prompt_sent="dusty boom bap, vinyl crackle, 92 bpm",
    bpm=92.0,
    bars=4,
    beats_per_bar=4,
    temperature=1.0,
    top_k=250,
    top_p=0.0,
    cfg_coef=3.0,
    seed=2**40 + 7,
    model="facebook/musicgen-small",
)


def loop_request(**changes) -> NewGeneration:
    """`LOOP_REQUEST` with some fields changed."""
    return replace(LOOP_REQUEST, **changes)
