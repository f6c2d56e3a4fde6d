"""The durable outbox: the relayers' journal in the store (table ``outbox_tx``).

:class:`SqlOutbox` implements :class:`ledger.relayer.TxJournal`. :meth:`SqlOutbox.signed` writes
the signed transactions in one database transaction, and in the same transaction calls
``on_signed`` (the API marks the redemptions a transaction carries as sent), so that a
transaction exists in the outbox, with its raw bytes, before any node has seen it. Progress
(sent, mined, failed) is written by a background thread in groups: it is advisory, the
reconciler (:mod:`ledger.reconciler`) reads the truth from the chain.

The reconciler's queries live here too, so that ``ledger.store.outbox`` stays a table module.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import make_url

from ledger.relayer import SignedTx, TxReceipt
from ledger.store.db import Store, StoreConfig, open_store, upgrade
from ledger.store.outbox import OutboxState, OutboxTx

__all__ = [
    "OutboxRow",
    "SqlOutbox",
    "older_than",
    "open_outbox",
    "outbox_store_url",
    "parse_refs",
]

log = logging.getLogger(__name__)

_TABLE = OutboxTx.__table__  # type: ignore[attr-defined]
_OPEN = (OutboxState.SIGNED, OutboxState.SENT, OutboxState.MINED)


def _now() -> datetime:
    return datetime.now(UTC)


def _state_in(states: Sequence[OutboxState]) -> ColumnElement[bool]:
    """``state IN (...)`` spelled out (an expanding IN cannot be used with executemany)."""
    return or_(*(_TABLE.c.state == s.value for s in states))


def parse_refs(refs: str) -> tuple[int, ...]:
    """The item ids of an outbox row's ``refs`` column."""
    return tuple(int(part) for part in refs.split(",") if part)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One row of ``outbox_tx`` as the reconciler reads it."""

    tx_hash: str
    sender: str
    nonce: int
    raw: bytes
    label: str
    refs: tuple[int, ...]
    state: OutboxState
    reason: str | None
    block_number: int | None
    block_hash: str | None
    remined: bool
    replays: int
    created_at: datetime
    mined_at: datetime | None


def _row(mapping: object) -> OutboxRow:
    m = getattr(mapping, "_mapping", mapping)
    assert hasattr(m, "__getitem__")
    created = m["created_at"]
    mined = m["mined_at"]
    return OutboxRow(
        tx_hash=m["tx_hash"],
        sender=m["sender"],
        nonce=int(m["nonce"]),
        raw=bytes(m["raw"]),
        label=m["label"],
        refs=parse_refs(m["refs"]),
        state=OutboxState(m["state"]),
        reason=m["reason"],
        block_number=m["block_number"],
        block_hash=m["block_hash"],
        remined=bool(m["remined"]),
        replays=int(m["replays"]),
        created_at=created if created.tzinfo else created.replace(tzinfo=UTC),
        mined_at=(mined if mined is None or mined.tzinfo else mined.replace(tzinfo=UTC)),
    )


#: ``on_signed(conn, txs)``: called inside the transaction that stores ``txs``.
SignedHook = Callable[[Connection, Sequence[SignedTx]], None]


def outbox_store_url(url: str) -> str:
    """Where the outbox of the store at ``url`` lives: the same database, except for a SQLite
    file, whose outbox is a file of its own beside it (``<name>.outbox<suffix>``).

    Why: SQLite has one writer per file, and some registry changes hold their write
    transaction while their chain transaction is mined (a pass is registered in the registry
    and on chain, all or none). The relayer must store that transaction in the outbox before it
    sends it, so on one SQLite file the two would wait for each other. On PostgreSQL the
    outbox rows and the records they carry are written in one transaction; on SQLite the
    records are marked in a second transaction right after (a crash in between leaves a
    record without ``sent_at``; the reconciler still replays its transaction by the outbox's
    refs, and the contract's id bitmap makes a resubmission harmless)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return url
    path = Path(str(parsed.database))
    return str(parsed.set(database=str(path.with_name(f"{path.stem}.outbox{path.suffix}"))))


def open_outbox(db: Store, *, on_signed: SignedHook | None = None) -> SqlOutbox:
    """The outbox of the store ``db`` (see :func:`outbox_store_url`), migrated to head."""
    url = outbox_store_url(db.config.url)
    if url == db.config.url:
        return SqlOutbox(db, on_signed=on_signed)
    own = open_store(StoreConfig(url))
    upgrade(own)
    return SqlOutbox(own, on_signed=on_signed, records_db=db)


class SqlOutbox:
    """The outbox in the store. Thread-safe; :meth:`close` flushes the progress writer.

    ``records_db``: where ``on_signed`` writes, when that is another database than the
    outbox's own (SQLite, see :func:`outbox_store_url`); it then runs in a transaction of its
    own right after the outbox rows are committed, and its failure is logged, not raised."""

    def __init__(
        self, db: Store, *, on_signed: SignedHook | None = None, records_db: Store | None = None
    ) -> None:
        self.db = db
        self.on_signed = on_signed
        self.records_db = records_db
        self._pending: list[tuple[str, object]] = []
        self._ready = threading.Condition()
        self._idle = threading.Event()
        self._idle.set()
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="outbox-writer", daemon=True)
        self._writer.start()

    # -- the relayer's journal -------------------------------------------------------------

    def signed(self, txs: Sequence[SignedTx]) -> None:
        """Store ``txs`` (one transaction, with ``on_signed``); durable when this returns."""
        if not txs:
            return
        now = _now()
        hashes = [tx.tx_hash for tx in txs]
        with self.db.engine.begin() as conn:
            known = set(
                conn.execute(select(_TABLE.c.tx_hash).where(_TABLE.c.tx_hash.in_(hashes)))
                .scalars()
                .all()
            )
            rows = [
                {
                    "tx_hash": tx.tx_hash,
                    "sender": tx.sender,
                    "nonce": tx.nonce,
                    "raw": tx.raw,
                    "label": tx.label[:32],
                    "refs": ",".join(str(ref) for ref in tx.refs),
                    "state": OutboxState.SIGNED.value,
                    "reason": None,
                    "block_number": None,
                    "block_hash": None,
                    "status": None,
                    "remined": False,
                    "replays": 0,
                    "created_at": now,
                    "updated_at": now,
                    "mined_at": None,
                }
                for tx in txs
                if tx.tx_hash not in known
            ]
            if rows:
                conn.execute(insert(_TABLE), rows)
            if self.on_signed is not None and self.records_db is None:
                self.on_signed(conn, txs)
        if self.on_signed is not None and self.records_db is not None:
            try:
                with self.records_db.engine.begin() as conn:
                    self.on_signed(conn, txs)
            except Exception as exc:  # the rows are stored; the reconciler goes by them
                log.warning("could not mark what %d transactions carry as sent: %s", len(txs), exc)

    def sent(self, tx_hashes: Sequence[str]) -> None:
        self._later("sent", tuple(tx_hashes))

    def mined(self, receipt: TxReceipt) -> None:
        self._later("mined", receipt)

    def failed(self, tx_hashes: Sequence[str], reason: str) -> None:
        self._later("failed", (tuple(tx_hashes), reason))

    # -- progress writer -------------------------------------------------------------------

    def _later(self, kind: str, value: object) -> None:
        with self._ready:
            if self._closed:
                return
            self._pending.append((kind, value))
            self._idle.clear()
            self._ready.notify()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the progress written so far is in the store."""
        return self._idle.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        self._writer.join(timeout)
        if self.records_db is not None:  # the outbox's own store (SQLite): opened here
            self.db.close()

    def _write_loop(self) -> None:
        backoff = 0.1
        while True:
            with self._ready:
                while not self._pending and not self._closed:
                    self._idle.set()
                    self._ready.wait()
                if not self._pending:
                    self._idle.set()
                    return
                work = self._pending
                self._pending = []
            try:
                self._apply(work)
                backoff = 0.1
            except Exception as exc:  # the database is away: keep it, try again
                log.warning("outbox progress not written (%s); retrying", exc)
                with self._ready:
                    self._pending[:0] = work
                    if self._closed:
                        self._idle.set()
                        return
                    self._ready.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _apply(self, work: Sequence[tuple[str, object]]) -> None:
        now = _now()
        sent: list[str] = []
        mined: list[TxReceipt] = []
        failed: list[tuple[str, str]] = []
        for kind, value in work:
            if kind == "sent":
                assert isinstance(value, tuple)
                sent.extend(value)
            elif kind == "mined":
                assert isinstance(value, TxReceipt)
                mined.append(value)
            else:
                assert isinstance(value, tuple)
                hashes, reason = value
                failed.extend((h, reason) for h in hashes)
        with self.db.engine.begin() as conn:
            if sent:
                conn.execute(
                    update(_TABLE)
                    .where(
                        _TABLE.c.tx_hash == bindparam("h"),
                        _TABLE.c.state == OutboxState.SIGNED.value,
                    )
                    .values(state=OutboxState.SENT.value, updated_at=now),
                    [{"h": h} for h in sent],
                )
            for receipt in mined:
                self._record_mined(conn, receipt, now)
            if failed:
                conn.execute(
                    update(_TABLE)
                    .where(
                        _TABLE.c.tx_hash == bindparam("h"),
                        _state_in(_OPEN),
                    )
                    .values(state=OutboxState.FAILED.value, reason=bindparam("r"), updated_at=now),
                    [{"h": h, "r": r} for h, r in failed],
                )

    @staticmethod
    def _record_mined(conn: Connection, receipt: TxReceipt, now: datetime) -> None:
        tx_hash = receipt.tx_hash.to_0x_hex()
        block_hash = receipt.block_hash.to_0x_hex()
        moved = and_(_TABLE.c.block_hash.is_not(None), _TABLE.c.block_hash != block_hash)
        conn.execute(
            update(_TABLE)
            .where(_TABLE.c.tx_hash == tx_hash)
            .values(
                state=case(
                    (
                        and_(_TABLE.c.state == OutboxState.FINAL.value, ~moved),
                        OutboxState.FINAL.value,
                    ),
                    else_=OutboxState.MINED.value,
                ),
                # moved to another block, or mined after a replay: its outcome is read again
                remined=or_(_TABLE.c.remined, moved, _TABLE.c.replays > 0),
                block_number=receipt.block_number,
                block_hash=block_hash,
                status=receipt.status,
                reason=None,
                mined_at=case(
                    (or_(_TABLE.c.mined_at.is_(None), moved), now), else_=_TABLE.c.mined_at
                ),
                updated_at=now,
            )
        )
        row = conn.execute(
            select(_TABLE.c.sender, _TABLE.c.nonce).where(_TABLE.c.tx_hash == tx_hash)
        ).first()
        if row is not None:  # the other variants of this nonce can no longer be mined
            conn.execute(
                update(_TABLE)
                .where(
                    _TABLE.c.sender == row.sender,
                    _TABLE.c.nonce == row.nonce,
                    _TABLE.c.tx_hash != tx_hash,
                    _TABLE.c.state != OutboxState.FAILED.value,
                )
                .values(
                    state=OutboxState.FAILED.value,
                    reason=f"superseded by {tx_hash}",
                    updated_at=now,
                )
            )

    # -- the reconciler's queries ----------------------------------------------------------

    def record_mined(self, receipts: Iterable[TxReceipt]) -> None:
        """Record receipts now (the reconciler's own findings)."""
        now = _now()
        with self.db.engine.begin() as conn:
            for receipt in receipts:
                self._record_mined(conn, receipt, now)

    def open_rows(self) -> list[OutboxRow]:
        """Rows not yet final or failed, and rows whose outcome must be read again."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                select(_TABLE)
                .where(
                    or_(_TABLE.c.state.in_([s.value for s in _OPEN]), _TABLE.c.remined.is_(True))
                )
                .order_by(_TABLE.c.sender, _TABLE.c.nonce)
            ).all()
        return [_row(r) for r in rows]

    def rows_from_nonce(self, sender: str, nonce: int) -> list[OutboxRow]:
        """``sender``'s rows with a nonce at or above ``nonce``, failed ones excluded."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                select(_TABLE)
                .where(
                    _TABLE.c.sender == sender,
                    _TABLE.c.nonce >= nonce,
                    _TABLE.c.state != OutboxState.FAILED.value,
                )
                .order_by(_TABLE.c.nonce, _TABLE.c.created_at)
            ).all()
        return [_row(r) for r in rows]

    def rows_at_nonce(self, sender: str, nonce: int) -> list[OutboxRow]:
        """Every row (variant) of ``sender``'s ``nonce``, whatever its state."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                select(_TABLE)
                .where(_TABLE.c.sender == sender, _TABLE.c.nonce == nonce)
                .order_by(_TABLE.c.created_at)
            ).all()
        return [_row(r) for r in rows]

    def unmined_of(self, sender: str, latest: int) -> list[bytes]:
        """The raw bytes to adopt for ``sender``'s nonces at or above ``latest`` (the newest
        signed variant of each), in nonce order: what a relayer takes over at start."""
        newest: dict[int, OutboxRow] = {}
        for row in self.rows_from_nonce(sender, latest):
            newest[row.nonce] = row  # rows come by nonce, then by when they were signed
        return [newest[nonce].raw for nonce in sorted(newest)]

    def mined_since(self, since: datetime) -> list[OutboxRow]:
        """Rows mined (or final) at or after ``since``: what a node restart may have lost."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                select(_TABLE).where(
                    _TABLE.c.state.in_([OutboxState.MINED.value, OutboxState.FINAL.value]),
                    _TABLE.c.mined_at >= since,
                )
            ).all()
        return [_row(r) for r in rows]

    def senders(self) -> list[str]:
        with self.db.engine.connect() as conn:
            return list(conn.execute(select(_TABLE.c.sender).distinct()).scalars().all())

    def all_rows(self) -> list[OutboxRow]:
        """Every row (the audit)."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(select(_TABLE).order_by(_TABLE.c.sender, _TABLE.c.nonce)).all()
        return [_row(r) for r in rows]

    def mark_final(self, tx_hashes: Sequence[str]) -> None:
        self._set_state(tx_hashes, OutboxState.FINAL, None, only_from=(OutboxState.MINED,))

    def mark_failed(self, tx_hashes: Sequence[str], reason: str) -> None:
        self._set_state(tx_hashes, OutboxState.FAILED, reason, only_from=_OPEN)

    def mark_replayed(self, tx_hashes: Sequence[str]) -> None:
        if not tx_hashes:
            return
        now = _now()
        with self.db.engine.begin() as conn:
            conn.execute(
                update(_TABLE)
                .where(_TABLE.c.tx_hash == bindparam("h"))
                .values(state=OutboxState.SENT.value, replays=_TABLE.c.replays + 1, updated_at=now),
                [{"h": h} for h in tx_hashes],
            )

    def clear_remined(self, tx_hashes: Sequence[str]) -> None:
        if not tx_hashes:
            return
        with self.db.engine.begin() as conn:
            conn.execute(
                update(_TABLE)
                .where(_TABLE.c.tx_hash == bindparam("h"))
                .values(remined=False, updated_at=_now()),
                [{"h": h} for h in tx_hashes],
            )

    def _set_state(
        self,
        tx_hashes: Sequence[str],
        state: OutboxState,
        reason: str | None,
        *,
        only_from: Sequence[OutboxState],
    ) -> None:
        if not tx_hashes:
            return
        with self.db.engine.begin() as conn:
            conn.execute(
                update(_TABLE)
                .where(
                    _TABLE.c.tx_hash == bindparam("h"),
                    _state_in(only_from),
                )
                .values(state=state.value, reason=reason, updated_at=_now()),
                [{"h": h} for h in tx_hashes],
            )

    def counts(self) -> dict[str, int]:
        """Rows per state (``/health``, the audit)."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(select(_TABLE.c.state, func.count()).group_by(_TABLE.c.state)).all()
        return {str(state): int(count) for state, count in rows}


def older_than(seconds: float) -> datetime:
    return _now() - timedelta(seconds=seconds)
