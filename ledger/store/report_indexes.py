"""Indexes on the index tables for the reports' range aggregates (migration revision ``0003``).

The reports' first indexes (per pass, per merchant) are declared in :mod:`ledger.store.payouts`
with revision ``0002``. This module adds the one the per-scheme report needs to sum redemptions
per time bucket without computing a bucket per row or sorting: ``(scheme_id, block_time)``
followed by the summed columns, so that each ``scheme_id = s AND block_time`` range is answered
from the index alone on SQLite and PostgreSQL (see ``ledger.reports.queries``).
"""

from __future__ import annotations

from sqlalchemy import Index, Table

from ledger.store.index import IndexedRedemption

__all__ = ["RANGE_INDEXES"]

_redemption: Table = IndexedRedemption.__table__  # type: ignore[attr-defined]

#: Covering indexes for per-scheme range aggregates over time.
RANGE_INDEXES: tuple[Index, ...] = (
    Index(
        "ix_report_redemption_scheme_time",
        _redemption.c.scheme_id,
        _redemption.c.block_time,
        _redemption.c.debited,
        _redemption.c.credited,
    ),
)
