"""Every table module of the ledger's store, imported once so that :data:`metadata` is complete.

Alembic's environment imports this module; a new table module (e.g. ``ledger.store.payouts``) is
added to :data:`TABLE_MODULES` here, together with a migration revision on top of the current
head. ``ledger`` never imports ``api``: the API's own tables live in the same metadata but are
migrated by their own branch (see ``docs/architecture.md``, "Store and migrations").
"""

from __future__ import annotations

from types import ModuleType

from sqlalchemy import MetaData, Table
from sqlmodel import SQLModel

from ledger.store import imports, index, outbox, payouts, registry, report_indexes
from ledger.store.base import metadata

__all__ = ["TABLE_MODULES", "ledger_metadata", "ledger_table_names", "metadata"]

#: The modules whose tables the ledger's migrations create.
TABLE_MODULES: tuple[ModuleType, ...] = (
    registry,
    index,
    payouts,
    report_indexes,
    outbox,
    imports,
)


def _tables_of(module: ModuleType) -> list[Table]:
    return [
        obj.__table__  # type: ignore[attr-defined]
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, SQLModel)
        and obj.__module__ == module.__name__
        and isinstance(getattr(obj, "__table__", None), Table)
    ]


def ledger_table_names() -> frozenset[str]:
    """Names of the tables of :data:`TABLE_MODULES` (not other packages' tables that share the
    metadata, such as the API's)."""
    return frozenset(table.name for module in TABLE_MODULES for table in _tables_of(module))


def ledger_metadata() -> MetaData:
    """A copy of :data:`metadata` restricted to the ledger's own tables (what its migrations
    must produce)."""
    names = ledger_table_names()
    copy = MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.sorted_tables:
        if table.name in names:
            table.to_metadata(copy)
    return copy
