"""An expired unlimited discount entitlement is marked as such (``index_expiry.unlimited``);
before, it was indistinguishable from an expiry of nothing (both stored amount 0).

Rows written before this revision get ``false``; an index rebuilt from the chain into an empty
store marks old expiries of unlimited entitlements too.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("index_expiry", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("unlimited", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("index_expiry", schema=None) as batch_op:
        batch_op.drop_column("unlimited")
