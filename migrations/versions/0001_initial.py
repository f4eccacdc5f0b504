"""Initial schema: generations, guild settings, pending deliveries.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Kept here, not imported from the models: a migration must not change when the code does.
GENERATION_KINDS = ("loop", "variation", "reroll", "double", "loopify", "replay")
GENERATION_STATUSES = ("queued", "running", "done", "failed", "cancelled")


def _timestamp(name: str, nullable: bool) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _string_enum(name: str, values: Sequence[str]) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def upgrade() -> None:
    op.create_table(
        "generations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("short_id", sa.String(length=8), nullable=False),
        sa.Column("request_group", sa.String(length=8), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("kind", _string_enum("generation_kind", GENERATION_KINDS), nullable=False),
        sa.Column("status", _string_enum("generation_status", GENERATION_STATUSES), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("channel_id", sa.BigInteger(), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("prompt_sent", sa.Text(), nullable=False),
        sa.Column("bpm", sa.Float(), nullable=False),
        sa.Column("bars", sa.Integer(), nullable=False),
        sa.Column("beats_per_bar", sa.Integer(), nullable=False),
        sa.Column("temperature", sa.Float(), nullable=False),
        sa.Column("top_k", sa.Integer(), nullable=False),
        sa.Column("top_p", sa.Float(), nullable=False),
        sa.Column("cfg_coef", sa.Float(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        _timestamp("created_at", nullable=False),
        _timestamp("started_at", nullable=True),
        _timestamp("finished_at", nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("source_bpm", sa.Float(), nullable=True),
        sa.Column("stretch_ratio", sa.Float(), nullable=True),
        sa.Column("source_start_seconds", sa.Float(), nullable=True),
        sa.Column("downbeat_confidence", sa.Float(), nullable=True),
        sa.Column("seam_score", sa.Float(), nullable=True),
        sa.Column("tempo_stability", sa.Float(), nullable=True),
        sa.Column("loudness_lufs", sa.Float(), nullable=True),
        sa.Column("verdict", sa.String(length=32), nullable=True),
        sa.Column("verdict_reason", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("audio_path", sa.Text(), nullable=True),
        sa.Column("posted_message_id", sa.BigInteger(), nullable=True),
        sa.Column("posted_channel_id", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["generations.id"], name="fk_generations_parent_id_generations", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_generations"),
    )
    op.create_index("ix_generations_short_id", "generations", ["short_id"], unique=True)
    op.create_index("ix_generations_request_group", "generations", ["request_group"])
    op.create_index("ix_generations_user_id_created_at", "generations", ["user_id", "created_at"])
    op.create_index("ix_generations_guild_id_created_at", "generations", ["guild_id", "created_at"])
    op.create_index("ix_generations_status_created_at", "generations", ["status", "created_at"])

    op.create_table(
        "guild_settings",
        sa.Column("guild_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("rate_limit_jobs", sa.Integer(), nullable=True),
        sa.Column("rate_limit_window_s", sa.Float(), nullable=True),
        sa.Column("max_queued_per_user", sa.Integer(), nullable=True),
        sa.Column("exempt_role_ids", sa.JSON(), nullable=False),
        sa.Column("allowed_channel_ids", sa.JSON(), nullable=False),
        sa.Column("default_model", sa.String(length=200), nullable=True),
        sa.Column("max_bars", sa.Integer(), nullable=True),
        _timestamp("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("guild_id", name="pk_guild_settings"),
    )

    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation_id", sa.Integer(), nullable=False),
        _timestamp("created_at", nullable=False),
        _timestamp("delivered_at", nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["generation_id"], ["generations.id"], name="fk_deliveries_generation_id_generations", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_deliveries"),
    )
    op.create_index("ix_deliveries_generation_id", "deliveries", ["generation_id"])
    op.create_index("ix_deliveries_delivered_at", "deliveries", ["delivered_at"])


def downgrade() -> None:
    # Dropping a table drops its indexes too.
    op.drop_table("deliveries")
    op.drop_table("guild_settings")
    op.drop_table("generations")
