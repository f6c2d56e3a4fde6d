"""The redemption desk's back office: what becomes of a redemption after its request.

A redemption request goes: allocate (a record with a dense id, ``api.store``) -> batch
(``ledger.batcher``) -> outbox (``ledger.outbox``: the signed transaction is stored before it is
sent, and :func:`mark_sent` marks the records it carries in the same database transaction) ->
mined -> outcome. This module owns the outcome side:

- :func:`record_batch`: a batch mined in the normal course (the batcher's ``on_outcomes``);
- :func:`record_reconciled`: what the reconciler (``ledger.reconciler``) found mined later:
  after a restart of the service or of the node, a replay of the same bytes, or a block the
  node lost and mined again;
- :func:`record_lost`: transactions that will never be mined (their nonce was taken).

The promise: an answer that said "confirmed" is never contradicted silently. When the chain
contradicts one (a confirmed redemption whose replay was refused, or whose transaction was
lost; a refusal whose transaction landed after all), the record takes the chain's outcome,
``promise_broken_at`` is set, an ERROR is logged, and the audit lists it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hexbytes import HexBytes
from sqlalchemy import Connection, bindparam, update

from api.problems import contract_status
from api.store import RedemptionRecord, RedemptionStatus
from ledger import contract_errors as ce
from ledger.batcher import RedemptionAccepted, RedemptionRefused, outcomes_of
from ledger.batcher import RedemptionOutcome as BatchOutcome
from ledger.outbox import OutboxRow
from ledger.reconciler import Mined, Reconciler, ReconcileRefused
from ledger.relayer import SignedTx
from ledger.rpc import RpcError

if TYPE_CHECKING:
    from api.runtime import Runtime

__all__ = [
    "CARRIERS",
    "ReconcilerLoop",
    "failure_values",
    "mark_sent",
    "record_batch",
    "record_lost",
    "record_reconciled",
    "success_values",
]

log = logging.getLogger(__name__)

#: Outbox labels of the transactions that carry redemptions (their ``refs``).
CARRIERS = frozenset({"redeemBatch", "claimAndRedeem"})

_REDEMPTIONS = RedemptionRecord.__table__  # type: ignore[attr-defined]


def _now() -> datetime:
    return datetime.now(UTC)


# -- values ---------------------------------------------------------------------------------


def success_values(outcome: RedemptionAccepted, balance: int) -> dict[str, Any]:
    """What a mined redemption writes into its record."""
    return {
        "status": RedemptionStatus.SUCCEEDED,
        "tx_hash": HexBytes(outcome.transaction_hash).to_0x_hex(),
        "block_number": outcome.block_number,
        "debited": int(outcome.debited),
        "credited": int(outcome.credited),
        "discount": int(outcome.discount),
        "balance_after": balance,
    }


def failure_values(exc: ce.ContractRevert) -> dict[str, Any]:
    """What a refusal on chain writes into its record."""
    return {
        "status": RedemptionStatus.FAILED,
        "problem_code": exc.code,
        "problem_status": contract_status(exc),
        "problem_detail": str(exc),
    }


def _balances_after(
    runtime: Runtime, accepted: Sequence[RedemptionAccepted], *, latest_if_pruned: bool = False
) -> dict[int, int]:
    """Each accepted redemption's balance at the end of its block, in one JSON-RPC batch.

    ``latest_if_pruned``: a node without the state of that block (anvil restarted from its state
    file keeps no history) answers with the balance now instead of an error (the reconciler's
    outcomes, found after a restart)."""
    try:
        return _balances_at_blocks(runtime, accepted)
    except RpcError:
        if not latest_if_pruned:
            raise
        return _balances_at_blocks(runtime, accepted, at_latest=True)


def _balances_at_blocks(
    runtime: Runtime, accepted: Sequence[RedemptionAccepted], *, at_latest: bool = False
) -> dict[int, int]:
    calls = [
        (
            "eth_call",
            [
                {
                    "to": runtime.client.address,
                    "data": "0x"
                    + runtime.client.call_data("balanceOf", o.scheme_id, bytes(o.pass_id)).hex(),
                },
                "latest" if at_latest else hex(o.block_number),
            ],
        )
        for o in accepted
    ]
    replies = runtime.rpc.batch(calls)
    balances: dict[int, int] = {}
    for outcome, reply in zip(accepted, replies, strict=True):
        if isinstance(reply, RpcError):
            raise reply
        balances[outcome.redemption_id] = int(str(reply), 16)
    return balances


# -- sent: in the outbox's transaction --------------------------------------------------------


def mark_sent(conn: Connection, txs: Sequence[SignedTx]) -> None:
    """The outbox's ``on_signed``: inside the transaction that stores ``txs``, the pending
    records they carry get the transaction's hash and ``sent_at``."""
    now = _now()
    rows = [
        {"_rid": rid, "tx_hash": tx.tx_hash, "sent_at": now, "updated_at": now}
        for tx in txs
        if tx.label in CARRIERS
        for rid in tx.refs
    ]
    if rows:
        conn.execute(
            update(_REDEMPTIONS)
            .where(
                _REDEMPTIONS.c.redemption_id == bindparam("_rid"),
                _REDEMPTIONS.c.status == RedemptionStatus.PENDING.value,
            )
            .values(
                tx_hash=bindparam("tx_hash"),
                sent_at=bindparam("sent_at"),
                updated_at=bindparam("updated_at"),
            ),
            rows,
        )


# -- mined in the normal course -----------------------------------------------------------------


def record_batch(runtime: Runtime, outcomes: Sequence[BatchOutcome]) -> None:
    """Save a mined batch in one transaction (the batcher's ``on_outcomes``): accepted items with
    their balance after, refusals with their problem; then hand what was saved to the waiting
    requests. A ``RedemptionIdUsed`` refusal is left to its request, which first looks for an
    earlier submission of the same record."""
    accepted = [o for o in outcomes if isinstance(o, RedemptionAccepted)]
    balances = _balances_after(runtime, accepted)
    updates: dict[int, dict[str, Any]] = {
        o.redemption_id: success_values(o, balances[o.redemption_id]) for o in accepted
    }
    for outcome in outcomes:
        if isinstance(outcome, RedemptionRefused) and not isinstance(
            outcome.error, ce.RedemptionIdUsed
        ):
            updates[outcome.redemption_id] = failure_values(outcome.error)
    runtime.store.complete_redemptions(updates)
    runtime.finish(updates)


# -- found later by the reconciler ----------------------------------------------------------------


def _broken(record: RedemptionRecord, why: str) -> None:
    log.error(
        "BROKEN PROMISE: redemption %d (merchant %d, key %r): %s",
        record.redemption_id,
        record.merchant_id,
        record.idempotency_key,
        why,
    )


def record_reconciled(runtime: Runtime, found: Sequence[Mined]) -> None:
    """Bring the records of the redemptions carried by ``found`` (transactions the reconciler
    saw mined) in line with the chain, in one database transaction."""
    carriers = [m for m in found if m.row.label in CARRIERS and m.row.refs]
    if not carriers:
        return
    records = runtime.store.redemptions_by_ids(rid for m in carriers for rid in m.row.refs)
    outcomes: list[BatchOutcome] = []
    for mined in carriers:
        outcomes += outcomes_of(
            runtime.client,
            mined.row.refs,
            mined.receipt,
            revert=lambda: runtime.client.revert_of(b""),
        )
    accepted = [o for o in outcomes if isinstance(o, RedemptionAccepted)]
    balances = _balances_after(runtime, accepted, latest_if_pruned=True)
    updates: dict[int, dict[str, Any]] = {}
    now = _now()
    for outcome in outcomes:
        record = records.get(outcome.redemption_id)
        if record is None:
            log.error("reconciler: redemption %d on chain has no record", outcome.redemption_id)
            continue
        if isinstance(outcome, RedemptionAccepted):
            values = success_values(outcome, balances[outcome.redemption_id])
            if record.status is RedemptionStatus.FAILED:
                _broken(record, f"it was refused ({record.problem_code}), but it landed on chain")
                values["promise_broken_at"] = now
            updates[outcome.redemption_id] = values
            continue
        if isinstance(outcome.error, ce.RedemptionIdUsed):
            continue  # the id landed through another transaction (its own record says which)
        if record.status is RedemptionStatus.SUCCEEDED:
            values = failure_values(outcome.error)
            values.update(
                problem_code="confirmation_lost",
                problem_status=409,
                problem_detail=(
                    f"this redemption was confirmed in transaction {record.tx_hash}, but the "
                    f"node lost that block and the replay was refused: {outcome.error}"
                ),
                promise_broken_at=now,
            )
            _broken(record, f"confirmed, then its replay was refused: {outcome.error}")
            updates[outcome.redemption_id] = values
        elif record.status is RedemptionStatus.PENDING:
            updates[outcome.redemption_id] = failure_values(outcome.error)
    runtime.store.complete_redemptions(updates)
    runtime.finish(updates)
    runtime.state.clear()  # what the cache applied may have moved or gone


def record_lost(runtime: Runtime, rows: Sequence[OutboxRow]) -> None:
    """The redemptions carried by ``rows`` will never be mined (their nonce was taken by
    another transaction): their records fail with that reason; a confirmed one is a broken
    promise."""
    ids = [rid for row in rows if row.label in CARRIERS for rid in row.refs]
    if not ids:
        return
    records = runtime.store.redemptions_by_ids(ids)
    now = _now()
    updates: dict[int, dict[str, Any]] = {}
    for row in rows:
        for rid in row.refs:
            record = records.get(rid)
            if record is None or record.status is RedemptionStatus.FAILED:
                continue
            values: dict[str, Any] = {
                "status": RedemptionStatus.FAILED,
                "problem_code": "transaction_lost",
                "problem_status": 503,
                "problem_detail": (
                    f"the transaction {row.tx_hash} carrying this redemption was never mined "
                    f"({row.reason}); nothing was redeemed; use a new Idempotency-Key to try "
                    "again"
                ),
            }
            if record.status is RedemptionStatus.SUCCEEDED:
                values["problem_code"] = "confirmation_lost"
                values["promise_broken_at"] = now
                _broken(record, f"confirmed, then its transaction was lost: {row.reason}")
            updates[rid] = values
    runtime.store.complete_redemptions(updates)
    runtime.finish(updates)


# -- the loop -------------------------------------------------------------------------------------


class ReconcilerLoop:
    """Runs the reconciler on a thread of its own: every ``interval_s``, and at once (deep)
    when :meth:`wake` is called (the node restarted or came back)."""

    def __init__(self, reconciler: Reconciler, *, interval_s: float) -> None:
        self.reconciler = reconciler
        self.interval_s = interval_s
        self._wake = threading.Event()
        self._deep = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)
        self.errors = 0

    def start(self) -> ReconcilerLoop:
        self._thread.start()
        return self

    def wake(self, *, deep: bool = True) -> None:
        self._deep = self._deep or deep
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            if self._stop.is_set():
                return
            self._wake.clear()
            deep, self._deep = self._deep, False
            try:
                self.reconciler.reconcile(deep=deep, wait_s=10.0 if deep else 0.0)
            except ReconcileRefused:
                pass  # logged once by the reconciler; /health shows it
            except Exception as exc:  # the node or the database is away: next round
                self.errors += 1
                log.warning("reconciler pass failed: %s", exc)
                if deep:
                    self._deep = True
