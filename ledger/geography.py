"""The real district table: CBS postcode-to-wijk files, imported whole, and every holder's
district derived again from it.

Formats (the header row names the columns, case-insensitive; ``;``, ``,`` or tab delimited;
UTF-8 with or without BOM, or Windows-1252 from older exports; LF or CRLF):

- **one file** (:func:`read_postcode_table`): ``pc6`` (or ``postcode``), ``wijkcode`` (or
  ``wijk_code``, ``district_code``, ``wijk``, ``wijk2023``-style ``wijkYYYY``) and ``wijknaam``
  (or ``wijk_naam``, ``district_name``, ``name``), optionally ``gemeentenaam`` (or
  ``municipality``); other columns (``buurt2023``, ``gemeente2023``, ``huisnummer``) are ignored.
- **CBS's two files**: the ``pc6-gwb`` file (``PC6;Buurt2023;Wijk2023;Gemeente2023``, codes only)
  plus the "wijk- en buurtcodes" table with the names (``wijkcode;wijknaam`` columns, as above;
  optionally ``gemeentenaam``): :func:`read_postcode_table` with ``names=``.

A wijk code is ``WK`` and 6 digits (``WK001401``: municipality 0014, wijk 01); CBS's bare 6 digits
(``001401``) get the ``WK``. A postcode is ``9711AB`` (a space and lower case are accepted). A
postcode listed twice for the same wijk counts once (the CBS file lists one per house number);
for two different wijken it is an error: never guessed.

Everything is checked first; any problem refuses the whole file with errors by line
(:class:`ledger.registry.CsvImportError`) and changes nothing. :func:`replace_postcode_table`
then replaces, in one transaction, the table of every municipality in the file (the municipality
is the 4 digits in the wijk code): its postcodes are deleted and the file's inserted, its wijken
updated, added, and those no longer in the file removed. Every holder's district is then derived
again from their postcode in one statement; a holder whose postcode is not in the table has no
district (``NULL``, reported as ``unknown``), never the nearest one. The result lists them.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, func, insert, select, update
from sqlmodel import Session

from ledger.registry import CsvImportError, InvalidPostcode, LineError, Registry, normalize_postcode
from ledger.store.registry import District, Holder, PassRecord, PostcodeDistrict

__all__ = [
    "MAX_FILE_BYTES",
    "PostcodeImport",
    "PostcodeTable",
    "UnknownPostcodeHolder",
    "read_postcode_table",
    "rederive_districts",
    "replace_postcode_table",
]

#: The largest file accepted (refused by size before it is read): the national PC6 table is
#: about 15 MB.
MAX_FILE_BYTES = 64 * 1024 * 1024

_WIJK = re.compile(r"(?:WK)?([0-9]{6})")
_POSTCODE_COLUMNS = ("pc6", "postcode")
_CODE_COLUMNS = ("wijkcode", "wijk_code", "district_code", "wijk")
_NAME_COLUMNS = ("wijknaam", "wijk_naam", "district_name", "name")
_MUNICIPALITY_COLUMNS = ("gemeentenaam", "gemeente_naam", "municipality")
_WIJK_YEAR = re.compile(r"wijk[0-9]{4}")


@dataclass(frozen=True, slots=True)
class PostcodeTable:
    """A validated table: wijk code -> (name, municipality), postcode -> wijk code."""

    districts: dict[str, tuple[str, str]]
    postcodes: dict[str, str]

    @property
    def municipalities(self) -> list[str]:
        """The CBS municipality codes (4 digits) of the file's wijken."""
        return sorted({code[2:6] for code in self.districts})


@dataclass(frozen=True, slots=True)
class UnknownPostcodeHolder:
    holder_id: int
    postcode: str
    pass_numbers: list[str]


@dataclass(frozen=True, slots=True)
class PostcodeImport:
    districts: int
    postcodes: int
    districts_removed: int
    holders: int
    holders_changed: int
    unknown: list[UnknownPostcodeHolder]


def _decode(source: Path | bytes | str, what: str) -> str:
    if isinstance(source, str):
        return source.removeprefix("\ufeff")
    if isinstance(source, Path):
        try:
            size = source.stat().st_size
            if size > MAX_FILE_BYTES:
                raise CsvImportError(what, [LineError(0, _too_large(size))])
            data = source.read_bytes()
        except OSError as exc:
            raise CsvImportError(
                what, [LineError(0, f"cannot read {source}: {exc.strerror}")]
            ) from None
    else:
        data = source
    if len(data) > MAX_FILE_BYTES:
        raise CsvImportError(what, [LineError(0, _too_large(len(data)))])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")  # old Windows exports (Latin-1 family)


def _too_large(size: int) -> str:
    return f"the file has {size} bytes; at most {MAX_FILE_BYTES} ({MAX_FILE_BYTES >> 20} MB)"


def _rows(
    source: Path | bytes | str, what: str
) -> tuple[list[str], int, list[tuple[int, list[str]]]]:
    """``(columns, header line, [(line, cells)])`` with the delimiter guessed from the header."""
    text = _decode(source, what)
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        raise CsvImportError(what, [LineError(1, "the file is empty")])
    delimiter = max((";", ",", "\t"), key=first.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[tuple[int, list[str]]] = []
    header: list[str] | None = None
    header_line = 0
    previous = 0
    try:
        for cells in reader:
            line, previous = previous + 1, reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if header is None:
                header, header_line = [c.strip().strip('"').lower() for c in cells], line
                continue
            rows.append((line, cells))
    except csv.Error as exc:
        raise CsvImportError(what, [LineError(reader.line_num, f"malformed CSV: {exc}")]) from None
    if header is None:  # only blank cells (e.g. separators and spaces)
        raise CsvImportError(what, [LineError(1, "the file is empty (no header row)")])
    if not rows:
        raise CsvImportError(what, [LineError(header_line + 1, "no rows after the header")])
    return header, header_line, rows


def _column(header: list[str], names: Sequence[str], *, year: bool = False) -> int | None:
    for name in names:
        if name in header:
            return header.index(name)
    if year:
        for index, name in enumerate(header):
            if _WIJK_YEAR.fullmatch(name):
                return index
    return None


def _wijk(value: str) -> str | None:
    match = _WIJK.fullmatch(value.strip().upper())
    return f"WK{match.group(1)}" if match else None


def _cell(cells: list[str], index: int | None) -> str:
    return cells[index].strip() if index is not None and index < len(cells) else ""


def _header_error(what: str, line: int, header: list[str], needed: str) -> CsvImportError:
    return CsvImportError(
        what,
        [LineError(line, f"{needed}; the header has {', '.join(header) or 'no columns'}")],
    )


def _read_names(
    source: Path | bytes | str, default_municipality: str | None
) -> tuple[dict[str, tuple[str, str]], list[LineError]]:
    what = "wijk names CSV"
    header, header_line, rows = _rows(source, what)
    code_at = _column(header, _CODE_COLUMNS, year=True)
    name_at = _column(header, _NAME_COLUMNS)
    if code_at is None or name_at is None:
        raise _header_error(what, header_line, header, "columns wijkcode and wijknaam are needed")
    municipality_at = _column(header, _MUNICIPALITY_COLUMNS)
    names: dict[str, tuple[str, str]] = {}
    errors: list[LineError] = []
    for line, cells in rows:
        if len(cells) != len(header):
            errors.append(LineError(line, f"has {len(cells)} fields, expected {len(header)}"))
            continue
        raw_code = _cell(cells, code_at)
        code = _wijk(raw_code)
        name = " ".join(_cell(cells, name_at).split())
        municipality = " ".join(_cell(cells, municipality_at).split())
        if code is None:
            errors.append(
                LineError(line, f"wijk code {raw_code!r} must be WK and 6 digits (WK001401)")
            )
            continue
        if not name or len(name) > 120:
            errors.append(LineError(line, f"wijk name {name[:30]!r} must be 1-120 characters"))
            continue
        municipality = municipality or default_municipality or f"GM{code[2:6]}"
        if len(municipality) > 120:
            errors.append(LineError(line, "municipality is longer than 120 characters"))
            continue
        if code in names and names[code][0] != name:
            errors.append(LineError(line, f"wijk {code} appears twice with different names"))
            continue
        names[code] = (name, municipality)
    return names, errors


def read_postcode_table(
    source: Path | bytes | str,
    *,
    names: Path | bytes | str | None = None,
    municipality: str | None = None,
) -> PostcodeTable:
    """Read and check a postcode-to-wijk file (and, for CBS's two-file form, the wijk names
    file); raise :class:`CsvImportError` listing every problem by line. ``municipality`` names
    the municipality of rows without a ``gemeentenaam`` (default ``GM`` + its CBS code)."""
    what = "postcodes CSV"
    wijk_names: dict[str, tuple[str, str]] = {}
    errors: list[LineError] = []
    if names is not None:
        wijk_names, name_errors = _read_names(names, municipality)
        if name_errors:
            raise CsvImportError("wijk names CSV", name_errors)
    header, header_line, rows = _rows(source, what)
    postcode_at = _column(header, _POSTCODE_COLUMNS)
    code_at = _column(header, _CODE_COLUMNS, year=True)
    name_at = _column(header, _NAME_COLUMNS)
    municipality_at = _column(header, _MUNICIPALITY_COLUMNS)
    if postcode_at is None or code_at is None or (name_at is None and names is None):
        raise _header_error(
            what,
            header_line,
            header,
            "columns pc6 (or postcode), wijkcode and wijknaam are needed (or give the wijk "
            "names in a second file)",
        )
    districts: dict[str, tuple[str, str]] = {}
    postcodes: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line, cells in rows:
        if len(cells) != len(header):
            errors.append(LineError(line, f"has {len(cells)} fields, expected {len(header)}"))
            continue
        raw_postcode, raw_code = _cell(cells, postcode_at), _cell(cells, code_at)
        try:
            postcode = normalize_postcode(raw_postcode)
        except InvalidPostcode as exc:
            errors.append(LineError(line, str(exc)))
            postcode = None
        code = _wijk(raw_code)
        if code is None:
            errors.append(
                LineError(line, f"wijk code {raw_code!r} must be WK and 6 digits (WK001401)")
            )
            continue
        if name_at is not None:
            name = " ".join(_cell(cells, name_at).split())
            place = " ".join(_cell(cells, municipality_at).split())
            place = place or municipality or f"GM{code[2:6]}"
            if not name or len(name) > 120:
                errors.append(LineError(line, f"wijk name {name[:30]!r} must be 1-120 characters"))
            elif len(place) > 120:
                errors.append(LineError(line, "municipality is longer than 120 characters"))
            elif code in districts and districts[code][0] != name:
                errors.append(
                    LineError(
                        line,
                        f"wijk {code} is named {name!r} here but {districts[code][0]!r} before",
                    )
                )
            else:
                districts.setdefault(code, (name, place))
        elif code not in wijk_names:
            errors.append(LineError(line, f"wijk {code} is not in the wijk names file"))
        else:
            districts.setdefault(code, wijk_names[code])
        if postcode is None:
            continue
        if postcode in postcodes and postcodes[postcode] != code:
            errors.append(
                LineError(
                    line,
                    f"postcode {postcode} is in wijk {code} here but in {postcodes[postcode]} on "
                    f"line {first_line[postcode]}: a postcode must lie in one wijk",
                )
            )
            continue
        postcodes.setdefault(postcode, code)
        first_line.setdefault(postcode, line)
    if errors:
        raise CsvImportError(what, errors)
    return PostcodeTable(districts=districts, postcodes=postcodes)


def replace_postcode_table(registry: Registry, table: PostcodeTable) -> PostcodeImport:
    """Replace the postcode table of the file's municipalities and derive every holder's
    district again, in one transaction (all or nothing)."""
    prefixes = [f"WK{m}" for m in table.municipalities]
    with registry.store.session() as session:
        conn = session.connection()
        districts_t = District.__table__  # type: ignore[attr-defined]
        postcodes_t = PostcodeDistrict.__table__  # type: ignore[attr-defined]
        old_codes = {
            code
            for (code,) in conn.execute(select(districts_t.c.code))
            if any(code.startswith(prefix) for prefix in prefixes)
        }
        existing = set(conn.execute(select(districts_t.c.code)).scalars())
        for code, (name, municipality) in table.districts.items():
            values = {"name": name, "municipality": municipality}
            if code in existing:
                conn.execute(update(districts_t).where(districts_t.c.code == code).values(values))
            else:
                conn.execute(insert(districts_t).values(code=code, **values))
        if old_codes:
            conn.execute(
                delete(postcodes_t).where(postcodes_t.c.district_code.in_(sorted(old_codes)))
            )
        new_postcodes = sorted(table.postcodes)
        # a postcode listed under another municipality's wijk moves to this file's wijk
        for start in range(0, len(new_postcodes), 900):
            chunk = new_postcodes[start : start + 900]
            conn.execute(delete(postcodes_t).where(postcodes_t.c.postcode.in_(chunk)))
        if new_postcodes:
            conn.execute(
                insert(postcodes_t),
                [{"postcode": pc, "district_code": table.postcodes[pc]} for pc in new_postcodes],
            )
        holders, changed, unknown = _rederive(session)
        removed = sorted(old_codes - set(table.districts))
        if removed:
            conn.execute(delete(districts_t).where(districts_t.c.code.in_(removed)))
        session.commit()
    registry.commits += 1
    return PostcodeImport(
        districts=len(table.districts),
        postcodes=len(table.postcodes),
        districts_removed=len(removed),
        holders=holders,
        holders_changed=changed,
        unknown=unknown,
    )


def rederive_districts(registry: Registry) -> PostcodeImport:
    """Derive every holder's district from the current postcode table (one transaction)."""
    with registry.store.session() as session:
        holders, changed, unknown = _rederive(session)
        session.commit()
    registry.commits += 1
    return PostcodeImport(0, 0, 0, holders, changed, unknown)


def _rederive(session: Session) -> tuple[int, int, list[UnknownPostcodeHolder]]:
    """Set every holder's ``district_code`` from the postcode table in one statement; return
    (holders, holders whose district changed, holders whose postcode is not in the table)."""
    conn = session.connection()
    holders_t = Holder.__table__  # type: ignore[attr-defined]
    postcodes_t = PostcodeDistrict.__table__  # type: ignore[attr-defined]
    passes_t = PassRecord.__table__  # type: ignore[attr-defined]
    derived = (
        select(postcodes_t.c.district_code)
        .where(postcodes_t.c.postcode == holders_t.c.postcode)
        .scalar_subquery()
    )
    changed = conn.execute(
        update(holders_t)
        .where(func.coalesce(holders_t.c.district_code, "") != func.coalesce(derived, ""))
        .values(district_code=derived)
    ).rowcount
    total = int(conn.execute(select(func.count()).select_from(holders_t)).scalar_one())
    unknown_rows = conn.execute(
        select(holders_t.c.id, holders_t.c.postcode)
        .where(holders_t.c.district_code.is_(None))
        .order_by(holders_t.c.id)
    ).all()
    numbers: dict[int, list[str]] = {}
    ids = [int(row.id) for row in unknown_rows]
    for start in range(0, len(ids), 900):
        chunk = ids[start : start + 900]
        for holder_id, number in conn.execute(
            select(passes_t.c.holder_id, passes_t.c.pass_number)
            .where(passes_t.c.holder_id.in_(chunk))
            .order_by(passes_t.c.pass_number)
        ):
            numbers.setdefault(int(holder_id), []).append(str(number))
    unknown = [
        UnknownPostcodeHolder(int(row.id), str(row.postcode), numbers.get(int(row.id), []))
        for row in unknown_rows
    ]
    return total, int(changed or 0), unknown
