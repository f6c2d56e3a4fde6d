"""Payout runs and lines (settlement); covering indexes on the index tables for the reports.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (name, table, columns): must match ``ledger.store.payouts.REPORT_INDEXES``
REPORT_INDEXES: tuple[tuple[str, str, list[str]], ...] = (
    (
        "ix_report_redemption_scheme_pass",
        "index_redemption",
        ["scheme_id", "pass_id", "block_time", "debited", "credited"],
    ),
    (
        "ix_report_redemption_merchant_time",
        "index_redemption",
        ["merchant", "block_time", "amount", "discount", "credited"],
    ),
    (
        "ix_report_entitlement_scheme_pass",
        "index_entitlement",
        ["scheme_id", "pass_id", "block_time"],
    ),
    ("ix_report_reversal_merchant_time", "index_reversal", ["merchant", "block_time"]),
    ("ix_report_expiry_scheme_pass", "index_expiry", ["scheme_id", "pass_id"]),
    ("ix_report_settlement_merchant_time", "index_settlement", ["merchant", "block_time"]),
)


def upgrade() -> None:
    op.create_table(
        "payout_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reference", AutoString(length=35), nullable=False),
        sa.Column("period_start", sa.BigInteger(), nullable=False),
        sa.Column("period_end", sa.BigInteger(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "confirmed",
                "cancelled",
                name="run_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("schema_name", AutoString(length=20), nullable=False),
        sa.Column("execution_date", AutoString(length=10), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("transactions", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("contract", AutoString(length=42), nullable=False),
        sa.Column("document", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("reference"),
    )
    with op.batch_alter_table("payout_run", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_payout_run_period_start"), ["period_start"])
        batch_op.create_index(batch_op.f("ix_payout_run_period_end"), ["period_end"])

    op.create_table(
        "payout_line",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("merchant", AutoString(length=42), nullable=False),
        sa.Column("merchant_name", AutoString(length=200), nullable=False),
        sa.Column("iban", AutoString(length=34), nullable=True),
        sa.Column("bic", AutoString(length=11), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "included",
                "settled",
                "failed",
                "invalid_iban",
                "in_pending_run",
                name="line_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("end_to_end_id", AutoString(length=35), nullable=True),
        sa.Column("payment_reference", AutoString(length=66), nullable=False),
        sa.Column("settle_tx", AutoString(length=66), nullable=True),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["payout_run.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "merchant", name="uq_payout_line_merchant"),
    )
    with op.batch_alter_table("payout_line", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_payout_line_run_id"), ["run_id"])
        batch_op.create_index(batch_op.f("ix_payout_line_merchant"), ["merchant"])
        batch_op.create_index(batch_op.f("ix_payout_line_payment_reference"), ["payment_reference"])

    for name, table, columns in REPORT_INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _columns in reversed(REPORT_INDEXES):
        op.drop_index(name, table_name=table)
    with op.batch_alter_table("payout_line", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payout_line_payment_reference"))
        batch_op.drop_index(batch_op.f("ix_payout_line_merchant"))
        batch_op.drop_index(batch_op.f("ix_payout_line_run_id"))
    op.drop_table("payout_line")
    with op.batch_alter_table("payout_run", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payout_run_period_end"))
        batch_op.drop_index(batch_op.f("ix_payout_run_period_start"))
    op.drop_table("payout_run")
