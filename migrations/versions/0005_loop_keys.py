"""The key of each loop: detected (with a confidence), asked for (a jam's), and the shift between.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("source_key", sa.String(length=16)),
    ("key_confidence", sa.Float()),
    ("target_key", sa.String(length=16)),
    ("key_shift_semitones", sa.Integer()),
)


def upgrade() -> None:
    # Plain ALTERs, as in 0002: no copy of the table.
    for name, kind in COLUMNS:
        op.add_column("generations", sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    for name, _ in reversed(COLUMNS):
        op.drop_column("generations", name)
