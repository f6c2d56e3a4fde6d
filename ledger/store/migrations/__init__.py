"""Alembic environment and revisions of the ledger's store (run by ``ledger.store.db.upgrade``)."""
