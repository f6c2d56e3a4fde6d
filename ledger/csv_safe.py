"""CSV cells that a spreadsheet will not run as formulas (CSV / formula injection).

Excel, LibreOffice Calc and Google Sheets treat a cell whose text begins with ``=``, ``+``, ``-``
or ``@`` as a formula (and a leading tab or carriage return can hide such a start), so a holder,
merchant or district name like ``=HYPERLINK("http://x")`` or ``@SUM(1)`` in an export would run
on the desk of whoever opens it. Following the OWASP guidance on CSV injection, every CSV this
project writes passes its cells through :func:`csv_cell`:

- a **text** cell (``str``) that begins with ``= + - @``, a tab or a carriage return (or their
  full-width forms U+FF1D, U+FF0B, U+FF0D, U+FF20, which some spreadsheets also read as formula
  starts) gets a single quote in front: ``'=HYPERLINK(...)``. Spreadsheets show such a cell as
  text; the CSV module quotes the cell as usual (embedded ``"`` doubled), so the file stays valid;
- **numbers** are never escaped: ``int``, ``float`` and ``Decimal`` values (a reversal's
  ``-500``) are written as numbers, and so is text that is nothing but a decimal number
  (``-1.5``, the spelling of a non-integral ``Decimal``): a number literal cannot call a
  function, and prefixing it would turn an amount into text;
- a carriage return inside a text cell becomes a line feed (``\r\n`` one line feed): the CSV
  files here end lines with ``\n``, and Python's ``csv`` module (3.11) quotes a field for a line
  feed but not for a lone carriage return, which readers then take as the end of the row. The
  registry refuses control characters in names, so only data from elsewhere can have one;
- every other cell (``None``, ``bool``, dates) is handed to the CSV writer unchanged.

The escape is lossy on purpose (``'`` is added, never removed on reading): the JSON and JSON
Lines renderings beside each CSV carry the exact values.
"""

from __future__ import annotations

import re
from typing import Any, Final

__all__ = ["FORMULA_STARTS", "csv_cell", "csv_row", "needs_escape"]

#: First characters that make a spreadsheet read a cell as a formula (OWASP, plus full width).
FORMULA_STARTS: Final = frozenset("=+-@\t\r\uff1d\uff0b\uff0d\uff20")
_NUMBER: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def needs_escape(text: str) -> bool:
    """Whether the text cell ``text`` would start a formula (and is not a plain number)."""
    return bool(text) and text[0] in FORMULA_STARTS and _NUMBER.fullmatch(text) is None


def csv_cell(value: Any) -> Any:
    """``value`` as a CSV cell that no spreadsheet runs: see the module docstring."""
    if not isinstance(value, str):
        return value
    escape = needs_escape(value)
    if "\r" in value:
        value = value.replace("\r\n", "\n").replace("\r", "\n")
    return "'" + value if escape else value


def csv_row(values: Any) -> list[Any]:
    """Every cell of one row through :func:`csv_cell`."""
    return [csv_cell(value) for value in values]
