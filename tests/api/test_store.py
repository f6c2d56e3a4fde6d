"""The API's store on both databases: the API's own Alembic branch beside the ledger's, the
registry behind the slice, and a clear error at start when the database cannot be reached."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import MetaData, inspect

from api.runtime import Runtime, StartupError
from api.store import API_VERSIONS_DIR, ApiStore, RedemptionRecord
from ledger.registry import Registry
from ledger.store.base import StoreError, metadata
from ledger.store.db import (
    StoreConfig,
    current_revision,
    current_revisions,
    downgrade,
    head_revision,
    open_store,
    schema_differences,
)
from ledger.store.tables import ledger_metadata, ledger_table_names
from tests.api.conftest import dev_settings

API_TABLES = {
    "api_holder_pin",
    "api_job",
    "api_marker",
    "api_partner_key",
    "api_pin_failure",
    "api_redemption_request",
    "api_scheme_label",
    "api_sequence",
    "api_short_code",
    "api_short_code_miss",
    "api_staff_user",
    "api_terminal",
}


def _ledger_and_api_metadata() -> MetaData:
    target = ledger_metadata()
    for table in metadata.sorted_tables:
        if table.name in API_TABLES:
            table.to_metadata(target)
    return target


def test_open_migrates_both_branches(database_url: str) -> None:
    store = ApiStore.open(database_url)
    try:
        tables = set(inspect(store.db.engine).get_table_names())
        assert API_TABLES | ledger_table_names() <= tables
        assert {t for t in tables if t.startswith("api_")} == API_TABLES
        assert current_revision(store.db) == head_revision()
        assert len(current_revisions(store.db)) == 2  # ledger head and api head
        assert schema_differences(store.db, _ledger_and_api_metadata()) == []
        store.set_marker("m", "v")
        allocated = store.allocate_redemption(
            merchant_id=1,
            idempotency_key="k",
            request_hash="h",
            token_uri="t",
            scheme_id=1,
            amount=2**64 - 1,
        ).result()
        assert allocated.record.redemption_id == 1
        stored = store.redemption(1, "k")
        assert isinstance(stored, RedemptionRecord)
        assert stored.amount == 2**64 - 1
    finally:
        store.close()
    again = ApiStore.open(database_url)  # a second start migrates nothing and keeps the rows
    try:
        assert again.marker("m") == "v"
        assert again.peek_redemption_id() == 2
    finally:
        again.close()
    db = open_store(StoreConfig(database_url))
    try:
        downgrade(db, version_dirs=[API_VERSIONS_DIR])
        assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
    finally:
        db.close()


def test_a_pre_migration_slice_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as connection:
        for table in ("holder", "merchant", "redemption_request", "marker"):
            connection.execute(f"CREATE TABLE {table} (x INTEGER)")
    with pytest.raises(StoreError, match="made by the first development slice"):
        ApiStore.open(f"sqlite:///{path}")


def test_unreachable_database_fails_at_start_clearly(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://stadjerspas:hunter2@127.0.0.1:{port}/ledger"
    settings = dev_settings(tmp_path / "var", database_url=url)
    with pytest.raises(StartupError) as info:
        Runtime.start(settings, report=lambda _: None)
    message = str(info.value)
    assert message.startswith(
        f"cannot reach the database at postgresql+psycopg://stadjerspas:***@127.0.0.1:{port}/ledger"
    )
    assert "hunter2" not in message
    assert "STADJERSPAS_DATABASE_URL" in message
    assert "\n" not in message
    assert not (tmp_path / "var" / "anvil").exists()  # refused before starting anything


def test_demo_is_enrolled_through_the_registry(runtime: Runtime) -> None:
    registry = runtime.store.registry
    holders = registry.holders()
    assert len(holders) == 50
    postcodes = registry.postcodes()
    assert all(h.district_code == postcodes[h.postcode] for h in holders)
    assert len({h.district_code for h in holders}) == 12
    assert registry.possible_duplicates() == []
    assert registry.household_members("DEMO-HH-004")[1].household_role == "child"
    merchants = registry.merchants()[:3]  # the demo merchants: other tests may enrol more
    assert [m.id for m in merchants] == [1, 2, 3]
    assert all(m.iban and len(m.kvk_number) == 8 for m in merchants)
    assert [m.address for m in merchants] == [a.address for a in runtime.keys.merchants[:3]]
    view = runtime.store.holder("gr0000001")
    assert view is not None
    assert view.pass_number == "GR0000001"
    assert registry.pass_by_number("GR0000001").pass_secret == view.pass_secret


def test_scan_view_is_kept_until_recheck_or_a_change_through_this_store(
    runtime: Runtime,
) -> None:
    store = runtime.store
    number = "GR0000021"
    record = store.registry.pass_by_number(number)
    pid = bytes.fromhex(record.pass_id[2:])
    first = store.scan_view(pid)
    assert first is not None
    assert first[1] is False
    elsewhere = open_store(
        StoreConfig(store.db.engine.url.render_as_string(hide_password=False))
    )  # another process's registry on the same database
    other = Registry(elsewhere)
    recheck = store.recheck_s
    try:
        other.block_pass(number)
        assert store.scan_view(pid) == first  # kept: another process's change waits
        store.recheck_s = 0.0
        assert store.scan_view(pid) == (first[0], True)  # ... for recheck_s at most
        store.recheck_s = 3600.0
        other.unblock_pass(number)
        assert store.scan_view(pid) == (first[0], True)
        store.registry.block_pass(number)  # through this store: at once
        assert store.scan_view(pid) == (first[0], True)
        store.registry.unblock_pass(number)
        assert store.scan_view(pid) == first
        assert store.scan_view(b"\x00" * 32) is None
    finally:
        store.recheck_s = recheck
        other.unblock_pass(number)
        elsewhere.close()
