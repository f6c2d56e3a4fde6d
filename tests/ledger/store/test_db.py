"""Opening the store, the connection check and the Alembic migrations, on both databases."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from ledger.store.base import StoreError, StoreNotMigrated, StoreUnavailable
from ledger.store.db import (
    StoreConfig,
    check_migrated,
    current_revision,
    current_revisions,
    default_sqlite_url,
    downgrade,
    head_revision,
    open_store,
    safe_url,
    schema_differences,
    upgrade,
)
from ledger.store.tables import ledger_metadata, ledger_table_names


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_empty_to_head_matches_the_metadata_and_back(database_url: str) -> None:
    store = open_store(StoreConfig(database_url))
    try:
        assert current_revision(store) is None
        with pytest.raises(StoreNotMigrated, match="none \\(empty\\)"):
            check_migrated(store)
        upgrade(store)
        assert current_revision(store) == head_revision()
        check_migrated(store)
        tables = set(inspect(store.engine).get_table_names())
        assert ledger_table_names() <= tables
        assert schema_differences(store, ledger_metadata()) == []
        upgrade(store)  # at head: nothing to do
        assert current_revisions(store) == (head_revision(),)

        downgrade(store)
        assert current_revision(store) is None
        left = set(inspect(store.engine).get_table_names()) - {"alembic_version"}
        assert left == set()
        upgrade(store)  # and up again from base
        assert schema_differences(store, ledger_metadata()) == []
    finally:
        store.close()


def test_merchant_location_revision_keeps_existing_merchants(database_url: str) -> None:
    """0003 -> 0004 adds the (empty) location columns to merchants already registered, and
    back down drops them, keeping the merchants."""
    store = open_store(StoreConfig(database_url))
    insert = text(
        "INSERT INTO registry_merchant (id, name, kvk_number, category, address, active) "
        "VALUES (7, 'Zwembad', '01234567', 'sport', :address, :active)"
    )
    try:
        upgrade(store, target="0003")
        with store.engine.begin() as connection:
            connection.execute(insert, {"address": "0x" + "11" * 20, "active": True})
        upgrade(store)
        assert current_revision(store) == head_revision()
        columns = {c["name"] for c in inspect(store.engine).get_columns("registry_merchant")}
        assert {"street", "postcode", "town", "website", "opening_hours"} <= columns
        with store.engine.connect() as connection:
            row = connection.execute(
                text("SELECT name, street, postcode, town FROM registry_merchant WHERE id = 7")
            ).one()
        assert tuple(row) == ("Zwembad", None, None, None)
        assert schema_differences(store, ledger_metadata()) == []

        downgrade(store, target="0003")
        columns = {c["name"] for c in inspect(store.engine).get_columns("registry_merchant")}
        assert "street" not in columns
        assert "opening_hours" not in columns
        with store.engine.connect() as connection:
            names = connection.execute(text("SELECT name FROM registry_merchant")).scalars()
            assert list(names) == ["Zwembad"]
    finally:
        store.close()


def test_registry_and_index_tables_are_separate_groups() -> None:
    names = ledger_table_names()
    assert {"registry_holder", "registry_pass", "registry_merchant", "registry_card"} <= names
    assert {"index_redemption", "index_checkpoint", "index_block"} <= names
    assert all(name.startswith(("registry_", "index_", "payout_", "outbox_")) for name in names)
    assert "outbox_tx" in names


def test_migrated_store_fixture_is_empty(migrated_store) -> None:
    with migrated_store.engine.connect() as connection:
        for name in sorted(ledger_table_names()):
            assert connection.execute(text(f"SELECT count(*) FROM {name}")).scalar_one() == 0


def test_sqlite_pragmas(tmp_path: Path) -> None:
    store = open_store(StoreConfig(default_sqlite_url(tmp_path)))
    try:
        assert store.url == f"sqlite:///{tmp_path.resolve() / 'stadjerspas.db'}"
        with store.engine.connect() as connection:
            assert connection.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
            assert connection.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
            assert connection.execute(text("PRAGMA busy_timeout")).scalar_one() == 5000
    finally:
        store.close()


def test_unreachable_postgres_is_one_clear_line_without_password() -> None:
    url = f"postgresql://ledger:s3cret-pw@127.0.0.1:{_closed_port()}/stadjerspas"
    store = open_store(StoreConfig(url, connect_timeout_s=2))
    try:
        with pytest.raises(StoreUnavailable) as info:
            store.check_connection()
        message = str(info.value)
        assert message.startswith(
            "cannot reach the database at postgresql+psycopg://ledger:***@127.0.0.1:"
        )
        assert "s3cret-pw" not in message
        assert "\n" not in message
        assert "refused" in message.lower()
        with pytest.raises(StoreUnavailable):  # migrating checks first
            upgrade(store)
    finally:
        store.close()


def test_unopenable_sqlite_file(tmp_path: Path) -> None:
    store = open_store(StoreConfig(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}"))
    with pytest.raises(StoreUnavailable, match="unable to open database file"):
        store.check_connection()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "is not a database URL"),
        ("mysql://u:pw@host/db", "unsupported database mysql://u:\\*\\*\\*@host/db"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        open_store(StoreConfig(url))


def test_safe_url_masks_the_password() -> None:
    assert safe_url("postgresql://a:b@h:1/d") == "postgresql+psycopg://a:***@h:1/d"
    assert safe_url("postgres://a@h/d") == "postgresql+psycopg://a@h/d"
