"""Activation letters: holders' postal address (street, town) and when a pass was activated.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (column, length): must match ``ledger.store.registry.Holder``
HOLDER_COLUMNS: tuple[tuple[str, int], ...] = (("street", 200), ("town", 100))


def upgrade() -> None:
    with op.batch_alter_table("registry_holder", schema=None) as batch_op:
        for name, length in HOLDER_COLUMNS:
            batch_op.add_column(sa.Column(name, AutoString(length=length), nullable=True))
    with op.batch_alter_table("registry_pass", schema=None) as batch_op:
        batch_op.add_column(sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("registry_pass", schema=None) as batch_op:
        batch_op.drop_column("activated_at")
    with op.batch_alter_table("registry_holder", schema=None) as batch_op:
        for name, _length in reversed(HOLDER_COLUMNS):
            batch_op.drop_column(name)
