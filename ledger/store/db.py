"""Opening the store: engine, sessions, connection check and Alembic migrations.

``open_store(StoreConfig(url))`` builds the engine without connecting; ``Store.check_connection``
then says, in one line, whether the database can be reached; ``upgrade(store)`` runs the Alembic
migrations to head. Alembic is configured here in code (there is no ``alembic.ini``): the
environment is ``ledger/store/migrations/env.py`` and the ledger's revisions live in
``ledger/store/migrations/versions`` (branch ``ledger``). Another package can add a branch of its
own for its own tables by passing its versions directory (``version_dirs``); ``ledger`` never
needs to know it.

URLs: ``sqlite:///<path>`` (the default under ``var/``; WAL journal, foreign keys on, busy timeout)
or ``postgresql://user:password@host:port/db`` (driven by psycopg 3; ``postgresql://`` and
``postgres://`` are read as ``postgresql+psycopg://``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, MetaData, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool
from sqlmodel import Session

from ledger.store.base import StoreError, StoreNotMigrated, StoreUnavailable

__all__ = [
    "LEDGER_BRANCH",
    "LEDGER_VERSIONS_DIR",
    "MIGRATIONS_DIR",
    "Store",
    "StoreConfig",
    "check_migrated",
    "current_revision",
    "current_revisions",
    "default_sqlite_url",
    "downgrade",
    "head_revision",
    "open_store",
    "safe_url",
    "schema_differences",
    "upgrade",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
LEDGER_VERSIONS_DIR = MIGRATIONS_DIR / "versions"
#: Alembic branch label of the ledger's revisions.
LEDGER_BRANCH = "ledger"
#: PostgreSQL advisory lock key held while migrating (several workers may start at once).
_MIGRATION_LOCK = 0x5354_4144_4A45  # "STADJE"


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where the store is. ``url`` is an SQLAlchemy URL (see the module docstring)."""

    url: str
    connect_timeout_s: int = 5
    sqlite_busy_timeout_ms: int = 5_000
    echo: bool = False


#: Pooled connections per engine (SQLAlchemy's default, 5 + 10 overflow, makes a service with
#: many threads close and reopen overflow connections all the time).
_SQLITE_POOL_SIZE = 20
_POSTGRES_POOL_SIZE = 10
_POSTGRES_POOL_OVERFLOW = 20


def default_sqlite_url(var_dir: Path) -> str:
    """The embedded default: ``<var_dir>/stadjerspas.db`` (absolute)."""
    return f"sqlite:///{(Path(var_dir) / 'stadjerspas.db').resolve()}"


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(
            f"{url!r} is not a database URL (expected sqlite:///<path> or "
            "postgresql://user@host:port/database)"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def safe_url(url: str | URL) -> str:
    """``url`` as text with any password masked (for messages and logs)."""
    parsed = url if isinstance(url, URL) else _parse(url)
    return parsed.render_as_string(hide_password=True)


def _sqlite_pragmas(busy_timeout_ms: int, wal: bool) -> Any:
    def on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            if wal:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    return on_connect


class Store:
    """An open store: the engine and sessions on it. Build it with :func:`open_store`."""

    def __init__(self, config: StoreConfig, engine: Engine) -> None:
        self.config = config
        self.engine = engine

    @property
    def url(self) -> str:
        """The URL with its password masked."""
        return safe_url(self.engine.url)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return str(self.engine.dialect.name)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose objects stay readable after commit. The caller commits; leaving the
        block without a commit rolls back."""
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    def check_connection(self) -> None:
        """Connect once; raise :class:`StoreUnavailable` (one line, URL without password) if
        the database cannot be reached or opened."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except DBAPIError as exc:
            reason = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]
            raise StoreUnavailable(f"cannot reach the database at {self.url}: {reason}") from None

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Store({self.url})"


def open_store(config: StoreConfig) -> Store:
    """Create the engine for ``config.url`` (no connection is made yet)."""
    url = _parse(config.url)
    kwargs: dict[str, Any] = {"echo": config.echo}
    if url.get_backend_name() == "sqlite":
        memory = url.database in (None, "", ":memory:")
        kwargs["connect_args"] = {
            "check_same_thread": False,
            "timeout": config.sqlite_busy_timeout_ms / 1000,
        }
        if memory:
            kwargs["poolclass"] = StaticPool
        else:  # a connection is a file handle: keep enough for the service's threads, so
            # that a busy moment does not open (and set pragmas on) a connection per query
            kwargs |= {"pool_size": _SQLITE_POOL_SIZE, "max_overflow": _SQLITE_POOL_SIZE}
    elif url.get_backend_name() == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": config.connect_timeout_s}
        kwargs["pool_pre_ping"] = True
        kwargs |= {"pool_size": _POSTGRES_POOL_SIZE, "max_overflow": _POSTGRES_POOL_OVERFLOW}
    else:
        raise StoreError(
            f"unsupported database {safe_url(url)}: use sqlite:///<path> or postgresql://..."
        )
    try:
        engine = create_engine(url, **kwargs)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise StoreError(f"cannot use the database URL {safe_url(url)}: {exc}") from None
    if url.get_backend_name() == "sqlite":
        event.listen(
            engine, "connect", _sqlite_pragmas(config.sqlite_busy_timeout_ms, wal=not memory)
        )
    return Store(config, engine)


# -- migrations ---------------------------------------------------------------------------------


def _alembic_config(
    version_dirs: Sequence[Path], target_metadata: MetaData | None = None
) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    locations = [str(LEDGER_VERSIONS_DIR), *(str(Path(p).resolve()) for p in version_dirs)]
    config.set_main_option("version_locations", os.pathsep.join(locations))
    if target_metadata is not None:
        config.attributes["target_metadata"] = target_metadata
    return config


def _run(store: Store, version_dirs: Sequence[Path], action: str, target: str) -> None:
    store.check_connection()
    config = _alembic_config(version_dirs)
    with store.engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        config.attributes["connection"] = connection
        if action == "upgrade":
            command.upgrade(config, target)
        else:
            command.downgrade(config, target)


def upgrade(store: Store, *, version_dirs: Sequence[Path] = (), target: str = "heads") -> None:
    """Migrate ``store`` to ``target`` (default: the head of every branch).

    ``version_dirs`` adds other packages' revision directories (their own Alembic branches)."""
    _run(store, version_dirs, "upgrade", target)


def downgrade(store: Store, *, version_dirs: Sequence[Path] = (), target: str = "base") -> None:
    """Migrate ``store`` down to ``target`` (default: an empty schema)."""
    _run(store, version_dirs, "downgrade", target)


def current_revisions(store: Store) -> tuple[str, ...]:
    """Every branch's current revision in the database (empty if never migrated)."""
    with store.engine.connect() as connection:
        return tuple(sorted(MigrationContext.configure(connection).get_current_heads()))


def _ledger_script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_alembic_config(()))


def head_revision() -> str:
    """The ledger branch's head revision in this code."""
    head = _ledger_script().get_current_head()
    assert head is not None
    return head


def current_revision(store: Store) -> str | None:
    """The ledger branch's revision in the database (None if never migrated)."""
    script = _ledger_script()
    known = {rev.revision for rev in script.walk_revisions()}
    for revision in current_revisions(store):
        if revision in known:
            return revision
    return None


def check_migrated(store: Store) -> None:
    """Raise :class:`StoreNotMigrated` unless the ledger's tables are at this code's head."""
    current, head = current_revision(store), head_revision()
    if current != head:
        raise StoreNotMigrated(
            f"the database at {store.url} is at revision {current or 'none (empty)'}, this code "
            f"needs {head}: run the migrations (`stadjerspas` runs them at start)"
        )


def schema_differences(store: Store, target_metadata: MetaData) -> list[Any]:
    """Alembic's differences between the database and ``target_metadata`` (empty: in step)."""
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diffs: list[Any] = compare_metadata(context, target_metadata)
        return diffs
