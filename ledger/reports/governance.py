"""The governance log: who was given or lost which role, pauses, merchant allowances, the
reversal window and EIP-712 domain changes, from ``index_governance`` (newest first).

For auditors: the chain is the record; this is its readable mirror. Addresses are merchants',
staff keys' and the service's own, never a holder's (holders hold no roles).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, select

from ledger.client import ROLES
from ledger.reports.periods import Period
from ledger.store.index import GOVERNANCE_KINDS, IndexedGovernance

__all__ = ["GovernanceEntry", "GovernanceLog", "governance_log"]

#: Role id (0x-hex) -> the role's name in this project.
ROLE_NAMES = {"0x" + role.hex(): name for name, role in ROLES.items()}
MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class GovernanceEntry:
    block_number: int
    block_time: int
    transaction_hash: str
    log_index: int
    kind: str
    role: str | None
    role_name: str | None  # admin, issuer, merchant, pass_signer, pauser, settler
    previous_admin_role: str | None
    new_admin_role: str | None
    account: str | None
    sender: str | None
    scheme_id: int | None
    allowed: bool | None
    window_s: int | None


@dataclass(frozen=True, slots=True)
class GovernanceLog:
    period: Period | None
    kind: str | None
    rows: list[GovernanceEntry]


def governance_log(
    engine: Engine,
    *,
    period: Period | None = None,
    kind: str | None = None,
    limit: int = 1_000,
) -> GovernanceLog:
    """The newest ``limit`` governance events (in ``period``, of ``kind``), newest first.

    Raises ``ValueError`` for a ``kind`` that is not one of :data:`GOVERNANCE_KINDS`' values or
    a ``limit`` outside 1 .. :data:`MAX_ENTRIES`."""
    if kind is not None and kind not in GOVERNANCE_KINDS.values():
        kinds = sorted(GOVERNANCE_KINDS.values())
        raise ValueError(f"kind {kind!r} is not a governance event; use one of {kinds}")
    if not 1 <= limit <= MAX_ENTRIES:
        raise ValueError(f"limit must be between 1 and {MAX_ENTRIES}, got {limit}")
    table = IndexedGovernance.__table__  # type: ignore[attr-defined]
    query = select(table).order_by(table.c.block_number.desc(), table.c.log_index.desc())
    if period is not None:
        query = query.where(table.c.block_time >= period.start, table.c.block_time < period.end)
    if kind is not None:
        query = query.where(table.c.kind == kind)
    with engine.connect() as conn:
        found = conn.execute(query.limit(limit)).mappings().all()
    rows = [
        GovernanceEntry(
            block_number=int(r["block_number"]),
            block_time=int(r["block_time"]),
            transaction_hash=str(r["transaction_hash"]),
            log_index=int(r["log_index"]),
            kind=str(r["kind"]),
            role=r["role"],
            role_name=ROLE_NAMES.get(r["role"]) if r["role"] is not None else None,
            previous_admin_role=r["previous_admin_role"],
            new_admin_role=r["new_admin_role"],
            account=r["account"],
            sender=r["sender"],
            scheme_id=r["scheme_id"],
            allowed=r["allowed"],
            window_s=r["window_s"],
        )
        for r in found
    ]
    return GovernanceLog(period=period, kind=kind, rows=rows)
