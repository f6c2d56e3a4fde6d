"""The off-chain store: the municipality's registry and the index that mirrors the chain.

Two groups of tables, kept apart on purpose:

- :mod:`ledger.store.registry`: personal data the municipality holds (holders, households, passes
  with their secrets, cards, merchants with KvK number and IBAN, districts and postcodes). Never on
  chain; erasure deletes rows here.
- :mod:`ledger.store.index`: a mirror of on-chain events (passes, schemes, entitlements,
  redemptions, reversals, settlements), each row keyed by chain id, block hash and log index, plus
  the indexer's checkpoint and the blocks it has seen (for reorganisations).

SQLite under ``var/`` by default, PostgreSQL in production (by URL); the schema is created and
upgraded by the Alembic migrations in ``ledger/store/migrations``.
"""

from ledger.store.base import StoreError, metadata

__all__ = ["StoreError", "metadata"]
