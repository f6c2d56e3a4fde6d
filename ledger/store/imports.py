"""Tables of the migration from an old pass system (``ledger.imports``).

``registry_migrated_holder``: one row per holder imported from a holders CSV, keyed by the old
system's external reference (the idempotency key). It holds a fingerprint of the line as
imported (a line imported again identically is skipped; different data is an error) and the
pass's on-chain state: ``pending`` (in the registry, not yet sent), ``sent`` (in a
``registerPasses`` batch that may or may not be mined) and ``registered`` (seen on chain). The
state moves forward in its own database transactions, so an import interrupted at any point is
resumed from the rows: ``sent`` passes are checked on chain before anything is sent again.

``index_migrated_balance``: one opening balance per (scheme, pass id), the amount, the same
three states and the hash of the ``issueBatch`` transaction that issued it (the scheme report
counts the entitlements of those transactions as ``migrated``). No personal data: pass ids are
the chain's pseudonyms.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, Column, DateTime, Enum
from sqlmodel import Field, SQLModel

__all__ = ["ChainState", "MigratedBalance", "MigratedHolder"]


class ChainState(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DONE = "done"


def _state() -> Enum:
    return Enum(
        ChainState,
        name="migration_chain_state",
        native_enum=False,
        length=16,
        values_callable=lambda cls: [member.value for member in cls],
        create_constraint=True,
        validate_strings=True,
    )


class MigratedHolder(SQLModel, table=True):
    """A holder taken over from the old system, and where its pass is on chain."""

    __tablename__ = "registry_migrated_holder"

    external_reference: str = Field(primary_key=True, max_length=64)
    holder_id: int = Field(foreign_key="registry_holder.id", index=True)
    pass_record_id: int = Field(foreign_key="registry_pass.id", index=True)
    card_serial: int = Field(sa_column=Column(BigInteger, nullable=False))
    fingerprint: str = Field(max_length=64)
    chain_state: ChainState = Field(sa_type=_state(), index=True)
    imported_at: datetime = Field(sa_type=DateTime(timezone=True))


class MigratedBalance(SQLModel, table=True):
    """An opening balance taken over from the old system: one per scheme and pass."""

    __tablename__ = "index_migrated_balance"

    scheme_id: int = Field(sa_column=Column(BigInteger, primary_key=True))
    pass_id: str = Field(primary_key=True, max_length=66)
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    reference: str = Field(max_length=64)
    chain_state: ChainState = Field(sa_type=_state(), index=True)
    batch: int | None = Field(default=None, sa_column=Column(BigInteger, index=True))
    transaction_hash: str | None = Field(default=None, max_length=66, index=True)
    imported_at: datetime = Field(sa_type=DateTime(timezone=True))
