"""Letter selection, activation codes hashed with a key (fast) or Argon2 (older), bulk renewal;
on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from ledger import activation as act
from ledger.registry import InvalidHolder, Registry, UnknownDistrict
from ledger.secrets_hash import hash_secret
from ledger.store.db import Store
from ledger.store.registry import PassRecord

KEY = b"k" * 32


@pytest.fixture
def registry(migrated_store: Store) -> Registry:
    registry = Registry(migrated_store, code_key=KEY)
    registry.load_sample_geography()
    return registry


def _holder(registry: Registry, first: str, postcode: str, *, address: bool = True) -> int:
    holder = registry.enrol_holder(
        first_name=first, last_name="Jansen", birth_date="1980-01-01", postcode=postcode
    )
    assert holder.id is not None
    if address:
        act.set_address(registry, holder.id, street=f"{first}straat 1", town="Groningen")
    return holder.id


def _stored(registry: Registry, number: str) -> str | None:
    return registry.pass_by_number(number).activation_code_hash


def test_codes_are_keyed_hashes_and_older_argon2_codes_still_verify(registry: Registry) -> None:
    holder = _holder(registry, "Anna", "9711AA")
    issued = registry.issue_pass(holder, pass_number="GR1000001")
    assert issued.activation_code is not None
    stored = _stored(registry, "GR1000001")
    assert stored is not None
    assert stored.startswith("hmac-sha256$")
    assert issued.activation_code not in stored
    assert registry.verify_activation_code("GR1000001", issued.activation_code.lower())
    assert not registry.verify_activation_code("GR1000001", "AAAA-BBBB-CCCC")
    assert not registry.verify_activation_code("GR9999999", issued.activation_code)
    # without the key a keyed hash never verifies (a copied database alone checks nothing)
    assert not Registry(registry.store).verify_activation_code("GR1000001", issued.activation_code)

    # a pass from before: its code is an Argon2id hash, and it keeps working
    old = registry.issue_pass(holder, pass_number="GR1000002", activation_code=False)
    with registry.store.session() as session:
        record = session.get(PassRecord, old.record.id)
        assert record is not None
        record.activation_code_hash = hash_secret("ABCDEFGHJKLM")
        session.add(record)
        session.commit()
    assert registry.verify_activation_code("GR1000002", "abcd-efgh-jklm")
    assert (_stored(registry, "GR1000002") or "").startswith("$argon2id$")


def test_a_successful_code_marks_the_pass_activated(registry: Registry) -> None:
    holder = _holder(registry, "Bram", "9711AA")
    issued = registry.issue_pass(holder, pass_number="GR1000003")
    assert registry.pass_by_number("GR1000003").activated_at is None
    assert not registry.verify_activation_code("GR1000003", "WRONG-CODE-0000")
    assert registry.pass_by_number("GR1000003").activated_at is None
    assert issued.activation_code is not None
    assert registry.verify_activation_code("GR1000003", issued.activation_code)
    assert registry.pass_by_number("GR1000003").activated_at is not None


def test_selections_report_what_they_skip(registry: Registry) -> None:
    centrum = [_holder(registry, f"C{i}", "9711AA") for i in range(3)]
    no_address = _holder(registry, "Zonder", "9711CE", address=False)
    oud_zuid = _holder(registry, "Zuid", "9721AB")
    no_pass = _holder(registry, "Geenpas", "9712AB")
    for index, holder in enumerate([*centrum, no_address, oud_zuid]):
        registry.issue_pass(holder, pass_number=f"GR200000{index}")
    registry.block_pass("GR2000001")
    activated = registry.issue_pass(centrum[2], pass_number="GR2000009")
    assert activated.activation_code is not None
    registry.verify_activation_code("GR2000009", activated.activation_code)

    by_district = act.select_letters(registry, act.ByDistrict("wk001400"))
    assert [t.pass_number for t in by_district.letters] == ["GR2000000", "GR2000002", "GR2000009"]
    assert {(s.holder_id, s.pass_number, s.reason) for s in by_district.skipped} == {
        (centrum[1], "GR2000001", "blocked"),
        (no_address, "GR2000003", "no_address"),
        (no_pass, None, "no_pass"),
    }
    letter = by_district.letters[0]
    assert (letter.name, letter.street, letter.postcode, letter.town) == (
        "C0 Jansen",
        "C0straat 1",
        "9711AA",
        "Groningen",
    )

    not_activated = act.select_letters(registry, act.NotActivated())
    numbers = [t.pass_number for t in not_activated.letters]
    assert "GR2000009" not in numbers  # activated
    assert "GR2000001" not in numbers  # blocked
    assert numbers == ["GR2000000", "GR2000002", "GR2000004"]
    assert [s.reason for s in not_activated.skipped] == ["no_address"]

    explicit = act.select_letters(registry, act.ByPassNumbers(("gr2000004", "GR2000001")))
    assert [t.pass_number for t in explicit.letters] == ["GR2000004"]
    assert [s.reason for s in explicit.skipped] == ["blocked"]
    by_holder = act.select_letters(registry, act.ByHolderIds((oud_zuid,)))
    assert [t.pass_number for t in by_holder.letters] == ["GR2000004"]


@pytest.mark.parametrize(
    ("selection", "error", "message"),
    [
        (act.ByDistrict("WK999999"), UnknownDistrict, "'WK999999' is not in the district"),
        (act.ByDistrict("Centrum"), UnknownDistrict, "'Centrum'"),
        (act.ByPassNumbers(()), act.EmptySelection, "names no pass numbers"),
        (act.ByPassNumbers(("GR2000000", "GR7777777")), act.UnknownInSelection, "GR7777777"),
        (act.ByHolderIds(()), act.EmptySelection, "names no holders"),
        (act.ByHolderIds((987654,)), act.UnknownInSelection, "987654"),
        (act.ByDistrict("WK001411"), act.EmptySelection, "yields no letter"),
    ],
)
def test_bad_selections_are_refused_by_name(
    registry: Registry, selection: act.LetterSelection, error: type[Exception], message: str
) -> None:
    holder = _holder(registry, "Anna", "9711AA")
    registry.issue_pass(holder, pass_number="GR2000000")
    with pytest.raises(error, match=message):
        act.select_letters(registry, selection)


def test_everything_skipped_is_an_empty_selection(registry: Registry) -> None:
    holder = _holder(registry, "Anna", "9711AA", address=False)
    registry.issue_pass(holder, pass_number="GR2000000")
    with pytest.raises(act.EmptySelection, match="every pass in it is skipped \\(no_address\\)"):
        act.select_letters(registry, act.ByPassNumbers(("GR2000000",)))


def test_renewing_codes_in_bulk_invalidates_the_previous_ones(registry: Registry) -> None:
    holders = [_holder(registry, f"H{i}", "9711AA") for i in range(30)]
    numbers = [
        registry.issue_pass(h, pass_number=f"GR30000{i:02d}").pass_number
        for i, h in enumerate(holders)
    ]
    old_codes = {n: registry.pass_by_number(n).activation_code_hash for n in numbers}
    selected = act.select_letters(registry, act.ByDistrict("WK001400"))
    codes, hashes = act.new_codes(selected.letters, key=KEY)
    assert len(set(codes.values())) == 30
    assert act.store_codes(registry, hashes) == 30
    for target in selected.letters:
        code = codes[target.pass_record_id]
        assert registry.verify_activation_code(target.pass_number, code)
        assert (
            registry.pass_by_number(target.pass_number).activation_code_hash
            != (old_codes[target.pass_number])
        )
    # a second renewal: the first letter's code is refused, the new one works
    target = selected.letters[0]
    again, again_hashes = act.new_codes([target], key=KEY)
    act.store_codes(registry, again_hashes)
    assert not registry.verify_activation_code(target.pass_number, codes[target.pass_record_id])
    assert registry.verify_activation_code(target.pass_number, again[target.pass_record_id])


def test_addresses_are_checked(registry: Registry) -> None:
    holder = _holder(registry, "Anna", "9711AA", address=False)
    with pytest.raises(InvalidHolder, match="street is empty"):
        act.set_address(registry, holder, street="  ", town="Groningen")
    with pytest.raises(InvalidHolder, match="longer than 100"):
        act.set_address(registry, holder, street="Vismarkt 1", town="G" * 101)
    assert registry.holder(holder).street is None
