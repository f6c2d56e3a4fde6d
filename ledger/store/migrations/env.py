"""Alembic environment, driven from code by :mod:`ledger.store.db` (there is no alembic.ini).

The caller opens a connection inside a transaction and passes it as
``config.attributes["connection"]``. ``target_metadata`` (for autogenerate) defaults to the
ledger's own tables; a package with its own branch passes its metadata in
``config.attributes["target_metadata"]``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from ledger.store.tables import ledger_metadata

config = context.config
connection = config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError(
        "run the store's migrations through ledger.store.db.upgrade(), not the alembic CLI"
    )
target_metadata = config.attributes.get("target_metadata") or ledger_metadata()

context.configure(
    connection=connection,
    target_metadata=target_metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
