"""The CBS postcode-to-wijk import: formats, errors by line, full replacement of a municipality's
table, every holder's district derived again (unknown postcodes reported, never guessed), and a
district report that follows; on SQLite and PostgreSQL."""

from __future__ import annotations

import random
import string

import pytest

from ledger import geography
from ledger.registry import CsvImportError, Registry
from ledger.reports import district_report
from ledger.store.db import Store
from tests.ledger.reports.helpers import Rows, ts

#: The new wijken of the generated file (names with diacritics, as CBS spells some).
WIJKEN = {
    "WK001420": "Binnenstad-Noord",
    "WK001421": "Oosterparkwijk",
    "WK001422": "Hoogkerk-Zuid",
    "WK001423": "De Wijert-Noord",
    "WK001424": "Eelderwolde\u2013Noordoost",
    "WK001425": "Paddepoel-Zuid",
    "WK001426": "Vinkhuizen-Noord",
    "WK001427": "Selwerd",
    "WK001428": "Lewenborg",
    "WK001429": "Café Ëlde-Wijk",
}


def _realistic(rows: int = 3_000, *, seed: int = 11) -> list[tuple[str, str]]:
    """``rows`` distinct PC6 postcodes (97xxAA) over the wijken, plus the sample's 9711AA."""
    rng = random.Random(seed)
    codes = sorted(WIJKEN)
    postcodes: dict[str, str] = {"9711AA": "WK001420", "9721AB": "WK001421"}
    while len(postcodes) < rows:
        pc = f"97{rng.randint(11, 47)}{rng.choice(string.ascii_uppercase)}"
        pc += rng.choice(string.ascii_uppercase)
        postcodes.setdefault(pc, rng.choice(codes))
    return sorted(postcodes.items())


def _file(
    pairs: list[tuple[str, str]],
    *,
    delimiter: str = ";",
    newline: str = "\r\n",
    encoding: str = "cp1252",
    bom: bool = False,
    header: str = "PC6;Wijkcode;Wijknaam;Gemeentenaam",
) -> bytes:
    lines = [header.replace(";", delimiter)]
    for pc, code in pairs:
        lines.append(delimiter.join([pc, code, WIJKEN[code], "Groningen"]))
    data = (newline.join(lines) + newline).encode(encoding)
    return (b"\xef\xbb\xbf" + data) if bom else data


@pytest.fixture
def registry(migrated_store: Store) -> Registry:
    registry = Registry(migrated_store)
    registry.load_sample_geography()
    return registry


def test_a_realistic_cbs_file_replaces_the_table_and_rederives_every_holder(
    registry: Registry,
) -> None:
    holders = {}
    for name, postcode in (("A", "9711AA"), ("B", "9721AB"), ("C", "9726AC"), ("D", "9711CE")):
        holder = registry.enrol_holder(
            first_name=name, last_name="Jansen", birth_date="1970-05-05", postcode=postcode
        )
        assert holder.id is not None
        holders[name] = holder.id
    registry.issue_pass(holders["C"], pass_number="GR4000003")
    assert registry.holder(holders["A"]).district_code == "WK001400"  # the sample's Centrum

    pairs = _realistic()
    pairs = [p for p in pairs if p[0] not in ("9726AC", "9711CE")]
    table = geography.read_postcode_table(_file(pairs))  # cp1252, CRLF, ';'
    assert table.districts["WK001429"] == ("Café Ëlde-Wijk", "Groningen")
    assert table.districts["WK001424"][0] == "Eelderwolde\u2013Noordoost"

    result = geography.replace_postcode_table(registry, table)

    assert (result.districts, result.postcodes) == (len(WIJKEN), len(pairs))
    assert result.districts_removed == 12  # every sample wijk of Groningen (WK0014..)
    assert (result.holders, result.holders_changed) == (4, 4)
    assert [(u.holder_id, u.postcode, u.pass_numbers) for u in result.unknown] == [
        (holders["C"], "9726AC", ["GR4000003"]),
        (holders["D"], "9711CE", []),
    ]
    assert registry.holder(holders["A"]).district_code == "WK001420"
    assert registry.holder(holders["B"]).district_code == "WK001421"
    assert registry.holder(holders["C"]).district_code is None  # unknown, never the nearest
    assert {d.code for d in registry.districts()} == set(WIJKEN)
    assert len(registry.postcodes()) == len(pairs)

    # the same file again: nothing changes, nothing is counted twice
    again = geography.replace_postcode_table(registry, table)
    assert (again.holders_changed, again.districts_removed, len(again.unknown)) == (0, 0, 2)


def test_district_reports_follow_the_rederived_districts(registry: Registry) -> None:
    rows = Rows(registry.store.engine)
    rows.scheme(1)
    holder = registry.enrol_holder(
        first_name="Anna", last_name="Bakker", birth_date="1990-02-02", postcode="9711AA"
    )
    assert holder.id is not None
    record = registry.issue_pass(holder.id, pass_number="GR4000001").record
    rows._event(
        "index_entitlement",
        ts("2025-01-02"),
        position=0,
        scheme_id=1,
        pass_id=record.pass_id,
        amount=2_500,
        unlimited=False,
        source="issue",
    )
    before = district_report(registry.store.engine, k=1)
    assert before.cell("WK001400", 1).figures["issued"].value == 2_500

    geography.replace_postcode_table(
        registry, geography.read_postcode_table(_file([("9711AA", "WK001420")]))
    )

    after = district_report(registry.store.engine, k=1)
    assert after.cell("WK001420", 1).figures["issued"].value == 2_500
    assert after.cell("WK001420", 1).district_name == "Binnenstad-Noord"
    assert all(cell.district != "WK001400" for cell in after.cells)


def test_formats_comma_bom_lf_and_the_two_file_cbs_form(registry: Registry) -> None:
    pairs = _realistic(200)
    utf8 = _file(pairs, delimiter=",", newline="\n", encoding="utf-8", bom=True)
    assert geography.read_postcode_table(utf8).postcodes == dict(pairs)

    # CBS: pc6-gwb (codes only, bare 6-digit wijk codes, one row per house number) + names
    gwb = ["PC6;Huisnummer;Buurt2023;Wijk2023;Gemeente2023"]
    for pc, code in pairs:
        gwb += [f"{pc};{n};{code[2:]}00;{code[2:]};0014" for n in (1, 3)]
    names = ["wijkcode;wijknaam;gemeentenaam"]
    names += [f"{code};{name};Groningen" for code, name in WIJKEN.items()]
    table = geography.read_postcode_table(
        "\n".join(gwb).encode(), names="\r\n".join(names).encode("cp1252")
    )
    assert table.postcodes == dict(pairs)
    assert table.districts["WK001429"] == ("Café Ëlde-Wijk", "Groningen")


def test_bad_lines_are_reported_by_line_and_nothing_changes(registry: Registry) -> None:
    before = registry.postcodes()
    text = (
        "pc6;wijkcode;wijknaam\n"
        "9711AA;WK001420;Centrum\n"
        "0711AA;WK001420;Centrum\n"  # line 3: postcode starts with 0
        "9712AB;WIJK01;Centrum\n"  # line 4: wijk code
        "9711AA;WK001421;Oud-Zuid\n"  # line 5: the same postcode in another wijk
        "9713AB;WK001420;Binnenstad\n"  # line 6: another name for WK001420
        "9714AB;WK001422\n"  # line 7: a field short
    )
    with pytest.raises(CsvImportError) as caught:
        geography.read_postcode_table(text.encode())
    lines = [(e.line, e.message) for e in caught.value.errors]
    assert [line for line, _ in lines] == [3, 4, 5, 6, 7]
    assert "'0711AA' is not a Dutch postcode" in lines[0][1]
    assert "'WIJK01' must be WK and 6 digits" in lines[1][1]
    assert "9711AA is in wijk WK001421 here but in WK001420 on line 2" in lines[2][1]
    assert "named 'Binnenstad' here but 'Centrum' before" in lines[3][1]
    assert "has 2 fields, expected 3" in lines[4][1]
    assert registry.postcodes() == before


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the file is empty"),
        (b";;\n \x0c\n", "the file is empty"),
        (b"pc6;wijkcode;wijknaam\n", "no rows after the header"),
        (b"postcode,district\n9711AA,WK001400\n", "columns pc6 (or postcode), wijkcode"),
        (b"pc6;wijkcode\n9711AA;WK001400\n", "wijknaam are needed"),
    ],
)
def test_bad_files_are_refused_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(CsvImportError, match=message.replace("(", "\\(").replace(")", "\\)")):
        geography.read_postcode_table(data)


def test_a_file_over_the_limit_is_refused_by_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(geography, "MAX_FILE_BYTES", 1_000)
    with pytest.raises(CsvImportError, match="at most 1000"):
        geography.read_postcode_table(_file(_realistic(200)))
