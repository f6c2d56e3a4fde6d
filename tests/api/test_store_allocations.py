"""ApiStore's redemption ids and records on both databases: group-committed allocation by one
writer thread (dense ids, idempotency keys), reassignment past a used id, a batch saved at once."""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import StatementError

from api.store import AllocatedRedemption, ApiStore, IdempotencyConflict, RedemptionRecord
from api.store import RedemptionStatus as Status
from ledger.store.base import StoreError

THREADS = 200


@pytest.fixture
def store(database_url: str) -> Iterator[ApiStore]:
    api_store = ApiStore.open(database_url)
    try:
        yield api_store
    finally:
        api_store.close()


def _allocate(
    store: ApiStore, key: str, *, merchant_id: int = 1, body: str = "", amount: int = 100
) -> AllocatedRedemption:
    return store.allocate_redemption(
        merchant_id=merchant_id,
        idempotency_key=key,
        request_hash=f"hash-of-{body or key}",
        token_uri=f"web+stadjerspas:{body or key}",
        scheme_id=1,
        amount=amount,
    ).result()


def _fields(record: RedemptionRecord) -> dict[str, Any]:
    """The record's fields; datetimes as UTC-aware (SQLite hands them back naive, in UTC)."""
    return {
        name: value.replace(tzinfo=UTC)
        if isinstance(value, datetime) and value.tzinfo is None
        else value
        for name, value in record.model_dump().items()
    }


def _stored(store: ApiStore, key: str, merchant_id: int = 1) -> dict[str, Any]:
    record = store.redemption(merchant_id, key)
    assert record is not None
    return _fields(record)


def _in_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` for i in range(count) on ``count`` threads released at once."""
    start = threading.Barrier(count)

    def run(i: int) -> Any:
        start.wait(30)
        return work(i)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def test_concurrent_allocations_get_distinct_dense_ids(store: ApiStore) -> None:
    first = store.peek_redemption_id()

    # the same key string of two merchants is two requests
    results: list[AllocatedRedemption] = _in_threads(
        THREADS, lambda i: _allocate(store, f"key-{i // 2}", merchant_id=1 + i % 2)
    )

    assert all(r.created for r in results)
    ids = [r.record.redemption_id for r in results]
    assert sorted(ids) == list(range(first, first + THREADS))
    assert store.peek_redemption_id() == first + THREADS
    assert store.redemption_count() == THREADS
    for i, result in enumerate(results):
        stored = store.redemption(1 + i % 2, f"key-{i // 2}")
        assert stored is not None
        assert stored.redemption_id == result.record.redemption_id
        assert stored.status is Status.PENDING
        assert result.record.idempotency_key == f"key-{i // 2}"


def test_the_same_key_and_body_returns_the_same_record(store: ApiStore) -> None:
    created = _allocate(store, "again", amount=250)
    assert created.created

    repeated = _allocate(store, "again", amount=250)
    assert not repeated.created
    assert _fields(repeated.record) == _fields(created.record)

    # concurrently (one group, or several): one record, one id
    same: list[AllocatedRedemption] = _in_threads(20, lambda _: _allocate(store, "together"))
    assert sum(r.created for r in same) == 1
    assert len({r.record.redemption_id for r in same}) == 1
    assert same[0].record.redemption_id == created.record.redemption_id + 1
    assert store.peek_redemption_id() == created.record.redemption_id + 2


def test_the_same_key_with_another_body_conflicts_and_changes_nothing(store: ApiStore) -> None:
    original = _allocate(store, "k", body="first", amount=100).record
    before = _stored(store, "k")

    with pytest.raises(IdempotencyConflict):
        _allocate(store, "k", body="second", amount=999)

    assert _stored(store, "k") == before
    assert before["request_hash"] == "hash-of-first"
    assert before["amount"] == 100
    assert store.peek_redemption_id() == original.redemption_id + 1  # no id was used

    # concurrently: exactly the requests with the first body get the record
    def either(i: int) -> AllocatedRedemption | IdempotencyConflict:
        try:
            return _allocate(store, "k", body="first" if i % 2 else "other", amount=100)
        except IdempotencyConflict as exc:
            return exc

    outcomes = _in_threads(40, either)
    assert all(isinstance(o, IdempotencyConflict) for o in outcomes[::2])
    accepted = outcomes[1::2]
    assert all(isinstance(o, AllocatedRedemption) and not o.created for o in accepted)
    assert {o.record.redemption_id for o in accepted} == {original.redemption_id}
    assert _stored(store, "k") == before
    # the conflicts did not disturb a new key allocated after them
    assert _allocate(store, "next").record.redemption_id == original.redemption_id + 1


def test_close_with_allocations_waiting_returns_and_drains_them(
    store: ApiStore, database_backend: str
) -> None:
    assert _allocate(store, "warm-up").record.redemption_id == 1
    waiting = 20
    pool = ThreadPoolExecutor(max_workers=waiting + 1)
    try:
        with _write_lock(store.url, database_backend):
            # the writer thread takes this one and is stuck on the lock ...
            stuck = pool.submit(_allocate, store, "stuck")
            _until(lambda: _writer_in_group(store))
            # ... so these wait in the queue behind it
            futures = [pool.submit(_allocate, store, f"w{i}") for i in range(waiting)]
            _until(lambda: len(store._allocations) == waiting)
            assert not stuck.done()
            assert not any(f.done() for f in futures)
            closing = threading.Thread(target=store.close, name="test-close")
            closing.start()
            _until(lambda: store._closed)
            with pytest.raises(StoreError, match="closed"):
                _allocate(store, "too-late")
        # the database is free again: close() drains the queue and returns
        closing.join(timeout=8.0)  # well below close()'s own 10 s join timeout
        assert not closing.is_alive()
        assert stuck.result(timeout=10).record.redemption_id == 2
        results = [f.result(timeout=10) for f in futures]
    finally:
        pool.shutdown(wait=True)
    assert all(r.created for r in results)
    assert sorted(r.record.redemption_id for r in results) == list(range(3, 3 + waiting))
    again = ApiStore.open(store.url)
    try:
        assert again.redemption_count() == 2 + waiting
        assert again.peek_redemption_id() == 3 + waiting
    finally:
        again.close()


def _writer_in_group(store: ApiStore) -> bool:
    """Whether the store's writer thread is writing a group (here: stuck on the lock)."""
    thread = store._allocator
    frame = sys._current_frames().get(thread.ident) if thread and thread.ident else None
    while frame is not None:
        if frame.f_code.co_name == "_allocate_group":
            return True
        frame = frame.f_back
    return False


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.001)


class _WriteLock:
    """Hold the database's write lock (SQLite) or the sequence row's lock (PostgreSQL)."""

    def __init__(self, url: str, backend: str) -> None:
        self.url = url
        self.backend = backend
        self._release: Callable[[], None] | None = None

    def __enter__(self) -> None:
        if self.backend == "sqlite":
            path = make_url(self.url).database
            assert path is not None
            connection = sqlite3.connect(path, isolation_level=None)
            connection.execute("BEGIN IMMEDIATE")

            def release() -> None:
                connection.execute("ROLLBACK")
                connection.close()

        else:
            engine = create_engine(make_url(self.url).set(drivername="postgresql+psycopg"))
            pg = engine.connect()
            pg.begin()
            pg.execute(
                text("SELECT value FROM api_sequence WHERE name = 'redemption_id' FOR UPDATE")
            )

            def release() -> None:
                pg.rollback()
                pg.close()
                engine.dispose()

        self._release = release

    def __exit__(self, *exc: object) -> None:
        assert self._release is not None
        self._release()


def _write_lock(url: str, backend: str) -> _WriteLock:
    return _WriteLock(url, backend)


def test_reassign_moves_a_record_past_its_old_id(store: ApiStore) -> None:
    records = [_allocate(store, f"r{i}").record for i in range(5)]
    moved_from = records[2]
    assert moved_from.redemption_id == 3

    moved = store.reassign_redemption_id(moved_from)

    assert moved.redemption_id == 6  # past the old id and past every allocated one
    assert moved.idempotency_key == "r2"
    assert store.redemption_by_id(3) is None
    by_id = store.redemption_by_id(6)
    assert by_id is not None
    assert by_id.idempotency_key == "r2"
    assert _stored(store, "r2")["redemption_id"] == 6
    assert store.peek_redemption_id() == 7
    assert _allocate(store, "after").record.redemption_id == 7
    # the others kept theirs; the same key still finds the moved record
    assert [_stored(store, f"r{i}")["redemption_id"] for i in (0, 1, 3, 4)] == [1, 2, 4, 5]
    again = _allocate(store, "r2")
    assert not again.created
    assert again.record.redemption_id == 6

    # an id found used above the sequence: moved past it, and the sequence follows
    store.skip_redemption_ids(20)
    assert store.reassign_redemption_id(again.record).redemption_id == 21
    assert store.peek_redemption_id() == 22

    # an unknown record: nothing moves, no id is used
    ghost = RedemptionRecord(
        merchant_id=9,
        idempotency_key="ghost",
        request_hash="h",
        redemption_id=1,
        token_uri="t",
        scheme_id=1,
        amount=1,
    )
    with pytest.raises(LookupError):
        store.reassign_redemption_id(ghost)
    assert store.peek_redemption_id() == 22


def test_complete_redemptions_saves_many_records_in_one_transaction(store: ApiStore) -> None:
    records = [_allocate(store, f"c{i}").record for i in range(50)]
    ids = [r.redemption_id for r in records]

    def succeeded(rid: int) -> dict[str, Any]:
        return {
            "status": Status.SUCCEEDED,
            "tx_hash": "0x" + "ab" * 32,
            "block_number": 1_000 + rid,
            "debited": 100,
            "credited": 100,
            "balance_after": 2**64 - 1,
        }

    failed = {"status": Status.FAILED, "problem_code": "over-balance", "problem_status": 409}
    updates = {rid: succeeded(rid) if rid % 5 else failed for rid in ids}
    updates[10_000] = failed  # no such record: skipped
    commits: list[object] = []

    def on_commit(connection: object) -> None:
        commits.append(connection)

    event.listen(store.db.engine, "commit", on_commit)
    try:
        store.complete_redemptions(updates)
    finally:
        event.remove(store.db.engine, "commit", on_commit)

    assert len(commits) == 1
    stamps = set()
    for record in records:
        rid = record.redemption_id
        stored = store.redemption_by_id(rid)
        assert stored is not None
        stamps.add(stored.updated_at)
        assert (stored.request_hash, stored.amount) == (record.request_hash, record.amount)
        if rid % 5:
            assert stored.status is Status.SUCCEEDED
            assert stored.block_number == 1_000 + rid
            assert stored.debited == stored.amount == 100
            assert stored.balance_after == 2**64 - 1
            assert stored.problem_code is None
        else:
            assert stored.status is Status.FAILED
            assert stored.problem_status == 409
            assert stored.tx_hash is None
    assert len(stamps) == 1
    assert store.redemption_by_id(10_000) is None
    store.complete_redemptions({})


def test_complete_redemptions_is_all_or_nothing(store: ApiStore) -> None:
    ids = [_allocate(store, f"a{i}").record.redemption_id for i in range(5)]
    before = [_stored(store, f"a{i}") for i in range(5)]

    updates: dict[int, dict[str, Any]] = {
        rid: {"status": Status.SUCCEEDED, "debited": 1} for rid in ids
    }
    updates[ids[3]] = {"status": Status.SUCCEEDED, "debited": "not a number"}
    with pytest.raises(StatementError):
        store.complete_redemptions(updates)
    assert [_stored(store, f"a{i}") for i in range(5)] == before

    with pytest.raises(ValueError, match="amount"):  # the request itself is never rewritten
        store.complete_redemptions({ids[0]: {"amount": 1}})
    assert [_stored(store, f"a{i}") for i in range(5)] == before


def test_two_stores_on_one_database_never_share_an_id(
    store: ApiStore, database_backend: str
) -> None:
    """Two API processes: each key is sent to both stores at once; one record and id per key."""
    other = ApiStore.open(store.url)
    try:
        results: list[AllocatedRedemption] = _in_threads(
            THREADS, lambda i: _allocate(other if i % 2 else store, f"both-{i // 2}")
        )
    finally:
        other.close()

    keys = THREADS // 2
    pairs = [(results[2 * k], results[2 * k + 1]) for k in range(keys)]
    assert all(a.record.redemption_id == b.record.redemption_id for a, b in pairs)
    assert all(a.created != b.created for a, b in pairs)
    assert sorted(a.record.redemption_id for a, _ in pairs) == list(range(1, keys + 1))
    assert store.peek_redemption_id() == keys + 1
    assert store.redemption_count() == keys
