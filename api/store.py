"""A minimal off-chain store for the thin slice (SQLModel on SQLite under ``var/``).

Holds only what the slice needs: holders (pass number -> pass secret and first name), merchants,
scheme labels, redemption requests keyed by idempotency key with their result, a dense sequence
for redemption ids, and a few markers. A later issue replaces this module with the full registry
and Alembic migrations; nothing outside :mod:`api` depends on it, and the tables are created with
``create_all`` on start.

Personal data (first names, pass numbers, pass secrets) lives here and never on chain.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Dialect, Engine, LargeBinary, String, event
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator
from sqlmodel import Column, Field, Session, SQLModel, create_engine, select

__all__ = [
    "AllocatedRedemption",
    "Holder",
    "IdempotencyConflict",
    "Merchant",
    "RedemptionRecord",
    "RedemptionStatus",
    "SchemeLabel",
    "Store",
]


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


class Holder(SQLModel, table=True):
    __tablename__ = "holder"

    pass_number: str = Field(primary_key=True, max_length=32)
    first_name: str = Field(max_length=100)
    pass_secret: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))
    created_at: datetime = Field(default_factory=_now)


class Merchant(SQLModel, table=True):
    __tablename__ = "merchant"

    id: int = Field(primary_key=True)
    name: str = Field(max_length=200)
    address: str = Field(unique=True, max_length=42)


class SchemeLabel(SQLModel, table=True):
    """Human names of on-chain schemes (the chain knows only numbers)."""

    __tablename__ = "scheme_label"

    scheme_id: int = Field(primary_key=True)
    name: str = Field(max_length=200)


class RedemptionStatus(enum.StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class RedemptionRecord(SQLModel, table=True):
    """One merchant request, keyed by (merchant, idempotency key), and what became of it."""

    __tablename__ = "redemption_request"

    merchant_id: int = Field(primary_key=True)
    idempotency_key: str = Field(primary_key=True, max_length=255)
    request_hash: str = Field(max_length=64)
    redemption_id: int = Field(unique=True, index=True)
    token_uri: str
    scheme_id: int
    amount: int = Field(sa_column=Column(UInt64(), nullable=False))
    status: RedemptionStatus = Field(default=RedemptionStatus.PENDING)
    tx_hash: str | None = None
    block_number: int | None = None
    debited: int | None = _uint64()
    credited: int | None = _uint64()
    discount: int | None = _uint64()
    balance_after: int | None = _uint64()
    problem_code: str | None = None
    problem_status: int | None = None
    problem_detail: str | None = None
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)


class Sequence_(SQLModel, table=True):
    __tablename__ = "sequence"

    name: str = Field(primary_key=True, max_length=64)
    value: int = 0


class Marker(SQLModel, table=True):
    __tablename__ = "marker"

    name: str = Field(primary_key=True, max_length=64)
    value: str = ""


class IdempotencyConflict(Exception):
    """The idempotency key was used before with a different request body."""


@dataclass(frozen=True, slots=True)
class AllocatedRedemption:
    """The record for a request: ``created`` is False when the key had been seen before."""

    record: RedemptionRecord
    created: bool


_REDEMPTION_SEQUENCE = "redemption_id"


def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class Store:
    """Thread-safe access to the slice's tables."""

    def __init__(self, url: str) -> None:
        connect_args: dict[str, Any] = {}
        if url.startswith("sqlite"):
            connect_args["check_same_thread"] = False
        self.url = url
        self.engine: Engine = create_engine(url, connect_args=connect_args)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        SQLModel.metadata.create_all(self.engine)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
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

    # -- holders, merchants, schemes ------------------------------------------------------------

    def holder(self, pass_number: str) -> Holder | None:
        with self.session() as session:
            return session.get(Holder, pass_number.strip().upper())

    def holders(self) -> list[Holder]:
        with self.session() as session:
            return list(session.exec(select(Holder).order_by(Holder.pass_number)).all())

    def holder_count(self) -> int:
        return len(self.holders())

    def add_holders(self, holders: Sequence[Holder]) -> None:
        with self.session() as session:
            session.add_all(holders)
            session.commit()

    def merchant(self, merchant_id: int) -> Merchant | None:
        with self.session() as session:
            return session.get(Merchant, merchant_id)

    def merchants(self) -> list[Merchant]:
        with self.session() as session:
            return list(session.exec(select(Merchant).order_by(Merchant.id)).all())  # type: ignore[arg-type]

    def upsert_merchant(self, merchant: Merchant) -> None:
        with self.session() as session:
            session.merge(merchant)
            session.commit()

    def scheme_labels(self) -> dict[int, str]:
        with self.session() as session:
            return {row.scheme_id: row.name for row in session.exec(select(SchemeLabel)).all()}

    def set_scheme_label(self, scheme_id: int, name: str) -> None:
        with self.session() as session:
            session.merge(SchemeLabel(scheme_id=scheme_id, name=name))
            session.commit()

    # -- redemption ids and requests ------------------------------------------------------------

    def peek_redemption_id(self) -> int:
        """The id the next allocation will get (not reserved)."""
        with self.session() as session:
            row = session.get(Sequence_, _REDEMPTION_SEQUENCE)
            return (row.value if row is not None else 0) + 1

    def skip_redemption_ids(self, past: int) -> None:
        """Never allocate ``past`` or anything below it (ids found used on chain)."""
        with self._lock, self.session() as session:
            row = session.get(Sequence_, _REDEMPTION_SEQUENCE) or Sequence_(
                name=_REDEMPTION_SEQUENCE
            )
            row.value = max(row.value, past)
            session.add(row)
            session.commit()

    def redemption(self, merchant_id: int, idempotency_key: str) -> RedemptionRecord | None:
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
    ) -> AllocatedRedemption:
        """Return the record of ``idempotency_key``; create it with the next dense redemption id
        if the key is new. Raises :class:`IdempotencyConflict` if the key came with another body."""
        with self._lock, self.session() as session:
            existing = session.get(RedemptionRecord, (merchant_id, idempotency_key))
            if existing is not None:
                if existing.request_hash != request_hash:
                    raise IdempotencyConflict(idempotency_key)
                return AllocatedRedemption(existing, created=False)
            seq = session.get(Sequence_, _REDEMPTION_SEQUENCE) or Sequence_(
                name=_REDEMPTION_SEQUENCE
            )
            seq.value += 1
            record = RedemptionRecord(
                merchant_id=merchant_id,
                idempotency_key=idempotency_key,
                request_hash=request_hash,
                redemption_id=seq.value,
                token_uri=token_uri,
                scheme_id=scheme_id,
                amount=amount,
            )
            session.add(seq)
            session.add(record)
            session.commit()
            return AllocatedRedemption(record, created=True)

    def save_redemption(self, record: RedemptionRecord) -> RedemptionRecord:
        record.updated_at = _now()
        with self.session() as session:
            merged = session.merge(record)
            session.commit()
            return merged

    def redemption_count(self) -> int:
        with self.session() as session:
            return len(session.exec(select(RedemptionRecord.redemption_id)).all())
