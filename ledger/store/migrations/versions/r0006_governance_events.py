"""``index_governance``: the contract's role, pause, merchant allowance, reversal window and
EIP-712 domain events, which the index did not mirror before (the indexer's filter now asks the
node for them; an index rebuilt from the chain has them from the deployment on).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Indexed columns: must match ``ledger.store.index.IndexedGovernance``.
INDEXED = ("account", "block_number", "block_time", "kind", "transaction_hash")


def upgrade() -> None:
    op.create_table(
        "index_governance",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", AutoString(length=66), nullable=False),
        sa.Column("block_time", sa.BigInteger(), nullable=False),
        sa.Column("transaction_hash", AutoString(length=66), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("kind", AutoString(length=32), nullable=False),
        sa.Column("role", AutoString(length=66), nullable=True),
        sa.Column("previous_admin_role", AutoString(length=66), nullable=True),
        sa.Column("new_admin_role", AutoString(length=66), nullable=True),
        sa.Column("account", AutoString(length=42), nullable=True),
        sa.Column("sender", AutoString(length=42), nullable=True),
        sa.Column("scheme_id", sa.BigInteger(), nullable=True),
        sa.Column("allowed", sa.Boolean(), nullable=True),
        sa.Column("window_s", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("chain_id", "block_hash", "log_index", name="uq_index_governance_log"),
    )
    with op.batch_alter_table("index_governance", schema=None) as batch_op:
        for column in INDEXED:
            batch_op.create_index(
                batch_op.f(f"ix_index_governance_{column}"), [column], unique=False
            )


def downgrade() -> None:
    with op.batch_alter_table("index_governance", schema=None) as batch_op:
        for column in INDEXED:
            batch_op.drop_index(batch_op.f(f"ix_index_governance_{column}"))
    op.drop_table("index_governance")
