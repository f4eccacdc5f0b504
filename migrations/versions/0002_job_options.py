"""Job options in the history: audio format, exact seed, a loopify's source file.

A job rebuilt from the history after a restart keeps its options. Loopify rows used to keep
their source file in `prompt_sent`; it moves to `source_path`, and `prompt_sent` gets the prompt.
Queued and running replays were rebuilt as exact-seed jobs; they are marked so.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A lightweight table, not the model: a migration must not change when the code does.
generations = sa.table(
    "generations",
    sa.column("kind", sa.String),
    sa.column("status", sa.String),
    sa.column("prompt", sa.Text),
    sa.column("prompt_sent", sa.Text),
    sa.column("exact_seed", sa.Boolean),
    sa.column("source_path", sa.Text),
)
UNFINISHED = ("queued", "running")


def upgrade() -> None:
    # Plain ALTERs (SQLite has had ADD/DROP COLUMN since 3.35): no copy of the table.
    op.add_column("generations", sa.Column("audio_format", sa.String(length=8), server_default="wav", nullable=False))
    op.add_column("generations", sa.Column("exact_seed", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.add_column("generations", sa.Column("source_path", sa.Text(), nullable=True))
    op.execute(
        generations.update()
        .where(generations.c.kind == "loopify")
        .values(source_path=generations.c.prompt_sent, prompt_sent=generations.c.prompt)
    )
    op.execute(
        generations.update()
        .where(generations.c.kind == "replay", generations.c.status.in_(UNFINISHED))
        .values(exact_seed=sa.true())
    )


def downgrade() -> None:
    op.execute(
        generations.update()
        .where(generations.c.kind == "loopify", generations.c.source_path.is_not(None))
        .values(prompt_sent=generations.c.source_path)
    )
    op.drop_column("generations", "source_path")
    op.drop_column("generations", "exact_seed")
    op.drop_column("generations", "audio_format")
