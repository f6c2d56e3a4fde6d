"""Exit from a vendor: the whole index and registry in open formats, with a manifest and checksums.

:func:`export` writes, for every table the caller's scope may see, one CSV file and one JSON Lines
file with the same rows:

- columns in the table's own order (the CSV header; the key order of each JSON object), rows in
  primary-key order, so two exports of the same data are byte-identical except for the manifest's
  ``generated_at``;
- integers as integers (also uint128 amounts, which JSON carries exactly), ``true``/``false``,
  dates and times in ISO 8601, bytes as ``0x``-hex, an empty CSV field / JSON ``null`` for NULL;
- CSV text cells that a spreadsheet would run as a formula (a name beginning with ``= + - @``, a
  tab or a carriage return) get a leading ``'`` (:mod:`ledger.csv_safe`); numbers, including
  negative amounts, are written as numbers; the JSON Lines file keeps the exact text;
- ``manifest.json``: format version, the schema's Alembic revision (when the database has one), the
  chain id and contract address the index mirrors, when it was generated, the scope, which columns
  were withheld, and per file its row count, size and SHA-256.

Scopes (by role):

- ``auditor``: the index tables (a mirror of public chain data) and the pseudonymous parts of the
  registry only: districts and the postcode table (public reference data), passes as pseudonym,
  status and holder id, cards, holders reduced to id, district and household links, merchants
  without name, IBAN or BIC. Never names, birth dates, postcodes, addresses, IBANs, pass numbers,
  activation codes or pass secrets. The columns are an *allow-list*: a column added to the schema
  later is withheld from auditors until it is listed here.
  Payout runs and lines come without the pain.001 document, merchant names, IBANs and BICs.
- ``admin``: every column of every table, except ``registry_pass.pass_secret``.

Pass secrets are written only with ``include_secrets=True`` in the admin scope. Moving to another
system is the one reason to: ``passId = HMAC(pass_secret, pass_number)`` is the only link between a
person and their on-chain history, so the new system needs the secrets to recompute the same pass
ids (and so keep every balance and the printed cards working). Without them, every holder would
have to be re-enrolled under new pass ids. Files of an admin export are created readable by the
owner only (mode 0600).

:func:`verify_export` recomputes every checksum and row count of an export directory, so a
recipient can prove that nothing was changed, added or left out on the way.
"""

from __future__ import annotations

import csv
import enum
import hashlib
import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Connection, Engine, Table, inspect, select
from sqlalchemy.exc import SQLAlchemyError

from ledger.audit import engine_of
from ledger.csv_safe import csv_cell
from ledger.errors import LedgerError
from ledger.store import registry as _registry  # noqa: F401 - registers the registry tables
from ledger.store.base import metadata
from ledger.store.index import IndexCheckpoint

__all__ = [
    "AUDITOR_COLUMNS",
    "FORMAT_VERSION",
    "ExportError",
    "ExportResult",
    "ExportedFile",
    "Scope",
    "VerifyResult",
    "export",
    "verify_export",
]

FORMAT_VERSION: Final = 1
MANIFEST: Final = "manifest.json"
SECRET_COLUMNS: Final = {("registry_pass", "pass_secret")}
TABLE_PREFIXES: Final = ("index_", "registry_", "payout_")

#: Registry columns an auditor may see (pseudonymous or public). Index tables are all visible.
AUDITOR_COLUMNS: Final[Mapping[str, frozenset[str]]] = {
    "registry_district": frozenset({"code", "name", "municipality"}),
    "registry_postcode_district": frozenset({"postcode", "district_code"}),
    "registry_holder": frozenset(
        {
            "id",
            "district_code",
            "household_id",
            "household_role",
            "possible_duplicate_of",
            "created_at",
        }
    ),
    "registry_pass": frozenset(
        {"id", "holder_id", "pass_id", "holder_key", "status", "created_at"}
    ),
    "registry_card": frozenset({"id", "pass_record_id", "serial", "status", "issued_at"}),
    "registry_merchant": frozenset({"id", "kvk_number", "category", "address", "active"}),
    # payout runs without the pain.001 document (it names the merchants and their IBANs)
    "payout_run": frozenset(
        {
            "id",
            "reference",
            "period_start",
            "period_end",
            "status",
            "schema_name",
            "execution_date",
            "total",
            "chain_id",
            "contract",
            "created_at",
            "confirmed_at",
            "cancelled_at",
        }
    ),
    "payout_line": frozenset(
        {
            "id",
            "run_id",
            "merchant",
            "amount",
            "status",
            "end_to_end_id",
            "payment_reference",
            "settle_tx",
            "settled_at",
        }
    ),
}


class ExportError(LedgerError):
    """The export could not be written (bad scope, target not empty, database unreadable)."""


class Scope(enum.StrEnum):
    AUDITOR = "auditor"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class ExportedFile:
    path: str
    table: str
    format: str
    rows: int
    bytes: int
    sha256: str


@dataclass(slots=True)
class ExportResult:
    out_dir: Path
    scope: Scope
    files: list[ExportedFile]
    manifest: dict[str, Any]

    def rows(self, table: str) -> int:
        return next(f.rows for f in self.files if f.table == table)


@dataclass(slots=True)
class VerifyResult:
    problems: list[str] = field(default_factory=list)
    files: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


# ================================================================== export


def export(
    store: Any,
    out_dir: Path,
    *,
    scope: Scope | str,
    include_secrets: bool = False,
    chain_id: int | None = None,
    contract: str | None = None,
) -> ExportResult:
    """Write the index and registry tables ``scope`` may see under ``out_dir`` (new or empty).

    ``store`` is a SQLAlchemy engine or any object with an ``engine`` attribute. ``chain_id`` and
    ``contract`` go into the manifest; by default they are taken from the index checkpoint.
    All tables are read in one transaction (repeatable read on PostgreSQL), so the files are one
    consistent snapshot even while the indexer keeps writing.
    """
    try:
        scope = Scope(scope)
    except ValueError:
        raise ExportError(f"unknown scope {scope!r}; use one of: auditor, admin") from None
    if include_secrets and scope is not Scope.ADMIN:
        raise ExportError("pass secrets can only be exported in the admin scope")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir} exists and is not an empty directory")
    engine = engine_of(store)
    try:
        with _snapshot(engine) as conn:
            present = set(inspect(conn).get_table_names())
            names = _ledger_table_names()
            tables = [t for t in metadata.sorted_tables if t.name in names and t.name in present]
            tables.sort(key=lambda t: (not t.name.startswith("index_"), t.name))
            revision = _alembic_revision(conn, present)
            if chain_id is None or contract is None:
                found = _checkpoint(conn, present)
                chain_id = chain_id if chain_id is not None else found[0]
                contract = contract if contract is not None else found[1]
            out_dir.mkdir(parents=True, exist_ok=True)
            files: list[ExportedFile] = []
            withheld: dict[str, list[str]] = {}
            for table in tables:
                columns = _visible_columns(table, scope, include_secrets)
                if columns is None:
                    withheld[table.name] = ["(table)"]
                    continue
                hidden = [c.name for c in table.columns if c.name not in columns]
                if hidden:
                    withheld[table.name] = hidden
                files.extend(_write_table(conn, table, columns, out_dir, scope))
    except SQLAlchemyError as exc:
        raise ExportError(f"cannot read the database: {_first_line(exc)}") from exc

    manifest: dict[str, Any] = {
        "format": "stadjerspas-export",
        "format_version": FORMAT_VERSION,
        "schema_revision": revision,
        "chain_id": chain_id,
        "contract": contract,
        "generated_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "scope": scope.value,
        "include_secrets": include_secrets,
        "withheld": withheld,
        "tables": sorted({f.table for f in files}),
        "files": [
            {
                "path": f.path,
                "table": f.table,
                "format": f.format,
                "rows": f.rows,
                "bytes": f.bytes,
                "sha256": f.sha256,
            }
            for f in files
        ],
    }
    manifest_path = out_dir / MANIFEST
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if scope is Scope.ADMIN:
        manifest_path.chmod(0o600)
    return ExportResult(out_dir=out_dir, scope=scope, files=files, manifest=manifest)


def _ledger_table_names() -> frozenset[str]:
    """The ledger's own tables (registry, index, payouts...), not other packages' tables that
    share the metadata."""
    try:
        from ledger.store.tables import ledger_table_names
    except ImportError:  # pragma: no cover - older store layout
        return frozenset(
            t.name for t in metadata.sorted_tables if t.name.startswith(TABLE_PREFIXES)
        )
    return ledger_table_names()


def _visible_columns(table: Table, scope: Scope, include_secrets: bool) -> list[str] | None:
    names = [c.name for c in table.columns]
    if scope is Scope.ADMIN:
        return [n for n in names if include_secrets or (table.name, n) not in SECRET_COLUMNS]
    if table.name.startswith("index_"):
        return names
    allowed = AUDITOR_COLUMNS.get(table.name)
    if allowed is None:
        return None
    return [n for n in names if n in allowed]


class _snapshot:
    """One read transaction over all tables (REPEATABLE READ on PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None

    def __enter__(self) -> Connection:
        conn = self._engine.connect()
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        self._conn = conn
        conn.begin()
        return conn

    def __exit__(self, *exc: object) -> None:
        assert self._conn is not None
        self._conn.rollback()
        self._conn.close()


def _alembic_revision(conn: Connection, present: set[str]) -> str | None:
    if "alembic_version" not in present:
        return None
    rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all()
    return ",".join(sorted(str(r) for r in rows)) or None


def _checkpoint(conn: Connection, present: set[str]) -> tuple[int | None, str | None]:
    table: Table = IndexCheckpoint.__table__  # type: ignore[attr-defined]
    if table.name not in present:
        return None, None
    rows = conn.execute(select(table.c.chain_id, table.c.contract)).all()
    if len(rows) != 1:
        return None, None
    return int(rows[0][0]), str(rows[0][1])


def _write_table(
    conn: Connection, table: Table, columns: Sequence[str], out_dir: Path, scope: Scope
) -> list[ExportedFile]:
    order = list(table.primary_key.columns) or [table.c[name] for name in columns]
    query = select(*(table.c[name] for name in columns)).order_by(*order)
    csv_path = out_dir / f"{table.name}.csv"
    jsonl_path = out_dir / f"{table.name}.jsonl"
    rows = 0
    with _open(csv_path, scope) as csv_file, _open(jsonl_path, scope) as jsonl_file:
        writer = csv.writer(csv_file, lineterminator="\n")
        writer.writerow(columns)
        for record in conn.execute(query):
            values = [_value(v) for v in record]
            writer.writerow([_csv_text(v) for v in values])
            jsonl_file.write(
                json.dumps(dict(zip(columns, values, strict=True)), ensure_ascii=False) + "\n"
            )
            rows += 1
    return [
        _describe(csv_path, table.name, "csv", rows),
        _describe(jsonl_path, table.name, "jsonl", rows),
    ]


def _open(path: Path, scope: Scope) -> io.TextIOWrapper:
    mode = 0o600 if scope is Scope.ADMIN else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    return open(fd, "w", encoding="utf-8", newline="")


def _value(value: Any) -> Any:
    """A column value in its open-format spelling (JSON-ready)."""
    if value is None or isinstance(value, bool | int | str):
        return value.value if isinstance(value, enum.Enum) else value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "0x" + bytes(value).hex()
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
            return value.isoformat().replace("+00:00", "Z")
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return value
    return str(value)


def _csv_text(value: Any) -> str:
    """A CSV cell: text is escaped against formula injection (:func:`ledger.csv_safe.csv_cell`);
    numbers stay numbers (a negative amount is not a formula)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return str(csv_cell(value))
    return str(value)


def _describe(path: Path, table: str, fmt: str, rows: int) -> ExportedFile:
    return ExportedFile(
        path=path.name,
        table=table,
        format=fmt,
        rows=rows,
        bytes=path.stat().st_size,
        sha256=_sha256(path),
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ================================================================== verification


def verify_export(out_dir: Path) -> VerifyResult:
    """Check every file of an export against its manifest: checksum, size, row count; and that
    no file was added or removed. Returns the problems found (none: ``ok``)."""
    out_dir = Path(out_dir)
    result = VerifyResult()
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
        entries = list(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        result.problems.append(f"{MANIFEST}: unreadable ({exc})")
        return result
    listed: set[str] = set()
    for entry in entries:
        name = str(entry["path"])
        listed.add(name)
        path = out_dir / name
        if Path(name).name != name or not path.is_file():
            result.problems.append(f"{name}: missing")
            continue
        result.files += 1
        if _sha256(path) != entry["sha256"]:
            result.problems.append(f"{name}: SHA-256 differs from the manifest")
        if path.stat().st_size != entry["bytes"]:
            result.problems.append(f"{name}: size differs from the manifest")
        try:
            rows = _count_rows(path, str(entry["format"]))
        except (ValueError, csv.Error) as exc:
            result.problems.append(f"{name}: unreadable ({exc})")
            continue
        if rows != entry["rows"]:
            result.problems.append(f"{name}: {rows} rows, the manifest says {entry['rows']}")
    for path in sorted(out_dir.iterdir()):
        if path.name != MANIFEST and path.name not in listed:
            result.problems.append(f"{path.name}: not in the manifest")
    by_table: dict[str, set[int]] = {}
    for entry in entries:
        by_table.setdefault(str(entry["table"]), set()).add(int(entry["rows"]))
    for table, counts in sorted(by_table.items()):
        if len(counts) != 1:
            result.problems.append(f"{table}: CSV and JSON Lines row counts differ in the manifest")
    return result


def _count_rows(path: Path, fmt: str) -> int:
    with path.open(encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            return sum(1 for _ in _csv_rows(handle)) - 1
        count = 0
        for line in handle:
            if line.strip():
                json.loads(line)
                count += 1
        return count


def _csv_rows(handle: io.TextIOBase | Any) -> Iterator[list[str]]:
    yield from csv.reader(handle)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
