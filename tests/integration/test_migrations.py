"""The Alembic migrations, on SQLite and PostgreSQL: up, down, up again, and equal to the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError

from generation.storage import Base, Database
from generation.storage.migrate import head_revision

TABLES = {"jam_sessions", "jam_layers", "generations", "guild_settings", "deliveries", "interaction_replies"}


def schema_differences(database: Database) -> list:
    """What autogenerate would change to make the database match the models (types included)."""
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
        return compare_metadata(context, Base.metadata)


def user_tables(database: Database) -> set[str]:
    return set(inspect(database.engine).get_table_names()) - {"alembic_version"}


def test_upgrade_downgrade_upgrade_matches_the_models(db_url: URL) -> None:
    database = Database(db_url)
    try:
        assert database.current_revision() is None and user_tables(database) == set()

        database.upgrade()
        assert database.current_revision() == head_revision() and database.is_up_to_date()
        assert user_tables(database) == TABLES
        assert schema_differences(database) == []

        database.downgrade("base")
        assert database.current_revision() is None and user_tables(database) == set()

        database.upgrade()
        assert user_tables(database) == TABLES
        assert schema_differences(database) == []
    finally:
        database.downgrade("base")  # the PostgreSQL database is shared by this module
        database.dispose()


def test_models_have_tables_in_the_migrations() -> None:
    assert set(Base.metadata.tables) == TABLES


def test_the_jam_migration_keeps_every_row_and_what_refers_to_it(db_url: URL) -> None:
    """0006 rebuilds `generations` on SQLite (a new CHECK for the kind "mix"): nothing may cascade away."""
    database = Database(db_url)
    try:
        database.upgrade("0005")
        with database.engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO generations (short_id, request_group, kind, status, user_id, prompt, prompt_sent, bpm, bars,"
                " beats_per_bar, temperature, top_k, top_p, cfg_coef, seed, model, created_at, attempts, audio_format, exact_seed)"
                " VALUES ('loop0001', 'loop0001', 'loop', 'done', 1, 'p', 'p', 92, 4, 4, 1, 250, 0, 3, 7, 'm',"
                " '2026-12-01 00:00:00+00', 1, 'wav', false)"
            ))
            connection.execute(text(
                "INSERT INTO generations (short_id, request_group, kind, status, user_id, prompt, prompt_sent, bpm, bars,"
                " beats_per_bar, temperature, top_k, top_p, cfg_coef, seed, model, created_at, attempts, audio_format, exact_seed,"
                " parent_id) VALUES ('loop0002', 'loop0002', 'variation', 'queued', 1, 'p', 'p', 92, 4, 4, 1, 250, 0, 3, 8, 'm',"
                " '2026-12-01 00:00:00+00', 0, 'wav', false, 1)"
            ))
            connection.execute(text("INSERT INTO deliveries (generation_id, created_at, attempts, next_attempt_at)"
                                    " VALUES (1, '2026-12-01 00:00:00+00', 2, '2026-12-01 00:00:00+00')"))
        database.upgrade()
        with database.engine.begin() as connection:
            assert connection.execute(text("SELECT attempts FROM deliveries")).scalars().all() == [2]
            assert connection.execute(text("SELECT parent_id FROM generations WHERE short_id = 'loop0002'")).scalar() == 1
            connection.execute(text("UPDATE generations SET kind = 'mix' WHERE short_id = 'loop0001'"))
        with pytest.raises(IntegrityError), database.engine.begin() as connection:
            connection.execute(text("UPDATE generations SET kind = 'mashup'"))
        database.downgrade("0005")  # the mix goes, with its delivery; its child loses its parent
        with database.engine.begin() as connection:
            assert connection.execute(text("SELECT short_id, parent_id FROM generations")).all() == [("loop0002", None)]
            assert connection.execute(text("SELECT count(*) FROM deliveries")).scalar() == 0
    finally:
        database.downgrade("base")
        database.dispose()
