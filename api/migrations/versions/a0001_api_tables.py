"""The API's own tables: redemption requests (idempotency), id sequence, scheme labels, markers.

Revision ID: api_0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision: str = "api_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("api",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_marker",
        sa.Column("name", AutoString(length=64), nullable=False),
        sa.Column("value", AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "api_redemption_request",
        sa.Column("merchant_id", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", AutoString(length=255), nullable=False),
        sa.Column("request_hash", AutoString(length=64), nullable=False),
        sa.Column("redemption_id", sa.BigInteger(), nullable=False),
        sa.Column("token_uri", AutoString(), nullable=False),
        sa.Column("scheme_id", sa.Integer(), nullable=False),
        sa.Column("amount", sa.String(length=20), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "succeeded",
                "failed",
                name="api_redemption_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("tx_hash", AutoString(), nullable=True),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("debited", sa.String(length=20), nullable=True),
        sa.Column("credited", sa.String(length=20), nullable=True),
        sa.Column("discount", sa.String(length=20), nullable=True),
        sa.Column("balance_after", sa.String(length=20), nullable=True),
        sa.Column("problem_code", AutoString(), nullable=True),
        sa.Column("problem_status", sa.Integer(), nullable=True),
        sa.Column("problem_detail", AutoString(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("merchant_id", "idempotency_key"),
    )
    with op.batch_alter_table("api_redemption_request", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_api_redemption_request_redemption_id"), ["redemption_id"], unique=True
        )

    op.create_table(
        "api_scheme_label",
        sa.Column("scheme_id", sa.Integer(), nullable=False),
        sa.Column("name", AutoString(length=200), nullable=False),
        sa.PrimaryKeyConstraint("scheme_id"),
    )
    op.create_table(
        "api_sequence",
        sa.Column("name", AutoString(length=64), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("api_sequence")
    op.drop_table("api_scheme_label")
    with op.batch_alter_table("api_redemption_request", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_redemption_request_redemption_id"))

    op.drop_table("api_redemption_request")
    op.drop_table("api_marker")
