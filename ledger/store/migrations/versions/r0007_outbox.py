"""``outbox_tx``: every signed transaction, stored before it is sent (``ledger.store.outbox``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATES = ("signed", "sent", "mined", "final", "failed")


def upgrade() -> None:
    op.create_table(
        "outbox_tx",
        sa.Column("tx_hash", AutoString(length=66), nullable=False),
        sa.Column("sender", AutoString(length=42), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("label", AutoString(length=32), nullable=False),
        sa.Column("refs", sa.Text(), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                *STATES, name="outbox_state", native_enum=False, length=16, create_constraint=True
            ),
            nullable=False,
        ),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("block_hash", AutoString(length=66), nullable=True),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("remined", sa.Boolean(), nullable=False),
        sa.Column("replays", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mined_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("tx_hash"),
    )
    op.create_index("ix_outbox_tx_sender_nonce", "outbox_tx", ["sender", "nonce"])
    op.create_index("ix_outbox_tx_state", "outbox_tx", ["state"])


def downgrade() -> None:
    op.drop_index("ix_outbox_tx_state", table_name="outbox_tx")
    op.drop_index("ix_outbox_tx_sender_nonce", table_name="outbox_tx")
    op.drop_table("outbox_tx")
