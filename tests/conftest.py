"""Shared fixtures: one local anvil node per test session, web3 and the dev accounts; databases.

Tests that change chain state must not depend on order: take ``chain_snapshot`` to have the
chain reverted (``evm_snapshot``/``evm_revert``, anvil-only, allowed in tests) after the test.

Store tests take ``database_url`` (a fresh empty database, on SQLite and on PostgreSQL) or
``migrated_store`` (a :class:`ledger.store.db.Store` on it, migrated to head).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from alembic.runtime.migration import MigrationContext
from eth_account import Account
from eth_account.signers.local import LocalAccount
from sqlalchemy import Connection, create_engine, inspect, text
from sqlalchemy.engine import URL, make_url
from web3 import HTTPProvider, Web3

from ledger.node import DEV_MNEMONIC, AnvilConfig, AnvilNode
from ledger.store.base import metadata
from ledger.store.db import Store, StoreConfig, head_revision, open_store, upgrade

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHAIN_ID = 31337
DEV_ACCOUNT_COUNT = 10
#: PostgreSQL admin URL for the store tests (``.ci/run`` sets it); unset: PostgreSQL is skipped.
POSTGRES_URL_ENV = "STADJERSPAS_TEST_POSTGRES_URL"
#: Read once at import: some test packages clear ``STADJERSPAS_*`` variables per test.
_POSTGRES_ADMIN_URL = os.environ.get(POSTGRES_URL_ENV) or None


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def anvil_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnvilNode]:
    """A session-wide anvil on a free port: chain 31337, 10 funded accounts of the test mnemonic."""
    config = AnvilConfig(
        state_dir=tmp_path_factory.mktemp("anvil"),
        chain_id=CHAIN_ID,
        accounts=DEV_ACCOUNT_COUNT,
        mnemonic=DEV_MNEMONIC,
        project_root=PROJECT_ROOT,
    )
    with AnvilNode(config) as node:
        yield node


@pytest.fixture(scope="session")
def w3(anvil_node: AnvilNode) -> Web3:
    return Web3(HTTPProvider(anvil_node.rpc_url, cache_allowed_requests=True))


@pytest.fixture(scope="session")
def dev_accounts() -> list[LocalAccount]:
    """The node's funded accounts as local signers (m/44'/60'/0'/0/i of the test mnemonic)."""
    Account.enable_unaudited_hdwallet_features()
    return [
        Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}")
        for i in range(DEV_ACCOUNT_COUNT)
    ]


@pytest.fixture
def chain_snapshot(anvil_node: AnvilNode) -> Iterator[str]:
    """Revert every change the test makes to the shared node (yields the snapshot id)."""
    snapshot_id: str = anvil_node.rpc("evm_snapshot")
    try:
        yield snapshot_id
    finally:
        if not anvil_node.rpc("evm_revert", [snapshot_id]):
            raise RuntimeError(f"evm_revert({snapshot_id}) failed")


# -- databases ----------------------------------------------------------------------------------


def _postgres_admin_url() -> URL:
    assert _POSTGRES_ADMIN_URL is not None
    return make_url(_POSTGRES_ADMIN_URL).set(drivername="postgresql+psycopg")


def _postgres(statement: str) -> None:
    engine = create_engine(_postgres_admin_url(), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()


def _new_database_name(kind: str) -> str:
    return f"stadjerspas_{kind}_{uuid.uuid4().hex[:16]}"


class _MigratedTemplates:
    """Databases migrated to head once per session (and per xdist worker).

    - SQLite: a migrated template file; each test gets a copy (a few ms).
    - PostgreSQL: one migrated database shared by the session's tests and emptied after each
      (rows deleted, sequences reset: ~20 ms; ``CREATE DATABASE`` costs ~0.5 s here). If a
      test moved its schema off head, it is dropped and migrated again.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.sqlite: Path | None = None
        self.postgres: str | None = None

    def sqlite_copy(self, target: Path) -> None:
        if self.sqlite is None:
            path = self.directory / "template.db"
            store = open_store(StoreConfig(f"sqlite:///{path}"))
            try:
                upgrade(store)
            finally:
                store.close()  # the last connection checkpoints and removes the WAL file
            self.sqlite = path
        shutil.copyfile(self.sqlite, target)

    def postgres_url(self) -> str:
        if self.postgres is None:
            name = _new_database_name("shared")
            _postgres(f'CREATE DATABASE "{name}"')
            self.postgres = name
            store = open_store(StoreConfig(self._url(name)))
            try:
                upgrade(store)
            finally:
                store.close()
        return self._url(self.postgres)

    @staticmethod
    def _url(name: str) -> str:
        return _postgres_admin_url().set(database=name).render_as_string(hide_password=False)

    def postgres_reset(self) -> None:
        assert self.postgres is not None
        engine = create_engine(self._url(self.postgres))
        try:
            with engine.begin() as connection:
                tables = [
                    name
                    for name in inspect(connection).get_table_names()
                    if name != "alembic_version"
                ]
                at_head = current_revisions_of(connection) == (head_revision(),)
                if at_head and tables:
                    # DELETE, children first, is much faster than TRUNCATE on small tables
                    order = [t.name for t in reversed(metadata.sorted_tables) if t.name in tables]
                    for name in order + sorted(set(tables) - set(order)):
                        connection.execute(text(f'DELETE FROM "{name}"'))
                    connection.execute(
                        text("SELECT setval(oid, 1, false) FROM pg_class WHERE relkind = 'S'")
                    )
        finally:
            engine.dispose()
        if not at_head:
            _postgres(f'DROP DATABASE IF EXISTS "{self.postgres}" WITH (FORCE)')
            self.postgres = None

    def close(self) -> None:
        if self.postgres is not None:
            _postgres(f'DROP DATABASE IF EXISTS "{self.postgres}" WITH (FORCE)')


def current_revisions_of(connection: Connection) -> tuple[str, ...]:
    return tuple(sorted(MigrationContext.configure(connection).get_current_heads()))


@pytest.fixture(scope="session")
def _migrated_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_MigratedTemplates]:
    templates = _MigratedTemplates(tmp_path_factory.mktemp("store-templates"))
    try:
        yield templates
    finally:
        templates.close()


#: ``params`` of a fixture that runs once per database: SQLite always, PostgreSQL when
#: ``STADJERSPAS_TEST_POSTGRES_URL`` is set (skipped with the reason otherwise).
DATABASE_BACKENDS = [
    "sqlite",
    pytest.param(
        "postgres",
        marks=[
            pytest.mark.postgres,
            pytest.mark.skipif(
                _POSTGRES_ADMIN_URL is None,
                reason=f"set {POSTGRES_URL_ENV} to run PostgreSQL tests",
            ),
        ],
    ),
]


@contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A fresh PostgreSQL database named after ``prefix``: its URL; dropped afterwards."""
    name = _new_database_name(prefix)
    _postgres(f'CREATE DATABASE "{name}"')
    try:
        yield _postgres_admin_url().set(database=name).render_as_string(hide_password=False)
    finally:
        _postgres(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=DATABASE_BACKENDS)
def database_backend(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``postgres``: a test taking a database fixture runs once per backend; the
    PostgreSQL run is skipped (with the reason) unless ``STADJERSPAS_TEST_POSTGRES_URL`` is set."""
    return str(request.param)


@contextmanager
def _database(backend: str, tmp_path: Path, templates: _MigratedTemplates | None) -> Iterator[str]:
    if backend == "sqlite":
        path = tmp_path / f"{uuid.uuid4().hex[:8]}.db"
        if templates is not None:
            templates.sqlite_copy(path)
        yield f"sqlite:///{path}"
        return
    with postgres_database("t") as url:
        yield url


@pytest.fixture
def database_url(database_backend: str, tmp_path: Path) -> Iterator[str]:
    """The URL of a FRESH, EMPTY database for this test, once on SQLite and once on PostgreSQL.

    - ``sqlite``: a file in the test's ``tmp_path``;
    - ``postgres``: ``CREATE DATABASE stadjerspas_t_<random>`` on the server of
      ``$STADJERSPAS_TEST_POSTGRES_URL`` (skipped with a reason when unset), dropped
      ``WITH (FORCE)`` after the test.
    """
    with _database(database_backend, tmp_path, None) as url:
        yield url


@pytest.fixture
def migrated_store(
    database_backend: str, tmp_path: Path, _migrated_templates: _MigratedTemplates
) -> Iterator[Store]:
    """A :class:`ledger.store.db.Store` on a fresh database of its own (SQLite, then PostgreSQL)
    at the ledger's Alembic head: every table of ``ledger.store.tables`` exists and is empty.
    Closed (and, on PostgreSQL, dropped) after the test.

    Use it in any test of the off-chain side (indexer, reports, settlement, audit)::

        def test_something(migrated_store: Store) -> None:
            with migrated_store.session() as session:
                ...
                session.commit()

    The test runs twice (``[sqlite]`` and ``[postgres]``); the PostgreSQL run is skipped unless
    ``STADJERSPAS_TEST_POSTGRES_URL`` is set (``.ci/run`` sets it). For speed, the schema is
    migrated once per session: SQLite tests get a copy of a migrated file; PostgreSQL tests
    share one migrated database that is emptied (rows deleted, sequences reset) after each
    test, so the store looks fresh to every test. Do not change its schema (use
    ``database_url`` for migration tests; it is a different, empty database).
    """
    if database_backend == "sqlite":
        with _database(database_backend, tmp_path, _migrated_templates) as url:
            store = open_store(StoreConfig(url))
            try:
                yield store
            finally:
                store.close()
        return
    store = open_store(StoreConfig(_migrated_templates.postgres_url()))
    try:
        yield store
    finally:
        store.close()
        _migrated_templates.postgres_reset()
