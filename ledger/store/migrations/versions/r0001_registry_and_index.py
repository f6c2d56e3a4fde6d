"""Registry (personal data) and index (chain mirror) tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString, UTCDateTime

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("ledger",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "index_block",
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("hash", AutoString(length=66), nullable=False),
        sa.Column("parent_hash", AutoString(length=66), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("chain_id", "number"),
    )
    with op.batch_alter_table("index_block", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_index_block_hash"), ["hash"], unique=False)

    op.create_table(
        "index_card_change",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", AutoString(length=66), nullable=False),
        sa.Column("block_time", sa.BigInteger(), nullable=False),
        sa.Column("transaction_hash", AutoString(length=66), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("pass_id", AutoString(length=66), nullable=False),
        sa.Column("old_serial", sa.BigInteger(), nullable=False),
        sa.Column("new_serial", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("chain_id", "block_hash", "log_index", name="uq_index_card_change_log"),
    )
    with op.batch_alter_table("index_card_change", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_index_card_change_block_number"), ["block_number"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_index_card_change_block_time"), ["block_time"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_index_card_change_pass_id"), ["pass_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_index_card_change_transaction_hash"), ["transaction_hash"], unique=False
        )

    op.create_table(
        "index_checkpoint",
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("contract", AutoString(length=42), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", AutoString(length=66), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("chain_id", "contract"),
    )
    op.create_table(
        "index_cohort",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", AutoString(length=66), nullable=False),
        sa.Column("block_time", sa.BigInteger(), nullable=False),
        sa.Column("transaction_hash", AutoString(length=66), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("scheme_id", sa.BigInteger(), nullable=False),
        sa.Column("root", AutoString(length=66), nullable=False),
        sa.Column("holder_count", sa.BigInteger(), nullable=False),
        sa.Column("total_amount", sa.Numeric(precision=40, scale=0), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("chain_id", "block_hash", "log_index", name="uq_index_cohort_log"),
    )
    with op.batch_alter_table("index_cohort", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_index_cohort_block_number"), ["block_number"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_index_cohort_block_time"), ["block_time"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_index_cohort_root"), ["root"], unique=False)
        batch_op.create_index(batch_op.f("ix_index_cohort_scheme_id"), ["scheme_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_index_cohort_transaction_hash"), ["transaction_hash"], unique=False
        )

    op.create_table(
        "index_cohort_claim",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", AutoString(length=66), nullable=False),
        sa.Column("block_time", sa.BigInteger(), nullable=False),
        sa.Column("transaction_hash", AutoString(length=66), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("root", AutoString(length=66), nullable=False),
        sa.Column("leaf_index", sa.BigInteger(), nullable=False),
        sa.Column("pass_id", AutoString(length=66), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("unlimited", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "chain_id", "block_hash", "log_index", name="uq_index_cohort_claim_log"
        ),
    )
    with op.batch_alter_table("index_cohort_claim", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_index_cohort_claim_block_number"), ["block_number"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_index_cohort_claim_block_time"), ["block_time"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_index_cohort_claim_pass_id"), ["pass_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_index_cohort_claim_root"), ["root"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_index_cohort_claim_transaction_hash"), ["transaction_hash"], unique=False
        )

    op.create_table(
        "index_entitlement",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", AutoString(length=66), nullable=False),
        sa.Column("block_time", sa.BigInteger(), nullable=False),
        sa.Column("transaction_hash", AutoString(length=66), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("scheme_id", sa.BigInteger(), nullable=False),
        sa.Column("pass_id", AutoString(length=66), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("unlimited", sa.Boolean(), nullable=False),
        sa.Column("source", AutoString(length=16), nullable=False),
        sa.Column("cohort_root", AutoString(length=66), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "chain_id", "block_hash", "log_index", "position", name="uq_index_entitlement_log"
        ),
    )
    with op.batch_alter_table("index_entitlement", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_index_entitlement_block_number"), ["block_number"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_index_entitlement_block_time"), ["block_time"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_index_entitlement_pass_id"), ["pass_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_index_entitlement_scheme_id"), ["scheme_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_index_entitlement_transaction_hash"), ["transaction_hash"], unique=False
        )

    op.create_table(
        "index_expiry",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", AutoString(length=66), nullable=False),
        sa.Column("block_time", sa.BigInteger(), nullable=False),
        sa.Column("transaction_hash", AutoString(length=66), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("scheme_id", sa.BigInteger(), nullable=False),
        sa.Column("pass_id", AutoString(length=66), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("chain_id", "block_hash", "log_index", name="uq_index_expiry_log"),
    )
    with op.batch_alter_table("index_expiry", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_index_expiry_block_number"), ["block_number"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_index_expiry_block_time"), ["block_time"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_index_expiry_pass_id"), ["pass_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_index_expiry_scheme_id"), ["scheme_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_index_expiry_transaction_hash"), ["transaction_hash"], unique=False
        )

    op.create_table(
        "index_pass",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", AutoString(length=66), nullable=False),
        sa.Column("block_time", sa.BigInteger(), nullable=False),
        sa.Column("transaction_hash", AutoString(length=66), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("pass_id", AutoString(length=66), nullable=False),
        sa.Column("holder_key", AutoString(length=42), nullable=True),
        sa.Column("card_serial", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("chain_id", "block_hash", "log_index", name="uq_index_pass_log"),
    )
    with op.batch_alter_table("index_pass", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_index_pass_block_number"), ["block_number"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_index_pass_block_time"), ["block_time"], unique=False)
        batch_op.create_index(batch_op.f("ix_index_pass_pass_id"), ["pass_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_index_pass_transaction_hash"), ["transaction_hash"], unique=False
        )

    op.create_table(
        "index_pass_change",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", AutoString(length=66), nullable=False),
        sa.Column("block_time", sa.BigInteger(), nullable=False),
        sa.Column("transaction_hash", AutoString(length=66), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("pass_id", AutoString(length=66), nullable=False),
        sa.Column("kind", AutoString(length=16), nullable=False),
        sa.Column("holder_key", AutoString(length=42), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("chain_id", "block_hash", "log_index", name="uq_index_pass_change_log"),
    )
    with op.batch_alter_table("index_pass_change", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_index_pass_change_block_number"), ["block_number"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_index_pass_change_block_time"), ["block_time"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_index_pass_change_pass_id"), ["pass_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_index_pass_change_transaction_hash"), ["transaction_hash"], unique=False
        )

    op.create_table(
        "index_redemption",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", AutoString(length=66), nullable=False),
        sa.Column("block_time", sa.BigInteger(), nullable=False),
        sa.Column("transaction_hash", AutoString(length=66), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("redemption_id", AutoString(length=78), nullable=False),
        sa.Column("pass_id", AutoString(length=66), nullable=False),
        sa.Column("scheme_id", sa.BigInteger(), nullable=False),
        sa.Column("merchant", AutoString(length=42), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("debited", sa.BigInteger(), nullable=False),
        sa.Column("discount", sa.BigInteger(), nullable=False),
        sa.Column("credited", sa.BigInteger(), nullable=False),
        sa.Column("receipt_root", AutoString(length=66), nullable=True),
        sa.Column("receipt_position", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("chain_id", "block_hash", "log_index", name="uq_index_redemption_log"),
    )
    with op.batch_alter_table("index_redemption", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_index_redemption_block_number"), ["block_number"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_index_redemption_block_time"), ["block_time"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_index_redemption_merchant"), ["merchant"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_index_redemption_pass_id"), ["pass_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_index_redemption_redemption_id"), ["redemption_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_index_redemption_scheme_id"), ["scheme_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_index_redemption_transaction_hash"), ["transaction_hash"], unique=False
        )

    op.create_table(
        "index_rejection",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", AutoString(length=66), nullable=False),
        sa.Column("block_time", sa.BigInteger(), nullable=False),
        sa.Column("transaction_hash", AutoString(length=66), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("redemption_id", AutoString(length=78), nullable=False),
        sa.Column("reason", AutoString(length=64), nullable=False),
        sa.Column("detail", AutoString(length=66), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("chain_id", "block_hash", "log_index", name="uq_index_rejection_log"),
    )
    with op.batch_alter_table("index_rejection", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_index_rejection_block_number"), ["block_number"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_index_rejection_block_time"), ["block_time"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_index_rejection_redemption_id"), ["redemption_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_index_rejection_transaction_hash"), ["transaction_hash"], unique=False
        )

    op.create_table(
        "index_reversal",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", AutoString(length=66), nullable=False),
        sa.Column("block_time", sa.BigInteger(), nullable=False),
        sa.Column("transaction_hash", AutoString(length=66), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("redemption_id", AutoString(length=78), nullable=False),
        sa.Column("pass_id", AutoString(length=66), nullable=False),
        sa.Column("scheme_id", sa.BigInteger(), nullable=False),
        sa.Column("merchant", AutoString(length=42), nullable=False),
        sa.Column("debited", sa.BigInteger(), nullable=False),
        sa.Column("credited", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("chain_id", "block_hash", "log_index", name="uq_index_reversal_log"),
    )
    with op.batch_alter_table("index_reversal", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_index_reversal_block_number"), ["block_number"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_index_reversal_block_time"), ["block_time"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_index_reversal_merchant"), ["merchant"], unique=False)
        batch_op.create_index(batch_op.f("ix_index_reversal_pass_id"), ["pass_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_index_reversal_redemption_id"), ["redemption_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_index_reversal_scheme_id"), ["scheme_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_index_reversal_transaction_hash"), ["transaction_hash"], unique=False
        )

    op.create_table(
        "index_scheme",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", AutoString(length=66), nullable=False),
        sa.Column("block_time", sa.BigInteger(), nullable=False),
        sa.Column("transaction_hash", AutoString(length=66), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("scheme_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", AutoString(length=16), nullable=False),
        sa.Column("valid_from", sa.BigInteger(), nullable=False),
        sa.Column("valid_until", sa.BigInteger(), nullable=False),
        sa.Column("per_redemption_cap", sa.BigInteger(), nullable=False),
        sa.Column("unit_value", sa.BigInteger(), nullable=False),
        sa.Column("discount_bps", sa.Integer(), nullable=False),
        sa.Column("reimburse_bps", sa.Integer(), nullable=False),
        sa.Column("discount_fixed", sa.BigInteger(), nullable=False),
        sa.Column("budget_cap", sa.Numeric(precision=40, scale=0), nullable=False),
        sa.Column("open_to_all_merchants", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("chain_id", "block_hash", "log_index", name="uq_index_scheme_log"),
    )
    with op.batch_alter_table("index_scheme", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_index_scheme_block_number"), ["block_number"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_index_scheme_block_time"), ["block_time"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_index_scheme_scheme_id"), ["scheme_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_index_scheme_transaction_hash"), ["transaction_hash"], unique=False
        )

    op.create_table(
        "index_settlement",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", AutoString(length=66), nullable=False),
        sa.Column("block_time", sa.BigInteger(), nullable=False),
        sa.Column("transaction_hash", AutoString(length=66), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("merchant", AutoString(length=42), nullable=False),
        sa.Column("payment_reference", AutoString(length=66), nullable=False),
        sa.Column("amount", sa.Numeric(precision=40, scale=0), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("chain_id", "block_hash", "log_index", name="uq_index_settlement_log"),
    )
    with op.batch_alter_table("index_settlement", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_index_settlement_block_number"), ["block_number"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_index_settlement_block_time"), ["block_time"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_index_settlement_merchant"), ["merchant"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_index_settlement_payment_reference"), ["payment_reference"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_index_settlement_transaction_hash"), ["transaction_hash"], unique=False
        )

    op.create_table(
        "registry_district",
        sa.Column("code", AutoString(length=16), nullable=False),
        sa.Column("name", AutoString(length=120), nullable=False),
        sa.Column("municipality", AutoString(length=120), nullable=False),
        sa.PrimaryKeyConstraint("code"),
    )
    op.create_table(
        "registry_household",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reference", AutoString(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("reference"),
    )
    op.create_table(
        "registry_merchant",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", AutoString(length=200), nullable=False),
        sa.Column("kvk_number", AutoString(length=8), nullable=False),
        sa.Column("iban", AutoString(length=34), nullable=True),
        sa.Column("bic", AutoString(length=11), nullable=True),
        sa.Column("category", AutoString(length=64), nullable=False),
        sa.Column("address", AutoString(length=42), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("address"),
    )
    with op.batch_alter_table("registry_merchant", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_registry_merchant_kvk_number"), ["kvk_number"], unique=False
        )

    op.create_table(
        "registry_holder",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("first_name", AutoString(length=120), nullable=False),
        sa.Column("last_name", AutoString(length=120), nullable=False),
        sa.Column("birth_date", sa.Date(), nullable=False),
        sa.Column("postcode", AutoString(length=6), nullable=False),
        sa.Column("district_code", AutoString(length=16), nullable=True),
        sa.Column("household_id", sa.Integer(), nullable=True),
        sa.Column(
            "household_role",
            sa.Enum(
                "parent",
                "child",
                "other",
                name="household_role",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("possible_duplicate_of", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["district_code"],
            ["registry_district.code"],
        ),
        sa.ForeignKeyConstraint(
            ["household_id"],
            ["registry_household.id"],
        ),
        sa.ForeignKeyConstraint(
            ["possible_duplicate_of"], ["registry_holder.id"], ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("registry_holder", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_registry_holder_district_code"), ["district_code"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_registry_holder_household_id"), ["household_id"], unique=False
        )
        batch_op.create_index(
            "ix_registry_holder_identity", ["birth_date", "postcode"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_registry_holder_possible_duplicate_of"),
            ["possible_duplicate_of"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_registry_holder_postcode"), ["postcode"], unique=False)

    op.create_table(
        "registry_postcode_district",
        sa.Column("postcode", AutoString(length=6), nullable=False),
        sa.Column("district_code", AutoString(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["district_code"],
            ["registry_district.code"],
        ),
        sa.PrimaryKeyConstraint("postcode"),
    )
    with op.batch_alter_table("registry_postcode_district", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_registry_postcode_district_district_code"),
            ["district_code"],
            unique=False,
        )

    op.create_table(
        "registry_pass",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("holder_id", sa.Integer(), nullable=False),
        sa.Column("pass_number", AutoString(length=32), nullable=False),
        sa.Column("pass_secret", sa.LargeBinary(length=32), nullable=False),
        sa.Column("pass_id", AutoString(length=66), nullable=False),
        sa.Column("holder_key", AutoString(length=42), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "active",
                "blocked",
                name="pass_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("activation_code_hash", AutoString(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["holder_id"],
            ["registry_holder.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("pass_id"),
        sa.UniqueConstraint("pass_number"),
    )
    with op.batch_alter_table("registry_pass", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_registry_pass_holder_id"), ["holder_id"], unique=False)

    op.create_table(
        "registry_card",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pass_record_id", sa.Integer(), nullable=False),
        sa.Column("serial", sa.BigInteger(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "active",
                "revoked",
                name="card_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["pass_record_id"],
            ["registry_pass.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("pass_record_id", "serial"),
    )
    with op.batch_alter_table("registry_card", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_registry_card_pass_record_id"), ["pass_record_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("registry_card", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_registry_card_pass_record_id"))

    op.drop_table("registry_card")
    with op.batch_alter_table("registry_pass", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_registry_pass_holder_id"))

    op.drop_table("registry_pass")
    with op.batch_alter_table("registry_postcode_district", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_registry_postcode_district_district_code"))

    op.drop_table("registry_postcode_district")
    with op.batch_alter_table("registry_holder", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_registry_holder_postcode"))
        batch_op.drop_index(batch_op.f("ix_registry_holder_possible_duplicate_of"))
        batch_op.drop_index("ix_registry_holder_identity")
        batch_op.drop_index(batch_op.f("ix_registry_holder_household_id"))
        batch_op.drop_index(batch_op.f("ix_registry_holder_district_code"))

    op.drop_table("registry_holder")
    with op.batch_alter_table("registry_merchant", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_registry_merchant_kvk_number"))

    op.drop_table("registry_merchant")
    op.drop_table("registry_household")
    op.drop_table("registry_district")
    with op.batch_alter_table("index_settlement", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_index_settlement_transaction_hash"))
        batch_op.drop_index(batch_op.f("ix_index_settlement_payment_reference"))
        batch_op.drop_index(batch_op.f("ix_index_settlement_merchant"))
        batch_op.drop_index(batch_op.f("ix_index_settlement_block_time"))
        batch_op.drop_index(batch_op.f("ix_index_settlement_block_number"))

    op.drop_table("index_settlement")
    with op.batch_alter_table("index_scheme", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_index_scheme_transaction_hash"))
        batch_op.drop_index(batch_op.f("ix_index_scheme_scheme_id"))
        batch_op.drop_index(batch_op.f("ix_index_scheme_block_time"))
        batch_op.drop_index(batch_op.f("ix_index_scheme_block_number"))

    op.drop_table("index_scheme")
    with op.batch_alter_table("index_reversal", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_index_reversal_transaction_hash"))
        batch_op.drop_index(batch_op.f("ix_index_reversal_scheme_id"))
        batch_op.drop_index(batch_op.f("ix_index_reversal_redemption_id"))
        batch_op.drop_index(batch_op.f("ix_index_reversal_pass_id"))
        batch_op.drop_index(batch_op.f("ix_index_reversal_merchant"))
        batch_op.drop_index(batch_op.f("ix_index_reversal_block_time"))
        batch_op.drop_index(batch_op.f("ix_index_reversal_block_number"))

    op.drop_table("index_reversal")
    with op.batch_alter_table("index_rejection", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_index_rejection_transaction_hash"))
        batch_op.drop_index(batch_op.f("ix_index_rejection_redemption_id"))
        batch_op.drop_index(batch_op.f("ix_index_rejection_block_time"))
        batch_op.drop_index(batch_op.f("ix_index_rejection_block_number"))

    op.drop_table("index_rejection")
    with op.batch_alter_table("index_redemption", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_index_redemption_transaction_hash"))
        batch_op.drop_index(batch_op.f("ix_index_redemption_scheme_id"))
        batch_op.drop_index(batch_op.f("ix_index_redemption_redemption_id"))
        batch_op.drop_index(batch_op.f("ix_index_redemption_pass_id"))
        batch_op.drop_index(batch_op.f("ix_index_redemption_merchant"))
        batch_op.drop_index(batch_op.f("ix_index_redemption_block_time"))
        batch_op.drop_index(batch_op.f("ix_index_redemption_block_number"))

    op.drop_table("index_redemption")
    with op.batch_alter_table("index_pass_change", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_index_pass_change_transaction_hash"))
        batch_op.drop_index(batch_op.f("ix_index_pass_change_pass_id"))
        batch_op.drop_index(batch_op.f("ix_index_pass_change_block_time"))
        batch_op.drop_index(batch_op.f("ix_index_pass_change_block_number"))

    op.drop_table("index_pass_change")
    with op.batch_alter_table("index_pass", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_index_pass_transaction_hash"))
        batch_op.drop_index(batch_op.f("ix_index_pass_pass_id"))
        batch_op.drop_index(batch_op.f("ix_index_pass_block_time"))
        batch_op.drop_index(batch_op.f("ix_index_pass_block_number"))

    op.drop_table("index_pass")
    with op.batch_alter_table("index_expiry", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_index_expiry_transaction_hash"))
        batch_op.drop_index(batch_op.f("ix_index_expiry_scheme_id"))
        batch_op.drop_index(batch_op.f("ix_index_expiry_pass_id"))
        batch_op.drop_index(batch_op.f("ix_index_expiry_block_time"))
        batch_op.drop_index(batch_op.f("ix_index_expiry_block_number"))

    op.drop_table("index_expiry")
    with op.batch_alter_table("index_entitlement", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_index_entitlement_transaction_hash"))
        batch_op.drop_index(batch_op.f("ix_index_entitlement_scheme_id"))
        batch_op.drop_index(batch_op.f("ix_index_entitlement_pass_id"))
        batch_op.drop_index(batch_op.f("ix_index_entitlement_block_time"))
        batch_op.drop_index(batch_op.f("ix_index_entitlement_block_number"))

    op.drop_table("index_entitlement")
    with op.batch_alter_table("index_cohort_claim", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_index_cohort_claim_transaction_hash"))
        batch_op.drop_index(batch_op.f("ix_index_cohort_claim_root"))
        batch_op.drop_index(batch_op.f("ix_index_cohort_claim_pass_id"))
        batch_op.drop_index(batch_op.f("ix_index_cohort_claim_block_time"))
        batch_op.drop_index(batch_op.f("ix_index_cohort_claim_block_number"))

    op.drop_table("index_cohort_claim")
    with op.batch_alter_table("index_cohort", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_index_cohort_transaction_hash"))
        batch_op.drop_index(batch_op.f("ix_index_cohort_scheme_id"))
        batch_op.drop_index(batch_op.f("ix_index_cohort_root"))
        batch_op.drop_index(batch_op.f("ix_index_cohort_block_time"))
        batch_op.drop_index(batch_op.f("ix_index_cohort_block_number"))

    op.drop_table("index_cohort")
    op.drop_table("index_checkpoint")
    with op.batch_alter_table("index_card_change", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_index_card_change_transaction_hash"))
        batch_op.drop_index(batch_op.f("ix_index_card_change_pass_id"))
        batch_op.drop_index(batch_op.f("ix_index_card_change_block_time"))
        batch_op.drop_index(batch_op.f("ix_index_card_change_block_number"))

    op.drop_table("index_card_change")
    with op.batch_alter_table("index_block", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_index_block_hash"))

    op.drop_table("index_block")
