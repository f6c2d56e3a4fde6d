"""Revisions of the ``ledger`` branch (Alembic skips this file)."""
