"""The service's promises, as the ledger audit compares them with the chain.

Every redemption request the service stored (``api_redemption_request``, :class:`RedemptionRecord`)
becomes a :class:`ledger.audit.ServicePromise`: its id, what the service answered (pending,
succeeded, failed), the figures it confirmed, the merchant's chain address (the registry's
address of the record's merchant id), the reversal it recorded, and ``promise_broken_at``.

``ledger`` never imports ``api``; the API builds the promises from its own table and hands them
to :func:`ledger.audit.audit` (``stadjerspas audit``, ``POST /admin/audit`` and the admin audit
page all go through :func:`load_promises`). Reading is plain SQLAlchemy Core on the models'
tables, so the uint64 columns decode as the API stores them; nothing is written and nothing is
migrated: a database without the API's table (a ledger-only store) has no promises (None), and
a database whose API branch predates ``sent_at``/``promise_broken_at`` is read without them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, Table, inspect, select

from api.store import RedemptionRecord
from ledger.audit import PromiseStatus, ServicePromise
from ledger.store.registry import Merchant

__all__ = ["load_promises"]

_RECORDS: Table = RedemptionRecord.__table__  # type: ignore[attr-defined]
_MERCHANTS: Table = Merchant.__table__  # type: ignore[attr-defined]

#: The record's columns a promise is made of (``sent_at`` and ``promise_broken_at`` are newer).
_COLUMNS = (
    "merchant_id",
    "idempotency_key",
    "redemption_id",
    "scheme_id",
    "status",
    "tx_hash",
    "block_number",
    "debited",
    "credited",
    "problem_code",
    "reversal_tx_hash",
    "promise_broken_at",
)


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they were stored in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _promise(row: Any, merchants: dict[int, str]) -> ServicePromise:
    m = row._mapping
    merchant_id = int(m["merchant_id"])
    return ServicePromise(
        redemption_id=int(m["redemption_id"]),
        status=PromiseStatus(str(getattr(m["status"], "value", m["status"]))),
        scheme_id=int(m["scheme_id"]),
        merchant=merchants.get(merchant_id),
        debited=m["debited"],
        credited=m["credited"],
        tx_hash=m["tx_hash"],
        block_number=m["block_number"],
        reversal_tx_hash=m["reversal_tx_hash"],
        promise_broken_at=_aware(m.get("promise_broken_at")),
        problem_code=m["problem_code"],
        reference=f"merchant {merchant_id}, key {m['idempotency_key']!r}",
    )


def load_promises(engine: Engine) -> list[ServicePromise] | None:
    """Every stored redemption request as a promise, by redemption id; None when the database
    has no ``api_redemption_request`` table."""
    inspector = inspect(engine)
    name = str(_RECORDS.name)
    if not inspector.has_table(name):
        return None
    present = {str(column["name"]) for column in inspector.get_columns(name)}
    columns = [_RECORDS.c[column] for column in _COLUMNS if column in present]
    merchants: dict[int, str] = {}
    with engine.connect() as conn:
        if inspector.has_table(str(_MERCHANTS.name)):
            for merchant_id, address in conn.execute(select(_MERCHANTS.c.id, _MERCHANTS.c.address)):
                merchants[int(merchant_id)] = str(address)
        rows = conn.execute(select(*columns).order_by(_RECORDS.c.redemption_id)).all()
    return [_promise(row, merchants) for row in rows]
