"""``stadjerspas letters`` and ``stadjerspas import postcodes``: activation letters and the CBS
postcode-to-wijk table from the command line.

Both work on the database directly (``--database`` or the service's settings:
``STADJERSPAS_DATABASE_URL``, default the development SQLite under ``var/``), not through the
running service: letters need no transaction on chain, and the activation-code key is derived
from ``STADJERSPAS_AUTH_SECRET`` (:mod:`api.code_keys`), which the command reads from the same
settings as the service. The card QR needs the pass-signer key and the chain's signing domain,
so letters with the card QR are made by the service (``POST /admin/letters``, the admin page).

    stadjerspas letters --district WK001401 --out letters.pdf --csv letters.csv
    stadjerspas letters --not-activated --out letters.pdf --csv letters.csv
    stadjerspas letters --passes GR0000001,GR0000002 --out letters.pdf
    stadjerspas import postcodes pc6-wijk.csv [--names wijknamen.csv] [--municipality Groningen]

The files are written with mode 0600 (they hold activation codes in the clear). Exit codes: 0
done, 2 bad input (one line ``error: ...``), 1 anything else.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from api.code_keys import activation_code_key
from api.letters import produce, skipped_json
from api.settings import Settings
from ledger import activation as act
from ledger import geography
from ledger.registry import CsvImportError, Registry, RegistryError
from ledger.store.db import Store, StoreConfig, open_store

__all__ = ["import_postcodes", "letters"]

console = Console()
err = Console(stderr=True)
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2

Database = Annotated[
    str | None,
    typer.Option("--database", help="database URL (default: the service's settings)"),
]


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)
    raise typer.Exit(code)


def _open(settings: Settings, database: str | None) -> Store:
    store = open_store(StoreConfig(database or settings.sqlalchemy_url))
    try:
        store.check_connection()
    except Exception as exc:
        store.close()
        _fail(f"cannot reach the database: {exc}", EXIT_FAILURE)
    return store


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by the owner only (0600), replacing it atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    temporary.replace(path)


def _selection(
    district: str | None, not_activated: bool, passes: str | None, holders: str | None
) -> act.LetterSelection:
    chosen = [district is not None, not_activated, passes is not None, holders is not None]
    if sum(chosen) != 1:
        _fail("choose exactly one of --district, --not-activated, --passes, --holders")
    if district is not None:
        return act.ByDistrict(district)
    if passes is not None:
        text = Path(passes[1:]).read_text() if passes.startswith("@") else passes
        return act.ByPassNumbers(tuple(text.replace(",", " ").split()))
    if holders is not None:
        raw = holders.replace(",", " ").split()
        if not all(part.isdecimal() and len(part) < 19 for part in raw):
            _fail(f"--holders {holders!r} must be holder ids (numbers) separated by commas")
        return act.ByHolderIds(tuple(int(part) for part in raw))
    return act.NotActivated()


def letters(
    out: Annotated[Path, typer.Option("--out", help="the PDF to write")],
    csv_out: Annotated[
        Path | None, typer.Option("--csv", help="also the print house's CSV")
    ] = None,
    district: Annotated[
        str | None, typer.Option("--district", help="every holder in this wijk (WK001401)")
    ] = None,
    not_activated: Annotated[
        bool, typer.Option("--not-activated", help="every pass not yet activated")
    ] = False,
    passes: Annotated[
        str | None,
        typer.Option("--passes", help="pass numbers, comma separated, or @FILE (one a line)"),
    ] = None,
    holders: Annotated[
        str | None, typer.Option("--holders", help="holder ids, comma separated")
    ] = None,
    database: Database = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Activation letters with new codes (every earlier code of those passes stops working):
    one A4 page per pass in a PDF, and optionally the print house's CSV."""
    selection = _selection(district, not_activated, passes, holders)
    settings = Settings()
    store = _open(settings, database)
    try:
        registry = Registry(store, code_key=activation_code_key(settings))
        try:
            produced = produce(
                registry,
                selection,
                key=registry.code_key,
                login_url=settings.holder_login_url,
                today=datetime.now(UTC).date(),
            )
        except RegistryError as exc:
            _fail(str(exc))
        _write_private(out, produced.pdf)
        if csv_out is not None:
            _write_private(csv_out, produced.csv)
    finally:
        store.close()
    summary = {
        "letters": produced.letters,
        "skipped": skipped_json(produced.skipped),
        "pdf": str(out),
        "csv": str(csv_out) if csv_out is not None else None,
        "seconds": round(produced.seconds, 3),
    }
    if as_json:
        console.print_json(json.dumps(summary))
        return
    console.print(
        f"{produced.letters} letters written to {out}"
        + (f" and {csv_out}" if csv_out is not None else "")
        + f" in {produced.seconds:.1f} s",
        highlight=False,
    )
    for skip in produced.skipped:
        console.print(
            f"skipped: holder {skip.holder_id} pass {skip.pass_number or '-'}: {skip.reason}",
            highlight=False,
        )


def import_postcodes(
    file: Annotated[Path, typer.Argument(help="CSV: pc6;wijkcode;wijknaam[;gemeentenaam]")],
    names: Annotated[
        Path | None,
        typer.Option("--names", help="CBS wijk names (wijkcode;wijknaam) for a codes-only file"),
    ] = None,
    municipality: Annotated[
        str | None, typer.Option("--municipality", help="municipality name of rows without one")
    ] = None,
    database: Database = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Replace the postcode-to-wijk table of the file's municipalities (CBS) and derive every
    holder's district again; holders whose postcode is not in the table are listed."""
    try:
        table = geography.read_postcode_table(file, names=names, municipality=municipality)
    except CsvImportError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        for problem in exc.errors[10:50]:
            err.print(f"  {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    settings = Settings()
    store = _open(settings, database)
    try:
        result = geography.replace_postcode_table(Registry(store), table)
    finally:
        store.close()
    unknown = [
        {"holder_id": u.holder_id, "postcode": u.postcode, "pass_numbers": u.pass_numbers}
        for u in result.unknown
    ]
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "districts": result.districts,
                    "postcodes": result.postcodes,
                    "districts_removed": result.districts_removed,
                    "holders": result.holders,
                    "holders_changed": result.holders_changed,
                    "unknown_count": len(unknown),
                    "unknown": unknown,
                }
            )
        )
        return
    console.print(
        f"{result.districts} districts and {result.postcodes} postcodes imported "
        f"({result.districts_removed} old districts removed); districts derived again for "
        f"{result.holders} holders ({result.holders_changed} changed); "
        f"{len(unknown)} holders have a postcode that is not in the table",
        highlight=False,
    )
    for u in result.unknown:
        console.print(
            f"unknown postcode {u.postcode}: holder {u.holder_id} "
            f"pass {', '.join(u.pass_numbers) or '-'}",
            highlight=False,
        )
