"""Shared pieces of the store's tables."""

from __future__ import annotations

from sqlmodel import SQLModel

from ledger.errors import LedgerError

__all__ = ["StoreError", "metadata"]


class StoreError(LedgerError):
    """The store cannot be reached, is not migrated, or refused a change."""


#: All tables of the registry and the index (Alembic's target metadata).
metadata = SQLModel.metadata
