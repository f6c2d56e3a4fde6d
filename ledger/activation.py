"""Which passes get an activation letter, and their new activation codes (in bulk).

A letter goes to one pass of one holder: the holder's name and postal address (street and house
number, postcode, town: :meth:`set_address`), the pass number and a new activation code. The set
of passes is a :data:`LetterSelection`:

- :class:`ByPassNumbers` / :class:`ByHolderIds`: an explicit list (what a holder import feeds;
  an ``import_id`` selection is one more variant that resolves to holder ids);
- :class:`ByDistrict`: every holder in a wijk (``WK001401``);
- :class:`NotActivated`: every unblocked pass whose holder never logged in with a code
  (``registry_pass.activated_at`` is empty).

:func:`select_letters` checks the selection first and refuses it with a typed error (family
:class:`LetterError`) when it names something unknown (a district, a pass number, a holder id)
or yields no letter at all; passes it cannot print are reported, never printed: a blocked pass
(``blocked``), a holder without a postal address (``no_address``), a holder without any pass
(``no_pass``).

:func:`new_codes` makes the codes and their hashes in memory; :func:`store_codes` replaces the
stored hashes in one bulk statement, which invalidates every earlier code of those passes. The
caller renders the letters between the two, so that a failure leaves the old codes in place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from sqlalchemy import bindparam, update
from sqlmodel import Session, col, select

from ledger.registry import (
    InvalidHolder,
    Registry,
    RegistryError,
    UnknownDistrict,
    UnknownHolder,
    _hash_activation_code,
    _new_activation_code,
    normalize_postcode,
)
from ledger.store.registry import District, Holder, PassRecord, PassStatus

__all__ = [
    "ByDistrict",
    "ByHolderIds",
    "ByPassNumbers",
    "EmptySelection",
    "LetterError",
    "LetterSelection",
    "LetterTarget",
    "NotActivated",
    "Selected",
    "Skipped",
    "UnknownInSelection",
    "check_address",
    "new_codes",
    "select_letters",
    "set_address",
    "store_codes",
]

_T = TypeVar("_T")

#: Largest explicit list of pass numbers or holder ids in one selection.
MAX_EXPLICIT = 100_000

SkipReason = Literal["blocked", "no_address", "no_pass"]


class LetterError(RegistryError):
    """A letter selection was refused; nothing changed."""


class EmptySelection(LetterError):
    """The selection names nothing, or nothing in it can get a letter."""


class UnknownInSelection(LetterError):
    """An explicit selection names pass numbers or holder ids that do not exist."""


@dataclass(frozen=True, slots=True)
class ByPassNumbers:
    pass_numbers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ByHolderIds:
    holder_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ByDistrict:
    code: str


@dataclass(frozen=True, slots=True)
class NotActivated:
    pass


LetterSelection = ByPassNumbers | ByHolderIds | ByDistrict | NotActivated


@dataclass(frozen=True, slots=True)
class LetterTarget:
    """One letter: a pass and the address of its holder."""

    pass_record_id: int
    pass_number: str
    holder_id: int
    name: str
    street: str
    postcode: str
    town: str


@dataclass(frozen=True, slots=True)
class Skipped:
    holder_id: int
    pass_number: str | None
    reason: SkipReason


@dataclass(frozen=True, slots=True)
class Selected:
    letters: list[LetterTarget]
    skipped: list[Skipped]


def describe(selection: LetterSelection) -> str:
    """A short text for logs and pages (no personal data)."""
    match selection:
        case ByPassNumbers(numbers):
            return f"{len(numbers)} pass numbers"
        case ByHolderIds(ids):
            return f"{len(ids)} holder ids"
        case ByDistrict(code):
            return f"district {code}"
        case NotActivated():
            return "everyone not yet activated"


def _address_line(value: str, what: str, max_length: int) -> str:
    cleaned = " ".join(value.split())
    if not cleaned:
        raise InvalidHolder(f"{what} is empty; a postal address needs it")
    if len(cleaned) > max_length:
        raise InvalidHolder(f"{what} {cleaned[:20]!r}... is longer than {max_length} characters")
    if any(not ch.isprintable() for ch in cleaned):
        raise InvalidHolder(f"{what} {cleaned!r} contains control characters")
    return cleaned


def check_address(*, street: str, town: str) -> tuple[str, str]:
    """The cleaned street and town; :class:`InvalidHolder` for an empty, too long or
    non-printable one."""
    return _address_line(street, "street", 200), _address_line(town, "town", 100)


def set_address(registry: Registry, holder_id: int, *, street: str, town: str) -> Holder:
    """Set a holder's postal address (street and house number, town; the postcode is the
    holder's). Raises :class:`InvalidHolder` for an empty or too long value,
    :class:`UnknownHolder` for an unknown id."""
    cleaned_street, cleaned_town = check_address(street=street, town=town)
    with registry.store.session() as session:
        holder = session.get(Holder, holder_id)
        if holder is None:
            raise UnknownHolder(f"no holder has id {holder_id}")
        holder.street, holder.town = cleaned_street, cleaned_town
        session.add(holder)
        session.commit()
        session.refresh(holder)
    registry.commits += 1
    return holder


def _chunks(values: Sequence[_T], size: int = 900) -> Iterable[Sequence[_T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def select_letters(registry: Registry, selection: LetterSelection) -> Selected:
    """The letters of ``selection`` and what it skips (see the module text). Raises
    :class:`UnknownDistrict`, :class:`UnknownInSelection` or :class:`EmptySelection`."""
    rows: list[tuple[PassRecord | None, Holder]] = []
    with registry.store.session() as session:
        match selection:
            case ByPassNumbers(numbers):
                wanted = sorted({n.strip().upper() for n in numbers if n.strip()})
                if not wanted:
                    raise EmptySelection("the selection names no pass numbers")
                if len(wanted) > MAX_EXPLICIT:
                    raise LetterError(f"at most {MAX_EXPLICIT} pass numbers per selection")
                found: dict[str, tuple[PassRecord, Holder]] = {}
                for names in _chunks(wanted):
                    for issued, owner in session.exec(
                        select(PassRecord, Holder)
                        .join(Holder, col(Holder.id) == col(PassRecord.holder_id))
                        .where(col(PassRecord.pass_number).in_(names))
                    ).all():
                        found[issued.pass_number] = (issued, owner)
                missing = [n for n in wanted if n not in found]
                if missing:
                    raise UnknownInSelection(
                        f"{len(missing)} pass number(s) are not issued: "
                        f"{', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}"
                    )
                rows = [found[n] for n in wanted]
            case ByHolderIds(ids):
                wanted_ids = sorted(set(ids))
                if not wanted_ids:
                    raise EmptySelection("the selection names no holders")
                if len(wanted_ids) > MAX_EXPLICIT:
                    raise LetterError(f"at most {MAX_EXPLICIT} holder ids per selection")
                holders: dict[int, Holder] = {}
                for id_chunk in _chunks(wanted_ids):
                    for holder in session.exec(
                        select(Holder).where(col(Holder.id).in_(id_chunk))
                    ).all():
                        assert holder.id is not None
                        holders[holder.id] = holder
                unknown = [i for i in wanted_ids if i not in holders]
                if unknown:
                    raise UnknownInSelection(
                        f"{len(unknown)} holder id(s) do not exist: "
                        f"{', '.join(map(str, unknown[:20]))}{' ...' if len(unknown) > 20 else ''}"
                    )
                rows = _with_passes(session, list(holders.values()))
            case ByDistrict(code):
                wanted_code = code.strip().upper()
                if session.get(District, wanted_code) is None:
                    raise UnknownDistrict(
                        f"district {code!r} is not in the district table (a wijk code such as "
                        "WK001401; see the postcodes import)"
                    )
                in_district = list(
                    session.exec(
                        select(Holder)
                        .where(Holder.district_code == wanted_code)
                        .order_by(col(Holder.id))
                    ).all()
                )
                rows = _with_passes(session, in_district)
            case NotActivated():
                pairs = session.exec(
                    select(PassRecord, Holder)
                    .join(Holder, col(Holder.id) == col(PassRecord.holder_id))
                    .where(col(PassRecord.activated_at).is_(None))
                    .where(col(PassRecord.holder_key).is_(None))
                    .where(PassRecord.status == PassStatus.ACTIVE)
                    .order_by(col(PassRecord.pass_number))
                ).all()
                rows = [(found_record, holder) for found_record, holder in pairs]
        session.expunge_all()
    letters: list[LetterTarget] = []
    skipped: list[Skipped] = []
    for record, holder in rows:
        assert holder.id is not None
        if record is None:
            skipped.append(Skipped(holder.id, None, "no_pass"))
        elif record.status is PassStatus.BLOCKED:
            skipped.append(Skipped(holder.id, record.pass_number, "blocked"))
        elif not (holder.street or "").strip() or not (holder.town or "").strip():
            skipped.append(Skipped(holder.id, record.pass_number, "no_address"))
        else:
            assert record.id is not None
            letters.append(
                LetterTarget(
                    pass_record_id=record.id,
                    pass_number=record.pass_number,
                    holder_id=holder.id,
                    name=f"{holder.first_name} {holder.last_name}",
                    street=(holder.street or "").strip(),
                    postcode=normalize_postcode(holder.postcode),
                    town=(holder.town or "").strip(),
                )
            )
    if not letters:
        reasons = sorted({s.reason for s in skipped})
        raise EmptySelection(
            f"the selection ({describe(selection)}) yields no letter"
            + (f": every pass in it is skipped ({', '.join(reasons)})" if reasons else "")
        )
    return Selected(letters=letters, skipped=skipped)


def _with_passes(session: Session, holders: list[Holder]) -> list[tuple[PassRecord | None, Holder]]:
    ids = [h.id for h in holders if h.id is not None]
    passes: dict[int, list[PassRecord]] = {}
    for chunk in _chunks(ids):
        for record in session.exec(
            select(PassRecord)
            .where(col(PassRecord.holder_id).in_(chunk))
            .order_by(col(PassRecord.id))
        ).all():
            passes.setdefault(record.holder_id, []).append(record)
    rows: list[tuple[PassRecord | None, Holder]] = []
    for holder in holders:
        assert holder.id is not None
        own = passes.get(holder.id)
        if not own:
            rows.append((None, holder))
        rows.extend((record, holder) for record in own or ())
    return rows


def new_codes(
    targets: Sequence[LetterTarget], *, key: bytes | None
) -> tuple[dict[int, str], dict[int, str]]:
    """Fresh activation codes per pass record id, and their hashes (keyed HMAC under ``key``;
    Argon2id without one, which is slow: about 50 ms a code)."""
    codes = {t.pass_record_id: _new_activation_code() for t in targets}
    hashes = {rid: _hash_activation_code(code, key) for rid, code in codes.items()}
    return codes, hashes


def store_codes(registry: Registry, hashes: Mapping[int, str]) -> int:
    """Replace the stored activation-code hashes of these pass records in one bulk statement
    (one transaction): every earlier code of those passes stops working. Returns the count."""
    table = PassRecord.__table__  # type: ignore[attr-defined]
    statement = (
        update(table)
        .where(table.c.id == bindparam("record_id"))
        .values(activation_code_hash=bindparam("code_hash"))
    )
    params = [{"record_id": rid, "code_hash": value} for rid, value in hashes.items()]
    if not params:
        return 0
    with registry.store.session() as session:
        session.connection().execute(statement, params)
        session.commit()
    registry.commits += 1
    return len(params)
