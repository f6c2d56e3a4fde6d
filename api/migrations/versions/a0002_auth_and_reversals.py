"""Auth (staff users, merchant terminals, holder PINs) and reversals of redemption requests.

Revision ID: api_0002
Revises: api_0001
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision: str = "api_0002"
down_revision: str | Sequence[str] | None = "api_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_staff_user",
        sa.Column("username", AutoString(length=64), nullable=False),
        sa.Column("password_hash", AutoString(length=200), nullable=False),
        sa.Column("role", AutoString(length=16), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("username"),
    )
    op.create_table(
        "api_terminal",
        sa.Column("terminal_id", AutoString(length=64), nullable=False),
        sa.Column("merchant_id", sa.Integer(), nullable=False),
        sa.Column("secret_hash", AutoString(length=200), nullable=False),
        sa.Column("label", AutoString(length=120), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("terminal_id"),
    )
    with op.batch_alter_table("api_terminal", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_api_terminal_merchant_id"), ["merchant_id"], unique=False
        )
    op.create_table(
        "api_holder_pin",
        sa.Column("pass_number", AutoString(length=32), nullable=False),
        sa.Column("pin_hash", AutoString(length=200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pass_number"),
    )
    with op.batch_alter_table("api_redemption_request", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reversal_tx_hash", AutoString(), nullable=True))
        batch_op.add_column(sa.Column("reversal_block_number", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("reversed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_redemption_request", schema=None) as batch_op:
        batch_op.drop_column("reversed_at")
        batch_op.drop_column("reversal_block_number")
        batch_op.drop_column("reversal_tx_hash")
    op.drop_table("api_holder_pin")
    with op.batch_alter_table("api_terminal", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_terminal_merchant_id"))
    op.drop_table("api_terminal")
    op.drop_table("api_staff_user")
