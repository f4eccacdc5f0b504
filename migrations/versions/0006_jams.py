"""Jam sessions: a channel's shared tempo, bars, meter and key, its layers, and mixes of them.

Adds `jam_sessions`, `jam_layers`, and to `generations` the jam a loop was made in, a mix's
layers, and the kind "mix" (the kinds' CHECK constraint is rebuilt: on SQLite, by copying the
table, which `storage.migrate` runs with foreign keys off so that nothing cascades).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KIND_CHECK = "generation_kind"
"""Named by the naming convention: the constraint is ck_generations_generation_kind."""
KINDS = ("loop", "variation", "reroll", "double", "loopify", "replay")


def _kinds(values: Sequence[str]) -> str:
    return "kind IN ({})".format(", ".join(f"'{value}'" for value in values))


def upgrade() -> None:
    op.create_table(
        "jam_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("channel_id", sa.BigInteger(), nullable=False),
        sa.Column("started_by", sa.BigInteger(), nullable=False),
        sa.Column("bpm", sa.Float(), nullable=False),
        sa.Column("bars", sa.Integer(), nullable=False),
        sa.Column("beats_per_bar", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=16), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_active_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_reason", sa.String(length=16), nullable=True),
        sa.Column("card_message_id", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jam_sessions"),
    )
    op.create_index(
        "ix_jam_sessions_running_channel", "jam_sessions", ["channel_id"], unique=True,
        sqlite_where=sa.text("ended_at IS NULL"), postgresql_where=sa.text("ended_at IS NULL"),
    )
    op.create_table(
        "jam_layers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("jam_id", sa.Integer(), nullable=False),
        sa.Column("generation_id", sa.Integer(), nullable=False),
        sa.Column("added_by", sa.BigInteger(), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["generation_id"], ["generations.id"], name="fk_jam_layers_generation_id_generations",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["jam_id"], ["jam_sessions.id"], name="fk_jam_layers_jam_id_jam_sessions", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_jam_layers"),
        sa.UniqueConstraint("jam_id", "generation_id", name="uq_jam_layers_jam_id_generation_id"),
    )
    op.create_index("ix_jam_layers_jam_id", "jam_layers", ["jam_id"])
    with op.batch_alter_table("generations", recreate="auto") as batch:
        batch.add_column(sa.Column("jam_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("mix_loop_ids", sa.JSON(), nullable=True))
        batch.create_index("ix_generations_jam_id", ["jam_id"])
        batch.create_foreign_key("fk_generations_jam_id_jam_sessions", "jam_sessions", ["jam_id"], ["id"], ondelete="SET NULL")
        batch.drop_constraint(KIND_CHECK, type_="check")
        batch.create_check_constraint(KIND_CHECK, sa.text(_kinds((*KINDS, "mix"))))


def downgrade() -> None:
    # Foreign keys are off on SQLite while migrating: what refers to a mix goes with it by hand.
    mixes = "SELECT id FROM generations WHERE kind = 'mix'"
    op.execute(sa.text(f"DELETE FROM deliveries WHERE generation_id IN ({mixes})"))
    op.execute(sa.text("DELETE FROM interaction_replies WHERE job_id IN (SELECT short_id FROM generations WHERE kind = 'mix')"))
    op.execute(sa.text(f"UPDATE generations SET parent_id = NULL WHERE parent_id IN ({mixes})"))
    op.execute(sa.text("DELETE FROM generations WHERE kind = 'mix'"))
    with op.batch_alter_table("generations", recreate="auto") as batch:
        batch.drop_constraint(KIND_CHECK, type_="check")
        batch.create_check_constraint(KIND_CHECK, sa.text(_kinds(KINDS)))
        batch.drop_constraint("fk_generations_jam_id_jam_sessions", type_="foreignkey")
        batch.drop_index("ix_generations_jam_id")
        batch.drop_column("mix_loop_ids")
        batch.drop_column("jam_id")
    op.drop_index("ix_jam_layers_jam_id", table_name="jam_layers")
    op.drop_table("jam_layers")
    op.drop_index("ix_jam_sessions_running_channel", table_name="jam_sessions")
    op.drop_table("jam_sessions")
