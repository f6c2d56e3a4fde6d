"""The API's store: the ledger's registry plus the few tables only the API owns.

Holders, passes (pass numbers and secrets) and merchants live in the ledger's registry
(:class:`ledger.registry.Registry`); this module adds the API's own tables, all prefixed
``api_``: redemption requests keyed by idempotency key with their result, a dense sequence for
redemption ids, human scheme labels, and markers. They share the ledger's metadata and database
but are migrated by the API's own Alembic branch (``api/migrations/versions``, branch ``api``),
so ``ledger`` never imports ``api`` (see ``docs/architecture.md``, "Store and migrations").

:meth:`ApiStore.open` connects (one clear line if the database cannot be reached) and migrates
both branches to head.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    DateTime,
    Dialect,
    Enum,
    LargeBinary,
    String,
    Table,
    bindparam,
    func,
    insert,
    inspect,
    update,
)
from sqlalchemy import select as core_select
from sqlalchemy.types import TypeDecorator
from sqlmodel import Column, Field, Session, SQLModel, col, select

from api.job_store import JobRow  # noqa: F401  (its table is migrated with ours)
from api.partner_keystore import PartnerKey  # noqa: F401  (its table is migrated with ours)
from ledger.registry import Registry
from ledger.store.base import StoreError
from ledger.store.db import Store, StoreConfig, open_store, upgrade
from ledger.store.registry import Holder, Merchant, PassRecord, PassStatus

__all__ = [
    "API_VERSIONS_DIR",
    "AllocatedRedemption",
    "ApiStore",
    "HolderPin",
    "IdempotencyConflict",
    "PassHolder",
    "PinFailure",
    "RedemptionRecord",
    "RedemptionStatus",
    "SchemeLabel",
    "ShortCode",
    "ShortCodeMiss",
    "StaffUser",
    "Terminal",
    "TokenAlreadyUsed",
]

#: The API branch's Alembic revisions (migrated together with the ledger's).
API_VERSIONS_DIR = Path(__file__).resolve().parent / "migrations" / "versions"


class UInt64(TypeDecorator[int]):
    """A uint64 (amounts, balances: 2**64-1 means unlimited) kept as decimal text, because
    SQLite's INTEGER is signed 64-bit."""

    impl = String(20)
    cache_ok = True

    def process_bind_param(self, value: int | None, dialect: Dialect) -> str | None:
        return None if value is None else str(int(value))

    def process_result_value(self, value: str | None, dialect: Dialect) -> int | None:
        return None if value is None else int(value)


def _uint64(*, nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(UInt64(), nullable=nullable))


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes: they were stored in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class SchemeLabel(SQLModel, table=True):
    """Human names of on-chain schemes (the chain knows only numbers)."""

    __tablename__ = "api_scheme_label"

    scheme_id: int = Field(primary_key=True)
    name: str = Field(max_length=200)


class RedemptionStatus(enum.StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class RedemptionRecord(SQLModel, table=True):
    """One merchant request, keyed by (merchant, idempotency key), and what became of it."""

    __tablename__ = "api_redemption_request"

    merchant_id: int = Field(primary_key=True)
    idempotency_key: str = Field(primary_key=True, max_length=255)
    request_hash: str = Field(max_length=64)
    redemption_id: int = Field(sa_type=BigInteger, unique=True, index=True)
    token_uri: str = Field(index=True)
    scheme_id: int
    amount: int = Field(sa_column=Column(UInt64(), nullable=False))
    status: RedemptionStatus = Field(
        default=RedemptionStatus.PENDING,
        sa_type=Enum(
            RedemptionStatus,
            name="api_redemption_status",
            native_enum=False,
            length=16,
            values_callable=lambda cls: [member.value for member in cls],
            create_constraint=True,
            validate_strings=True,
        ),
    )
    tx_hash: str | None = None
    block_number: int | None = Field(default=None, sa_type=BigInteger)
    debited: int | None = _uint64()
    credited: int | None = _uint64()
    discount: int | None = _uint64()
    balance_after: int | None = _uint64()
    problem_code: str | None = None
    problem_status: int | None = None
    problem_detail: str | None = None
    created_at: datetime = Field(default_factory=_now, sa_type=DateTime(timezone=True))
    updated_at: datetime = Field(default_factory=_now, sa_type=DateTime(timezone=True))
    reversal_tx_hash: str | None = None
    reversal_block_number: int | None = Field(default=None, sa_type=BigInteger)
    reversed_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    #: When the transaction carrying it was stored in the outbox (and ``tx_hash`` set to it).
    sent_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    #: When the chain contradicted an answer already given (a confirmed redemption whose
    #: transaction was lost and could not be replayed, or a refusal that landed after all).
    promise_broken_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class StaffUser(SQLModel, table=True):
    """A municipal staff login (role admin, issuer, finance or auditor); scrypt password hash."""

    __tablename__ = "api_staff_user"

    username: str = Field(primary_key=True, max_length=64)
    password_hash: str = Field(max_length=200)
    role: str = Field(max_length=16)
    active: bool = True
    created_at: datetime = Field(default_factory=_now, sa_type=DateTime(timezone=True))


class Terminal(SQLModel, table=True):
    """A merchant terminal's credentials: an id and a secret (scrypt hash) issued by an admin."""

    __tablename__ = "api_terminal"

    terminal_id: str = Field(primary_key=True, max_length=64)
    merchant_id: int = Field(index=True)
    secret_hash: str = Field(max_length=200)
    label: str = Field(default="", max_length=120)
    active: bool = True
    created_at: datetime = Field(default_factory=_now, sa_type=DateTime(timezone=True))
    revoked_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class HolderPin(SQLModel, table=True):
    """A holder's PIN (hash), an alternative to the registry's activation code, and what a
    terminal needs besides a printed card above its limit. Wrong entries at terminals count in
    ``failed_attempts``; too many lock the PIN (``locked_at``) until the holder sets a new one
    or staff unlock it (:mod:`api.card_pins`)."""

    __tablename__ = "api_holder_pin"

    pass_number: str = Field(primary_key=True, max_length=32)
    pin_hash: str = Field(max_length=200)
    updated_at: datetime = Field(default_factory=_now, sa_type=DateTime(timezone=True))
    failed_attempts: int = Field(
        default=0, sa_column_kwargs={"server_default": "0", "nullable": False}
    )
    locked_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class PinFailure(SQLModel, table=True):
    """A wrong PIN entered at a terminal (throttles one terminal guessing across passes)."""

    __tablename__ = "api_pin_failure"

    id: int | None = Field(default=None, primary_key=True)
    terminal: str = Field(max_length=64, index=True)
    at_ms: int = Field(sa_type=BigInteger)


class ShortCode(SQLModel, table=True):
    """A holder page's short code for one live pass token (:mod:`api.short_codes`): found by a
    keyed hash of the normalised code, the token sealed with a key derived from the code (so the
    table alone cannot spend a code); deleted once expired."""

    __tablename__ = "api_short_code"

    lookup: str = Field(primary_key=True, max_length=64)
    sealed: bytes = Field(sa_type=LargeBinary)
    expires_at: int = Field(sa_type=BigInteger, index=True)


class ShortCodeMiss(SQLModel, table=True):
    """A short code that a terminal typed and that resolved to nothing (throttles guessing)."""

    __tablename__ = "api_short_code_miss"

    id: int | None = Field(default=None, primary_key=True)
    terminal: str = Field(max_length=64, index=True)
    at_ms: int = Field(sa_type=BigInteger)


class Sequence_(SQLModel, table=True):
    __tablename__ = "api_sequence"

    name: str = Field(primary_key=True, max_length=64)
    value: int = 0


class Marker(SQLModel, table=True):
    __tablename__ = "api_marker"

    name: str = Field(primary_key=True, max_length=64)
    value: str = ""


class IdempotencyConflict(Exception):
    """The idempotency key was used before with a different request body."""


class TokenAlreadyUsed(Exception):
    """A short-lived pass token that served another checkout: another merchant's, or this
    merchant's redemption of the same scheme (``merchant_id`` is who used it, ``scheme_id``)."""

    def __init__(self, *, merchant_id: int, scheme_id: int) -> None:
        super().__init__(
            f"the pass token was already redeemed (merchant {merchant_id}, scheme {scheme_id})"
        )
        self.merchant_id = merchant_id
        self.scheme_id = scheme_id


@dataclass(frozen=True, slots=True)
class AllocatedRedemption:
    """The record for a request: ``created`` is False when the key had been seen before."""

    record: RedemptionRecord
    created: bool


@dataclass(frozen=True, slots=True)
class PassHolder:
    """What the API needs of a pass: its number and secret, and its holder's first name."""

    pass_number: str
    pass_secret: bytes
    first_name: str
    holder_id: int
    blocked: bool


_REDEMPTION_SEQUENCE = "redemption_id"
#: Passes whose scan view (first name, registry block) :meth:`ApiStore.scan_view` keeps.
_SCAN_VIEWS_KEPT = 50_000
_MAX_GROUP = 500


_REDEMPTIONS: Table = RedemptionRecord.__table__  # type: ignore[attr-defined]
_SEQUENCES: Table = Sequence_.__table__  # type: ignore[attr-defined]


def _locked_sequence_value(conn: Connection) -> int:
    """The redemption id sequence's value, its row locked for this transaction (created at 0 on
    first use). The row is written first (a no-op update), so the write lock is held before the
    value is read: on SQLite, where ``FOR UPDATE`` does nothing, two processes would otherwise
    read the same value."""
    conn.execute(
        update(_SEQUENCES)
        .where(_SEQUENCES.c.name == _REDEMPTION_SEQUENCE)
        .values(value=_SEQUENCES.c.value)
    )
    value = conn.execute(
        core_select(_SEQUENCES.c.value)
        .where(_SEQUENCES.c.name == _REDEMPTION_SEQUENCE)
        .with_for_update()
    ).scalar_one_or_none()
    if value is None:
        conn.execute(insert(_SEQUENCES).values(name=_REDEMPTION_SEQUENCE, value=0))
        return 0
    return int(value)


#: What a mined outcome may change of a record (the request itself is never rewritten).
_OUTCOME_COLUMNS = tuple(
    column.name
    for column in _REDEMPTIONS.columns
    if column.name
    not in {
        "merchant_id",
        "idempotency_key",
        "request_hash",
        "redemption_id",
        "token_uri",
        "scheme_id",
        "amount",
        "created_at",
    }
)


def _set_sequence_value(conn: Connection, value: int) -> None:
    conn.execute(
        update(_SEQUENCES).where(_SEQUENCES.c.name == _REDEMPTION_SEQUENCE).values(value=value)
    )


def _row(record: RedemptionRecord) -> dict[str, Any]:
    """``record``'s column values, for a Core insert."""
    return {column.name: getattr(record, column.name) for column in _REDEMPTIONS.columns}


@dataclass(slots=True)
class _Allocation:
    """One waiting :meth:`ApiStore.allocate_redemption` call."""

    merchant_id: int
    idempotency_key: str
    request_hash: str
    token_uri: str
    scheme_id: int
    amount: int
    #: a short-lived token: it serves one checkout (see :meth:`ApiStore.allocate_redemption`)
    single_use: bool = False
    future: Future[AllocatedRedemption] = field(default_factory=Future)


#: Tables of the thin slice before the registry (created with create_all, no Alembic).
_PRE_ALEMBIC_TABLES = {"holder", "merchant", "redemption_request", "marker"}


class ApiStore:
    """Thread-safe access to the registry and the API's tables."""

    def __init__(self, db: Store) -> None:
        self.db = db
        self.registry = Registry(db)
        self._lock = threading.Lock()
        self._allocations: list[_Allocation] = []
        self._allocations_ready = threading.Condition()
        self._allocator: threading.Thread | None = None
        self._closed = False
        #: How long a login's active flag and the scheme labels are trusted before reading them
        #: again (changes through this store apply at once; other processes' within this).
        self.recheck_s = 1.0
        self._active_cache: dict[tuple[str, str], tuple[float, bool]] = {}
        self._scan_views: OrderedDict[bytes, tuple[float, tuple[str, bool]]] = OrderedDict()
        self._scan_views_commits = 0
        self._views_lock = threading.Lock()
        self._labels: tuple[float, dict[int, str]] | None = None

    @classmethod
    def open(cls, url: str) -> ApiStore:
        """Open ``url``, check it can be reached and migrate it (ledger and API branches).

        Raises :class:`ledger.store.base.StoreError` (one line, no password) otherwise."""
        db = open_store(StoreConfig(url))
        try:
            db.check_connection()
            tables = set(inspect(db.engine).get_table_names())
            if tables >= _PRE_ALEMBIC_TABLES and "alembic_version" not in tables:
                raise StoreError(
                    f"the database at {db.url} was made by the first development slice (no "
                    "migrations); delete it (in development: the var/ directory) to start over"
                )
            upgrade(db, version_dirs=[API_VERSIONS_DIR])
        except BaseException:
            db.close()
            raise
        return cls(db)

    @property
    def url(self) -> str:
        return self.db.url

    def close(self) -> None:
        with self._allocations_ready:
            self._closed = True
            self._allocations_ready.notify_all()
        if self._allocator is not None:
            self._allocator.join(timeout=10.0)
        self.db.close()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.db.session() as session:
            yield session

    # -- markers --------------------------------------------------------------------------------

    def marker(self, name: str) -> str | None:
        with self.session() as session:
            row = session.get(Marker, name)
            return row.value if row is not None else None

    def set_marker(self, name: str, value: str = "done") -> None:
        with self.session() as session:
            row = session.get(Marker, name) or Marker(name=name)
            row.value = value
            session.add(row)
            session.commit()

    # -- holders and merchants (the registry) ---------------------------------------------------

    @staticmethod
    def _view(pairs: list[Any]) -> list[PassHolder]:
        views: list[PassHolder] = []
        for record, holder in pairs:
            assert holder.id is not None
            views.append(
                PassHolder(
                    pass_number=record.pass_number,
                    pass_secret=record.pass_secret,
                    first_name=holder.first_name,
                    holder_id=holder.id,
                    blocked=record.status is PassStatus.BLOCKED,
                )
            )
        return views

    def holder(self, pass_number: str) -> PassHolder | None:
        """The pass ``pass_number`` and its holder, or None."""
        views = self._view(list(self.registry.pass_holders(pass_number)))
        return views[0] if views else None

    def scan_view(self, pass_id: bytes) -> tuple[str, bool] | None:
        """The first name of ``pass_id``'s holder and whether the registry blocked the pass, in
        one plain query (a counter scan's only registry read), or None for an unknown pass.

        Kept for ``recheck_s`` (a scan is mostly followed by more scans and redemptions of the
        same pass); any registry change through this process drops what is kept."""
        now = time.monotonic()
        with self._views_lock:
            if self._scan_views_commits != self.registry.commits:
                self._scan_views.clear()
                self._scan_views_commits = self.registry.commits
            kept = self._scan_views.get(pass_id)
        if kept is not None and now - kept[0] < self.recheck_s:
            return kept[1]
        query = (
            select(col(Holder.first_name), col(PassRecord.status))
            .join(Holder, col(Holder.id) == col(PassRecord.holder_id))
            .where(col(PassRecord.pass_id) == "0x" + pass_id.hex())
        )
        commits = self.registry.commits
        with self.db.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None  # not kept: a pass enrolled in a moment must show at once
        view = str(row[0]), row[1] is PassStatus.BLOCKED
        with self._views_lock:
            if commits == self.registry.commits:  # no change raced the read
                self._scan_views[pass_id] = (now, view)
                while len(self._scan_views) > _SCAN_VIEWS_KEPT:
                    self._scan_views.popitem(last=False)
        return view

    def holders(self) -> list[PassHolder]:
        """Every pass with its holder, by pass number."""
        return self._view(list(self.registry.pass_holders()))

    def holder_count(self) -> int:
        return self.registry.pass_count()

    def merchant(self, merchant_id: int) -> Merchant | None:
        return self.registry.find_merchant(merchant_id)

    def merchants(self) -> list[Merchant]:
        return self.registry.merchants()

    # -- schemes --------------------------------------------------------------------------------

    def scheme_labels(self) -> dict[int, str]:
        """Scheme id -> name (read again after ``recheck_s``; at once after a change here)."""
        cached = self._labels
        if cached is not None and time.monotonic() < cached[0]:
            return cached[1]
        query = select(col(SchemeLabel.scheme_id), col(SchemeLabel.name))
        with self.db.engine.connect() as conn:
            labels = {int(scheme_id): str(name) for scheme_id, name in conn.execute(query)}
        self._labels = (time.monotonic() + self.recheck_s, labels)
        return labels

    def set_scheme_label(self, scheme_id: int, name: str) -> None:
        with self.session() as session:
            session.merge(SchemeLabel(scheme_id=scheme_id, name=name))
            session.commit()
        self._labels = None

    # -- redemption ids and requests ------------------------------------------------------------

    def peek_redemption_id(self) -> int:
        """The id the next allocation will get (not reserved)."""
        with self.session() as session:
            row = session.get(Sequence_, _REDEMPTION_SEQUENCE)
            return (row.value if row is not None else 0) + 1

    def skip_redemption_ids(self, past: int) -> None:
        """Never allocate ``past`` or anything below it (ids found used on chain)."""
        with self._lock, self.db.engine.begin() as conn:
            _set_sequence_value(conn, max(_locked_sequence_value(conn), past))

    def reassign_redemption_id(self, record: RedemptionRecord) -> RedemptionRecord:
        """Give ``record`` (still pending) the next id past its current one, which was found
        used on chain by someone else; return the updated record."""
        with self._lock, self.session() as session:
            session.expire_on_commit = False
            conn = session.connection()
            new_id = max(_locked_sequence_value(conn), record.redemption_id) + 1
            _set_sequence_value(conn, new_id)
            stored = session.get(
                RedemptionRecord, (record.merchant_id, record.idempotency_key), with_for_update=True
            )
            if stored is None:
                raise LookupError(f"no redemption record {record.idempotency_key!r}")
            stored.redemption_id = new_id
            stored.updated_at = _now()
            session.add(stored)
            session.commit()
            session.expunge(stored)
            return stored

    def redemption(self, merchant_id: int, idempotency_key: str) -> RedemptionRecord | None:
        # most keys are new: ask with one plain query before building a session and a record
        probe = select(col(RedemptionRecord.redemption_id)).where(
            col(RedemptionRecord.merchant_id) == merchant_id,
            col(RedemptionRecord.idempotency_key) == idempotency_key,
        )
        with self.db.engine.connect() as conn:
            if conn.execute(probe).first() is None:
                return None
        with self.session() as session:
            return session.get(RedemptionRecord, (merchant_id, idempotency_key))

    def allocate_redemption(
        self,
        *,
        merchant_id: int,
        idempotency_key: str,
        request_hash: str,
        token_uri: str,
        scheme_id: int,
        amount: int,
        single_use: bool = False,
    ) -> Future[AllocatedRedemption]:
        """The record of ``idempotency_key``, created with the next dense redemption id if the
        key is new; the future fails with :class:`IdempotencyConflict` if the key came with
        another body, and resolves when the record is committed (await it with
        ``asyncio.wrap_future``, or ``.result()``).

        A ``single_use`` (short-lived) token serves one checkout: the first merchant that
        redeems it, once per scheme. A new key with a token that another merchant redeemed, or
        that this merchant redeemed in the same scheme (a request not refused), fails with
        :class:`TokenAlreadyUsed`; the contract refuses the other merchants too.

        Group commit: concurrent calls are written together, in one transaction per group by one
        writer thread, so a busy counter costs one database write per group, not per request.
        The sequence row is locked (``FOR UPDATE`` on PostgreSQL; SQLite serialises writers), so
        several API processes never hand out the same id.
        """
        request = _Allocation(
            merchant_id=merchant_id,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            token_uri=token_uri,
            scheme_id=scheme_id,
            amount=amount,
            single_use=single_use,
        )
        with self._allocations_ready:
            if self._closed:
                raise StoreError("the API store is closed; nothing was allocated")
            self._allocations.append(request)
            if self._allocator is None:
                self._allocator = threading.Thread(
                    target=self._allocate_groups, name="redemption-allocator", daemon=True
                )
                self._allocator.start()
            self._allocations_ready.notify()
        return request.future

    def _allocate_groups(self) -> None:
        while True:
            with self._allocations_ready:
                while not self._allocations and not self._closed:
                    self._allocations_ready.wait()
                if not self._allocations:
                    return
                group = self._allocations[:_MAX_GROUP]
                del self._allocations[:_MAX_GROUP]
            try:
                results = self._allocate_group(group)
            except Exception:  # e.g. another process took a key: one at a time, each its own
                results = []
                for request in group:
                    try:
                        results.extend(self._allocate_group([request]))
                    except Exception as exc:
                        results.append(exc)
            for request, result in zip(group, results, strict=True):
                if isinstance(result, BaseException):
                    request.future.set_exception(result)
                else:
                    request.future.set_result(result)

    def _allocate_group(
        self, group: list[_Allocation]
    ) -> list[AllocatedRedemption | BaseException]:
        """One transaction for ``group`` (SQLAlchemy Core: no unit of work on the hot path):
        lock the sequence, read the keys already stored, insert the new records."""
        results: list[AllocatedRedemption | BaseException] = []
        table = _REDEMPTIONS
        with self._lock, self.db.engine.begin() as conn:
            seq = _locked_sequence_value(conn)
            keys = {(request.merchant_id, request.idempotency_key) for request in group}
            found = conn.execute(
                core_select(table).where(
                    table.c.merchant_id.in_({m for m, _ in keys}),
                    table.c.idempotency_key.in_({k for _, k in keys}),
                )
            ).all()
            stored = {
                (row.merchant_id, row.idempotency_key): RedemptionRecord.model_validate(
                    dict(row._mapping)
                )
                for row in found
                if (row.merchant_id, row.idempotency_key) in keys
            }
            uses = self._token_uses(conn, group)
            written: dict[tuple[int, str], RedemptionRecord] = {}
            now = _now()
            for request in group:
                key = (request.merchant_id, request.idempotency_key)
                existing = written.get(key) or stored.get(key)
                if existing is not None:
                    if existing.request_hash != request.request_hash:
                        results.append(IdempotencyConflict(request.idempotency_key))
                    else:
                        results.append(AllocatedRedemption(existing, created=False))
                    continue
                if request.single_use:
                    used = uses.setdefault(request.token_uri, [])
                    earlier = next(
                        (
                            (merchant_id, scheme_id)
                            for merchant_id, scheme_id in used
                            if merchant_id != request.merchant_id or scheme_id == request.scheme_id
                        ),
                        None,
                    )
                    if earlier is not None:
                        results.append(
                            TokenAlreadyUsed(merchant_id=earlier[0], scheme_id=earlier[1])
                        )
                        continue
                    used.append((request.merchant_id, request.scheme_id))
                seq += 1
                written[key] = RedemptionRecord(
                    merchant_id=request.merchant_id,
                    idempotency_key=request.idempotency_key,
                    request_hash=request.request_hash,
                    redemption_id=seq,
                    token_uri=request.token_uri,
                    scheme_id=request.scheme_id,
                    amount=request.amount,
                    created_at=now,
                    updated_at=now,
                )
                results.append(AllocatedRedemption(written[key], created=True))
            if written:
                conn.execute(insert(table), [_row(record) for record in written.values()])
                _set_sequence_value(conn, seq)
        return results

    @staticmethod
    def _token_uses(conn: Connection, group: list[_Allocation]) -> dict[str, list[tuple[int, int]]]:
        """(merchant, scheme) of the requests not refused that used a single-use token of
        ``group``, by token."""
        tokens = {request.token_uri for request in group if request.single_use}
        if not tokens:
            return {}
        table = _REDEMPTIONS
        rows = conn.execute(
            core_select(table.c.token_uri, table.c.merchant_id, table.c.scheme_id).where(
                table.c.token_uri.in_(tokens),
                table.c.status != RedemptionStatus.FAILED.value,
            )
        ).all()
        uses: dict[str, list[tuple[int, int]]] = {}
        for row in rows:
            uses.setdefault(row.token_uri, []).append((row.merchant_id, row.scheme_id))
        return uses

    def save_redemption(self, record: RedemptionRecord) -> RedemptionRecord:
        record.updated_at = _now()
        with self.session() as session:
            merged = session.merge(record)
            session.commit()
            return merged

    def complete_redemptions(self, updates: Mapping[int, Mapping[str, Any]]) -> None:
        """Write each ``updates[redemption_id]`` (outcome columns and their values) into its
        record, all in one transaction (a mined batch); ids without a record are skipped.
        Nothing is written if one of them fails. Core executemany updates, one per shape of
        update (success, refusal), without reading the records first."""
        if not updates:
            return
        table = _REDEMPTIONS
        now = _now()
        shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for redemption_id, values in updates.items():
            unknown = set(values) - set(_OUTCOME_COLUMNS)
            if unknown:
                raise ValueError(
                    f"an outcome may set only {sorted(_OUTCOME_COLUMNS)}, not {sorted(unknown)}"
                )
            names = tuple(sorted({*values, "updated_at"}))
            row = {"updated_at": now, **values, "_redemption_id": redemption_id}
            shapes.setdefault(names, []).append(row)
        with self.db.engine.begin() as conn:
            for names, rows in shapes.items():
                conn.execute(
                    update(table)
                    .where(table.c.redemption_id == bindparam("_redemption_id"))
                    .values({name: bindparam(name) for name in names}),
                    rows,
                )

    def redemptions_by_ids(self, redemption_ids: Iterable[int]) -> dict[int, RedemptionRecord]:
        """The records of ``redemption_ids`` that exist, by id."""
        ids = sorted(set(redemption_ids))
        if not ids:
            return {}
        with self.session() as session:
            rows = session.exec(
                select(RedemptionRecord).where(col(RedemptionRecord.redemption_id).in_(ids))
            ).all()
        return {row.redemption_id: row for row in rows}

    def redemption_by_id(self, redemption_id: int) -> RedemptionRecord | None:
        with self.session() as session:
            return session.exec(
                select(RedemptionRecord).where(RedemptionRecord.redemption_id == redemption_id)
            ).first()

    def merchant_redemptions(
        self,
        merchant_id: int,
        *,
        limit: int,
        before: int | None = None,
        status: RedemptionStatus | None = None,
    ) -> list[RedemptionRecord]:
        """``merchant_id``'s own records, newest (highest redemption id) first."""
        with self.session() as session:
            query = select(RedemptionRecord).where(RedemptionRecord.merchant_id == merchant_id)
            if before is not None:
                query = query.where(RedemptionRecord.redemption_id < before)
            if status is not None:
                query = query.where(RedemptionRecord.status == status)
            query = query.order_by(col(RedemptionRecord.redemption_id).desc()).limit(limit)
            return list(session.exec(query).all())

    def merchant_records_between(
        self, merchant_id: int, start: datetime, end: datetime
    ) -> list[RedemptionRecord]:
        """Succeeded records of ``merchant_id`` created or reversed in ``[start, end)``."""
        with self.session() as session:
            query = (
                select(RedemptionRecord)
                .where(RedemptionRecord.merchant_id == merchant_id)
                .where(RedemptionRecord.status == RedemptionStatus.SUCCEEDED)
                .order_by(col(RedemptionRecord.redemption_id))
            )
            rows = session.exec(query).all()
        return [
            r
            for r in rows
            if start <= _aware(r.created_at) < end
            or (r.reversed_at is not None and start <= _aware(r.reversed_at) < end)
        ]

    # -- auth -----------------------------------------------------------------------------------

    def staff_user(self, username: str) -> StaffUser | None:
        with self.session() as session:
            return session.get(StaffUser, username)

    def staff_count(self) -> int:
        with self.session() as session:
            return int(session.exec(select(func.count()).select_from(StaffUser)).one())

    def add_staff_user(self, user: StaffUser) -> StaffUser | None:
        """Insert ``user``; None if the username is taken."""
        with self._lock, self.session() as session:
            if session.get(StaffUser, user.username) is not None:
                return None
            session.add(user)
            session.commit()
            session.refresh(user)
            return user

    def terminal_active(self, terminal_id: str) -> bool:
        """Whether ``terminal_id`` exists and is not revoked (checked on every request: read
        again after ``recheck_s``, at once after a revocation through this store)."""
        return self._active(("terminal", terminal_id))

    def staff_active(self, username: str) -> bool:
        """Whether staff login ``username`` exists and is active (as :meth:`terminal_active`)."""
        return self._active(("staff", username))

    def _active(self, key: tuple[str, str]) -> bool:
        now = time.monotonic()
        cached = self._active_cache.get(key)
        if cached is not None and now < cached[0]:
            return cached[1]
        kind, name = key
        if kind == "terminal":
            query = select(col(Terminal.active)).where(col(Terminal.terminal_id) == name)
        else:
            query = select(col(StaffUser.active)).where(col(StaffUser.username) == name)
        with self.db.engine.connect() as conn:
            active = bool(conn.execute(query).scalar())
        if len(self._active_cache) > 10_000:
            self._active_cache.clear()
        self._active_cache[key] = (now + self.recheck_s, active)
        return active

    def terminal(self, terminal_id: str) -> Terminal | None:
        with self.session() as session:
            return session.get(Terminal, terminal_id)

    def terminals(self, merchant_id: int | None = None) -> list[Terminal]:
        with self.session() as session:
            query = select(Terminal)
            if merchant_id is not None:
                query = query.where(Terminal.merchant_id == merchant_id)
            return list(session.exec(query.order_by(col(Terminal.terminal_id))).all())

    def add_terminal(self, terminal: Terminal) -> Terminal | None:
        """Insert ``terminal``; None if the id is taken."""
        with self._lock, self.session() as session:
            if session.get(Terminal, terminal.terminal_id) is not None:
                return None
            session.add(terminal)
            session.commit()
            session.refresh(terminal)
            return terminal

    def revoke_terminal(self, terminal_id: str) -> Terminal | None:
        with self.session() as session:
            row = session.get(Terminal, terminal_id)
            if row is None:
                return None
            if row.active:
                row.active = False
                row.revoked_at = _now()
                session.add(row)
                session.commit()
                session.refresh(row)
            self._active_cache.pop(("terminal", terminal_id), None)
            return row

    def holder_pin(self, pass_number: str) -> str | None:
        with self.session() as session:
            row = session.get(HolderPin, pass_number.strip().upper())
            return row.pin_hash if row is not None else None

    def set_holder_pins(self, pins: dict[str, str]) -> None:
        """Set the PIN hash of each pass number (insert or replace)."""
        with self.session() as session:
            for number, pin_hash in pins.items():
                session.merge(HolderPin(pass_number=number, pin_hash=pin_hash, updated_at=_now()))
            session.commit()

    def redemption_count(self) -> int:
        with self.session() as session:
            return len(session.exec(select(RedemptionRecord.redemption_id)).all())
