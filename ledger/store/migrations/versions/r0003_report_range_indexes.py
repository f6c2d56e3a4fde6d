"""Covering index for the per-scheme report's range aggregates over time.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (name, table, columns): must match ``ledger.store.report_indexes.RANGE_INDEXES``
RANGE_INDEXES: tuple[tuple[str, str, list[str]], ...] = (
    (
        "ix_report_redemption_scheme_time",
        "index_redemption",
        ["scheme_id", "block_time", "debited", "credited"],
    ),
)


def upgrade() -> None:
    for name, table, columns in RANGE_INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _columns in reversed(RANGE_INDEXES):
        op.drop_index(name, table_name=table)
