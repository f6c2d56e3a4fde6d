"""The outbox: every transaction the service signs, stored before it is sent.

One row per signed transaction (a re-priced variant of a nonce is a row of its own; all
variants of a nonce make the same call, see :mod:`ledger.relayer`, invariant 2). The relayer
writes the row, raw bytes included, *before* it broadcasts them, in the same database
transaction in which the caller marks what the transaction carries as sent (the API's
redemption records). A reconciler (:mod:`ledger.reconciler`) compares the rows with the chain
and broadcasts the same bytes again when a node lost them.

States: ``signed`` (stored, not yet known to be sent) -> ``sent`` -> ``mined`` (a receipt was
seen, ``block_number``/``block_hash`` say where) -> ``final`` (mined, and old and deep enough
that the node's persisted state holds it); ``failed`` with a ``reason`` (the nonce was taken by
another transaction, the node refused it outright, or a variant of the same nonce was mined
instead: ``superseded``). ``remined`` marks a row whose receipt moved to another block (the
chain lost the block and the same bytes were mined again): its outcome must be read again.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Enum, Index, Integer, LargeBinary, Text
from sqlmodel import Field, SQLModel

__all__ = ["OutboxState", "OutboxTx"]


class OutboxState(enum.StrEnum):
    SIGNED = "signed"
    SENT = "sent"
    MINED = "mined"
    FINAL = "final"
    FAILED = "failed"


def _now() -> datetime:
    return datetime.now(UTC)


class OutboxTx(SQLModel, table=True):
    """One signed transaction (see the module docstring)."""

    __tablename__ = "outbox_tx"
    __table_args__ = (
        Index("ix_outbox_tx_sender_nonce", "sender", "nonce"),
        Index("ix_outbox_tx_state", "state"),
    )

    tx_hash: str = Field(primary_key=True, max_length=66)
    sender: str = Field(max_length=42)
    nonce: int = Field(sa_type=BigInteger)
    raw: bytes = Field(sa_type=LargeBinary)
    #: What the call is (``redeemBatch``, ``claimAndRedeem``, ``filler``, ...), for people.
    label: str = Field(default="", max_length=32)
    #: The redemption ids (or other item ids) the call carries, comma-separated, in order.
    refs: str = Field(default="", sa_type=Text)
    state: OutboxState = Field(
        default=OutboxState.SIGNED,
        sa_type=Enum(
            OutboxState,
            name="outbox_state",
            native_enum=False,
            length=16,
            values_callable=lambda cls: [member.value for member in cls],
            create_constraint=True,
            validate_strings=True,
        ),
    )
    reason: str | None = Field(default=None, sa_type=Text)
    block_number: int | None = Field(default=None, sa_type=BigInteger)
    block_hash: str | None = Field(default=None, max_length=66)
    status: int | None = Field(default=None, sa_type=Integer)
    remined: bool = Field(default=False, sa_type=Boolean)
    replays: int = Field(default=0, sa_type=Integer)
    created_at: datetime = Field(default_factory=_now, sa_type=DateTime(timezone=True))
    updated_at: datetime = Field(default_factory=_now, sa_type=DateTime(timezone=True))
    mined_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
