"""The standard reports on SQLite and PostgreSQL, from index and registry rows."""

from __future__ import annotations

import csv
import io
import json

from ledger.reports import (
    Granularity,
    Period,
    district_report,
    merchant_report,
    scheme_report,
)
from ledger.reports.suppression import Equation, determined
from ledger.store.db import Store
from tests.ledger.reports.helpers import Rows, merchant, ts


def test_scheme_report_by_month(migrated_store: Store) -> None:
    rows = Rows(migrated_store.engine)
    rows.scheme(1)
    for n in range(1, 5):
        rows.issue(1, n, 1_000, ts("2025-01-02"))
    rows.redeem(1, 1, 300, ts("2025-01-10"))
    rows.redeem(1, 2, 200, ts("2025-01-31", hour=23))  # 00:xx on 1 Feb in Amsterdam
    rows.redeem(1, 1, 100, ts("2025-02-15"))
    rows.reverse(1, 1, 100, ts("2025-02-16"))
    rows.expire(1, 4, 1_000, ts("2025-03-01"))
    period = Period.parse("2025-01-01..2025-03-31")

    report = scheme_report(migrated_store.engine, period=period, granularity=Granularity.MONTH)

    by = {r.bucket: r for r in report.rows}
    assert list(by) == ["2025-01", "2025-02", "2025-03"]
    jan, feb, mar = by["2025-01"], by["2025-02"], by["2025-03"]
    assert (jan.issued, jan.redeemed, jan.redemptions, jan.holders_used) == (4_000, 300, 1, 1)
    assert (feb.redeemed, feb.reversed, feb.holders_used, feb.redemptions) == (300, 100, 2, 2)
    assert mar.expired == 1_000
    assert (jan.remaining, feb.remaining, mar.remaining) == (3_700, 3_500, 2_500)
    assert jan.holders_entitled == feb.holders_entitled == 4
    assert report.holders_used_in_period == {1: 2}
    # invariant per scheme: issued = remaining + redeemed - reversed + expired
    total = {
        f: sum(getattr(r, f) for r in report.rows)
        for f in ("issued", "redeemed", "reversed", "expired")
    }
    assert (
        total["issued"] == mar.remaining + total["redeemed"] - total["reversed"] + total["expired"]
    )


def test_scheme_report_by_day_and_week(migrated_store: Store) -> None:
    rows = Rows(migrated_store.engine)
    rows.issue(2, 1, 500, ts("2025-03-03"))
    rows.redeem(2, 1, 50, ts("2025-03-04"))
    rows.redeem(2, 1, 50, ts("2025-03-10"))
    days = scheme_report(
        migrated_store.engine,
        period=Period.parse("2025-03-03..2025-03-10"),
        granularity=Granularity.DAY,
    )
    assert len(days.rows) == 8
    assert [r.redeemed for r in days.rows if r.redeemed] == [50, 50]
    weeks = scheme_report(
        migrated_store.engine,
        period=Period.parse("2025-03-03..2025-03-16"),
        granularity=Granularity.WEEK,
    )
    assert [(r.bucket, r.redeemed) for r in weeks.rows] == [("2025-W10", 50), ("2025-W11", 50)]


def test_merchant_report_owed(migrated_store: Store) -> None:
    rows = Rows(migrated_store.engine)
    rows.merchant(1)
    rows.redeem(1, 1, 1_000, ts("2025-01-05"), merchant_n=1)
    rows.redeem(1, 2, 500, ts("2025-02-05"), merchant_n=1)
    rows.reverse(1, 2, 500, ts("2025-02-06"), merchant_n=1)
    rows.settle(1, 400, ts("2025-02-07"), "0x" + "ab" * 32)
    rows.redeem(1, 3, 250, ts("2025-02-08"), merchant_n=2)

    everything = {r.merchant: r for r in merchant_report(migrated_store.engine).rows}
    one = everything[merchant(1)]
    assert (one.redemptions, one.credited, one.reversed, one.settled, one.owed) == (
        2,
        1_500,
        500,
        400,
        600,
    )
    assert one.name == "Partner 1"
    assert everything[merchant(2)].owed == 250
    assert everything[merchant(2)].name is None

    feb = {
        r.merchant: r
        for r in merchant_report(migrated_store.engine, period=Period.month(2025, 2)).rows
    }
    assert (feb[merchant(1)].redemptions, feb[merchant(1)].credited, feb[merchant(1)].owed) == (
        1,
        500,
        600,
    )
    jan = {
        r.merchant: r
        for r in merchant_report(migrated_store.engine, period=Period.month(2025, 1)).rows
    }
    assert jan[merchant(1)].owed == 1_000
    assert jan[merchant(1)].settled == 0


def _district_data(rows: Rows) -> None:
    """District A: 15 holders, B: 12 holders, C: 3 holders (small), plus 2 erased passes."""
    for code in ("A", "B", "C"):
        rows.district(code)
    n = 0
    for code, count in (("A", 15), ("B", 12), ("C", 3)):
        for _ in range(count):
            n += 1
            rows.holder(n, code, n)
            rows.issue(1, n, 1_000, ts("2025-01-02"))
            rows.redeem(1, n, 100 + n, ts("2025-01-10"))
    for erased in (900, 901):  # passes whose holders were erased: not in the registry
        rows.issue(1, erased, 1_000, ts("2025-01-02"))
        rows.redeem(1, erased, 70, ts("2025-01-11"))


def test_district_report_suppresses_small_cells_and_their_complements(
    migrated_store: Store,
) -> None:
    rows = Rows(migrated_store.engine)
    _district_data(rows)

    report = district_report(migrated_store.engine, k=10)

    a, _b, c, unknown = (report.cell(code, 1) for code in ("A", "B", "C", "unknown"))
    total = report.cell(None, 1)
    # primary: C (3 holders) and unknown (2 passes)
    assert c.figures["redeemed"].value is None
    assert c.figures["redeemed"].reason == "primary"
    assert unknown.figures["redeemed"].reason == "primary"
    assert unknown.district_name == "not in the registry"
    # totals are published (the scheme report has them) and never suppressed
    assert total.figures["redeemed"].value == sum(100 + n for n in range(1, 31)) + 140
    assert total.figures["holders_used"].value == 32
    # with C and unknown hidden, A and B still add up to total - (C + unknown): C alone is not
    # recoverable, but if A and B were both published, C + unknown would be; each suppressed
    # figure must stay undetermined given every published figure
    published = {
        (cell.district, cell.scheme_id, metric): fig.value
        for cell in report.cells
        for metric, fig in cell.figures.items()
    }
    hidden = {key for key, value in published.items() if value is None}
    codes = ["A", "B", "C", "unknown"]
    equations: list[Equation[tuple[str | None, int | None, str]]] = [
        Equation((*tuple(((code, 1, m), 1) for code in codes), ((None, 1, m), -1)))
        for m in a.figures
    ]
    equations += [
        Equation(
            (
                ((code, 1, "remaining"), 1),
                ((code, 1, "issued"), -1),
                ((code, 1, "redeemed"), 1),
                ((code, 1, "reversed"), -1),
                ((code, 1, "expired"), 1),
            )
        )
        for code in [*codes, None]
    ]
    primary = {
        (cell.district, cell.scheme_id, metric)
        for cell in report.cells
        for metric, fig in cell.figures.items()
        if fig.reason == "primary"
    }
    assert primary
    assert not determined(equations, hidden) & primary
    assert not report.exposed
    # the large districts are published (B may be a complement; A is larger and is not)
    assert a.figures["holders_used"].value == 15


def test_district_report_single_small_cell_gets_a_complement(migrated_store: Store) -> None:
    rows = Rows(migrated_store.engine)
    for code in ("A", "B", "C"):
        rows.district(code)
    n = 0
    for code, count in (("A", 20), ("B", 11), ("C", 4)):
        for _ in range(count):
            n += 1
            rows.holder(n, code, n)
            rows.redeem(1, n, 100, ts("2025-01-10"))
    report = district_report(migrated_store.engine, k=10)
    redeemed = {code: report.cell(code, 1).figures["redeemed"] for code in ("A", "B", "C")}
    assert redeemed["C"].reason == "primary"
    # without a complement: C = total - A - B. B (smaller) is hidden as well
    assert redeemed["B"].reason == "complementary"
    assert redeemed["A"].value == 2_000


def test_writers_csv_and_json(migrated_store: Store) -> None:
    from ledger.reports.writers import to_csv, to_json

    rows = Rows(migrated_store.engine)
    _district_data(rows)
    report = district_report(migrated_store.engine, k=10)
    text = to_csv(report)
    table = list(csv.DictReader(io.StringIO(text)))
    c_row = next(r for r in table if r["district"] == "C" and r["scheme_id"] == "1")
    assert c_row["redeemed"] == ""
    assert "redeemed" in c_row["suppressed"]
    data = json.loads(to_json(report))
    c_json = next(c for c in data["cells"] if c["district"] == "C" and c["scheme_id"] == 1)
    assert c_json["figures"]["redeemed"] == {"value": None, "suppressed": True, "reason": "primary"}
    schemes = json.loads(to_json(scheme_report(migrated_store.engine)))
    assert schemes["rows"][0]["scheme_id"] == 1
    assert "owed" in to_csv(merchant_report(migrated_store.engine)).splitlines()[0]
