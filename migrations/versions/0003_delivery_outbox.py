"""The delivery outbox: a refused post is retried with backoff, and given up after a while.

Deliveries get `next_attempt_at` (when to try again; existing rows are due at once) and
`given_up_at`; a generation whose delivery was given up keeps why in `delivery_error`.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A lightweight table, not the model: a migration must not change when the code does.
deliveries = sa.table("deliveries", sa.column("created_at", sa.DateTime), sa.column("next_attempt_at", sa.DateTime))


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("deliveries", sa.Column("given_up_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(deliveries.update().values(next_attempt_at=deliveries.c.created_at))
    # SQLite cannot add a NOT NULL column without a constant default: filled first, then constrained.
    with op.batch_alter_table("deliveries") as batch:
        batch.alter_column("next_attempt_at", existing_type=sa.DateTime(timezone=True), nullable=False)
    op.create_index("ix_deliveries_next_attempt_at", "deliveries", ["next_attempt_at"])
    op.add_column("generations", sa.Column("delivery_error", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("generations", "delivery_error")
    op.drop_index("ix_deliveries_next_attempt_at", table_name="deliveries")
    op.drop_column("deliveries", "given_up_at")
    op.drop_column("deliveries", "next_attempt_at")
