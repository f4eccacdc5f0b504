"""The loop's grid error: how far its onsets sit from the beat grid, measured on the loop itself (issue #13).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ALTER, as in 0005: no copy of the table.
    op.add_column("generations", sa.Column("grid_error_ms", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("generations", "grid_error_ms")
