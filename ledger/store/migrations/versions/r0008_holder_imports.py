"""Migration from an old pass system: imported holders and opening balances (``ledger.imports``).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATES = ("pending", "sent", "done")


def _state() -> sa.Enum:
    return sa.Enum(
        *STATES, name="migration_chain_state", native_enum=False, length=16, create_constraint=True
    )


def upgrade() -> None:
    op.create_table(
        "registry_migrated_holder",
        sa.Column("external_reference", AutoString(length=64), nullable=False),
        sa.Column("holder_id", sa.Integer(), nullable=False),
        sa.Column("pass_record_id", sa.Integer(), nullable=False),
        sa.Column("card_serial", sa.BigInteger(), nullable=False),
        sa.Column("fingerprint", AutoString(length=64), nullable=False),
        sa.Column("chain_state", _state(), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["holder_id"], ["registry_holder.id"]),
        sa.ForeignKeyConstraint(["pass_record_id"], ["registry_pass.id"]),
        sa.PrimaryKeyConstraint("external_reference"),
    )
    for column in ("holder_id", "pass_record_id", "chain_state"):
        op.create_index(
            f"ix_registry_migrated_holder_{column}", "registry_migrated_holder", [column]
        )
    op.create_table(
        "index_migrated_balance",
        sa.Column("scheme_id", sa.BigInteger(), nullable=False),
        sa.Column("pass_id", AutoString(length=66), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("reference", AutoString(length=64), nullable=False),
        sa.Column("chain_state", _state(), nullable=False),
        sa.Column("batch", sa.BigInteger(), nullable=True),
        sa.Column("transaction_hash", AutoString(length=66), nullable=True),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scheme_id", "pass_id"),
    )
    for column in ("chain_state", "batch", "transaction_hash"):
        op.create_index(f"ix_index_migrated_balance_{column}", "index_migrated_balance", [column])


def downgrade() -> None:
    for column in ("chain_state", "batch", "transaction_hash"):
        op.drop_index(f"ix_index_migrated_balance_{column}", table_name="index_migrated_balance")
    op.drop_table("index_migrated_balance")
    for column in ("holder_id", "pass_record_id", "chain_state"):
        op.drop_index(
            f"ix_registry_migrated_holder_{column}", table_name="registry_migrated_holder"
        )
    op.drop_table("registry_migrated_holder")
