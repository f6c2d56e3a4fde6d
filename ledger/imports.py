"""Migration from an old pass system: holders (with their pass numbers and cards) and balances.

**Holders** (:func:`import_holders`): a CSV with ``external_reference,first_name,last_name,
birth_date,postcode`` and optionally ``household_reference,household_role,pass_number,
card_serial`` and the postal address ``street,town`` (for the activation letters; both or
neither). The file is read as UTF-8 (a byte order mark is dropped) or, when it is not
UTF-8, as Windows-1252 (old Windows exports); ``,`` or ``;`` delimited (detected from the
header); Windows line ends are fine. Every line is checked first, against the file and against
the registry loaded in bulk (no query per line):

- the holder fields as :meth:`ledger.registry.Registry.enrol_holder` checks them (names, birth
  date, postcode known in the district table, household role);
- the external reference: 1-64 characters, once in the file; a reference imported before with
  the same data is skipped (counted), with other data it is an error;
- a person (same name, birth date and postcode) twice in the file or already in the registry
  under another reference: an error (never a second holder);
- a pass number: ``GR`` + 7 digits, once in the file, not issued to anyone else;
- a card serial: a whole number from 1 to 2**63 - 1 (the contract's limit);
- a postal address: street (and house number) and town together, as
  :func:`ledger.activation.check_address` checks them.

Any problem rejects the file (:class:`ledger.registry.CsvImportError`, errors by line and
column) and nothing is written. Otherwise holders, households, passes (no activation code:
letters make those), cards and one :class:`~ledger.store.imports.MigratedHolder` row per line
are written in **one** database transaction, the passes ``pending`` on chain.

**Chain state.** A pass moves ``pending`` -> ``sent`` (committed before the batch is handed to
the relayer) -> ``done`` (the receipt, or the chain's ``passOf`` says registered). After a crash
:func:`passes_in_state` gives the ``sent`` ones to check on chain; the API registers what is
still missing (:mod:`api.imports`), so a pass is never sent in two batches that could both be
mined (the contract would refuse the second batch as a whole).

**Opening balances** (:func:`plan_balances`, :func:`record_balances`): a CSV with ``amount``
(cents) and ``external_reference`` or ``pass_number`` (one of them per line), optionally
``scheme``. One opening balance per scheme and pass: the same line again is skipped, another
amount for the same holder and scheme is an error.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Executable, func, insert, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from ledger import registry as reg
from ledger.activation import check_address
from ledger.passid import new_pass_secret, pass_id
from ledger.store.db import Store
from ledger.store.imports import ChainState, MigratedBalance, MigratedHolder
from ledger.store.registry import (
    CardStatus,
    Holder,
    Household,
    PassRecord,
    PassStatus,
    PrintedCard,
)

__all__ = [
    "BALANCE_COLUMNS",
    "HOLDER_COLUMNS",
    "MAX_CARD_SERIAL",
    "BalanceLine",
    "BalancePlan",
    "HolderImportResult",
    "ImportProblem",
    "PendingPass",
    "balances_in_state",
    "import_holders",
    "mark_balances",
    "mark_passes",
    "migrated_counts",
    "passes_in_state",
    "plan_balances",
    "read_rows",
    "record_balances",
]

HOLDER_COLUMNS = ("external_reference", "first_name", "last_name", "birth_date", "postcode")
HOLDER_OPTIONAL = (
    "household_reference",
    "household_role",
    "pass_number",
    "card_serial",
    "street",
    "town",
)
BALANCE_COLUMNS = ("amount",)
BALANCE_OPTIONAL = ("external_reference", "pass_number", "scheme")
#: The contract's limit on a card serial (``MAX_AMOUNT``, a signed 64-bit integer's maximum).
MAX_CARD_SERIAL = 2**63 - 1
_UINT64 = 2**64
_REFERENCE = re.compile(r"[\w.\-/:]{1,64}")
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class ImportProblem:
    """One problem of a line: ``column`` is None when the whole line is concerned."""

    line: int
    column: str | None
    message: str

    def as_dict(self) -> dict[str, object]:
        return {"line": self.line, "column": self.column, "message": self.message}


class ImportRejected(reg.CsvImportError):
    """A file was rejected; ``problems`` lists every problem by line and column."""

    def __init__(self, what: str, problems: Sequence[ImportProblem]) -> None:
        self.problems = list(problems)
        super().__init__(
            what,
            [
                reg.LineError(p.line, f"{p.column}: {p.message}" if p.column else p.message)
                for p in self.problems
            ],
        )


@dataclass(frozen=True, slots=True)
class HolderImportResult:
    lines: int
    imported: int
    skipped: int
    households_created: int
    encoding: str
    delimiter: str

    def as_dict(self) -> dict[str, object]:
        return {
            "lines": self.lines,
            "imported": self.imported,
            "skipped": self.skipped,
            "households_created": self.households_created,
            "encoding": self.encoding,
            "delimiter": self.delimiter,
        }


@dataclass(frozen=True, slots=True)
class PendingPass:
    external_reference: str
    pass_id: bytes
    card_serial: int


def _now() -> datetime:
    return datetime.now(UTC)


def _problems_of(error: reg.CsvImportError) -> list[ImportProblem]:
    return [ImportProblem(e.line, None, e.message) for e in error.errors]


def read_rows(
    data: bytes, what: str, required: Sequence[str], optional: Sequence[str]
) -> tuple[list[tuple[int, dict[str, str]]], str, str]:
    """The rows of ``data`` with the encoding and delimiter they were read with."""
    try:
        text, encoding = reg.decode_csv(data, what, legacy=True)
        delimiter = reg.detect_delimiter(text)
        rows = list(reg._read_csv(text, what, required, optional, delimiters=delimiter))
    except ImportRejected:
        raise
    except reg.CsvImportError as exc:
        raise ImportRejected(what, _problems_of(exc)) from None
    return rows, encoding, delimiter


def _fingerprint(*values: object) -> str:
    text = "\x1f".join("" if v is None else str(v) for v in values)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _all(session: Session, statement: Executable) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in session.execute(statement).all()]


@dataclass(slots=True)
class _Line:
    line: int
    reference: str
    holder: reg._HolderRow
    pass_number: str | None
    card_serial: int
    fingerprint: str
    address: tuple[str, str] | None = None


def import_holders(registry: reg.Registry, data: bytes) -> HolderImportResult:
    """Check every line of a holders CSV, then write what is new in one transaction (see the
    module docstring). Raises :class:`ImportRejected` with every problem."""
    what = "holders CSV"
    rows, encoding, delimiter = read_rows(data, what, HOLDER_COLUMNS, HOLDER_OPTIONAL)
    postcodes = registry.postcodes()
    problems: list[ImportProblem] = []
    lines: list[_Line] = []
    for number, row in rows:
        holder = registry._validate_holder(
            number,
            row["first_name"],
            row["last_name"],
            row["birth_date"],
            row["postcode"],
            row.get("household_reference") or None,
            row.get("household_role") or None,
            postcodes=postcodes,
        )
        problems += [ImportProblem(number, None, message) for message in holder.errors]
        reference = row["external_reference"].strip()
        if not _REFERENCE.fullmatch(reference):
            problems.append(
                ImportProblem(
                    number,
                    "external_reference",
                    f"{row['external_reference']!r} must be 1-64 letters, digits or . - / : _",
                )
            )
        pass_number: str | None = None
        raw_number = row.get("pass_number", "").strip()
        if raw_number:
            try:
                pass_number = reg._pass_number(raw_number)
            except reg.RegistryError as exc:
                problems.append(ImportProblem(number, "pass_number", str(exc)))
        serial = 0
        raw_serial = row.get("card_serial", "").strip()
        if raw_serial:
            if not raw_serial.isascii() or not raw_serial.isdigit():
                problems.append(
                    ImportProblem(number, "card_serial", f"{raw_serial!r} is not a whole number")
                )
            elif not 1 <= int(raw_serial) <= MAX_CARD_SERIAL:
                problems.append(
                    ImportProblem(
                        number,
                        "card_serial",
                        f"{raw_serial} must be between 1 and {MAX_CARD_SERIAL}",
                    )
                )
            else:
                serial = int(raw_serial)
        address: tuple[str, str] | None = None
        raw_street, raw_town = row.get("street", "").strip(), row.get("town", "").strip()
        if raw_street or raw_town:
            if not (raw_street and raw_town):
                column = "town" if raw_street else "street"
                problems.append(
                    ImportProblem(
                        number,
                        column,
                        "street and town make a postal address together: give both or neither",
                    )
                )
            else:
                try:
                    address = check_address(street=raw_street, town=raw_town)
                except reg.RegistryError as exc:
                    problems.append(ImportProblem(number, "street", str(exc)))
        fingerprint = _fingerprint(
            holder.first_name,
            holder.last_name,
            holder.birth_date.isoformat(),
            holder.postcode,
            holder.household_reference,
            holder.household_role.value,
            pass_number,
            serial,
            *(address or ()),
        )
        lines.append(_Line(number, reference, holder, pass_number, serial, fingerprint, address))

    with registry.transaction(), registry._unit() as session:
        migrated = {
            str(ref): (str(fp), int(holder_id))
            for ref, fp, holder_id in _all(
                session,
                select(
                    MigratedHolder.external_reference,
                    MigratedHolder.fingerprint,
                    MigratedHolder.holder_id,
                ),
            )
        }
        taken = {
            str(number): int(holder_id)
            for number, holder_id in _all(
                session, select(PassRecord.pass_number, PassRecord.holder_id)
            )
        }
        identities: dict[tuple[str, ...], int] = {}
        for holder_id, first, last, born, postcode in _all(
            session,
            sa_select(
                col(Holder.id),
                col(Holder.first_name),
                col(Holder.last_name),
                col(Holder.birth_date),
                col(Holder.postcode),
            ),
        ):
            key = reg._identity(str(first), str(last), born, str(postcode))
            identities.setdefault(key, int(holder_id))

        seen_refs: dict[str, int] = {}
        seen_numbers: dict[str, int] = {}
        seen_people: dict[tuple[str, ...], int] = {}
        new: list[_Line] = []
        skipped = 0
        for item in lines:
            if item.reference in seen_refs:
                problems.append(
                    ImportProblem(
                        item.line,
                        "external_reference",
                        f"{item.reference!r} is also on line {seen_refs[item.reference]}",
                    )
                )
                continue
            seen_refs[item.reference] = item.line
            before = migrated.get(item.reference)
            if before is not None:
                if before[0] == item.fingerprint:
                    skipped += 1
                else:
                    problems.append(
                        ImportProblem(
                            item.line,
                            "external_reference",
                            f"{item.reference!r} was imported before with other data (holder "
                            f"{before[1]}); change that holder in the registry, not by import",
                        )
                    )
                continue
            h = item.holder
            person = reg._identity(h.first_name, h.last_name, h.birth_date, h.postcode)
            if person in seen_people:
                problems.append(
                    ImportProblem(
                        item.line,
                        None,
                        "the same person (name, birth date and postcode) is also on line "
                        f"{seen_people[person]}",
                    )
                )
            elif person in identities:
                problems.append(
                    ImportProblem(
                        item.line,
                        None,
                        "a possible duplicate of holder "
                        f"{identities[person]} (same name, birth date and postcode) already in "
                        "the registry",
                    )
                )
            seen_people.setdefault(person, item.line)
            if item.pass_number is not None:
                if item.pass_number in seen_numbers:
                    problems.append(
                        ImportProblem(
                            item.line,
                            "pass_number",
                            f"{item.pass_number} is also on line {seen_numbers[item.pass_number]}",
                        )
                    )
                elif item.pass_number in taken:
                    problems.append(
                        ImportProblem(
                            item.line,
                            "pass_number",
                            f"{item.pass_number} is already issued (to holder "
                            f"{taken[item.pass_number]})",
                        )
                    )
                seen_numbers[item.pass_number] = item.line
            new.append(item)
        if problems:
            problems.sort(key=lambda p: p.line)
            raise ImportRejected(what, problems)
        created = _write_holders(session, new, taken=set(taken) | set(seen_numbers))
    return HolderImportResult(
        lines=len(lines),
        imported=len(new),
        skipped=skipped,
        households_created=created,
        encoding=encoding,
        delimiter=delimiter,
    )


def _write_holders(session: Session, lines: Sequence[_Line], *, taken: set[str]) -> int:
    if not lines:
        return 0
    now = _now()
    references = sorted(
        {i.holder.household_reference for i in lines if i.holder.household_reference}
    )
    households: dict[str, int] = {}
    for chunk in _chunks(references):
        for hid, ref in _all(
            session,
            select(Household.id, Household.reference).where(col(Household.reference).in_(chunk)),
        ):
            households[str(ref)] = int(hid)
    missing = [ref for ref in references if ref not in households]
    if missing:
        session.execute(insert(Household), [{"reference": ref} for ref in missing])
        for chunk in _chunks(missing):
            for hid, ref in _all(
                session,
                select(Household.id, Household.reference).where(
                    col(Household.reference).in_(chunk)
                ),
            ):
                households[str(ref)] = int(hid)
    holders = [
        Holder(
            first_name=i.holder.first_name,
            last_name=i.holder.last_name,
            birth_date=i.holder.birth_date,
            postcode=i.holder.postcode,
            district_code=i.holder.district_code,
            household_id=households.get(i.holder.household_reference or ""),
            household_role=i.holder.household_role,
            street=i.address[0] if i.address else None,
            town=i.address[1] if i.address else None,
            created_at=now,
        )
        for i in lines
    ]
    session.add_all(holders)
    session.flush()
    passes: list[PassRecord] = []
    for item, holder in zip(lines, holders, strict=True):
        number = item.pass_number
        while number is None or (item.pass_number is None and number in taken):
            number = f"GR{secrets.randbelow(10**7):07d}"
        taken.add(number)
        secret = new_pass_secret()
        assert holder.id is not None
        passes.append(
            PassRecord(
                holder_id=holder.id,
                pass_number=number,
                pass_secret=secret,
                pass_id="0x" + pass_id(pass_secret=secret, pass_number=number).hex(),
                status=PassStatus.ACTIVE,
                activation_code_hash=None,
                created_at=now,
            )
        )
    session.add_all(passes)
    session.flush()
    cards = [
        {
            "pass_record_id": record.id,
            "serial": item.card_serial,
            "status": CardStatus.ACTIVE,
            "issued_at": now,
        }
        for item, record in zip(lines, passes, strict=True)
        if item.card_serial
    ]
    if cards:
        session.execute(insert(PrintedCard), cards)
    session.execute(
        insert(MigratedHolder),
        [
            {
                "external_reference": item.reference,
                "holder_id": holder.id,
                "pass_record_id": record.id,
                "card_serial": item.card_serial,
                "fingerprint": item.fingerprint,
                "chain_state": ChainState.PENDING,
                "imported_at": now,
            }
            for item, holder, record in zip(lines, holders, passes, strict=True)
        ],
    )
    session.flush()
    return len(missing)


def _chunks(items: Sequence[str], size: int = _CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- chain state of the imported passes ------------------------------------------------------


def passes_in_state(store: Store, state: ChainState) -> list[PendingPass]:
    """The imported passes in ``state``, in import order."""
    with store.session() as session:
        rows = _all(
            session,
            select(
                MigratedHolder.external_reference, PassRecord.pass_id, MigratedHolder.card_serial
            )
            .join(PassRecord, col(PassRecord.id) == col(MigratedHolder.pass_record_id))
            .where(MigratedHolder.chain_state == state)
            .order_by(col(MigratedHolder.pass_record_id)),
        )
    return [
        PendingPass(str(ref), bytes.fromhex(str(pid).removeprefix("0x")), int(serial))
        for ref, pid, serial in rows
    ]


def mark_passes(store: Store, references: Sequence[str], state: ChainState) -> None:
    """Set the chain state of the imported passes of ``references`` (one transaction)."""
    with store.session() as session:
        for chunk in _chunks(list(references)):
            session.execute(
                update(MigratedHolder)
                .where(col(MigratedHolder.external_reference).in_(chunk))
                .values(chain_state=state)
            )
        session.commit()


def migrated_counts(store: Store) -> dict[str, int]:
    """How many imported passes are in each chain state, and opening balances likewise."""
    out: dict[str, int] = {}
    with store.session() as session:
        for column, prefix in (
            (col(MigratedHolder.chain_state), "passes"),
            (col(MigratedBalance.chain_state), "balances"),
        ):
            for state, count in _all(session, sa_select(column, func.count()).group_by(column)):
                out[f"{prefix}_{ChainState(str(state)).value}"] = int(count)
    return out


# -- opening balances -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BalanceLine:
    line: int
    reference: str
    scheme_id: int
    pass_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class BalancePlan:
    """The new opening balances of a file (``lines``), and how many were there already."""

    lines: list[BalanceLine]
    skipped: int
    encoding: str
    delimiter: str

    @property
    def total(self) -> int:
        return sum(line.amount for line in self.lines)

    def totals_by_scheme(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for line in self.lines:
            out[line.scheme_id] = out.get(line.scheme_id, 0) + line.amount
        return out


def plan_balances(
    registry: reg.Registry, data: bytes, *, scheme_id: int | None, schemes: set[int]
) -> BalancePlan:
    """Check every line of an opening-balances CSV (see the module docstring): the holder known
    by external reference or pass number, the scheme known (``schemes``), the amount 1 to
    2**64 - 1 cents, one line per holder and scheme. Raises :class:`ImportRejected`."""
    what = "balances CSV"
    rows, encoding, delimiter = read_rows(data, what, BALANCE_COLUMNS, BALANCE_OPTIONAL)
    problems: list[ImportProblem] = []
    with registry._unit() as session:
        by_reference = {
            str(ref): str(pid)
            for ref, pid in _all(
                session,
                select(MigratedHolder.external_reference, PassRecord.pass_id).join(
                    PassRecord, col(PassRecord.id) == col(MigratedHolder.pass_record_id)
                ),
            )
        }
        by_number = {
            str(n): str(pid)
            for n, pid in _all(session, select(PassRecord.pass_number, PassRecord.pass_id))
        }
        # passes an import has not registered on chain yet cannot be issued to
        waiting = {
            str(pid)
            for (pid,) in _all(
                session,
                sa_select(col(PassRecord.pass_id))
                .join(MigratedHolder, col(PassRecord.id) == col(MigratedHolder.pass_record_id))
                .where(col(MigratedHolder.chain_state) != ChainState.DONE),
            )
        }
        existing = {
            (int(s), str(p)): int(a)
            for s, p, a in _all(
                session,
                select(MigratedBalance.scheme_id, MigratedBalance.pass_id, MigratedBalance.amount),
            )
        }
    seen: dict[tuple[int, str], int] = {}
    out: list[BalanceLine] = []
    skipped = 0
    for number, row in rows:
        reference = row.get("external_reference", "").strip()
        pass_number = row.get("pass_number", "").strip().upper()
        pid: str | None = None
        if reference and pass_number:
            problems.append(
                ImportProblem(number, None, "give external_reference or pass_number, not both")
            )
        elif reference:
            pid = by_reference.get(reference)
            if pid is None:
                problems.append(
                    ImportProblem(
                        number,
                        "external_reference",
                        f"{reference!r} is not an imported holder (import the holders first)",
                    )
                )
        elif pass_number:
            pid = by_number.get(pass_number)
            if pid is None:
                problems.append(
                    ImportProblem(number, "pass_number", f"unknown pass number {pass_number!r}")
                )
        else:
            problems.append(
                ImportProblem(number, None, "needs an external_reference or a pass_number")
            )
        if pid is not None and pid in waiting:
            problems.append(
                ImportProblem(
                    number,
                    None,
                    "this holder's pass is not registered on chain yet: let the holders import "
                    "finish (or run its file again), then import the balances",
                )
            )
            pid = None
        sid = scheme_id
        raw_scheme = row.get("scheme", "").strip()
        if raw_scheme:
            if not raw_scheme.isascii() or not raw_scheme.isdigit():
                problems.append(
                    ImportProblem(number, "scheme", f"{raw_scheme!r} is not a scheme id")
                )
                sid = None
            else:
                sid = int(raw_scheme)
        if sid is None:
            if not raw_scheme:
                problems.append(
                    ImportProblem(number, "scheme", "no scheme: add a scheme column or choose one")
                )
        elif sid not in schemes:
            problems.append(ImportProblem(number, "scheme", f"no scheme has id {sid}"))
        raw_amount = row["amount"].strip()
        amount = 0
        if not raw_amount.isascii() or not raw_amount.isdigit():
            problems.append(
                ImportProblem(number, "amount", f"{raw_amount!r} is not a whole number of cents")
            )
        elif not 1 <= int(raw_amount) < _UINT64:
            problems.append(
                ImportProblem(number, "amount", f"{raw_amount} must be between 1 and {_UINT64 - 1}")
            )
        else:
            amount = int(raw_amount)
        if pid is None or sid is None or not amount:
            continue
        key = (sid, pid)
        if key in seen:
            problems.append(
                ImportProblem(
                    number,
                    None,
                    f"this holder's balance in scheme {sid} is also on line {seen[key]}",
                )
            )
            continue
        seen[key] = number
        if key in existing:
            if existing[key] == amount:
                skipped += 1
            else:
                problems.append(
                    ImportProblem(
                        number,
                        "amount",
                        f"an opening balance of {existing[key]} cents in scheme {sid} was "
                        f"imported for this holder before; {amount} differs",
                    )
                )
            continue
        out.append(BalanceLine(number, reference or pass_number, sid, pid, amount))
    if problems:
        raise ImportRejected(what, problems)
    return BalancePlan(lines=out, skipped=skipped, encoding=encoding, delimiter=delimiter)


def record_balances(store: Store, lines: Sequence[BalanceLine]) -> None:
    """Write the planned balances, ``pending``, in one transaction."""
    if not lines:
        return
    now = _now()
    with store.session() as session:
        session.execute(
            insert(MigratedBalance),
            [
                {
                    "scheme_id": line.scheme_id,
                    "pass_id": line.pass_id,
                    "amount": line.amount,
                    "reference": line.reference[:64],
                    "chain_state": ChainState.PENDING,
                    "imported_at": now,
                }
                for line in lines
            ],
        )
        session.commit()


def balances_in_state(store: Store, state: ChainState) -> list[MigratedBalance]:
    with store.session() as session:
        rows = session.exec(
            select(MigratedBalance)
            .where(MigratedBalance.chain_state == state)
            .order_by(col(MigratedBalance.scheme_id), col(MigratedBalance.imported_at))
        ).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


def mark_balances(
    store: Store,
    keys: Sequence[tuple[int, str]],
    state: ChainState,
    *,
    batch: int | None = None,
    transaction_hash: str | None = None,
) -> None:
    """Set the state (and, when given, batch and transaction) of the balances ``keys`` in one
    transaction. A batch number stays once given: batch numbers are never reused, so the
    outbox rows of a batch (refs) name it alone."""
    values: dict[str, object] = {"chain_state": state}
    if batch is not None:
        values["batch"] = batch
    if transaction_hash is not None:
        values["transaction_hash"] = transaction_hash
    with store.session() as session:
        for scheme_id, pid in keys:
            session.execute(
                update(MigratedBalance)
                .where(col(MigratedBalance.scheme_id) == scheme_id)
                .where(col(MigratedBalance.pass_id) == pid)
                .values(**values)
            )
        session.commit()


def next_balance_batch(store: Store) -> int:
    with store.session() as session:
        value = session.execute(select(func.max(MigratedBalance.batch))).scalar()
        return int(value or 0) + 1
