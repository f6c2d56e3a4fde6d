"""Redemption requests remember when their transaction was stored in the outbox (``sent_at``)
and when a confirmed answer was contradicted by the chain (``promise_broken_at``).

Revision ID: api_0003
Revises: api_0002
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "api_0003"
down_revision: str | Sequence[str] | None = "api_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "api_redemption_request", sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "api_redemption_request",
        sa.Column("promise_broken_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    with op.batch_alter_table("api_redemption_request") as batch_op:
        batch_op.drop_column("promise_broken_at")
        batch_op.drop_column("sent_at")
