"""Alembic environment. Migrations run through `generation.storage.migrate` (`loopjam db ...`),
which hands over an open connection, so no URL (and no password) passes through Alembic's config.
"""

from alembic import context

from generation.storage.models import Base

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("Run migrations with `loopjam db upgrade`; it passes the connection to use.")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things; batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
