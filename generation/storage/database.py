"""The engine and units of work: SQLite in the data directory by default, PostgreSQL by URL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, NoSuchModuleError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from ..config import StorageSettings
from . import migrate

SQLITE_FILE_NAME = "loopjam.db"
SUPPORTED_BACKENDS = ("sqlite", "postgresql")
EXAMPLE_URL = "postgresql://user:password@host:5432/loopjam"
SQLITE_BUSY_TIMEOUT_MS = 10_000
READ_ONLY = "loopjam_read_only"
"""Execution option of `Database.reading()` connections: SQLite begins them without the write lock."""


class InvalidDatabaseUrl(ValueError):
    """`storage.database_url` cannot be used; the message says why in one line, never with the URL's password."""


def database_url(storage: StorageSettings) -> URL:
    """The configured URL, or the SQLite file in the data directory when none is set.

    Raises `InvalidDatabaseUrl` for a URL that does not parse or names no database LoopJam can use.
    """
    if storage.database_url is None:
        return URL.create("sqlite+pysqlite", database=str(storage.data_dir / SQLITE_FILE_NAME))
    try:
        url = make_url(storage.database_url.get_secret_value())
    except ArgumentError:
        raise InvalidDatabaseUrl(f"it is not a URL like {EXAMPLE_URL}") from None
    except ValueError:  # SQLAlchemy's int() of the port; its message holds only the port, but say it plainly
        raise InvalidDatabaseUrl(f"its port is not a number (expected a URL like {EXAMPLE_URL})") from None
    if url.drivername in ("postgresql", "postgres"):
        # psycopg 3 is the driver we ship; SQLAlchemy's default for bare "postgresql" is psycopg2.
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in SUPPORTED_BACKENDS:
        raise InvalidDatabaseUrl(f"{url.get_backend_name()!r} is not supported: use PostgreSQL ({EXAMPLE_URL}) or SQLite")
    try:
        url.get_dialect().import_dbapi()
    except (NoSuchModuleError, ImportError):
        raise InvalidDatabaseUrl(f"the driver {url.drivername!r} is not installed: use postgresql:// (psycopg 3) or sqlite://") from None
    return url


def redact(text: str, url: URL) -> str:
    """`text` with the URL's password blanked out, for driver messages that might echo it."""
    password = url.password
    return text.replace(str(password), "***") if password else text


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` says the database cannot be reached or is locked right now, so that the same
    work may succeed later (server down, connection lost, SQLite "database is locked"), rather than
    that the work itself is wrong."""
    if isinstance(error, OperationalError | InterfaceError | PoolTimeoutError):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, emit BEGIN (see on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL: readers (history, the bot) never block the worker writing results.
        cursor.execute("PRAGMA journal_mode=WAL")
        # With WAL, NORMAL syncs at checkpoints, not at every commit: a crash cannot corrupt the
        # database, and each queue admission no longer waits for a disk flush.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Any) -> None:
        if connection.get_execution_options().get(READ_ONLY):
            # Under WAL a reader sees a snapshot and never waits for the writer, nor it for him.
            connection.exec_driver_sql("BEGIN")
            return
        # Take the write lock up front: a deferred transaction that later writes fails with
        # SQLITE_BUSY at once instead of waiting, which would break the queue's exact limits.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """Holds the engine; `session()` is one unit of work.

    `sqlite_busy_timeout_ms`: how long a SQLite writer waits for another's lock before "database is
    locked" (tests shorten it).
    """

    def __init__(self, url: URL | str, *, sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS) -> None:
        self.url = make_url(url)
        is_sqlite = self.url.get_backend_name() == "sqlite"
        if is_sqlite and self.url.database not in (None, "", ":memory:"):
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        # Pre-ping: a long-running bot outlives server-side connection timeouts.
        self.engine = create_engine(self.url, pool_pre_ping=not is_sqlite)
        if is_sqlite:
            _configure_sqlite(self.engine, sqlite_busy_timeout_ms)
        # Objects stay readable after commit: callers get rows out of a unit of work.
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)

    @classmethod
    def from_settings(cls, storage: StorageSettings) -> Database:
        return cls(database_url(storage))

    @property
    def display_url(self) -> str:
        """The URL with its password hidden: the only form of it ever shown or logged."""
        return self.url.render_as_string(hide_password=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block ends and rolls back when it raises."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A unit of work that only reads. On SQLite it does not take the write lock, so the
        bot's lookups never queue behind (or sleep in the busy handler for) the queue's writes."""
        with self._read_sessions() as session, session.begin():
            yield session

    def upgrade(self, revision: str = "head") -> None:
        migrate.upgrade(self.engine, revision)

    def downgrade(self, revision: str) -> None:
        migrate.downgrade(self.engine, revision)

    def current_revision(self) -> str | None:
        return migrate.current_revision(self.engine)

    def is_up_to_date(self) -> bool:
        return self.current_revision() == migrate.head_revision()

    def dispose(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Database({self.display_url})"
