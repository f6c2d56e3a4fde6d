"""Read and check a partners CSV before anything is enrolled.

Columns: ``name,kvk_number,category,iban`` and optionally ``street,postcode,town,website``
(a location is all of street, postcode and town, or none). Every line is checked (name, KvK
number, category, IBAN with its mod-97 check digits, location) and a KvK number may appear once
per file; any problem rejects the whole file with its errors by line
(:class:`~ledger.registry.CsvImportError`). The caller enrols the lines whose KvK number is not
registered yet, so importing the same file again enrols nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.registry import (
    CsvImportError,
    CsvSource,
    LineError,
    MerchantLocation,
    RegistryError,
    _iban,
    _kvk,
    _read_csv,
    merchant_location,
)

__all__ = ["PARTNER_COLUMNS", "PartnerRow", "read_partners"]

PARTNER_COLUMNS = ("name", "kvk_number", "category", "iban")
OPTIONAL_COLUMNS = ("street", "postcode", "town", "website")
_WHAT = "partners CSV"


@dataclass(frozen=True, slots=True)
class PartnerRow:
    """One checked line: the values as the registry stores them."""

    line: int
    name: str
    kvk_number: str
    category: str
    iban: str
    location: MerchantLocation | None


def read_partners(source: CsvSource) -> list[PartnerRow]:
    """Every line of ``source`` checked; :class:`CsvImportError` lists every problem."""
    rows = list(_read_csv(source, _WHAT, PARTNER_COLUMNS, OPTIONAL_COLUMNS))
    errors: list[LineError] = []
    parsed: list[PartnerRow] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        problems: list[str] = []
        name = " ".join(row["name"].split())
        if not name or len(name) > 200:
            problems.append(f"name {row['name']!r} must be 1-200 characters")
        elif any(not ch.isprintable() for ch in name):
            problems.append(f"name {name[:40]!r} contains control characters")
        category = " ".join(row["category"].split()).lower()
        if not category or len(category) > 64:
            problems.append(f"category {row['category']!r} must be 1-64 characters")
        kvk = ""
        try:
            kvk = _kvk(row["kvk_number"])
        except RegistryError as exc:
            problems.append(str(exc))
        if kvk and kvk in seen:
            problems.append(f"KvK number {kvk} is also on line {seen[kvk]}")
        elif kvk:
            seen[kvk] = line
        iban = ""
        if not row["iban"].strip():
            problems.append("an IBAN is required (the partner is paid to it)")
        else:
            try:
                iban = _iban(row["iban"])[0]
            except RegistryError as exc:
                problems.append(str(exc))
        location: MerchantLocation | None = None
        place = [row.get(column, "").strip() for column in ("street", "postcode", "town")]
        if any(place) and not all(place):
            problems.append("a location needs street, postcode and town (or none of them)")
        elif all(place):
            try:
                location = merchant_location(
                    street=place[0],
                    postcode=place[1],
                    town=place[2],
                    website=row.get("website") or None,
                )
            except RegistryError as exc:
                problems.append(str(exc))
        errors += [LineError(line, problem) for problem in problems]
        if not problems:
            parsed.append(PartnerRow(line, name, kvk, category, iban, location))
    if not rows:
        errors.append(LineError(1, "the file has a header but no partners"))
    if errors:
        raise CsvImportError(_WHAT, errors)
    return parsed
