"""A holder's PIN is locked after repeated wrong entries at a terminal (``failed_attempts``,
``locked_at``), and wrong entries per terminal are counted (``api_pin_failure``) to throttle
guessing across passes.

Revision ID: api_0006
Revises: api_0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "api_0006"
down_revision: str | Sequence[str] | None = "api_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_holder_pin") as batch_op:
        batch_op.add_column(
            sa.Column("failed_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("locked_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "api_pin_failure",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("terminal", sa.String(length=64), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_api_pin_failure_terminal", "api_pin_failure", ["terminal"])


def downgrade() -> None:
    op.drop_index("ix_api_pin_failure_terminal", "api_pin_failure")
    op.drop_table("api_pin_failure")
    with op.batch_alter_table("api_holder_pin") as batch_op:
        batch_op.drop_column("locked_at")
        batch_op.drop_column("failed_attempts")
