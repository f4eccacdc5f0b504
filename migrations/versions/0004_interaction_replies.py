"""Interaction replies to resume after a graceful restart: application id, token, created_at.

The token is a short-lived secret: rows live only from a graceful stop to the next start
(`generation.storage.models.InteractionReply`).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "interaction_replies",
        sa.Column("job_id", sa.String(length=8), nullable=False),
        sa.Column("application_id", sa.BigInteger(), nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["generations.short_id"], name="fk_interaction_replies_job_id_generations", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", name="pk_interaction_replies"),
    )


def downgrade() -> None:
    op.drop_table("interaction_replies")
