"""Benchmark of the standard reports over 1,000,000 synthetic redemptions.

``python -m bench.reports [--json] [--redemptions N] [--repeat R] [--skip-postgres]``

For SQLite (a temporary file) and PostgreSQL (a temporary database on the server of
``$STADJERSPAS_TEST_POSTGRES_URL``, default ``postgresql://postgres@127.0.0.1:5432/test``):

1. migrate an empty database to head (tables and the report indexes of revisions 0002 and
   0003);
2. bulk-load 20,000 holders (one pass each) in 30 districts, 200 merchants, 4 schemes with
   40,000 entitlements, N redemptions over 2025, 1 % of them reversed, settlements and expiries
   (PostgreSQL: ``COPY`` through psycopg; SQLite: ``executemany`` in one transaction). The
   indexes of the big tables are dropped during the load and created again afterwards, then
   the planner statistics are refreshed (``ANALYZE``; ``VACUUM ANALYZE`` on PostgreSQL);
3. time the standard reports (per scheme by month, per merchant, per district with
   suppression) ``R`` times each after one warm-up, and report the p95 over all of them.

The last line with ``--json`` is ``{"report_p95_ms_1m": <the slower database>, ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Index, Table, create_engine, insert, text
from sqlalchemy.engine import make_url

from ledger.reports import Granularity, district_report, merchant_report, scheme_report
from ledger.store.base import metadata
from ledger.store.db import Store, StoreConfig, open_store, upgrade

POSTGRES_ENV = "STADJERSPAS_TEST_POSTGRES_URL"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
HOLDERS = 20_000
DISTRICTS = 30
MERCHANTS = 200
SCHEMES = 4
YEAR_START = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())
YEAR_S = 365 * 86_400
TARGET_MS = 1_000.0
BIG_TABLES = ("index_redemption", "index_entitlement", "index_reversal")

Row = tuple[Any, ...]


def _pid(n: int) -> str:
    return "0x" + f"{n:064x}"


def _merchant(n: int) -> str:
    return "0x" + f"{0xA000 + n:040x}"


class Data:
    """Deterministic synthetic rows (seeded), built once and loaded into both databases."""

    def __init__(self, redemptions: int, seed: int = 2025) -> None:
        rng = random.Random(seed)  # noqa: S311 - synthetic data, not secrets
        now = datetime(2025, 1, 1, tzinfo=UTC)
        self.districts: list[Row] = [
            (f"W{d:02d}", f"Wijk {d:02d}", "Groningen") for d in range(DISTRICTS)
        ]
        # district sizes vary (a few small ones make suppression happen)
        weights = [1 + (d % 7) * 3 for d in range(DISTRICTS)]
        self.holders: list[Row] = []
        self.passes: list[Row] = []
        for h in range(1, HOLDERS + 1):
            district = rng.choices(range(DISTRICTS), weights)[0]
            self.holders.append(
                (h, "Naam", f"H{h}", date(1980, 1, 1), "9711AA", f"W{district:02d}", "other", now)
            )
            self.passes.append((h, h, f"P{h:08d}", b"\x00" * 32, _pid(h), "active", now))
        self.merchants: list[Row] = [
            (m, f"Partner {m}", "12345678", "NL91ABNA0417164300", "sport", _merchant(m), True)
            for m in range(1, MERCHANTS + 1)
        ]
        event = 0

        def where(when: int) -> tuple[int, int, str, int, str, int]:
            nonlocal event
            event += 1
            block = event
            return (31337, block, f"0x{block:064x}", when, f"0x{block:064x}", 0)

        self.schemes: list[Row] = []
        for s in range(1, SCHEMES + 1):
            self.schemes.append(
                (*where(YEAR_START - 86_400), s, "budget", 0, 2**40, 0, 0, 0, 0, 0, 10**12, True)
            )
        self.entitlements: list[Row] = []
        entitled: list[tuple[int, int]] = []
        for h in range(1, HOLDERS + 1):
            for s in rng.sample(range(1, SCHEMES + 1), 2):
                self.entitlements.append(
                    (
                        *where(YEAR_START + rng.randrange(30 * 86_400)),
                        0,
                        s,
                        _pid(h),
                        100_000,
                        False,
                        "issue",
                        None,
                    )
                )
                entitled.append((s, h))
        self.redemptions: list[Row] = []
        self.reversals: list[Row] = []
        times = sorted(
            YEAR_START + 30 * 86_400 + rng.randrange(YEAR_S - 30 * 86_400)
            for _ in range(redemptions)
        )
        for i, when in enumerate(times):
            scheme, holder = entitled[rng.randrange(len(entitled))]
            merchant = _merchant(1 + int(rng.paretovariate(1.2)) % MERCHANTS)
            amount = rng.randrange(100, 2_500)
            self.redemptions.append(
                (
                    *where(when),
                    str(i + 1),
                    _pid(holder),
                    scheme,
                    merchant,
                    amount,
                    amount,
                    0,
                    amount,
                    None,
                    None,
                )
            )
            if rng.random() < 0.01:
                self.reversals.append(
                    (*where(when + 60), str(i + 1), _pid(holder), scheme, merchant, amount, amount)
                )
        self.settlements: list[Row] = [
            (*where(YEAR_START + 200 * 86_400), _merchant(m), f"0x{m:064x}", 1_000)
            for m in range(1, MERCHANTS + 1)
        ]
        self.expiries: list[Row] = [
            (*where(YEAR_START + YEAR_S - 3_600), 1 + h % SCHEMES, _pid(h), 500)
            for h in range(1, 2_001)
        ]

    def tables(self) -> list[tuple[str, list[str], list[Row]]]:
        where = [
            "chain_id",
            "block_number",
            "block_hash",
            "block_time",
            "transaction_hash",
            "log_index",
        ]
        return [
            ("registry_district", ["code", "name", "municipality"], self.districts),
            (
                "registry_holder",
                [
                    "id",
                    "first_name",
                    "last_name",
                    "birth_date",
                    "postcode",
                    "district_code",
                    "household_role",
                    "created_at",
                ],
                self.holders,
            ),
            (
                "registry_pass",
                [
                    "id",
                    "holder_id",
                    "pass_number",
                    "pass_secret",
                    "pass_id",
                    "status",
                    "created_at",
                ],
                self.passes,
            ),
            (
                "registry_merchant",
                ["id", "name", "kvk_number", "iban", "category", "address", "active"],
                self.merchants,
            ),
            (
                "index_scheme",
                [
                    *where,
                    "scheme_id",
                    "kind",
                    "valid_from",
                    "valid_until",
                    "per_redemption_cap",
                    "unit_value",
                    "discount_bps",
                    "reimburse_bps",
                    "discount_fixed",
                    "budget_cap",
                    "open_to_all_merchants",
                ],
                self.schemes,
            ),
            (
                "index_entitlement",
                [
                    *where,
                    "position",
                    "scheme_id",
                    "pass_id",
                    "amount",
                    "unlimited",
                    "source",
                    "cohort_root",
                ],
                self.entitlements,
            ),
            (
                "index_redemption",
                [
                    *where,
                    "redemption_id",
                    "pass_id",
                    "scheme_id",
                    "merchant",
                    "amount",
                    "debited",
                    "discount",
                    "credited",
                    "receipt_root",
                    "receipt_position",
                ],
                self.redemptions,
            ),
            (
                "index_reversal",
                [
                    *where,
                    "redemption_id",
                    "pass_id",
                    "scheme_id",
                    "merchant",
                    "debited",
                    "credited",
                ],
                self.reversals,
            ),
            (
                "index_settlement",
                [*where, "merchant", "payment_reference", "amount"],
                self.settlements,
            ),
            ("index_expiry", [*where, "scheme_id", "pass_id", "amount"], self.expiries),
        ]


def _indexes(name: str) -> list[Index]:
    return sorted(metadata.tables[name].indexes, key=lambda i: str(i.name))


def _load(store: Store, data: Data) -> float:
    started = time.perf_counter()
    engine = store.engine
    with engine.begin() as conn:
        for name in BIG_TABLES:
            for index in _indexes(name):
                index.drop(conn)
    if store.dialect == "postgresql":
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            for name, columns, rows in data.tables():
                with cursor.copy(f"COPY {name} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            raw.commit()
        finally:
            raw.close()
    else:
        with engine.begin() as conn:
            for name, columns, rows in data.tables():
                table: Table = metadata.tables[name]
                conn.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in rows])
    with engine.begin() as conn:
        for name in BIG_TABLES:
            for index in _indexes(name):
                index.create(conn)
    if store.dialect == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    return time.perf_counter() - started


REPORTS: dict[str, Callable[[Engine], object]] = {
    "scheme_by_month": lambda e: scheme_report(e, granularity=Granularity.MONTH),
    "merchant": lambda e: merchant_report(e),
    "district_suppressed": lambda e: district_report(e, k=10),
}


def _p95(samples: Sequence[float]) -> float:
    ordered = sorted(samples)
    rank = max(0, round(0.95 * len(ordered) + 0.5) - 1)
    return ordered[min(rank, len(ordered) - 1)]


def _measure(store: Store, repeat: int) -> dict[str, Any]:
    per: dict[str, list[float]] = {}
    for name, run in REPORTS.items():
        run(store.engine)  # warm-up (caches, plans)
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            run(store.engine)
            samples.append((time.perf_counter() - started) * 1_000)
        per[name] = samples
    everything = [s for samples in per.values() for s in samples]
    return {
        "p95_ms": round(_p95(everything), 1),
        "reports": {
            name: {"median_ms": round(statistics.median(s), 1), "max_ms": round(max(s), 1)}
            for name, s in per.items()
        },
    }


@contextmanager
def _sqlite() -> Iterator[Store]:
    with tempfile.TemporaryDirectory(prefix="bench-reports-") as tmp:
        store = open_store(StoreConfig(f"sqlite:///{Path(tmp) / 'bench.db'}"))
        try:
            upgrade(store)
            yield store
        finally:
            store.close()


@contextmanager
def _postgres(admin_url: str) -> Iterator[Store]:
    admin = make_url(admin_url).set(drivername="postgresql+psycopg")
    name = f"stadjerspas_bench_{uuid.uuid4().hex[:10]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        store = open_store(
            StoreConfig(admin.set(database=name).render_as_string(hide_password=False))
        )
        try:
            upgrade(store)
            yield store
        finally:
            store.close()
            with engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reports", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--json", action="store_true", help="print JSON as the last line")
    parser.add_argument("--redemptions", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per report")
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    data = Data(args.redemptions)
    build_s = time.perf_counter() - started
    print(
        f"synthetic data: {len(data.redemptions):,} redemptions, "
        f"{len(data.reversals):,} reversals, "
        f"{len(data.entitlements):,} entitlements, {HOLDERS:,} holders, {DISTRICTS} districts, "
        f"{MERCHANTS} merchants ({build_s:.1f} s)"
    )
    databases: list[tuple[str, Callable[[], Any]]] = [("sqlite", _sqlite)]
    if not args.skip_postgres:
        url = os.environ.get(POSTGRES_ENV) or DEFAULT_POSTGRES
        databases.append(("postgres", lambda: _postgres(url)))
    results: dict[str, dict[str, Any]] = {}
    for name, opener in databases:
        with opener() as store:
            load_s = _load(store, data)
            measured = _measure(store, args.repeat)
            measured["load_s"] = round(load_s, 1)
            results[name] = measured
        print(
            f"\n{name}: loaded in {load_s:.1f} s; "
            f"p95 over the standard reports {measured['p95_ms']:.0f} ms"
        )
        print(f"  {'report':<22} {'median ms':>10} {'max ms':>10}")
        for report, figures in measured["reports"].items():
            print(f"  {report:<22} {figures['median_ms']:>10.0f} {figures['max_ms']:>10.0f}")
    worst = max(r["p95_ms"] for r in results.values())
    print(f"\nreport_p95_ms_1m (slower database): {worst:.0f} ms (target <= {TARGET_MS:.0f} ms)")
    if args.json:
        summary: dict[str, Any] = {
            "report_p95_ms_1m": worst,
            "redemptions": len(data.redemptions),
            "target_ms": TARGET_MS,
            "meets_target": worst <= TARGET_MS,
        }
        for name, measured in results.items():
            summary[f"report_p95_ms_{name}"] = measured["p95_ms"]
            summary[f"load_s_{name}"] = measured["load_s"]
            summary[f"reports_{name}"] = measured["reports"]
        print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
