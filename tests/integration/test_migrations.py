"""The Alembic migrations, on SQLite and PostgreSQL: up, down, up again, and equal to the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import URL

from generation.storage import Base, Database
from generation.storage.migrate import head_revision

TABLES = {"generations", "guild_settings", "deliveries", "interaction_replies"}


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
