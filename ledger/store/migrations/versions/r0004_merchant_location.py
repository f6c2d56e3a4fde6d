"""Merchants' public location: street, postcode, town, website and opening hours (all optional).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (column, length): must match ``ledger.store.registry.Merchant``
COLUMNS: tuple[tuple[str, int], ...] = (
    ("street", 200),
    ("postcode", 6),
    ("town", 100),
    ("website", 200),
    ("opening_hours", 500),
)


def upgrade() -> None:
    with op.batch_alter_table("registry_merchant", schema=None) as batch_op:
        for name, length in COLUMNS:
            batch_op.add_column(sa.Column(name, AutoString(length=length), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("registry_merchant", schema=None) as batch_op:
        for name, _length in reversed(COLUMNS):
            batch_op.drop_column(name)
