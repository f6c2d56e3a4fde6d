"""The registry service: the municipality's personal data about holders, passes and merchants.

Everything here stays off chain. The chain sees a pass only as ``pass_id = HMAC(secret, number)``;
erasing a holder (:meth:`Registry.erase_holder`) deletes the holder, the passes with their secrets
and the cards, after which nothing in the registry links a ``pass_id`` to a person (the index and
the chain keep their rows, which stay consistent but anonymous).

Rules, each with a typed error (family :class:`RegistryError`) whose message quotes the bad value
and the rule:

- postcodes are Dutch (``9712AB``; ``9712 ab`` is accepted and normalised); a holder's district
  comes from the postcode table (:meth:`Registry.import_postcodes`; the real one is CBS's
  "wijk- en buurtindeling"); an unknown postcode is refused (:class:`UnknownPostcode`);
- a holder with the same first and last name (case-insensitive), birth date and postcode as an
  existing one is enrolled but flagged ``possible_duplicate_of`` the earliest such holder, and
  reported; never merged;
- CSV imports validate every row first and report problems by line number
  (:class:`CsvImportError`); a file with any problem imports nothing;
- pass numbers are ``GR`` + 7 digits, unique; a pass gets 32 random secret bytes
  (:func:`ledger.passid.new_pass_secret`) and, optionally, an activation code that is returned in
  the clear once and stored only as a hash: HMAC-SHA256 under the service's key when the registry
  has one (:attr:`Registry.code_key`; codes are random, 60 bits), else Argon2id
  (:mod:`ledger.secrets_hash`); older Argon2id and scrypt hashes still verify;
- merchants have an 8-digit KvK number, a chain address and optionally an IBAN validated with
  ``schwifty`` (country format, length and mod-97 check digits); a merchant without an IBAN is
  allowed (payouts report it);
- a merchant's public location is optional: street and house number, a Dutch postcode and a
  town, all three or none (:class:`InvalidLocation`), plus optionally an ``http(s)://`` website
  and opening hours as short free text (:func:`merchant_location`).

Several calls can share one database transaction: ``with registry.transaction(): ...``.
"""

from __future__ import annotations

import contextvars
import csv
import io
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import NamedTuple

from eth_utils.address import is_address, is_checksum_address, to_checksum_address
from schwifty import IBAN
from schwifty.exceptions import SchwiftyException
from sqlalchemy import func, text
from sqlmodel import Session, col, delete, select, update

from ledger.errors import LedgerError
from ledger.passid import new_pass_secret, pass_id
from ledger.secrets_hash import check_secret, hash_secret, keyed_hash, needs_rehash
from ledger.store.db import Store
from ledger.store.imports import MigratedHolder
from ledger.store.registry import (
    CardStatus,
    District,
    Holder,
    Household,
    HouseholdRole,
    Merchant,
    PassRecord,
    PassStatus,
    PostcodeDistrict,
    PrintedCard,
)

__all__ = [
    "SAMPLE_DISTRICTS_CSV",
    "SAMPLE_POSTCODES_CSV",
    "CsvImportError",
    "CsvSource",
    "DuplicateHousehold",
    "DuplicateMerchant",
    "DuplicatePassNumber",
    "Erasure",
    "GeographyImport",
    "HolderImport",
    "HolderInOtherHousehold",
    "HouseholdMember",
    "HouseholdNotEmpty",
    "InvalidAddress",
    "InvalidHolder",
    "InvalidHousehold",
    "InvalidIban",
    "InvalidKvk",
    "InvalidLocation",
    "InvalidMerchant",
    "InvalidPassNumber",
    "InvalidPostcode",
    "IssuedPass",
    "LineError",
    "MerchantLocation",
    "PassBlocked",
    "PossibleDuplicate",
    "Registry",
    "RegistryError",
    "UnknownDistrict",
    "UnknownHolder",
    "UnknownHousehold",
    "UnknownHouseholdMember",
    "UnknownMerchant",
    "UnknownPass",
    "UnknownPostcode",
    "decode_csv",
    "detect_delimiter",
    "format_postcode",
    "merchant_location",
    "normalize_postcode",
]

log = logging.getLogger(__name__)

_DATA_DIR = Path(__file__).resolve().parent / "store" / "data"
#: Sample wijken of Groningen and postcodes in them (demo and tests; not authoritative).
SAMPLE_DISTRICTS_CSV = _DATA_DIR / "districts-groningen-sample.csv"
SAMPLE_POSTCODES_CSV = _DATA_DIR / "postcodes-groningen-sample.csv"

#: A CSV file (Path), its bytes (UTF-8, optionally with BOM), or its text (str).
CsvSource = Path | bytes | str

_POSTCODE = re.compile(r"([1-9][0-9]{3}) ?([A-Za-z]{2})")
_DISTRICT_CODE = re.compile(r"WK[0-9]{6}")
_PASS_NUMBER = re.compile(r"GR[0-9]{7}")
_KVK = re.compile(r"[0-9]{8}")
_WEBSITE = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^\s]*)?", re.IGNORECASE)
_STREET_MAX, _TOWN_MAX, _WEBSITE_MAX, _HOURS_MAX, _HOURS_LINES = 200, 100, 200, 500, 10
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_EARLIEST_BIRTH = date(1900, 1, 1)
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I
_CODE_LENGTH = 12
_MAX_SERIAL = 2**63 - 1  # a signed BIGINT; the contract takes a uint64


# -- errors ---------------------------------------------------------------------------------------


class RegistryError(LedgerError):
    """A registry rule refused the input, or what was asked for does not exist."""


class InvalidPostcode(RegistryError):
    """Not a Dutch postcode (4 digits, the first not 0, and 2 letters)."""


class UnknownPostcode(RegistryError):
    """A well-formed postcode that the postcode-to-district table does not contain."""


class UnknownDistrict(RegistryError):
    """A district code that is not in the district table (or not in the WK###### form)."""


class InvalidHolder(RegistryError):
    """A holder's name, birth date or household data breaks a rule."""


class UnknownHolder(RegistryError):
    pass


class InvalidHousehold(InvalidHolder):
    """A household reference or role breaks a rule."""


class UnknownHousehold(RegistryError):
    pass


class DuplicateHousehold(RegistryError):
    """A household with this reference exists."""


class HouseholdNotEmpty(RegistryError):
    """A household that still has members cannot be deleted; unlink them first."""


class HolderInOtherHousehold(RegistryError):
    """A holder belongs to one household at a time; unlink them from the other one first."""


class UnknownHouseholdMember(RegistryError):
    """The holder exists but is not a member of this household."""


class InvalidPassNumber(RegistryError):
    """A pass number that is not ``GR`` followed by 7 digits."""


class DuplicatePassNumber(RegistryError):
    pass


class UnknownPass(RegistryError):
    pass


class PassBlocked(RegistryError):
    """The pass is blocked; unblock it (or issue a new pass) first."""


class InvalidAddress(RegistryError):
    """Not an Ethereum address (or a mixed-case address with a wrong checksum)."""


class InvalidMerchant(RegistryError):
    """A merchant's name or category breaks a rule."""


class InvalidKvk(InvalidMerchant):
    """A KvK number that is not exactly 8 digits."""


class InvalidIban(InvalidMerchant):
    """An IBAN whose format, length or mod-97 check digits are wrong."""


class InvalidLocation(InvalidMerchant):
    """A merchant's street, town, website or opening hours break a rule (a bad postcode is
    :class:`InvalidPostcode`)."""


class DuplicateMerchant(RegistryError):
    pass


class UnknownMerchant(RegistryError):
    pass


class LineError(NamedTuple):
    """One problem of a CSV file: its (1-based, physical) line number and what is wrong."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class CsvImportError(RegistryError):
    """A CSV file was rejected: nothing of it was imported. ``errors`` lists every problem."""

    def __init__(self, what: str, errors: Sequence[LineError]) -> None:
        self.errors: list[LineError] = list(errors)
        shown = "; ".join(str(error) for error in self.errors[:10])
        more = f" (and {len(self.errors) - 10} more)" if len(self.errors) > 10 else ""
        super().__init__(
            f"{what} rejected, nothing imported: {len(self.errors)} problem"
            f"{'s' if len(self.errors) != 1 else ''}: {shown}{more}"
        )


# -- results --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PossibleDuplicate:
    """``holder_id`` has the same name, birth date and postcode as ``duplicate_of``.
    ``line`` is the CSV line it came from (None for a single enrolment)."""

    holder_id: int
    duplicate_of: int
    line: int | None = None


@dataclass(frozen=True, slots=True)
class HolderImport:
    """What a holders CSV import did."""

    holders: list[Holder]
    duplicates: list[PossibleDuplicate]
    households_created: int


@dataclass(frozen=True, slots=True)
class GeographyImport:
    districts: int
    postcodes: int


@dataclass(frozen=True, slots=True)
class IssuedPass:
    """A new pass. ``activation_code`` is the clear code, shown only here (None if not asked)."""

    record: PassRecord
    activation_code: str | None

    @property
    def pass_number(self) -> str:
        return self.record.pass_number

    @property
    def pass_id(self) -> bytes:
        return bytes.fromhex(self.record.pass_id.removeprefix("0x"))


@dataclass(frozen=True, slots=True)
class Erasure:
    """What :meth:`Registry.erase_holder` deleted (counts only: nothing that links)."""

    holder_id: int
    passes: int
    cards: int
    household_removed: bool


@dataclass(frozen=True, slots=True)
class HouseholdMember:
    """A member of a household with the numbers of their passes."""

    holder: Holder
    pass_numbers: list[str]


@dataclass(slots=True)
class _HolderRow:
    line: int | None
    first_name: str
    last_name: str
    birth_date: date
    postcode: str
    district_code: str
    household_reference: str | None
    household_role: HouseholdRole
    errors: list[str] = field(default_factory=list)


# -- validation helpers ---------------------------------------------------------------------------


def normalize_postcode(value: str) -> str:
    """``"9712 ab"`` -> ``"9712AB"``; raise :class:`InvalidPostcode` if it is not a postcode."""
    match = _POSTCODE.fullmatch(value.strip())
    if match is None:
        raise InvalidPostcode(
            f"postcode {value!r} is not a Dutch postcode (4 digits, the first not 0, then "
            "2 letters, e.g. 9712AB)"
        )
    return (match.group(1) + match.group(2)).upper()


def format_postcode(postcode: str) -> str:
    """``"9712AB"`` -> ``"9712 AB"``, as written on an address."""
    compact = normalize_postcode(postcode)
    return f"{compact[:4]} {compact[4:]}"


@dataclass(frozen=True, slots=True)
class MerchantLocation:
    """A merchant's public location, validated (:func:`merchant_location`): ``postcode`` without
    a space (``9712AB``), ``opening_hours`` as lines (at most 10)."""

    street: str
    postcode: str
    town: str
    website: str | None = None
    opening_hours: str | None = None


def _location_text(value: str, what: str, max_length: int) -> str:
    cleaned = " ".join(value.split())
    if not cleaned:
        raise InvalidLocation(f"{what} is empty; it must be given with the postcode and town")
    if len(cleaned) > max_length:
        raise InvalidLocation(f"{what} {cleaned[:20]!r}... is longer than {max_length} characters")
    if any(not ch.isprintable() for ch in cleaned):
        raise InvalidLocation(f"{what} {cleaned!r} contains control characters")
    return cleaned


def merchant_location(
    *,
    street: str,
    postcode: str,
    town: str,
    website: str | None = None,
    opening_hours: str | None = None,
) -> MerchantLocation:
    """Validate and normalise a merchant's location: street (1-200 characters), a Dutch postcode
    (``9712 ab`` -> ``9712AB``), town (1-100), optionally a website (``http(s)://host/...``, at
    most 200 characters, no spaces) and opening hours (at most 10 lines, 500 characters).
    Raises :class:`InvalidLocation` or :class:`InvalidPostcode`, quoting the bad value."""
    cleaned_street = _location_text(street, "street", _STREET_MAX)
    compact = normalize_postcode(postcode)
    cleaned_town = _location_text(town, "town", _TOWN_MAX)
    cleaned_website: str | None = None
    if website is not None and website.strip():
        cleaned_website = website.strip()
        if len(cleaned_website) > _WEBSITE_MAX or not _WEBSITE.fullmatch(cleaned_website):
            raise InvalidLocation(
                f"website {cleaned_website[:60]!r} is not a web address (http:// or https://, "
                f"a host name, no spaces, at most {_WEBSITE_MAX} characters)"
            )
    hours: str | None = None
    if opening_hours is not None and opening_hours.strip():
        lines = [" ".join(line.split()) for line in opening_hours.strip().splitlines()]
        lines = [line for line in lines if line]
        hours = "\n".join(lines)
        if len(lines) > _HOURS_LINES or len(hours) > _HOURS_MAX:
            raise InvalidLocation(
                f"opening hours are longer than {_HOURS_LINES} lines or {_HOURS_MAX} characters"
            )
        if any(not ch.isprintable() for line in lines for ch in line):
            raise InvalidLocation(f"opening hours {hours[:40]!r} contain control characters")
    return MerchantLocation(
        street=cleaned_street,
        postcode=compact,
        town=cleaned_town,
        website=cleaned_website,
        opening_hours=hours,
    )


def _place(merchant: Merchant, location: MerchantLocation | None) -> None:
    merchant.street = location.street if location else None
    merchant.postcode = location.postcode if location else None
    merchant.town = location.town if location else None
    merchant.website = location.website if location else None
    merchant.opening_hours = location.opening_hours if location else None


def _name(value: str, what: str, *, max_length: int = 120) -> str:
    cleaned = " ".join(value.split())
    if not cleaned:
        raise InvalidHolder(f"{what} is empty; it must be given")
    if len(cleaned) > max_length:
        raise InvalidHolder(f"{what} {cleaned[:20]!r}... is longer than {max_length} characters")
    if any(not ch.isprintable() for ch in cleaned):
        raise InvalidHolder(f"{what} {cleaned!r} contains control characters")
    return cleaned


def _birth_date(value: date | str, *, today: date) -> date:
    if isinstance(value, str):
        text_value = value.strip()
        try:
            if not _ISO_DATE.fullmatch(text_value):
                raise ValueError
            parsed = date.fromisoformat(text_value)
        except ValueError:
            raise InvalidHolder(
                f"birth_date {value!r} is not a date in the form YYYY-MM-DD"
            ) from None
    else:
        parsed = value
    if parsed > today:
        raise InvalidHolder(f"birth_date {parsed.isoformat()} is in the future")
    if parsed < _EARLIEST_BIRTH:
        raise InvalidHolder(f"birth_date {parsed.isoformat()} is before {_EARLIEST_BIRTH}")
    return parsed


def _household(
    reference: str | None, role: HouseholdRole | str | None
) -> tuple[str | None, HouseholdRole]:
    ref = " ".join((reference or "").split()) or None
    if ref is not None and len(ref) > 64:
        raise InvalidHolder(f"household_reference {ref[:20]!r}... is longer than 64 characters")
    role_text = (role.value if isinstance(role, HouseholdRole) else (role or "")).strip().lower()
    if not role_text:
        return ref, HouseholdRole.OTHER
    try:
        parsed = HouseholdRole(role_text)
    except ValueError:
        allowed = ", ".join(r.value for r in HouseholdRole)
        raise InvalidHolder(f"household_role {role!r} must be one of {allowed}") from None
    if ref is None and parsed is not HouseholdRole.OTHER:
        raise InvalidHolder(
            f"household_role {parsed.value!r} needs a household_reference (the household it is "
            "a role in)"
        )
    return ref, parsed


def _identity(first_name: str, last_name: str, birth_date: date, postcode: str) -> tuple[str, ...]:
    return (first_name.casefold(), last_name.casefold(), birth_date.isoformat(), postcode)


def _address(value: str) -> str:
    cleaned = value.strip()
    digits = cleaned[2:]
    mixed_case = digits != digits.lower() and digits != digits.upper()
    if not is_address(cleaned) or (mixed_case and not is_checksum_address(cleaned)):
        raise InvalidAddress(
            f"address {value!r} is not an Ethereum address (0x and 40 hex digits; a mixed-case "
            "address must have a valid EIP-55 checksum)"
        )
    return str(to_checksum_address(cleaned))


def _kvk(value: str) -> str:
    cleaned = value.strip().replace(" ", "")
    if not _KVK.fullmatch(cleaned):
        raise InvalidKvk(f"KvK number {value!r} must be exactly 8 digits")
    return cleaned


def _iban(value: str) -> tuple[str, str | None]:
    """The IBAN in compact form and its BIC (if schwifty's bank registry knows it)."""
    try:
        iban = IBAN(value)
    except SchwiftyException as exc:
        raise InvalidIban(
            f"IBAN {value!r} is not valid: {exc} (an IBAN must match its country's format and "
            "length and pass the mod-97 check digits)"
        ) from None
    bic: str | None
    try:
        bic = str(iban.bic) if iban.bic is not None else None
    except SchwiftyException:
        bic = None
    return str(iban.compact), bic


def _pass_number(value: str) -> str:
    cleaned = value.strip().upper()
    if not _PASS_NUMBER.fullmatch(cleaned):
        raise InvalidPassNumber(f"pass number {value!r} must be GR followed by 7 digits")
    return cleaned


def _pass_id_hex(value: bytes | str) -> str:
    if isinstance(value, bytes):
        raw = value
    else:
        try:
            raw = bytes.fromhex(value.strip().removeprefix("0x"))
        except ValueError:
            raise UnknownPass(f"pass id {value!r} is not 32 bytes of hex") from None
    if len(raw) != 32:
        raise UnknownPass(f"pass id {value!r} is not 32 bytes")
    return "0x" + raw.hex()


def _hash_activation_code(code: str, key: bytes | None = None) -> str:
    """A keyed HMAC-SHA256 of the code under ``key`` (the service's activation-code key), or,
    without a key, an Argon2id hash. Codes are random (12 symbols of 32, 60 bits): a keyed fast
    hash is as strong as a slow one for them, and 20,000 letters take milliseconds, not minutes
    (see docs/security.md, "Activation codes")."""
    if key is None:
        return hash_secret(_code_text(code))
    return keyed_hash(_code_text(code), key)


def _code_text(code: str) -> str:
    """The activation code as hashed: upper case, letters and digits only (``abcd-efgh`` and
    ``ABCDEFGH`` are the same code)."""
    return "".join(ch for ch in code.upper() if ch.isalnum()).encode("ascii", "ignore").decode()


def _new_activation_code() -> str:
    raw = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(_CODE_LENGTH))
    return "-".join(raw[i : i + 4] for i in range(0, _CODE_LENGTH, 4))


def _now() -> datetime:
    return datetime.now(UTC)


# -- CSV reading ----------------------------------------------------------------------------------


def decode_csv(data: bytes, what: str, *, legacy: bool = False) -> tuple[str, str]:
    """The text of a CSV file and the encoding it was read in: UTF-8 (a byte order mark is
    dropped), or with ``legacy`` Windows-1252 (Latin-1 with the euro sign, as old Windows
    exports write) when the bytes are not UTF-8. Anything else: :class:`CsvImportError`."""
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        bad = data[exc.start]
    if legacy:
        try:
            return data.decode("cp1252"), "cp1252"
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            bad = data[exc.start]
            raise CsvImportError(
                what,
                [LineError(line, f"neither UTF-8 nor Windows-1252 text (byte 0x{bad:02x})")],
            ) from None
    raise CsvImportError(what, [LineError(line, f"not UTF-8 text (byte 0x{bad:02x})")])


def detect_delimiter(text: str, candidates: str = ",;") -> str:
    """The delimiter of a CSV text: the candidate found most often in its first non-blank line
    (the header; ``,`` on a tie). Spreadsheets in Dutch locales write ``;``."""
    header = next((line for line in text.splitlines() if line.strip()), "")
    counts = [(header.count(candidate), -i, candidate) for i, candidate in enumerate(candidates)]
    return max(counts)[2] if counts else ","


def _csv_text(source: CsvSource, what: str) -> str:
    data: bytes
    if isinstance(source, Path):
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise CsvImportError(
                what, [LineError(0, f"cannot read {source}: {exc.strerror}")]
            ) from None
    elif isinstance(source, bytes):
        data = source
    else:
        return source.removeprefix("\ufeff")
    return decode_csv(data, what)[0]


def _read_csv(
    source: CsvSource,
    what: str,
    required: Sequence[str],
    optional: Sequence[str] = (),
    *,
    delimiters: str = ",",
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line, row)``; raise :class:`CsvImportError` for a bad header or malformed CSV
    (after collecting the field-count problems of every row). With several ``delimiters`` the
    file's is detected from its header (:func:`detect_delimiter`)."""
    text = _csv_text(source, what)
    delimiter = detect_delimiter(text, delimiters) if len(delimiters) > 1 else delimiters
    reader = csv.reader(io.StringIO(text, newline=""), strict=True, delimiter=delimiter)
    errors: list[LineError] = []
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        header = next(reader, None)
        while header is not None and not any(cell.strip() for cell in header):
            header = next(reader, None)
        if header is None:
            raise CsvImportError(
                what, [LineError(1, f"the file is empty; expected the header {','.join(required)}")]
            )
        header_line = reader.line_num
        columns = [cell.strip().lower() for cell in header]
        allowed = [*required, *optional]
        problems = [f"missing column {name!r}" for name in required if name not in columns]
        problems += [f"unknown column {name!r}" for name in columns if name not in allowed]
        problems += [
            f"column {name!r} appears twice"
            for name in sorted(set(columns))
            if columns.count(name) > 1
        ]
        if problems:
            raise CsvImportError(
                what,
                [
                    LineError(
                        header_line,
                        f"{'; '.join(problems)} (the header must be "
                        f"{','.join(required)}{''.join(',' + o for o in optional)})",
                    )
                ],
            )
        previous = reader.line_num
        for cells in reader:
            line, previous = previous + 1, reader.line_num
            if not any(cell.strip() for cell in cells):
                continue  # blank line
            if len(cells) != len(columns):
                errors.append(LineError(line, f"has {len(cells)} fields, expected {len(columns)}"))
                continue
            rows.append((line, dict(zip(columns, cells, strict=True))))
    except csv.Error as exc:
        errors.append(LineError(reader.line_num, f"malformed CSV: {exc}"))
        raise CsvImportError(what, errors) from None
    if errors:
        raise CsvImportError(what, errors)
    if not rows:
        raise CsvImportError(what, [LineError(header_line + 1, "no rows after the header")])
    yield from rows


# -- the service ----------------------------------------------------------------------------------


class Registry:
    """Holders, households, passes, cards, merchants and geography, in ``store``.

    Thread-safe: every call uses its own session (or the calling thread's
    :meth:`transaction`)."""

    def __init__(
        self, store: Store, *, today: date | None = None, code_key: bytes | None = None
    ) -> None:
        self.store = store
        self._today = today
        #: The key activation codes are hashed under (HMAC-SHA256); None: Argon2id (slow).
        self.code_key = code_key
        self._tx: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
            f"registry_tx_{id(self)}", default=None
        )
        #: Transactions committed through this registry: a caller that keeps registry data in
        #: memory drops it when the count moved (what this process changed shows at once).
        self.commits = 0

    def today(self) -> date:
        return self._today or datetime.now(UTC).date()

    # -- transactions -----------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the registry calls inside the block in one database transaction (all or none)."""
        if self._tx.get() is not None:
            yield
            return
        with self.store.session() as session:
            token = self._tx.set(session)
            try:
                yield
                session.commit()
                self.commits += 1
            except BaseException:
                session.rollback()
                raise
            finally:
                self._tx.reset(token)

    @contextmanager
    def _unit(self) -> Iterator[Session]:
        current = self._tx.get()
        if current is not None:
            yield current
            return
        with self.transaction():
            session = self._tx.get()
            assert session is not None
            yield session

    # -- geography --------------------------------------------------------------------------------

    def import_districts(self, source: CsvSource) -> int:
        """Add or update districts from ``code,name,municipality`` rows; returns the count."""
        what = "districts CSV"
        rows = list(_read_csv(source, what, ("code", "name", "municipality")))
        errors: list[LineError] = []
        districts: dict[str, District] = {}
        for line, row in rows:
            code = row["code"].strip().upper()
            name, municipality = (
                " ".join(row["name"].split()),
                " ".join(row["municipality"].split()),
            )
            if not _DISTRICT_CODE.fullmatch(code):
                errors.append(
                    LineError(line, f"district code {row['code']!r} must be WK and 6 digits")
                )
            if not name or len(name) > 120:
                errors.append(LineError(line, f"name {row['name']!r} must be 1-120 characters"))
            if not municipality or len(municipality) > 120:
                errors.append(
                    LineError(
                        line, f"municipality {row['municipality']!r} must be 1-120 characters"
                    )
                )
            if code in districts:
                errors.append(LineError(line, f"district {code} appears twice"))
            districts[code] = District(code=code, name=name, municipality=municipality)
        if errors:
            raise CsvImportError(what, errors)
        with self._unit() as session:
            for district in districts.values():
                session.merge(district)
            session.flush()
        return len(districts)

    def import_postcodes(self, source: CsvSource) -> int:
        """Add or update ``postcode,district_code`` rows (districts must exist); the count."""
        what = "postcodes CSV"
        rows = list(_read_csv(source, what, ("postcode", "district_code")))
        with self._unit() as session:
            known = set(session.exec(select(District.code)).all())
            errors: list[LineError] = []
            mapping: dict[str, str] = {}
            for line, row in rows:
                try:
                    postcode = normalize_postcode(row["postcode"])
                except InvalidPostcode as exc:
                    errors.append(LineError(line, str(exc)))
                    continue
                code = row["district_code"].strip().upper()
                if code not in known:
                    errors.append(
                        LineError(
                            line,
                            f"district {row['district_code']!r} is not in the district table "
                            "(import the districts first)",
                        )
                    )
                elif postcode in mapping and mapping[postcode] != code:
                    errors.append(
                        LineError(line, f"postcode {postcode} is given twice, for two districts")
                    )
                mapping[postcode] = code
            if errors:
                raise CsvImportError(what, errors)
            for postcode, code in mapping.items():
                session.merge(PostcodeDistrict(postcode=postcode, district_code=code))
            session.flush()
        return len(mapping)

    def load_sample_geography(self) -> GeographyImport:
        """Import the shipped Groningen sample (idempotent): demo and tests only."""
        with self.transaction():
            return GeographyImport(
                districts=self.import_districts(SAMPLE_DISTRICTS_CSV),
                postcodes=self.import_postcodes(SAMPLE_POSTCODES_CSV),
            )

    def districts(self) -> list[District]:
        with self._unit() as session:
            return list(session.exec(select(District).order_by(col(District.code))).all())

    def postcodes(self) -> dict[str, str]:
        """Postcode -> district code."""
        with self._unit() as session:
            rows = session.exec(select(PostcodeDistrict)).all()
            return {row.postcode: row.district_code for row in rows}

    def district_of(self, postcode: str) -> District:
        """The district of ``postcode``; :class:`UnknownPostcode` if the table lacks it."""
        normalized = normalize_postcode(postcode)
        with self._unit() as session:
            row = session.exec(
                select(District)
                .join(PostcodeDistrict, col(PostcodeDistrict.district_code) == col(District.code))
                .where(PostcodeDistrict.postcode == normalized)
            ).first()
            if row is None:
                raise UnknownPostcode(_unknown_postcode(normalized))
            return row

    # -- holders ----------------------------------------------------------------------------------

    def enrol_holder(
        self,
        *,
        first_name: str,
        last_name: str,
        birth_date: date | str,
        postcode: str,
        household_reference: str | None = None,
        household_role: HouseholdRole | str | None = None,
    ) -> Holder:
        """Enrol one holder. A possible duplicate is enrolled, flagged (``possible_duplicate_of``)
        and logged, never merged."""
        row = self._validate_holder(
            None,
            first_name,
            last_name,
            birth_date,
            postcode,
            household_reference,
            household_role,
            postcodes=None,
        )
        with self._unit() as session:
            report = self._insert_holders(session, [row])
            return report.holders[0]

    def import_holders(self, source: CsvSource) -> HolderImport:
        """Import holders from CSV: ``first_name,last_name,birth_date,postcode`` and optionally
        ``household_reference,household_role``. Every row is validated first; any problem
        rejects the whole file (:class:`CsvImportError`, problems by line) and imports nothing."""
        what = "holders CSV"
        rows = list(
            _read_csv(
                source,
                what,
                ("first_name", "last_name", "birth_date", "postcode"),
                ("household_reference", "household_role"),
            )
        )
        postcodes = self.postcodes()
        parsed: list[_HolderRow] = []
        errors: list[LineError] = []
        for line, row in rows:
            holder = self._validate_holder(
                line,
                row["first_name"],
                row["last_name"],
                row["birth_date"],
                row["postcode"],
                row.get("household_reference"),
                row.get("household_role"),
                postcodes=postcodes,
            )
            errors += [LineError(line, message) for message in holder.errors]
            parsed.append(holder)
        if errors:
            raise CsvImportError(what, errors)
        with self._unit() as session:
            return self._insert_holders(session, parsed)

    def _validate_holder(
        self,
        line: int | None,
        first_name: str,
        last_name: str,
        birth_date: date | str,
        postcode: str,
        household_reference: str | None,
        household_role: HouseholdRole | str | None,
        *,
        postcodes: dict[str, str] | None,
    ) -> _HolderRow:
        """Check one holder. With ``line`` (CSV), collect every problem in ``errors``;
        without, raise the first."""
        row = _HolderRow(line, "", "", _EARLIEST_BIRTH, "", "", None, HouseholdRole.OTHER)

        def attempt(check: Callable[[], None]) -> None:  # record (CSV) or raise its error
            try:
                check()
            except RegistryError as exc:
                if line is None:
                    raise
                row.errors.append(str(exc))

        def names() -> None:
            row.first_name = _name(first_name, "first_name")

        def last() -> None:
            row.last_name = _name(last_name, "last_name")

        def born() -> None:
            row.birth_date = _birth_date(birth_date, today=self.today())

        def where() -> None:
            row.postcode = normalize_postcode(postcode)
            if postcodes is None:
                row.district_code = self.district_of(row.postcode).code
            elif row.postcode in postcodes:
                row.district_code = postcodes[row.postcode]
            else:
                raise UnknownPostcode(_unknown_postcode(row.postcode))

        def household() -> None:
            row.household_reference, row.household_role = _household(
                household_reference, household_role
            )

        for check in (names, last, born, where, household):
            attempt(check)
        return row

    def _insert_holders(self, session: Session, rows: Sequence[_HolderRow]) -> HolderImport:
        # existing holders with the same birth date and postcode: the duplicate candidates
        pairs = {(row.birth_date, row.postcode) for row in rows}
        seen: dict[tuple[str, ...], int] = {}
        for chunk in _chunks(sorted({birth for birth, _ in pairs}), 500):
            candidates = session.exec(
                select(Holder)
                .where(col(Holder.birth_date).in_(chunk))
                .order_by(col(Holder.id).desc())
            ).all()
            for other in candidates:
                if (other.birth_date, other.postcode) in pairs:
                    assert other.id is not None
                    key = _identity(
                        other.first_name, other.last_name, other.birth_date, other.postcode
                    )
                    seen[key] = other.id  # descending ids: the earliest wins
        references = {row.household_reference for row in rows if row.household_reference}
        households: dict[str, int] = {}
        created = 0
        if references:
            for household in session.exec(
                select(Household).where(col(Household.reference).in_(sorted(references)))
            ).all():
                assert household.id is not None
                households[household.reference] = household.id
            for reference in sorted(references - households.keys()):
                new = Household(reference=reference)
                session.add(new)
                session.flush()
                assert new.id is not None
                households[reference] = new.id
                created += 1
        holders: list[Holder] = []
        duplicates: list[PossibleDuplicate] = []
        now = _now()
        for row in rows:
            key = _identity(row.first_name, row.last_name, row.birth_date, row.postcode)
            holder = Holder(
                first_name=row.first_name,
                last_name=row.last_name,
                birth_date=row.birth_date,
                postcode=row.postcode,
                district_code=row.district_code,
                household_id=households.get(row.household_reference or ""),
                household_role=row.household_role,
                possible_duplicate_of=seen.get(key),
                created_at=now,
            )
            session.add(holder)
            session.flush()
            assert holder.id is not None
            if holder.possible_duplicate_of is not None:
                duplicates.append(
                    PossibleDuplicate(holder.id, holder.possible_duplicate_of, row.line)
                )
                log.warning(
                    "holder %d enrolled as a possible duplicate of holder %d (same name, birth "
                    "date and postcode); not merged",
                    holder.id,
                    holder.possible_duplicate_of,
                )
            else:
                seen[key] = holder.id
            holders.append(holder)
        return HolderImport(holders=holders, duplicates=duplicates, households_created=created)

    def holder(self, holder_id: int) -> Holder:
        with self._unit() as session:
            holder = session.get(Holder, holder_id)
            if holder is None:
                raise UnknownHolder(f"no holder has id {holder_id}")
            return holder

    def holders(self) -> list[Holder]:
        with self._unit() as session:
            return list(session.exec(select(Holder).order_by(col(Holder.id))).all())

    def holder_count(self) -> int:
        with self._unit() as session:
            return int(session.exec(select(func.count()).select_from(Holder)).one())

    def possible_duplicates(self) -> list[PossibleDuplicate]:
        """Every flagged holder and the holder it may duplicate (for a person to review)."""
        with self._unit() as session:
            rows = session.exec(
                select(Holder.id, Holder.possible_duplicate_of)
                .where(col(Holder.possible_duplicate_of).is_not(None))
                .order_by(col(Holder.id))
            ).all()
            return [PossibleDuplicate(int(h), int(d)) for h, d in rows if h is not None and d]

    def clear_duplicate_flag(self, holder_id: int) -> Holder:
        """A person checked it: ``holder_id`` is not the same person."""
        with self._unit() as session:
            holder = session.get(Holder, holder_id)
            if holder is None:
                raise UnknownHolder(f"no holder has id {holder_id}")
            holder.possible_duplicate_of = None
            session.add(holder)
            session.flush()
            return holder

    # -- households -------------------------------------------------------------------------------

    def create_household(self, reference: str) -> Household:
        """A new, empty household (:class:`DuplicateHousehold` if the reference is taken)."""
        ref, _ = _household(reference, None)
        if ref is None:
            raise InvalidHousehold("household_reference is empty; it must be given")
        with self._unit() as session:
            taken = session.exec(select(Household.id).where(Household.reference == ref)).first()
            if taken is not None:
                raise DuplicateHousehold(f"a household with reference {ref!r} exists")
            household = Household(reference=ref)
            session.add(household)
            session.flush()
            return household

    def _household_row(self, session: Session, household_id: int) -> Household:
        household = session.get(Household, household_id)
        if household is None:
            raise UnknownHousehold(f"no household has id {household_id}")
        return household

    def household(self, household_id: int) -> Household:
        with self._unit() as session:
            return self._household_row(session, household_id)

    def households(self, *, limit: int | None = None, offset: int = 0) -> list[Household]:
        """Households by id (a page of them with ``limit``/``offset``)."""
        with self._unit() as session:
            query = select(Household).order_by(col(Household.id)).offset(offset)
            if limit is not None:
                query = query.limit(limit)
            return list(session.exec(query).all())

    def household_count(self) -> int:
        with self._unit() as session:
            return int(session.exec(select(func.count()).select_from(Household)).one())

    def members_of_households(
        self, household_ids: Sequence[int]
    ) -> dict[int, list[HouseholdMember]]:
        """Household id -> its members (by holder id) with their pass numbers; two queries."""
        result: dict[int, list[HouseholdMember]] = {hid: [] for hid in household_ids}
        if not household_ids:
            return result
        with self._unit() as session:
            holders = session.exec(
                select(Holder)
                .where(col(Holder.household_id).in_(list(household_ids)))
                .order_by(col(Holder.id))
            ).all()
            numbers: dict[int, list[str]] = {}
            ids = [h.id for h in holders if h.id is not None]
            if ids:
                for holder_id, number in session.exec(
                    select(PassRecord.holder_id, PassRecord.pass_number)
                    .where(col(PassRecord.holder_id).in_(ids))
                    .order_by(col(PassRecord.id))
                ).all():
                    numbers.setdefault(holder_id, []).append(number)
            for holder in holders:
                assert holder.household_id is not None
                assert holder.id is not None
                result[holder.household_id].append(
                    HouseholdMember(holder, numbers.get(holder.id, []))
                )
        return result

    def link_holder(self, household_id: int, holder_id: int, role: HouseholdRole | str) -> Holder:
        """Make ``holder_id`` a member of ``household_id`` with ``role`` (or change their role
        there). A holder is in one household at a time (:class:`HolderInOtherHousehold`)."""
        role_text = role.value if isinstance(role, HouseholdRole) else str(role)
        if not role_text.strip():
            raise InvalidHousehold("household_role is empty; it must be given")
        with self._unit() as session:
            household = self._household_row(session, household_id)
            _, parsed = _household(household.reference, role_text)
            holder = session.get(Holder, holder_id)
            if holder is None:
                raise UnknownHolder(f"no holder has id {holder_id}")
            if holder.household_id is not None and holder.household_id != household_id:
                other = session.get(Household, holder.household_id)
                raise HolderInOtherHousehold(
                    f"holder {holder_id} is in household "
                    f"{other.reference if other is not None else holder.household_id!r}; "
                    "unlink them there first"
                )
            holder.household_id = household_id
            holder.household_role = parsed
            session.add(holder)
            session.flush()
            return holder

    def unlink_holder(self, household_id: int, holder_id: int) -> Holder:
        """Remove ``holder_id`` from ``household_id`` (their role becomes ``other``); the
        household stays, even when empty (:meth:`delete_household`)."""
        with self._unit() as session:
            self._household_row(session, household_id)
            holder = session.get(Holder, holder_id)
            if holder is None:
                raise UnknownHolder(f"no holder has id {holder_id}")
            if holder.household_id != household_id:
                raise UnknownHouseholdMember(
                    f"holder {holder_id} is not a member of household {household_id}"
                )
            holder.household_id = None
            holder.household_role = HouseholdRole.OTHER
            session.add(holder)
            session.flush()
            return holder

    def delete_household(self, household_id: int) -> None:
        """Delete an empty household (:class:`HouseholdNotEmpty` while it has members)."""
        with self._unit() as session:
            household = self._household_row(session, household_id)
            members = int(
                session.exec(
                    select(func.count())
                    .select_from(Holder)
                    .where(col(Holder.household_id) == household_id)
                ).one()
            )
            if members:
                raise HouseholdNotEmpty(
                    f"household {household.reference!r} has {members} member(s); unlink them first"
                )
            session.delete(household)
            session.flush()

    def household_members(self, reference: str) -> list[Holder]:
        with self._unit() as session:
            return list(
                session.exec(
                    select(Holder)
                    .join(Household, col(Household.id) == col(Holder.household_id))
                    .where(Household.reference == reference.strip())
                    .order_by(col(Holder.id))
                ).all()
            )

    # -- passes and cards -------------------------------------------------------------------------

    def issue_pass(
        self,
        holder_id: int,
        *,
        pass_number: str | None = None,
        holder_key: str | None = None,
        activation_code: bool = True,
    ) -> IssuedPass:
        """A new pass for ``holder_id``: a unique pass number (``GR`` + 7 random digits unless
        given), a fresh 32-byte secret, its ``pass_id``, and (unless ``activation_code=False``)
        an activation code returned in the clear only here."""
        number = _pass_number(pass_number) if pass_number is not None else None
        key = _address(holder_key) if holder_key is not None else None
        code = _new_activation_code() if activation_code else None
        with self._unit() as session:
            if session.get(Holder, holder_id) is None:
                raise UnknownHolder(f"no holder has id {holder_id}")
            if number is None:
                number = self._free_pass_number(session)
            elif session.exec(
                select(PassRecord.id).where(PassRecord.pass_number == number)
            ).first():
                raise DuplicatePassNumber(f"pass number {number} is already issued")
            secret = new_pass_secret()
            record = PassRecord(
                holder_id=holder_id,
                pass_number=number,
                pass_secret=secret,
                pass_id="0x" + pass_id(pass_secret=secret, pass_number=number).hex(),
                holder_key=key,
                status=PassStatus.ACTIVE,
                activation_code_hash=(_hash_activation_code(code, self.code_key) if code else None),
                created_at=_now(),
            )
            session.add(record)
            session.flush()
            return IssuedPass(record=record, activation_code=code)

    def _free_pass_number(self, session: Session) -> str:
        for _ in range(50):
            candidate = f"GR{secrets.randbelow(10**7):07d}"
            taken = session.exec(
                select(PassRecord.id).where(PassRecord.pass_number == candidate)
            ).first()
            if taken is None:
                return candidate
        raise RegistryError("could not find a free pass number in 50 attempts")

    def find_pass(self, pass_number: str) -> PassRecord | None:
        number = pass_number.strip().upper()
        with self._unit() as session:
            return session.exec(select(PassRecord).where(PassRecord.pass_number == number)).first()

    def pass_by_number(self, pass_number: str) -> PassRecord:
        record = self.find_pass(pass_number)
        if record is None:
            raise UnknownPass(f"no pass has number {pass_number!r}")
        return record

    def find_pass_by_id(self, pass_id_value: bytes | str) -> PassRecord | None:
        wanted = _pass_id_hex(pass_id_value)
        with self._unit() as session:
            return session.exec(select(PassRecord).where(PassRecord.pass_id == wanted)).first()

    def pass_by_id(self, pass_id_value: bytes | str) -> PassRecord:
        record = self.find_pass_by_id(pass_id_value)
        if record is None:
            raise UnknownPass(
                f"no pass has id {_pass_id_hex(pass_id_value)} (never issued, or its holder "
                "was erased)"
            )
        return record

    def passes_of(self, holder_id: int) -> list[PassRecord]:
        with self._unit() as session:
            return list(
                session.exec(
                    select(PassRecord)
                    .where(PassRecord.holder_id == holder_id)
                    .order_by(col(PassRecord.id))
                ).all()
            )

    def pass_holders(self, pass_number: str | None = None) -> list[tuple[PassRecord, Holder]]:
        """Passes with their holders, by pass number (one pass if ``pass_number`` is given)."""
        with self._unit() as session:
            query = select(PassRecord, Holder).join(
                Holder, col(Holder.id) == col(PassRecord.holder_id)
            )
            if pass_number is not None:
                query = query.where(PassRecord.pass_number == pass_number.strip().upper())
            rows = session.exec(query.order_by(col(PassRecord.pass_number))).all()
            return [(record, holder) for record, holder in rows]

    def pass_count(self) -> int:
        with self._unit() as session:
            return int(session.exec(select(func.count()).select_from(PassRecord)).one())

    def verify_activation_code(self, pass_number: str, code: str) -> bool:
        """Whether ``code`` is the activation code of ``pass_number``. An unknown pass, or one
        without a code, costs the same hash work and returns False. A code that verifies
        against an older hash (scrypt, or Argon2 with old parameters) has that hash replaced
        (by the keyed hash when :attr:`code_key` is set). The first success sets the pass's
        ``activated_at``."""
        record = self.find_pass(pass_number)
        stored = record.activation_code_hash if record is not None else None
        if not check_secret(_code_text(code), stored, key=self.code_key):
            return False
        assert record is not None
        assert stored is not None
        changes: dict[str, object] = {}
        if needs_rehash(stored):
            changes["activation_code_hash"] = _hash_activation_code(code, self.code_key)
        if record.activated_at is None:
            changes["activated_at"] = _now()
        if changes:
            with self._unit() as session:
                session.exec(
                    update(PassRecord)
                    .where(col(PassRecord.id) == record.id)
                    .where(col(PassRecord.activation_code_hash) == stored)
                    .values(**changes)
                )
        return True

    def _set_status(self, pass_number: str, status: PassStatus) -> PassRecord:
        with self._unit() as session:
            record = self.pass_by_number(pass_number)  # in this unit's session
            record.status = status
            session.add(record)
            session.flush()
            return record

    def block_pass(self, pass_number: str) -> PassRecord:
        """Mark the pass blocked in the registry (idempotent). Blocking it on chain is the
        caller's next step (``blockPass``)."""
        return self._set_status(pass_number, PassStatus.BLOCKED)

    def unblock_pass(self, pass_number: str) -> PassRecord:
        return self._set_status(pass_number, PassStatus.ACTIVE)

    def set_holder_key(self, pass_number: str, holder_key: str | None) -> PassRecord:
        key = _address(holder_key) if holder_key is not None else None
        with self._unit() as session:
            record = self.pass_by_number(pass_number)  # in this unit's session
            record.holder_key = key
            session.add(record)
            session.flush()
            return record

    def issue_card(self, pass_number: str) -> PrintedCard:
        """A new printed card with a fresh random non-zero serial; the pass's previous active
        card is revoked (set the new serial on chain to revoke it there too)."""
        with self._unit() as session:
            record = self.pass_by_number(pass_number)  # in this unit's session
            if record.status is PassStatus.BLOCKED:
                raise PassBlocked(
                    f"pass {record.pass_number} is blocked; unblock it before printing a card"
                )
            session.exec(
                update(PrintedCard)
                .where(col(PrintedCard.pass_record_id) == record.id)
                .where(col(PrintedCard.status) == CardStatus.ACTIVE)
                .values(status=CardStatus.REVOKED)
            )
            assert record.id is not None
            card = PrintedCard(
                pass_record_id=record.id,
                serial=secrets.randbelow(_MAX_SERIAL) + 1,
                status=CardStatus.ACTIVE,
                issued_at=_now(),
            )
            session.add(card)
            session.flush()
            return card

    def cards_of(self, pass_number: str) -> list[PrintedCard]:
        record = self.pass_by_number(pass_number)
        with self._unit() as session:
            return list(
                session.exec(
                    select(PrintedCard)
                    .where(PrintedCard.pass_record_id == record.id)
                    .order_by(col(PrintedCard.id))
                ).all()
            )

    def active_card(self, pass_number: str) -> PrintedCard | None:
        active = [c for c in self.cards_of(pass_number) if c.status is CardStatus.ACTIVE]
        return active[-1] if active else None

    def revoke_card(self, pass_number: str, serial: int) -> PrintedCard:
        record = self.pass_by_number(pass_number)
        with self._unit() as session:
            card = session.exec(
                select(PrintedCard)
                .where(PrintedCard.pass_record_id == record.id)
                .where(PrintedCard.serial == serial)
            ).first()
            if card is None:
                raise UnknownPass(f"pass {record.pass_number} has no card with serial {serial}")
            card.status = CardStatus.REVOKED
            session.add(card)
            session.flush()
            return card

    # -- merchants --------------------------------------------------------------------------------

    def register_merchant(
        self,
        *,
        name: str,
        kvk_number: str,
        address: str,
        category: str,
        iban: str | None = None,
        merchant_id: int | None = None,
        location: MerchantLocation | None = None,
    ) -> Merchant:
        """Register a partner. ``iban`` may be omitted (payouts report the merchant);
        ``merchant_id`` pins the id (e.g. to match a keystore's position); ``location`` (from
        :func:`merchant_location`) may be set now or later (:meth:`set_merchant_location`)."""
        cleaned_name = " ".join(name.split())
        if not cleaned_name or len(cleaned_name) > 200:
            raise InvalidMerchant(f"merchant name {name!r} must be 1-200 characters")
        cleaned_category = " ".join(category.split()).lower()
        if not cleaned_category or len(cleaned_category) > 64:
            raise InvalidMerchant(f"category {category!r} must be 1-64 characters")
        kvk = _kvk(kvk_number)
        checksummed = _address(address)
        compact, bic = _iban(iban) if iban is not None and iban.strip() else (None, None)
        with self._unit() as session:
            if session.exec(select(Merchant.id).where(Merchant.address == checksummed)).first():
                raise DuplicateMerchant(f"a merchant with address {checksummed} is registered")
            if merchant_id is not None and session.get(Merchant, merchant_id) is not None:
                raise DuplicateMerchant(f"merchant id {merchant_id} is taken")
            merchant = Merchant(
                id=merchant_id,
                name=cleaned_name,
                kvk_number=kvk,
                iban=compact,
                bic=bic,
                category=cleaned_category,
                address=checksummed,
                active=True,
            )
            _place(merchant, location)
            session.add(merchant)
            session.flush()
            if merchant_id is not None and self.store.dialect == "postgresql":
                # an explicit id does not advance the serial: keep later inserts clear of it
                session.exec(
                    text(  # type: ignore[call-overload]
                        "SELECT setval(pg_get_serial_sequence('registry_merchant', 'id'), "
                        "(SELECT max(id) FROM registry_merchant))"
                    )
                )
            return merchant

    def _merchant(self, session: Session, merchant_id: int) -> Merchant:
        merchant = session.get(Merchant, merchant_id)
        if merchant is None:
            raise UnknownMerchant(f"no merchant has id {merchant_id}")
        return merchant

    def merchant(self, merchant_id: int) -> Merchant:
        with self._unit() as session:
            return self._merchant(session, merchant_id)

    def find_merchant(self, merchant_id: int) -> Merchant | None:
        with self._unit() as session:
            return session.get(Merchant, merchant_id)

    def merchant_by_address(self, address: str) -> Merchant:
        checksummed = _address(address)
        with self._unit() as session:
            merchant = session.exec(select(Merchant).where(Merchant.address == checksummed)).first()
            if merchant is None:
                raise UnknownMerchant(f"no merchant has address {checksummed}")
            return merchant

    def merchants(self) -> list[Merchant]:
        with self._unit() as session:
            return list(session.exec(select(Merchant).order_by(col(Merchant.id))).all())

    def merchants_without_iban(self) -> list[Merchant]:
        """Active merchants that cannot be paid (payouts report them)."""
        return [m for m in self.merchants() if m.active and m.iban is None]

    def set_merchant_iban(self, merchant_id: int, iban: str | None) -> Merchant:
        compact, bic = _iban(iban) if iban is not None and iban.strip() else (None, None)
        with self._unit() as session:
            merchant = self._merchant(session, merchant_id)
            merchant.iban, merchant.bic = compact, bic
            session.add(merchant)
            session.flush()
            return merchant

    def set_merchant_address(self, merchant_id: int, address: str) -> Merchant:
        checksummed = _address(address)
        with self._unit() as session:
            merchant = self._merchant(session, merchant_id)
            other = session.exec(select(Merchant.id).where(Merchant.address == checksummed)).first()
            if other is not None and other != merchant_id:
                raise DuplicateMerchant(f"a merchant with address {checksummed} is registered")
            merchant.address = checksummed
            session.add(merchant)
            session.flush()
            return merchant

    def set_merchant_location(
        self, merchant_id: int, location: MerchantLocation | None
    ) -> Merchant:
        """Set (or, with None, clear) the merchant's public location (from
        :func:`merchant_location`)."""
        with self._unit() as session:
            merchant = self._merchant(session, merchant_id)
            _place(merchant, location)
            session.add(merchant)
            session.flush()
            return merchant

    def set_merchant_active(self, merchant_id: int, active: bool) -> Merchant:
        with self._unit() as session:
            merchant = self._merchant(session, merchant_id)
            merchant.active = active
            session.add(merchant)
            session.flush()
            return merchant

    # -- erasure ----------------------------------------------------------------------------------

    def erase_holder(self, holder_id: int) -> Erasure:
        """GDPR article 17: delete the holder, its passes (numbers and secrets) and cards, and its
        household if no one else is in it; clear duplicate flags that point at it. Afterwards no
        registry row links any of its pass ids to a person. Index rows are not touched."""
        with self._unit() as session:
            holder = session.get(Holder, holder_id)
            if holder is None:
                raise UnknownHolder(f"no holder has id {holder_id}")
            household_id = holder.household_id
            pass_ids = list(
                session.exec(select(PassRecord.id).where(PassRecord.holder_id == holder_id)).all()
            )
            cards = 0
            session.exec(delete(MigratedHolder).where(col(MigratedHolder.holder_id) == holder_id))
            if pass_ids:
                cards = _rowcount(
                    session.exec(
                        delete(PrintedCard).where(col(PrintedCard.pass_record_id).in_(pass_ids))
                    )
                )
                session.exec(delete(PassRecord).where(col(PassRecord.id).in_(pass_ids)))
            session.exec(
                update(Holder)
                .where(col(Holder.possible_duplicate_of) == holder_id)
                .values(possible_duplicate_of=None)
            )
            session.exec(delete(Holder).where(col(Holder.id) == holder_id))
            session.expunge(holder)
            removed = False
            if household_id is not None:
                others = session.exec(
                    select(Holder.id).where(Holder.household_id == household_id)
                ).first()
                if others is None:
                    session.exec(delete(Household).where(col(Household.id) == household_id))
                    removed = True
            session.flush()
            log.info("holder %d erased (%d passes, %d cards)", holder_id, len(pass_ids), cards)
            return Erasure(
                holder_id=holder_id, passes=len(pass_ids), cards=cards, household_removed=removed
            )


def _unknown_postcode(postcode: str) -> str:
    return (
        f"postcode {postcode} is not in the postcode-to-district table (import the CBS "
        "wijk- en buurtindeling that contains it)"
    )


def _rowcount(result: object) -> int:
    count = getattr(result, "rowcount", 0)
    return int(count) if isinstance(count, int) else 0


def _chunks(items: Sequence[date], size: int) -> Iterable[Sequence[date]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
