"""Revisions of the ``api`` branch (Alembic skips this file)."""
