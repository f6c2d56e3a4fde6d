"""``ledger.imports``: holders and opening balances from an old system, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import func
from sqlmodel import select

from ledger import imports
from ledger.imports import ImportRejected
from ledger.registry import Registry
from ledger.store.db import Store
from ledger.store.imports import ChainState, MigratedHolder
from ledger.store.registry import Holder, Household, PassRecord, PrintedCard

HEADER = (
    "external_reference,first_name,last_name,birth_date,postcode,household_reference,"
    "household_role,pass_number,card_serial"
)
LINES = [
    "OLD-1,Anna,de Vries,1980-02-03,9712AB,HH-1,parent,GR1000001,123456789",
    "OLD-2,Bram,de Vries,2012-05-06,9712AB,HH-1,child,GR1000002,",
    "OLD-3,Chantal,Bakker,1975-11-30,9711AA,,,,",
]


def csv_bytes(*lines: str, header: str = HEADER, sep: str = ",", end: str = "\n") -> bytes:
    rows = [header, *lines]
    return (end.join(row.replace(",", sep) for row in rows) + end).encode("utf-8")


@pytest.fixture
def registry(migrated_store: Store) -> Registry:
    registry = Registry(migrated_store, today=date(2026, 12, 1))
    registry.load_sample_geography()
    return registry


def count(store: Store, table: type) -> int:
    with store.session() as session:
        return int(session.exec(select(func.count()).select_from(table)).one())


def test_import_writes_holders_households_passes_cards(registry: Registry) -> None:
    result = imports.import_holders(registry, csv_bytes(*LINES))

    assert (result.lines, result.imported, result.skipped) == (3, 3, 0)
    assert result.households_created == 1
    assert (result.encoding, result.delimiter) == ("utf-8", ",")
    store = registry.store
    assert count(store, Holder) == 3
    assert count(store, Household) == 1
    anna = registry.pass_by_number("GR1000001")
    assert anna.activation_code_hash is None
    assert [c.serial for c in registry.cards_of("GR1000001")] == [123456789]
    assert registry.cards_of("GR1000002") == []
    assert count(store, PrintedCard) == 1
    pending = imports.passes_in_state(store, ChainState.PENDING)
    assert [p.external_reference for p in pending] == ["OLD-1", "OLD-2", "OLD-3"]
    assert pending[0].card_serial == 123456789
    assert pending[0].pass_id == bytes.fromhex(anna.pass_id[2:])
    members = registry.household_members("HH-1")
    assert {m.first_name for m in members} == {"Anna", "Bram"}


def test_the_same_file_again_imports_nothing(registry: Registry) -> None:
    imports.import_holders(registry, csv_bytes(*LINES))
    again = imports.import_holders(
        registry, csv_bytes(*LINES, "OLD-4,Dirk,Jansen,1990-01-01,9711AA,,,,")
    )

    assert (again.imported, again.skipped) == (1, 3)
    assert count(registry.store, Holder) == 4
    assert count(registry.store, MigratedHolder) == 4


def test_a_reference_with_other_data_is_an_error(registry: Registry) -> None:
    imports.import_holders(registry, csv_bytes(*LINES))
    changed = LINES[2].replace("Bakker", "Smit")
    with pytest.raises(ImportRejected) as rejected:
        imports.import_holders(registry, csv_bytes(LINES[0], changed))
    assert [(p.line, p.column) for p in rejected.value.problems] == [(3, "external_reference")]
    assert "imported before with other data" in rejected.value.problems[0].message


def test_every_problem_by_line_and_nothing_written(registry: Registry) -> None:
    registry.enrol_holder(
        first_name="Els", last_name="Mulder", birth_date="1960-01-01", postcode="9711AA"
    )
    registry.issue_pass(
        registry.holders()[0].id or 0, pass_number="GR2000000", activation_code=False
    )
    bad = csv_bytes(
        "R1,Anna,de Vries,1980-02-03,9712AB,,,GR1000001,",
        "R1,Bram,de Vries,2012-05-06,9712AB,,,,",  # duplicate reference
        "R3,anna,DE VRIES,1980-02-03,9712 ab,,,,",  # the same person as line 2
        "R4,Els,Mulder,1960-01-01,9711AA,,,,",  # already in the registry
        "R5,Fenna,Kok,1999-01-01,9711AA,,,GR2000000,",  # pass number taken
        "R6,Gert,Kok,1999-01-02,9711AA,,,GR1000001,",  # pass number twice in the file
        "R7,Hans,Kok,1999-01-03,9711AA,,,XX12,",  # bad pass number
        "R8,Ilse,Kok,1999-01-04,9711AA,,,,2e5",  # bad serial
        "R9,Jan,Kok,1999-01-05,9711AA,,,,9223372036854775808",  # over the contract's limit
        "R10,Karel,Kok,1999-01-06,0000ZZ,,,,",  # bad postcode
        "R11,Lies,Kok,1999-01-07,9999ZZ,,,,",  # postcode not in the table
        "R 12,Mia,Kok,2099-01-07,9711AA,,,,",  # bad reference, born in the future
    )
    with pytest.raises(ImportRejected) as rejected:
        imports.import_holders(registry, bad)
    got = {(p.line, p.column) for p in rejected.value.problems}
    assert {
        (3, "external_reference"),
        (4, None),
        (5, None),
        (6, "pass_number"),
        (7, "pass_number"),
        (8, "pass_number"),
        (9, "card_serial"),
        (10, "card_serial"),
        (11, None),
        (12, None),
        (13, "external_reference"),
        (13, None),
    } == got
    assert count(registry.store, Holder) == 1
    assert count(registry.store, MigratedHolder) == 0


@pytest.mark.parametrize(
    ("data", "encoding", "delimiter"),
    [
        (csv_bytes(*LINES, sep=";"), "utf-8", ";"),
        (b"\xef\xbb\xbf" + csv_bytes(*LINES, end="\r\n"), "utf-8", ","),
        (
            csv_bytes(*LINES[:2], "OLD-3,Chantal,Bakker-Öztürk,1975-11-30,9711AA,,,,", sep=";")
            .decode()
            .encode("cp1252"),
            "cp1252",
            ";",
        ),
    ],
    ids=["semicolon", "bom-crlf", "cp1252"],
)
def test_csv_dialects_are_read(
    registry: Registry, data: bytes, encoding: str, delimiter: str
) -> None:
    result = imports.import_holders(registry, data)
    assert (result.imported, result.encoding, result.delimiter) == (3, encoding, delimiter)
    names = {h.last_name for h in registry.holders()}
    assert names >= {"de Vries"}
    if encoding == "cp1252":
        assert "Bakker-Öztürk" in names


def test_a_wrong_delimiter_is_refused_with_the_header(registry: Registry) -> None:
    data = csv_bytes(*LINES).replace(b",", b"\t")
    with pytest.raises(ImportRejected) as rejected:
        imports.import_holders(registry, data)
    assert rejected.value.problems[0].line == 1
    assert "missing column" in rejected.value.problems[0].message


def test_chain_states_move_forward(registry: Registry) -> None:
    imports.import_holders(registry, csv_bytes(*LINES))
    store = registry.store
    imports.mark_passes(store, ["OLD-1", "OLD-2"], ChainState.SENT)
    imports.mark_passes(store, ["OLD-1"], ChainState.DONE)
    assert [p.external_reference for p in imports.passes_in_state(store, ChainState.SENT)] == [
        "OLD-2"
    ]
    assert imports.migrated_counts(store) == {
        "passes_pending": 1,
        "passes_sent": 1,
        "passes_done": 1,
    }


def test_erasing_a_migrated_holder_removes_its_reference(registry: Registry) -> None:
    imports.import_holders(registry, csv_bytes(*LINES))
    holder_id = registry.pass_by_number("GR1000001").holder_id
    registry.erase_holder(holder_id)
    assert count(registry.store, MigratedHolder) == 2


def test_balances_are_planned_once_per_holder_and_scheme(registry: Registry) -> None:
    imports.import_holders(registry, csv_bytes(*LINES))
    data = b"external_reference;pass_number;amount\nOLD-1;;1250\n;GR1000002;500\n"
    with pytest.raises(ImportRejected) as not_on_chain:
        imports.plan_balances(registry, data, scheme_id=1, schemes={1})
    assert [p.line for p in not_on_chain.value.problems] == [2, 3]
    assert "not registered on chain yet" in not_on_chain.value.problems[0].message
    imports.mark_passes(registry.store, ["OLD-1", "OLD-2", "OLD-3"], ChainState.DONE)

    plan = imports.plan_balances(registry, data, scheme_id=1, schemes={1})
    assert [(b.reference, b.amount) for b in plan.lines] == [("OLD-1", 1250), ("GR1000002", 500)]
    imports.record_balances(registry.store, plan.lines)

    again = imports.plan_balances(registry, data, scheme_id=1, schemes={1})
    assert (again.lines, again.skipped) == ([], 2)
    with pytest.raises(ImportRejected) as rejected:
        imports.plan_balances(
            registry,
            b"external_reference,amount,scheme\nOLD-1,999,1\nOLD-9,5,1\nOLD-3,5,7\nOLD-3,x,1\n",
            scheme_id=None,
            schemes={1},
        )
    assert [(p.line, p.column) for p in rejected.value.problems] == [
        (2, "amount"),
        (3, "external_reference"),
        (4, "scheme"),
        (5, "amount"),
    ]
    with registry.store.session() as session:
        assert session.exec(select(func.count()).select_from(PassRecord)).one() == 3
