"""Shared pieces of the store's tables: the metadata and the store's error family."""

from __future__ import annotations

from sqlmodel import SQLModel

from ledger.errors import LedgerError

__all__ = ["StoreError", "StoreNotMigrated", "StoreUnavailable", "metadata"]


class StoreError(LedgerError):
    """The store cannot be reached, is not migrated, or refused a change."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or opened (the message quotes the URL without password)."""


class StoreNotMigrated(StoreError):
    """The database schema is not at the revision this code needs."""


#: All tables of the registry and the index (Alembic's target metadata). Every table module
#: registers here on import; :mod:`ledger.store.tables` imports them all.
metadata = SQLModel.metadata
