"""CSV injection: every CSV the ledger writes (reports, the vendor-exit export) escapes text cells
that a spreadsheet would run as a formula, and leaves numbers and every other value unchanged."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import insert

from ledger.csv_safe import csv_cell, csv_row, needs_escape
from ledger.export import Scope, export, verify_export
from ledger.reports import district_report, merchant_report
from ledger.reports.models import MerchantReport, MerchantRow
from ledger.reports.writers import to_csv
from ledger.store.base import metadata
from ledger.store.db import Store
from ledger.store.registry import District, Holder, HouseholdRole, Merchant
from tests.ledger.reports.helpers import Rows, ts

HYPERLINK = '=HYPERLINK("http://x")'
AT_SUM = "@SUM(1)"
#: Text that a spreadsheet reads as a formula start, and how it must come out of a CSV.
DANGEROUS = {
    HYPERLINK: "'" + HYPERLINK,
    AT_SUM: "'" + AT_SUM,
    "+31 50 123": "'+31 50 123",
    "-2+3": "'-2+3",
    "-cmd|' /C calc'!A0": "'-cmd|' /C calc'!A0",
    "\t=1+1": "'\t=1+1",
    "\r=1+1": "'\n=1+1",  # a carriage return becomes a line feed (see ledger.csv_safe)
    "\uff1dSUM(1)": "'\uff1dSUM(1)",
}
#: Text that is left exactly as it is.
HARMLESS = [
    "Zwembad De Parrel",
    "O'Brien",
    "a=b",
    "x@example.nl",
    "",
    " =1",  # not at the start: no spreadsheet starts a formula here
    "-500",  # a number literal cannot call anything (a non-integral Decimal is spelled so)
    "-1.5",
    "+3e2",
    "0x" + "ab" * 20,
    "2025-03-01T09:30:00Z",
]


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_text_cells_that_start_a_formula_get_a_quote() -> None:
    for raw, escaped in DANGEROUS.items():
        assert needs_escape(raw), raw
        assert csv_cell(raw) == escaped
    assert csv_cell("Zwembad\r\nDe Parrel") == "Zwembad\nDe Parrel"
    for raw in HARMLESS:
        assert not needs_escape(raw), raw
        assert csv_cell(raw) == raw


def test_numbers_and_other_values_are_never_escaped() -> None:
    values = [-500, 0, -1.5, Decimal("-12.50"), None, True, False, date(2025, 1, 2)]
    assert csv_row(values) == values
    assert all(type(a) is type(b) for a, b in zip(csv_row(values), values, strict=True))


def test_an_escaped_cell_stays_one_valid_csv_field() -> None:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(csv_row([HYPERLINK, -500, "\r=1+1", "ok"]))
    (row,) = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    assert row == ["'" + HYPERLINK, "-500", "'\n=1+1", "ok"]


# ---------------------------------------------------------------------------- report CSVs


def test_merchant_report_csv_escapes_names_and_keeps_negative_amounts() -> None:
    row = MerchantRow(
        merchant="0x" + "11" * 20,
        name=HYPERLINK,
        kvk_number=AT_SUM,
        redemptions=3,
        amount=1500,
        discount=0,
        credited=1500,
        reversals=1,
        reversed=500,
        settled=2000,
        owed=-500,
    )
    plain = _replace(row, name="Zwembad De Parrel", kvk_number="01234567", owed=1000)
    (bad, good) = _rows(to_csv(MerchantReport(period=None, rows=[row, plain])))
    assert bad["name"] == "'" + HYPERLINK
    assert bad["kvk_number"] == "'" + AT_SUM
    assert bad["owed"] == "-500"  # an amount is a number, never escaped
    assert bad["merchant"] == row.merchant
    assert good["name"] == "Zwembad De Parrel"
    assert good["kvk_number"] == "01234567"
    assert good["owed"] == "1000"


def _fields(row: MerchantRow) -> dict[str, object]:
    return {name: getattr(row, name) for name in MerchantRow.__dataclass_fields__}


def _replace(row: MerchantRow, **changes: object) -> MerchantRow:
    return MerchantRow(**{**_fields(row), **changes})  # type: ignore[arg-type]


def test_report_csvs_from_the_database_escape_registry_names(migrated_store: Store) -> None:
    rows = Rows(migrated_store.engine)
    rows.scheme(1)
    rows.merchant_at("0x" + "22" * 20, name=HYPERLINK, iban=None)
    rows.merchant(1)
    with migrated_store.engine.begin() as conn:
        conn.execute(
            insert(metadata.tables["registry_district"]),
            [{"code": "WK000001", "name": AT_SUM, "municipality": "Groningen"}],
        )
    for n in range(12):
        rows.holder(100 + n, "WK000001", 100 + n)
        rows.issue(1, 100 + n, 1000, ts("2025-01-02"))
        rows.redeem(1, 100 + n, 100, ts("2025-01-03"))

    merchants = {r["name"]: r for r in _rows(to_csv(merchant_report(migrated_store.engine)))}
    assert "'" + HYPERLINK in merchants
    assert HYPERLINK not in merchants
    assert merchants["Partner 1"]["credited"] == "1200"

    districts = _rows(to_csv(district_report(migrated_store.engine, k=10)))
    named = [r for r in districts if r["district"] == "WK000001"]
    assert named
    assert all(r["district_name"] == "'" + AT_SUM for r in named)
    assert any(r["redeemed"] == "1200" for r in named)


# ---------------------------------------------------------------------------- the export


def _add_registry(store: Store) -> None:
    now = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
    with store.session() as session:
        session.add(District(code="WK001400", name="-Centrum+1", municipality="Groningen"))
        session.flush()
        session.add(
            Holder(
                first_name=HYPERLINK,
                last_name=AT_SUM,
                birth_date=date(1984, 5, 17),
                postcode="9711AB",
                district_code="WK001400",
                household_role=HouseholdRole.OTHER,
                created_at=now,
            )
        )
        session.add(
            Holder(
                first_name="Anne",
                last_name="O'Brien",
                birth_date=date(1990, 1, 2),
                postcode="9711AB",
                district_code="WK001400",
                household_role=HouseholdRole.OTHER,
                created_at=now,
            )
        )
        session.add(
            Merchant(
                name="\t=cmd",
                kvk_number="01234567",
                iban="NL91ABNA0417164300",
                bic="ABNANL2A",
                category="sport",
                address="0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
            )
        )
        session.commit()


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("scope", [Scope.ADMIN, Scope.AUDITOR])
def test_export_escapes_text_cells_and_keeps_the_exact_values_in_json_lines(
    migrated_store: Store, tmp_path: Path, scope: Scope
) -> None:
    _add_registry(migrated_store)
    out = tmp_path / "export"
    export(migrated_store, out, scope=scope)
    assert verify_export(out).ok

    districts = _read_csv(out / "registry_district.csv")
    assert districts == [{"code": "WK001400", "name": "'-Centrum+1", "municipality": "Groningen"}]
    holders = _read_csv(out / "registry_holder.csv")
    if scope is Scope.ADMIN:
        assert [(h["first_name"], h["last_name"]) for h in holders] == [
            ("'" + HYPERLINK, "'" + AT_SUM),
            ("Anne", "O'Brien"),
        ]
        assert holders[0]["birth_date"] == "1984-05-17"
        (merchant,) = _read_csv(out / "registry_merchant.csv")
        assert merchant["name"] == "'\t=cmd"
        assert merchant["iban"] == "NL91ABNA0417164300"
        exact = [
            json.loads(line)
            for line in (out / "registry_holder.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        assert exact[0]["first_name"] == HYPERLINK  # JSON Lines: the value as stored
    else:  # the auditor sees no names at all
        assert all("first_name" not in h for h in holders)
    assert [h["id"] for h in holders] == ["1", "2"]
