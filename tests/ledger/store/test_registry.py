"""Registry rules on both databases: geography, holders, duplicates, CSV by line, passes, cards,
merchants, erasure."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, text
from sqlmodel import select

from ledger.errors import LedgerError
from ledger.passid import pass_id
from ledger.registry import (
    SAMPLE_DISTRICTS_CSV,
    SAMPLE_POSTCODES_CSV,
    CsvImportError,
    DuplicateHousehold,
    DuplicateMerchant,
    DuplicatePassNumber,
    HolderInOtherHousehold,
    HouseholdNotEmpty,
    InvalidAddress,
    InvalidHolder,
    InvalidHousehold,
    InvalidIban,
    InvalidKvk,
    InvalidLocation,
    InvalidMerchant,
    InvalidPassNumber,
    InvalidPostcode,
    LineError,
    PassBlocked,
    PossibleDuplicate,
    Registry,
    RegistryError,
    UnknownHolder,
    UnknownHousehold,
    UnknownHouseholdMember,
    UnknownMerchant,
    UnknownPass,
    UnknownPostcode,
    format_postcode,
    merchant_location,
    normalize_postcode,
)
from ledger.store.db import Store
from ledger.store.index import IndexedPass, IndexedRedemption
from ledger.store.registry import (
    CardStatus,
    Holder,
    Household,
    HouseholdRole,
    Merchant,
    PassRecord,
    PassStatus,
    PrintedCard,
)

TODAY = date(2026, 6, 1)
MERCHANT = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
OTHER_MERCHANT = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
HEADER = "first_name,last_name,birth_date,postcode,household_reference,household_role\n"


@pytest.fixture
def registry(migrated_store: Store) -> Registry:
    registry = Registry(migrated_store, today=TODAY)
    registry.load_sample_geography()
    return registry


def _enrol(registry: Registry, **overrides: str) -> Holder:
    values = {
        "first_name": "Anouk",
        "last_name": "de Vries",
        "birth_date": "1990-04-01",
        "postcode": "9712AB",
    } | overrides
    return registry.enrol_holder(**values)


def _count(store: Store, table: type) -> int:
    with store.session() as session:
        return int(session.exec(select(func.count()).select_from(table)).one())


# -- geography ------------------------------------------------------------------------------------


def test_sample_geography_is_groningen(registry: Registry) -> None:
    districts = registry.districts()
    assert len(districts) == 12
    assert all(d.code.startswith("WK0014") and d.municipality == "Groningen" for d in districts)
    postcodes = registry.postcodes()
    assert len(postcodes) >= 30
    assert all(p.startswith("97") and len(p) == 6 for p in postcodes)
    assert registry.district_of("9712 ab").name == "Centrum"
    assert registry.load_sample_geography().districts == 12  # idempotent
    assert SAMPLE_DISTRICTS_CSV.is_file()
    assert SAMPLE_POSTCODES_CSV.is_file()
    readme = (SAMPLE_DISTRICTS_CSV.parent / "README.md").read_text()
    assert "wijk- en buurtindeling" in readme


@pytest.mark.parametrize("bad", ["", "0712AB", "9712A", "97123AB", "9712-AB", "ABCD12"])
def test_invalid_postcodes(bad: str) -> None:
    with pytest.raises(InvalidPostcode, match="is not a Dutch postcode"):
        normalize_postcode(bad)


def test_district_csv_errors_by_line(registry: Registry) -> None:
    csv_text = (
        "code,name,municipality\n"
        "WK001499,Nieuwe wijk,Groningen\n"
        "XX001,Bad code,Groningen\n"
        "WK001498,,Groningen\n"
        "WK001499,Again,Groningen\n"
    )
    with pytest.raises(CsvImportError) as info:
        registry.import_districts(csv_text)
    assert [e.line for e in info.value.errors] == [3, 4, 5]
    assert "'XX001' must be WK and 6 digits" in info.value.errors[0].message
    assert all(d.code != "WK001499" for d in registry.districts())


def test_postcode_csv_needs_known_districts(registry: Registry) -> None:
    with pytest.raises(CsvImportError) as info:
        registry.import_postcodes("postcode,district_code\n9799ZZ,WK001400\n9798ZZ,WK009999\nX,Y\n")
    assert [(e.line, e.message[:30]) for e in info.value.errors] == [
        (3, "district 'WK009999' is not in "),
        (4, "postcode 'X' is not a Dutch po"),
    ]
    with pytest.raises(UnknownPostcode):
        registry.district_of("9799ZZ")  # nothing imported
    assert registry.import_postcodes("postcode,district_code\n9799 zz,WK001400\n") == 1
    assert registry.district_of("9799ZZ").code == "WK001400"


# -- holders --------------------------------------------------------------------------------------


def test_enrol_sets_the_district_from_the_postcode(registry: Registry) -> None:
    holder = _enrol(registry, first_name="  Bram ", postcode="9743 re")
    assert holder.id is not None
    assert (holder.first_name, holder.postcode, holder.district_code) == (
        "Bram",
        "9743RE",
        "WK001407",
    )
    assert holder.possible_duplicate_of is None
    assert holder.household_role is HouseholdRole.OTHER
    assert registry.holder(holder.id).birth_date == date(1990, 4, 1)


def test_unknown_postcode_is_refused(registry: Registry) -> None:
    with pytest.raises(UnknownPostcode, match="postcode 1011AB is not in the postcode-to-district"):
        _enrol(registry, postcode="1011 AB")
    assert registry.holder_count() == 0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("first_name", "   ", "first_name is empty"),
        ("last_name", "x" * 121, "longer than 120"),
        ("birth_date", "01-04-1990", "'01-04-1990' is not a date in the form YYYY-MM-DD"),
        ("birth_date", "1990-02-30", "'1990-02-30' is not a date"),
        ("birth_date", "2026-06-02", "2026-06-02 is in the future"),
        ("birth_date", "1899-12-31", "is before 1900-01-01"),
        ("postcode", "12345", "'12345' is not a Dutch postcode"),
    ],
)
def test_holder_rules(registry: Registry, field: str, value: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        _enrol(registry, **{field: value})
    assert registry.holder_count() == 0


def test_household_rules(registry: Registry) -> None:
    with pytest.raises(InvalidHolder, match="household_role 'boss' must be one of parent"):
        _enrol(registry, household_reference="H-1", household_role="boss")
    with pytest.raises(InvalidHolder, match="'child' needs a household_reference"):
        _enrol(registry, household_role="child")
    parent = _enrol(registry, household_reference="H-1", household_role="parent")
    child = _enrol(
        registry,
        first_name="Daan",
        birth_date="2015-09-09",
        household_reference="H-1",
        household_role="CHILD",
    )
    members = registry.household_members("H-1")
    assert [(m.id, m.household_role) for m in members] == [
        (parent.id, HouseholdRole.PARENT),
        (child.id, HouseholdRole.CHILD),
    ]
    assert parent.household_id == child.household_id is not None


def test_households_link_unlink_and_delete(registry: Registry) -> None:
    with pytest.raises(InvalidHousehold, match="empty"):
        registry.create_household("   ")
    with pytest.raises(InvalidHolder, match="longer than 64"):
        registry.create_household("H" * 65)
    household = registry.create_household(" H-2 ")
    assert household.reference == "H-2"
    assert household.id is not None
    with pytest.raises(DuplicateHousehold, match="'H-2' exists"):
        registry.create_household("H-2")
    other = registry.create_household("H-3")
    assert other.id is not None
    parent = _enrol(registry)
    child = _enrol(registry, first_name="Daan", birth_date="2015-09-09")
    assert parent.id is not None
    assert child.id is not None
    number = registry.issue_pass(parent.id).pass_number

    with pytest.raises(UnknownHousehold):
        registry.link_holder(999, parent.id, "parent")
    with pytest.raises(UnknownHolder):
        registry.link_holder(household.id, 999, "parent")
    with pytest.raises(InvalidHolder, match="household_role 'boss'"):
        registry.link_holder(household.id, parent.id, "boss")
    registry.link_holder(household.id, parent.id, HouseholdRole.PARENT)
    registry.link_holder(household.id, child.id, "child")
    registry.link_holder(household.id, child.id, "child")  # idempotent
    with pytest.raises(HolderInOtherHousehold, match="'H-2'"):
        registry.link_holder(other.id, parent.id, "parent")
    members = registry.members_of_households([household.id, other.id])
    assert [
        (m.holder.id, m.holder.household_role, m.pass_numbers) for m in members[household.id]
    ] == [
        (parent.id, HouseholdRole.PARENT, [number]),
        (child.id, HouseholdRole.CHILD, []),
    ]
    assert members[other.id] == []
    assert [h.id for h in registry.households(limit=1, offset=1)] == [other.id]
    assert registry.household_count() == 2

    with pytest.raises(HouseholdNotEmpty, match="2 member"):
        registry.delete_household(household.id)
    with pytest.raises(UnknownHouseholdMember):
        registry.unlink_holder(other.id, parent.id)
    unlinked = registry.unlink_holder(household.id, parent.id)
    assert (unlinked.household_id, unlinked.household_role) == (None, HouseholdRole.OTHER)
    registry.unlink_holder(household.id, child.id)
    registry.delete_household(household.id)
    with pytest.raises(UnknownHousehold):
        registry.household(household.id)
    assert registry.holder(parent.id).household_id is None


def test_duplicates_are_flagged_never_merged(registry: Registry) -> None:
    first = _enrol(registry)
    same = _enrol(registry, first_name="ANOUK", last_name="de  vries", postcode="9712 ab")
    other_day = _enrol(registry, birth_date="1990-04-02")
    assert same.id != first.id
    assert same.possible_duplicate_of == first.id
    assert other_day.possible_duplicate_of is None
    third = _enrol(registry)
    assert third.possible_duplicate_of == first.id  # the earliest, not the latest
    assert registry.holder_count() == 4
    assert registry.possible_duplicates() == [
        PossibleDuplicate(same.id, first.id),  # type: ignore[arg-type]
        PossibleDuplicate(third.id, first.id),  # type: ignore[arg-type]
    ]
    assert same.id is not None
    assert registry.clear_duplicate_flag(same.id).possible_duplicate_of is None


# -- holders CSV ----------------------------------------------------------------------------------


def test_holders_csv_import(registry: Registry, tmp_path: Path) -> None:
    existing = _enrol(registry, first_name="Sanne", last_name="Bakker", birth_date="1980-01-02")
    path = tmp_path / "holders.csv"
    path.write_bytes(
        (
            "\ufeff" + HEADER + "Kees,Jansen,1975-03-04,9711AA,HH-7,parent\n"
            "Fenna,Jansen,2014-05-06,9711 aa,HH-7,child\n"
            "\n"  # blank lines are skipped
            "Sanne,Bakker,1980-01-02,9712AB,,\n"  # duplicates the existing holder
            '"Ties","Jansen",2016-07-08,9711AA,HH-7,child\n'
            "Kees,Jansen,1975-03-04,9711AA,,\n"  # duplicates line 2 of this file
        ).encode()
    )
    report = registry.import_holders(path)
    assert len(report.holders) == 5
    assert report.households_created == 1
    kees = report.holders[0]
    assert [(d.line, d.duplicate_of) for d in report.duplicates] == [
        (5, existing.id),
        (7, kees.id),
    ]
    assert [m.first_name for m in registry.household_members("HH-7")] == ["Kees", "Fenna", "Ties"]
    assert {h.district_code for h in report.holders} == {"WK001400"}


def test_rejected_holders_csv_reports_every_line_and_imports_nothing(
    registry: Registry, migrated_store: Store
) -> None:
    rows = [
        "Anouk,de Vries,1990-04-01,9712AB,,",  # 2: fine
        "Bram,Visser,1990-13-01,9712AB,,",  # 3: bad month
        "Chloé,Smit,2001-01-01,1011AB,,",  # 4: unknown postcode
        "Daan,Mulder,2001-01-01",  # 5: too few fields
        ",Bos,31/12/1999,9712AB,H,king",  # 6: three problems
        "Emma,de Jong,2003-03-03,9712AB,,",  # 7: fine
        "Fleur,Meijer,2002-02-02,97AB12,,",  # 8: malformed postcode
    ]
    with pytest.raises(CsvImportError) as info:
        registry.import_holders(HEADER + "\n".join(rows) + "\n")
    errors = info.value.errors
    assert [e.line for e in errors] == [5]  # field counts are checked first, for every row
    assert errors[0] == LineError(5, "has 3 fields, expected 6")

    rows[3] = "Daan,Mulder,2001-01-01,9712AB,,"
    with pytest.raises(CsvImportError) as info:
        registry.import_holders(HEADER + "\n".join(rows) + "\n")
    errors = info.value.errors
    assert [e.line for e in errors] == [3, 4, 6, 6, 6, 8]
    assert "'1990-13-01' is not a date" in errors[0].message
    assert "postcode 1011AB is not in the postcode-to-district table" in errors[1].message
    assert "first_name is empty" in errors[2].message
    assert "'31/12/1999'" in errors[3].message
    assert "household_role 'king'" in errors[4].message
    assert "'97AB12' is not a Dutch postcode" in errors[5].message
    message = str(info.value)
    assert message.startswith("holders CSV rejected, nothing imported: 6 problems: line 3: ")
    assert isinstance(info.value, LedgerError)
    assert _count(migrated_store, Holder) == 0
    assert _count(migrated_store, Household) == 0


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        (b"", 1, "the file is empty"),
        (b"first_name,last_name,postcode\nA,B,9712AB\n", 1, "missing column 'birth_date'"),
        (b"first_name,last_name,birth_date,postcode,bsn\n", 1, "unknown column 'bsn'"),
        (HEADER.encode(), 2, "no rows after the header"),
        (HEADER.encode() + b'A,"B,1990-01-01,9712AB,,\n', 2, "malformed CSV"),
        (HEADER.encode() + b"A,B,1990-01-01,9712AB,,\nJos\xe9,C,1990-01-01,9712AB,,\n", 3, "UTF-8"),
    ],
)
def test_malformed_csv_files(registry: Registry, content: bytes, line: int, message: str) -> None:
    with pytest.raises(CsvImportError) as info:
        registry.import_holders(content)
    assert info.value.errors[0].line == line
    assert message in info.value.errors[0].message
    assert registry.holder_count() == 0


def test_unreadable_csv_path(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(CsvImportError, match="cannot read"):
        registry.import_holders(tmp_path / "missing.csv")


# -- passes and cards ------------------------------------------------------------------------------


def test_issue_pass(registry: Registry) -> None:
    holder = _enrol(registry)
    assert holder.id is not None
    issued = registry.issue_pass(holder.id)
    record = issued.record
    assert record.pass_number.startswith("GR")
    assert len(record.pass_number) == 9
    assert record.pass_number[2:].isdigit()
    assert len(record.pass_secret) == 32
    assert issued.pass_id == pass_id(pass_secret=record.pass_secret, pass_number=record.pass_number)
    assert record.pass_id == "0x" + issued.pass_id.hex()
    assert record.status is PassStatus.ACTIVE
    code = issued.activation_code
    assert code is not None
    assert len(code) == 14
    assert code.count("-") == 2
    assert record.activation_code_hash is not None
    assert code not in record.activation_code_hash
    assert record.activation_code_hash.startswith("$argon2id$")
    assert registry.verify_activation_code(record.pass_number, code)
    assert registry.verify_activation_code(record.pass_number, code.lower().replace("-", " "))
    assert not registry.verify_activation_code(record.pass_number, "AAAA-BBBB-CCCC")
    assert not registry.verify_activation_code("GR0000000", code)

    assert registry.pass_by_number(record.pass_number.lower()).id == record.id
    assert registry.pass_by_id(issued.pass_id).id == record.id
    assert registry.pass_by_id(record.pass_id).id == record.id
    second = registry.issue_pass(holder.id, activation_code=False)
    assert second.activation_code is None
    assert second.record.pass_secret != record.pass_secret
    assert [p.id for p in registry.passes_of(holder.id)] == [record.id, second.record.id]
    assert [h.id for _, h in registry.pass_holders(record.pass_number)] == [holder.id]


def test_pass_rules(registry: Registry) -> None:
    holder = _enrol(registry)
    assert holder.id is not None
    registry.issue_pass(holder.id, pass_number="GR0000001", activation_code=False)
    with pytest.raises(DuplicatePassNumber, match="GR0000001 is already issued"):
        registry.issue_pass(holder.id, pass_number="gr0000001")
    with pytest.raises(InvalidPassNumber, match="'XX123' must be GR followed by 7 digits"):
        registry.issue_pass(holder.id, pass_number="XX123")
    with pytest.raises(UnknownHolder, match="no holder has id 999"):
        registry.issue_pass(999)
    with pytest.raises(InvalidAddress, match="'0x1234' is not an Ethereum address"):
        registry.issue_pass(holder.id, holder_key="0x1234")
    with pytest.raises(UnknownPass, match="no pass has number 'GR7654321'"):
        registry.pass_by_number("GR7654321")
    with pytest.raises(UnknownPass, match="never issued, or its holder was erased"):
        registry.pass_by_id(b"\x01" * 32)
    with pytest.raises(UnknownPass, match="is not 32 bytes"):
        registry.pass_by_id("0xabcd")
    assert registry.pass_count() == 1


def test_block_unblock_and_cards(registry: Registry) -> None:
    holder = _enrol(registry)
    assert holder.id is not None
    number = registry.issue_pass(holder.id, activation_code=False).pass_number
    first = registry.issue_card(number)
    assert 0 < first.serial < 2**63
    second = registry.issue_card(number)
    cards = registry.cards_of(number)
    assert [(c.serial, c.status) for c in cards] == [
        (first.serial, CardStatus.REVOKED),
        (second.serial, CardStatus.ACTIVE),
    ]
    active = registry.active_card(number)
    assert active is not None
    assert active.serial == second.serial

    assert registry.block_pass(number).status is PassStatus.BLOCKED
    assert registry.block_pass(number).status is PassStatus.BLOCKED  # idempotent
    with pytest.raises(PassBlocked, match="is blocked"):
        registry.issue_card(number)
    assert registry.unblock_pass(number).status is PassStatus.ACTIVE
    assert registry.revoke_card(number, second.serial).status is CardStatus.REVOKED
    assert registry.active_card(number) is None
    with pytest.raises(UnknownPass, match="no card with serial 7"):
        registry.revoke_card(number, 7)
    with pytest.raises(UnknownPass):
        registry.block_pass("GR9999999")
    key = registry.set_holder_key(number, OTHER_MERCHANT.lower()).holder_key
    assert key == OTHER_MERCHANT


def _enrol_with_bad_pass(registry: Registry) -> None:
    with registry.transaction():
        holder = _enrol(registry)
        assert holder.id is not None
        registry.issue_pass(holder.id, pass_number="bad")


def test_transaction_is_all_or_nothing(registry: Registry) -> None:
    with pytest.raises(InvalidPassNumber):
        _enrol_with_bad_pass(registry)
    assert registry.holder_count() == 0
    with registry.transaction():
        holder = _enrol(registry)
        assert holder.id is not None
        registry.issue_pass(holder.id, pass_number="GR0000042", activation_code=False)
    assert registry.pass_by_number("GR0000042").holder_id == holder.id


# -- merchants ------------------------------------------------------------------------------------


def test_merchants(registry: Registry) -> None:
    merchant = registry.register_merchant(
        name="Zwembad  Noorderbad",
        kvk_number="01234567",
        address=MERCHANT.lower(),
        category="Sport",
        iban="nl91 abna 0417 1643 00",
    )
    assert merchant.id is not None
    assert (merchant.name, merchant.address, merchant.category) == (
        "Zwembad Noorderbad",
        MERCHANT,
        "sport",
    )
    assert (merchant.iban, merchant.bic) == ("NL91ABNA0417164300", "ABNANL2A")
    unpaid = registry.register_merchant(
        name="Boekhandel", kvk_number="7654 3210", address=OTHER_MERCHANT, category="culture"
    )
    assert unpaid.iban is None
    assert [m.id for m in registry.merchants_without_iban()] == [unpaid.id]
    assert unpaid.id is not None
    registry.set_merchant_iban(unpaid.id, "NL20INGB0001234567")
    assert registry.merchants_without_iban() == []
    assert registry.merchant_by_address(OTHER_MERCHANT.lower()).id == unpaid.id
    assert [m.id for m in registry.merchants()] == [merchant.id, unpaid.id]


def test_merchant_rules(registry: Registry) -> None:
    base = {"name": "Winkel", "kvk_number": "12345678", "address": MERCHANT, "category": "shop"}
    with pytest.raises(InvalidIban) as info:
        registry.register_merchant(**base, iban="NL91ABNA0417164301")
    assert "IBAN 'NL91ABNA0417164301' is not valid" in str(info.value)
    assert "mod-97" in str(info.value)
    with pytest.raises(InvalidIban, match="'NL91ABNA04171643'"):
        registry.register_merchant(**base, iban="NL91ABNA04171643")
    with pytest.raises(InvalidKvk, match="KvK number '1234567' must be exactly 8 digits"):
        registry.register_merchant(**(base | {"kvk_number": "1234567"}))
    with pytest.raises(InvalidMerchant, match="merchant name"):
        registry.register_merchant(**(base | {"name": " "}))
    with pytest.raises(InvalidAddress):
        registry.register_merchant(**(base | {"address": "0xZZ"}))
    with pytest.raises(InvalidAddress, match="checksum"):  # mixed case with a wrong checksum
        registry.register_merchant(**(base | {"address": MERCHANT[:-1] + "c"}))
    assert registry.merchants() == []
    first = registry.register_merchant(**base)
    with pytest.raises(DuplicateMerchant, match=f"address {MERCHANT}"):
        registry.register_merchant(**(base | {"address": MERCHANT.lower()}))
    with pytest.raises(UnknownMerchant, match="no merchant has id 99"):
        registry.set_merchant_iban(99, None)
    assert first.id is not None
    with pytest.raises(InvalidIban):
        registry.set_merchant_iban(first.id, "DE00123")
    assert registry.merchant(first.id).iban is None


def test_pinned_merchant_ids_leave_the_sequence_clear(registry: Registry) -> None:
    pinned = registry.register_merchant(
        name="A", kvk_number="12345678", address=MERCHANT, category="shop", merchant_id=3
    )
    assert pinned.id == 3
    with pytest.raises(DuplicateMerchant, match="merchant id 3 is taken"):
        registry.register_merchant(
            name="B", kvk_number="12345678", address=OTHER_MERCHANT, category="shop", merchant_id=3
        )
    later = registry.register_merchant(
        name="B", kvk_number="12345678", address=OTHER_MERCHANT, category="shop"
    )
    assert later.id is not None
    assert later.id > 3


def test_merchant_location(registry: Registry, migrated_store: Store) -> None:
    location = merchant_location(
        street="  Kraneweg   90 ",
        postcode="9718 jn",
        town="Groningen",
        website=" https://noorderbad.example/openingstijden ",
        opening_hours="ma-vr  7:00-21:00\r\n\n za-zo 9:00-17:00 ",
    )
    assert location.street == "Kraneweg 90"
    assert location.postcode == "9718JN"
    assert location.website == "https://noorderbad.example/openingstijden"
    assert location.opening_hours == "ma-vr 7:00-21:00\nza-zo 9:00-17:00"
    assert format_postcode(location.postcode) == "9718 JN"

    placed = registry.register_merchant(
        name="Zwembad", kvk_number="01234567", address=MERCHANT, category="sport", location=location
    )
    plain = registry.register_merchant(
        name="Winkel", kvk_number="12345678", address=OTHER_MERCHANT, category="shop"
    )
    assert placed.id is not None
    assert plain.id is not None
    stored = registry.merchant(placed.id)
    assert (stored.street, stored.postcode, stored.town) == ("Kraneweg 90", "9718JN", "Groningen")
    assert stored.opening_hours == "ma-vr 7:00-21:00\nza-zo 9:00-17:00"
    assert registry.merchant(plain.id).street is None

    only_required = merchant_location(
        street="Herestraat 1", postcode="9711LC", town="Groningen", website="", opening_hours=" "
    )
    registry.set_merchant_location(plain.id, only_required)
    again = registry.merchant(plain.id)
    assert (again.street, again.postcode, again.town) == ("Herestraat 1", "9711LC", "Groningen")
    assert (again.website, again.opening_hours) == (None, None)
    registry.set_merchant_location(placed.id, None)
    cleared = registry.merchant(placed.id)
    assert (cleared.street, cleared.postcode, cleared.town, cleared.website) == (None,) * 4
    assert cleared.opening_hours is None
    with pytest.raises(UnknownMerchant, match="no merchant has id 99"):
        registry.set_merchant_location(99, only_required)
    # the longest values fit the columns on both databases
    longest = merchant_location(
        street="s" * 200,
        postcode="9999ZZ",
        town="t" * 100,
        website="https://" + "w" * 192,
        opening_hours="\n".join(["h" * 49] * 10),
    )
    registry.set_merchant_location(placed.id, longest)
    with migrated_store.session() as session:
        row = session.get(Merchant, placed.id)
        assert row is not None
        assert (len(row.street or ""), len(row.town or ""), len(row.website or "")) == (
            200,
            100,
            200,
        )
        assert len(row.opening_hours or "") == 499


@pytest.mark.parametrize(
    ("field", "value", "error", "message"),
    [
        ("street", " ", InvalidLocation, "street is empty"),
        ("street", "x" * 201, InvalidLocation, "longer than 200"),
        ("street", "Straat\x001", InvalidLocation, "control characters"),
        ("town", "", InvalidLocation, "town is empty"),
        ("town", "t" * 101, InvalidLocation, "longer than 100"),
        ("postcode", "9718", InvalidPostcode, "not a Dutch postcode"),
        ("postcode", "0718 JN", InvalidPostcode, "not a Dutch postcode"),
        ("postcode", "9718 J N", InvalidPostcode, "not a Dutch postcode"),
        ("website", "noorderbad.example", InvalidLocation, "not a web address"),
        ("website", "javascript:alert(1)", InvalidLocation, "not a web address"),
        ("website", "https://a b.example", InvalidLocation, "not a web address"),
        ("website", "https://" + "w" * 193, InvalidLocation, "not a web address"),
        ("opening_hours", "\n".join(["ma"] * 11), InvalidLocation, "10 lines"),
        ("opening_hours", "x" * 501, InvalidLocation, "500 characters"),
        ("opening_hours", "ma\x07 9-17", InvalidLocation, "control characters"),
    ],
)
def test_merchant_location_rules(
    registry: Registry, field: str, value: str, error: type[Exception], message: str
) -> None:
    values = {"street": "Kraneweg 90", "postcode": "9718 JN", "town": "Groningen"}
    merchant = registry.register_merchant(
        name="Zwembad", kvk_number="01234567", address=MERCHANT, category="sport"
    )
    assert merchant.id is not None
    with pytest.raises(error, match=message):
        registry.set_merchant_location(merchant.id, merchant_location(**(values | {field: value})))
    assert issubclass(InvalidLocation, RegistryError)
    assert registry.merchant(merchant.id).street is None


# -- erasure --------------------------------------------------------------------------------------


def _index_rows(store: Store, pid: str) -> None:
    with store.session() as session:
        common = {
            "chain_id": 31337,
            "block_number": 7,
            "block_hash": "0x" + "ab" * 32,
            "block_time": 1_700_000_000,
            "transaction_hash": "0x" + "cd" * 32,
        }
        session.add(IndexedPass(**common, log_index=0, pass_id=pid, card_serial=0))
        session.add(
            IndexedRedemption(
                **common,
                log_index=1,
                redemption_id="1",
                pass_id=pid,
                scheme_id=1,
                merchant=MERCHANT,
                amount=700,
                debited=700,
                discount=0,
                credited=700,
            )
        )
        session.commit()


def test_erasure_unlinks_the_person_and_keeps_the_index(
    registry: Registry, migrated_store: Store
) -> None:
    holder = _enrol(registry, household_reference="H-9", household_role="parent")
    child = _enrol(
        registry,
        first_name="Ezra",
        birth_date="2016-01-01",
        household_reference="H-9",
        household_role="child",
    )
    duplicate = _enrol(registry)
    assert holder.id is not None
    assert child.id is not None
    assert duplicate.id is not None
    assert duplicate.possible_duplicate_of == holder.id
    issued = registry.issue_pass(holder.id)
    registry.issue_card(issued.pass_number)
    registry.issue_card(issued.pass_number)
    kept = registry.issue_pass(child.id, activation_code=False)
    _index_rows(migrated_store, issued.record.pass_id)
    before = {t: _count(migrated_store, t) for t in (IndexedPass, IndexedRedemption)}

    erasure = registry.erase_holder(holder.id)
    assert (erasure.passes, erasure.cards, erasure.household_removed) == (1, 2, False)

    with pytest.raises(UnknownHolder):
        registry.holder(holder.id)
    assert registry.find_pass_by_id(issued.pass_id) is None
    assert registry.find_pass(issued.pass_number) is None
    with pytest.raises(UnknownPass, match="erased"):
        registry.pass_by_id(issued.record.pass_id)
    # no registry row holds the pass id, the pass number or the secret any more
    with migrated_store.session() as session:
        assert (
            session.exec(
                select(PassRecord).where(PassRecord.pass_id == issued.record.pass_id)
            ).all()
            == []
        )
        assert _count(migrated_store, PrintedCard) == 0
        dumped = " ".join(
            str(row)
            for table in ("registry_pass", "registry_holder", "registry_card")
            for row in session.connection().execute(text(f"SELECT * FROM {table}")).all()
        )
    assert issued.record.pass_id not in dumped
    assert issued.pass_number not in dumped
    assert issued.record.pass_secret.hex() not in dumped
    # the duplicate flag that pointed at the erased holder is cleared; others are untouched
    assert registry.holder(duplicate.id).possible_duplicate_of is None
    assert registry.pass_by_number(kept.pass_number).holder_id == child.id
    # the index (and so the reports) keep every row
    assert {t: _count(migrated_store, t) for t in (IndexedPass, IndexedRedemption)} == before

    last = registry.erase_holder(child.id)
    assert last.household_removed
    assert _count(migrated_store, Household) == 0
    with pytest.raises(UnknownHolder):
        registry.erase_holder(child.id)


def test_created_at_is_utc(registry: Registry) -> None:
    holder = _enrol(registry)
    assert holder.id is not None
    stored = registry.holder(holder.id).created_at
    now = datetime.now(UTC)
    assert abs((now - stored.replace(tzinfo=stored.tzinfo or UTC)).total_seconds()) < 60
