"""Payout runs: what the municipality pays its merchants (SEPA pain.001) and their settlement.

A :class:`PayoutRun` covers a period ``[period_start, period_end)`` (unix seconds) and holds the
pain.001 file it produced; each :class:`PayoutLine` is one merchant of the run: included (with
an end-to-end id and the on-chain payment reference), or reported (no valid IBAN, already in a
pending run) with the reason. A run is ``pending`` until the municipality confirms the bank paid
it (``confirmed``), or ``cancelled``. Confirming records each included line on chain with
``settle(merchant, amount, paymentReference)``; a line is ``settled`` once that is done.

This module also declares the indexes the reports and the settlement need on the index tables
(created by this module's migration revision, ``0002``).
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Enum, Index, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from ledger.store.index import (
    IndexedEntitlement,
    IndexedExpiry,
    IndexedRedemption,
    IndexedReversal,
    IndexedSettlement,
)

__all__ = ["REPORT_INDEXES", "LineStatus", "PayoutLine", "PayoutRun", "RunStatus"]


class RunStatus(enum.StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"


class LineStatus(enum.StrEnum):
    INCLUDED = "included"  # in the pain.001 file, not yet recorded on chain
    SETTLED = "settled"  # recorded on chain
    FAILED = "failed"  # the chain refused the settlement (see ``error``); retried on confirm
    INVALID_IBAN = "invalid_iban"  # reported, not paid
    IN_PENDING_RUN = "in_pending_run"  # reported, not paid: another pending run pays it


def _values(cls: type[enum.StrEnum]) -> list[str]:
    return [member.value for member in cls]


def _enum(cls: type[enum.StrEnum], name: str) -> Enum:
    return Enum(
        cls,
        name=name,
        native_enum=False,
        length=16,
        values_callable=_values,
        create_constraint=True,
        validate_strings=True,
    )


class PayoutRun(SQLModel, table=True):
    __tablename__ = "payout_run"

    id: int | None = Field(default=None, primary_key=True)
    reference: str = Field(unique=True, max_length=35, description="batch reference (MsgId)")
    period_start: int = Field(sa_type=BigInteger, index=True)
    period_end: int = Field(sa_type=BigInteger, index=True)
    status: RunStatus = Field(default=RunStatus.PENDING, sa_type=_enum(RunStatus, "run_status"))
    schema_name: str = Field(max_length=20)  # pain.001.001.03 | pain.001.001.09
    execution_date: str = Field(max_length=10)  # ISO date
    total: int = Field(sa_type=BigInteger)  # cents of the included lines
    transactions: int
    chain_id: int = Field(sa_type=BigInteger)
    contract: str = Field(max_length=42)
    document: bytes = Field(sa_type=LargeBinary)  # the pain.001 XML as produced
    created_at: datetime = Field(sa_type=DateTime(timezone=True))
    confirmed_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    cancelled_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    note: str | None = Field(default=None, sa_type=Text)


class PayoutLine(SQLModel, table=True):
    __tablename__ = "payout_line"
    __table_args__ = (UniqueConstraint("run_id", "merchant", name="uq_payout_line_merchant"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="payout_run.id", index=True)
    merchant: str = Field(max_length=42, index=True)  # checksummed chain address
    merchant_name: str = Field(max_length=200)
    iban: str | None = Field(default=None, max_length=34)
    bic: str | None = Field(default=None, max_length=11)
    amount: int = Field(sa_type=BigInteger)  # cents
    status: LineStatus = Field(sa_type=_enum(LineStatus, "line_status"))
    end_to_end_id: str | None = Field(default=None, max_length=35)
    payment_reference: str = Field(max_length=66, index=True)  # 0x bytes32 used on chain
    settle_tx: str | None = Field(default=None, max_length=66)
    settled_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    error: str | None = Field(default=None, sa_type=Text)


#: Indexes on the index tables for the reports (scheme by bucket, per pass for districts and
#: uptake, per merchant) and the settlement (per merchant, by time). Covering where it pays:
#: SQLite and PostgreSQL can answer the aggregates from the index alone.
REPORT_INDEXES: tuple[Index, ...] = (
    Index(
        "ix_report_redemption_scheme_pass",
        IndexedRedemption.__table__.c.scheme_id,  # type: ignore[attr-defined]
        IndexedRedemption.__table__.c.pass_id,  # type: ignore[attr-defined]
        IndexedRedemption.__table__.c.block_time,  # type: ignore[attr-defined]
        IndexedRedemption.__table__.c.debited,  # type: ignore[attr-defined]
        IndexedRedemption.__table__.c.credited,  # type: ignore[attr-defined]
    ),
    Index(
        "ix_report_redemption_merchant_time",
        IndexedRedemption.__table__.c.merchant,  # type: ignore[attr-defined]
        IndexedRedemption.__table__.c.block_time,  # type: ignore[attr-defined]
        IndexedRedemption.__table__.c.amount,  # type: ignore[attr-defined]
        IndexedRedemption.__table__.c.discount,  # type: ignore[attr-defined]
        IndexedRedemption.__table__.c.credited,  # type: ignore[attr-defined]
    ),
    Index(
        "ix_report_entitlement_scheme_pass",
        IndexedEntitlement.__table__.c.scheme_id,  # type: ignore[attr-defined]
        IndexedEntitlement.__table__.c.pass_id,  # type: ignore[attr-defined]
        IndexedEntitlement.__table__.c.block_time,  # type: ignore[attr-defined]
    ),
    Index(
        "ix_report_reversal_merchant_time",
        IndexedReversal.__table__.c.merchant,  # type: ignore[attr-defined]
        IndexedReversal.__table__.c.block_time,  # type: ignore[attr-defined]
    ),
    Index(
        "ix_report_expiry_scheme_pass",
        IndexedExpiry.__table__.c.scheme_id,  # type: ignore[attr-defined]
        IndexedExpiry.__table__.c.pass_id,  # type: ignore[attr-defined]
    ),
    Index(
        "ix_report_settlement_merchant_time",
        IndexedSettlement.__table__.c.merchant,  # type: ignore[attr-defined]
        IndexedSettlement.__table__.c.block_time,  # type: ignore[attr-defined]
    ),
)
