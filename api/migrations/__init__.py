"""Alembic revisions of the API's own tables (branch ``api``, run by ``ApiStore.open``)."""
