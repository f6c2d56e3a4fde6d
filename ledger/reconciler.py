"""The reconciler: compares the outbox with the chain, replays what a node lost.

Run at start (before any relayer signs anything new), after the node restarted or came back,
and periodically. One pass (:meth:`Reconciler.reconcile`):

1. **The node is the same chain.** Its chain id, and the code at the ledger's address, must be
   what the service deployed; otherwise nothing is replayed (:class:`ReconcileRefused`, one line
   saying why) and the service stays degraded.
2. **Per sender, what the chain lost.** The sender's ``latest`` nonce is read first. Every
   outbox row of that sender with a nonce at or above it is not on chain: whatever its state
   (even ``final``: a node restored from an older snapshot lost it), its raw bytes are
   broadcast again, in nonce order, in one JSON-RPC batch. The same bytes have the same hash,
   so a transaction can never apply twice: a copy the node still holds answers "already known".
   A gap (a nonce below the first replayed one that no row holds) is logged as an error.
3. **Receipts.** For every open row (and, on a deep pass, every row mined recently), the
   receipts of all variants of its nonce are read. A receipt: the row is ``mined`` (and
   ``final`` once it is ``final_after_s`` old and ``final_depth`` blocks deep); if it was mined
   before in another block, or replayed, its outcome is handed to ``on_mined`` to be read
   again. No receipt while the chain's nonce is past the row's (seen twice): another
   transaction took the nonce; the row is ``failed`` and ``on_failed`` reports it.

``on_mined`` and ``on_failed`` are where the service keeps its promises: a redemption that was
confirmed and whose replay is refused is a broken promise, reported loudly (see
``api.redemptions``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from eth_hash.auto import keccak

from ledger.errors import LedgerError
from ledger.outbox import OutboxRow, SqlOutbox
from ledger.relayer import TxReceipt, classify_send_error, parse_receipt
from ledger.rpc import RpcClient, RpcError, RpcRequest
from ledger.store.outbox import OutboxState

__all__ = ["Mined", "ReconcileRefused", "ReconcileReport", "Reconciler"]

log = logging.getLogger(__name__)

_BATCH = 500


class ReconcileRefused(LedgerError):
    """The node is not the chain the outbox was written for: nothing is replayed."""


@dataclass(frozen=True, slots=True)
class Mined:
    """An outbox row the reconciler found mined, and its receipt. ``again`` is True when the
    row had been recorded as mined before (in another block) or was replayed: the outcome
    the service recorded may no longer be what the chain says."""

    row: OutboxRow
    receipt: TxReceipt
    again: bool


@dataclass(slots=True)
class ReconcileReport:
    """What one pass did."""

    checked: int = 0
    mined: int = 0
    finalized: int = 0
    replayed: int = 0
    failed: int = 0
    waiting: int = 0  # replayed and not yet mined when the pass ended
    gaps: list[str] = field(default_factory=list)

    @property
    def quiet(self) -> bool:
        return not (self.mined or self.replayed or self.failed or self.gaps)


def _hex_int(value: Any) -> int:
    if isinstance(value, int):
        return value
    return int(str(value), 16)


class Reconciler:
    """See the module docstring. Thread-safe only in the sense that passes must not overlap:
    the caller runs them on one thread."""

    def __init__(
        self,
        rpc: RpcClient,
        outbox: SqlOutbox,
        *,
        chain_id: int,
        contract: str | None = None,
        code_hash: bytes | None = None,
        final_after_s: float = 10.0,
        final_depth: int = 0,
        settle_after_s: float = 5.0,
        deep_window_s: float = 300.0,
        conflict_after_s: float = 2.0,
        on_mined: Callable[[Sequence[Mined]], None] | None = None,
        on_failed: Callable[[Sequence[OutboxRow]], None] | None = None,
    ) -> None:
        self.rpc = rpc
        self.outbox = outbox
        self.chain_id = chain_id
        self.contract = contract
        self.code_hash = code_hash
        self.final_after_s = final_after_s
        self.final_depth = final_depth
        self.settle_after_s = settle_after_s
        self.deep_window_s = deep_window_s
        self.conflict_after_s = conflict_after_s
        self.on_mined = on_mined
        self.on_failed = on_failed
        self.refused: str | None = None
        self.passes = 0
        self.last_report: ReconcileReport | None = None

    # -- the node --------------------------------------------------------------------------

    def check_node(self) -> None:
        """Raise :class:`ReconcileRefused` unless the node is the chain we wrote for."""
        node_chain = _hex_int(self.rpc.call("eth_chainId"))
        if node_chain != self.chain_id:
            raise ReconcileRefused(
                f"the node at {self.rpc.url} has chain id {node_chain}, not {self.chain_id}: "
                "not replaying the outbox on another chain"
            )
        if self.contract is not None and self.code_hash is not None:
            code = self.rpc.call("eth_getCode", self.contract, "latest")
            found = keccak(bytes.fromhex(str(code)[2:]))
            if found != self.code_hash:
                what = "no code" if str(code) in ("0x", "") else "other code"
                raise ReconcileRefused(
                    f"the node at {self.rpc.url} has {what} at the ledger address "
                    f"{self.contract}: it is not the chain this service deployed to; not "
                    "replaying the outbox"
                )

    # -- one pass --------------------------------------------------------------------------

    def reconcile(self, *, deep: bool = False, wait_s: float = 0.0) -> ReconcileReport:
        """One pass (module docstring). ``deep``: also re-read rows mined in the last
        ``deep_window_s`` (after a node restart) and replay fresh rows at once (at start).
        ``wait_s``: wait up to that long for replayed transactions to be mined."""
        try:
            self.check_node()
        except ReconcileRefused as exc:
            if self.refused != str(exc):
                log.error("%s", exc)
            self.refused = str(exc)
            raise
        self.refused = None
        report = ReconcileReport()
        now = datetime.now(UTC)
        settle_before = now - timedelta(seconds=0 if deep else self.settle_after_s)
        rows = {r.tx_hash: r for r in self.outbox.open_rows()}
        if deep:
            since = now - timedelta(seconds=self.deep_window_s)
            rows.update({r.tx_hash: r for r in self.outbox.mined_since(since)})
        senders = sorted(set(self.outbox.senders()))
        latest = self._latest_nonces(senders)
        head = _hex_int(self.rpc.call("eth_blockNumber"))
        # what the chain lost: every row at or above the sender's nonce
        to_replay: dict[str, list[OutboxRow]] = {}
        for sender in senders:
            lost = [
                r
                for r in self.outbox.rows_from_nonce(sender, latest[sender])
                if deep or r.created_at <= settle_before or r.state is not OutboxState.SIGNED
            ]
            for row in lost:
                rows.setdefault(row.tx_hash, row)
            if lost:
                to_replay[sender] = lost
        candidates = [r for r in rows.values() if deep or r.created_at <= settle_before]
        report.checked = len(candidates)
        receipts = self._receipts(candidates)
        by_nonce: dict[tuple[str, int], list[OutboxRow]] = {}
        for row in candidates:
            by_nonce.setdefault((row.sender, row.nonce), []).append(row)
        found: list[Mined] = []
        final: list[str] = []
        conflicts: list[list[OutboxRow]] = []
        for (sender, nonce), variants in by_nonce.items():
            mined = [(r, rc) for r in variants if (rc := receipts.get(r.tx_hash)) is not None]
            if mined:
                row, receipt = mined[0]
                moved = row.block_hash is not None and (
                    row.block_hash != receipt.block_hash.to_0x_hex()
                )
                fresh = row.state not in (OutboxState.MINED, OutboxState.FINAL)
                if fresh or moved or row.remined:
                    found.append(Mined(row, receipt, again=moved or row.remined or row.replays > 0))
                elif (
                    row.state is OutboxState.MINED
                    and row.mined_at is not None
                    and (now - row.mined_at).total_seconds() >= self.final_after_s
                    and head - receipt.block_number >= self.final_depth
                ):
                    final.append(row.tx_hash)
            elif nonce < latest[sender]:
                conflicts.append(variants)
        # A nonce the chain has passed without any of our hashes. Look again after
        # ``conflict_after_s``, at every variant the outbox now holds for it (a relayer may
        # have re-priced the same call meanwhile, and under load a node reports a nonce as used
        # a moment before the receipt can be read); only then is it another's transaction.
        if conflicts:
            time.sleep(self.conflict_after_s)
            for group in conflicts:
                variants = self.outbox.rows_at_nonce(group[0].sender, group[0].nonce) or group
                again = self._receipts(variants)
                hit = next(
                    ((r, rc) for r in variants if (rc := again.get(r.tx_hash)) is not None), None
                )
                if hit is not None:
                    found.append(Mined(hit[0], hit[1], again=hit[0].replays > 0))
                    continue
                reason = (
                    f"nonce {group[0].nonce} of {group[0].sender} was taken by another "
                    "transaction; this one was not mined and never will be"
                )
                self.outbox.mark_failed([r.tx_hash for r in variants], reason)
                report.failed += len(variants)
                log.error("outbox: %s (%s)", reason, ", ".join(r.tx_hash for r in variants))
                if self.on_failed is not None:
                    lost = [
                        dataclasses.replace(r, state=OutboxState.FAILED, reason=reason)
                        for r in variants
                    ]
                    self.on_failed([r for r in lost if r.refs][:1] or lost[:1])
        # replay what is missing: per sender in nonce order, all senders in the order the
        # transactions were first signed (so items of several merchants on one pass meet the
        # balances in the order they did the first time)
        chosen: list[OutboxRow] = []
        for sender, lost in to_replay.items():
            missing = [r for r in lost if not receipts.get(r.tx_hash)]
            chosen += self._one_per_nonce(sender, latest[sender], missing, report)
        replayed = self._replay(chosen, report)
        if found:
            self._record(found, report)
        if final:
            self.outbox.mark_final(final)
            report.finalized += len(final)
        if replayed and wait_s > 0:
            self._await(replayed, wait_s, report)
        elif replayed:
            report.waiting = len(replayed)
        self.passes += 1
        self.last_report = report
        if not report.quiet:
            log.warning(
                "reconciler: %d checked, %d mined, %d replayed, %d failed, %d waiting%s",
                report.checked,
                report.mined,
                report.replayed,
                report.failed,
                report.waiting,
                f"; gaps: {'; '.join(report.gaps)}" if report.gaps else "",
            )
        return report

    # -- parts -----------------------------------------------------------------------------

    def _latest_nonces(self, senders: Sequence[str]) -> dict[str, int]:
        replies = self.rpc.batch(
            [RpcRequest("eth_getTransactionCount", (s, "latest")) for s in senders]
        )
        latest: dict[str, int] = {}
        for sender, reply in zip(senders, replies, strict=True):
            if isinstance(reply, RpcError):
                raise reply
            latest[sender] = _hex_int(reply)
        return latest

    def _receipts(self, rows: Sequence[OutboxRow]) -> dict[str, TxReceipt | None]:
        out: dict[str, TxReceipt | None] = {}
        for start in range(0, len(rows), _BATCH):
            chunk = rows[start : start + _BATCH]
            replies = self.rpc.batch(
                [RpcRequest("eth_getTransactionReceipt", (r.tx_hash,)) for r in chunk]
            )
            for row, reply in zip(chunk, replies, strict=True):
                if isinstance(reply, RpcError):
                    raise reply
                out[row.tx_hash] = (
                    parse_receipt(reply, row.nonce) if isinstance(reply, dict) else None
                )
        return out

    def _one_per_nonce(
        self, sender: str, latest: int, rows: Sequence[OutboxRow], report: ReconcileReport
    ) -> list[OutboxRow]:
        """One variant per nonce (the newest signed: a re-priced variant bids more), each
        dated by when its nonce was first signed."""
        if not rows:
            return []
        first_signed: dict[int, datetime] = {}
        per_nonce: dict[int, OutboxRow] = {}
        for row in sorted(rows, key=lambda r: (r.nonce, r.created_at)):
            first_signed.setdefault(row.nonce, row.created_at)
            per_nonce[row.nonce] = row
        nonces = sorted(per_nonce)
        if nonces[0] > latest:
            gap = f"{sender}: nonces {latest}..{nonces[0] - 1} are in no outbox row"
            log.error("reconciler: %s; the replays wait behind them", gap)
            report.gaps.append(gap)
        # a later nonce is never dated before an earlier one of the same sender
        chosen: list[OutboxRow] = []
        floor = first_signed[nonces[0]]
        for nonce in nonces:
            floor = max(floor, first_signed[nonce])
            chosen.append(dataclasses.replace(per_nonce[nonce], created_at=floor))
        return chosen

    def _replay(self, rows: Sequence[OutboxRow], report: ReconcileReport) -> list[str]:
        """Broadcast ``rows`` with their original bytes, oldest first, one request after the
        other (a node may handle the requests of one JSON-RPC batch in parallel, which would
        lose the order; a node mines first come, first served: anvil ``--order fifo``, Besu's
        sequenced pool)."""
        if not rows:
            return []
        chosen = sorted(rows, key=lambda r: (r.created_at, r.sender, r.nonce))
        replies: list[object] = []
        for row in chosen:
            (reply,) = self.rpc.batch(
                [RpcRequest("eth_sendRawTransaction", ("0x" + row.raw.hex(),))]
            )
            replies.append(reply)
        sent: list[str] = []
        for row, reply in zip(chosen, replies, strict=True):
            if isinstance(reply, RpcError) and classify_send_error(reply) not in (
                "known",
                "nonce_low",
                "transient",
            ):
                log.error(
                    "reconciler: the node refused the replay of %s (nonce %d of %s): %s",
                    row.tx_hash,
                    row.nonce,
                    row.sender,
                    reply.message,
                )
                continue
            sent.append(row.tx_hash)
        self.outbox.mark_replayed(sent)
        report.replayed += len(sent)
        if sent:
            log.warning(
                "reconciler: replayed %d transactions of %d senders with their original bytes",
                len(sent),
                len({r.sender for r in chosen}),
            )
        return sent

    def _await(self, hashes: Sequence[str], wait_s: float, report: ReconcileReport) -> None:
        deadline = time.monotonic() + wait_s
        rows = {r.tx_hash: r for r in self.outbox.open_rows()}
        left = [h for h in hashes if h in rows]
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            receipts = self._receipts([rows[h] for h in left])
            done = [
                Mined(rows[h], r, again=True)
                for h, r in receipts.items()
                if r is not None and h in rows
            ]
            if done:
                self._record(done, report)
            left = [h for h, r in receipts.items() if r is None]
        report.waiting = len(left)

    def _record(self, found: Sequence[Mined], report: ReconcileReport) -> None:
        # the outcomes first: if that fails, the rows stay open and the next pass tries again
        if self.on_mined is not None:
            self.on_mined(found)
        self.outbox.record_mined([m.receipt for m in found])
        report.mined += len(found)
        # what on_mined has read is settled (record_mined flags rows that moved block)
        self.outbox.clear_remined([m.row.tx_hash for m in found])
