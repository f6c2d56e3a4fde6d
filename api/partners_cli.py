"""``stadjerspas import partners FILE``: enrol partners from a CSV (see :mod:`api.partners`).

It starts the runtime as ``stadjerspas up`` does (same settings, store and chain), checks every
line first and enrols each new partner end to end; a KvK number already registered is skipped.
Exit 0 with a one-line summary; 2 with the errors by line when the file is refused (nothing
enrolled); 1 when the service cannot start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from api.partners import import_partners
from api.settings import Settings
from ledger.errors import LedgerError
from ledger.partner_import import read_partners
from ledger.registry import CsvImportError, RegistryError

__all__ = ["import_partners_command"]

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
_MAX_BYTES = 5 * 1024 * 1024


def import_partners_command(
    file: Annotated[Path, typer.Argument(help="CSV: name,kvk_number,category,iban[,street,...]")],
) -> None:
    """Enrol partners from a CSV: every line checked first; each gets a signing key in the
    encrypted partner keystore, the merchant role and (in the running service) a relayer."""
    from api.runtime import Runtime, StartupError

    out, err = Console(), Console(stderr=True)

    def fail(message: str, code: int) -> NoReturn:
        err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(code)

    try:
        size = file.stat().st_size
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}", EXIT_BAD_INPUT)
    if size > _MAX_BYTES:
        fail(f"{file} is {size} bytes; a partners CSV may be at most {_MAX_BYTES}", EXIT_BAD_INPUT)
    data = file.read_bytes()
    try:  # every line checked before the service starts
        read_partners(data)
    except CsvImportError as exc:
        for error in exc.errors:
            err.print(
                f"{file}:{error.line}: {escape(error.message)}", highlight=False, soft_wrap=True
            )
        fail(f"{file} refused: {len(exc.errors)} problem(s); no partner enrolled", EXIT_BAD_INPUT)
    try:
        settings = Settings()
        runtime = Runtime.start(settings, report=lambda _m: None)
    except (StartupError, LedgerError, OSError, ValueError) as exc:
        fail(f"cannot start: {exc}", EXIT_FAILURE)
    try:
        result = import_partners(runtime, data)
    except CsvImportError as exc:
        for error in exc.errors:
            err.print(
                f"{file}:{error.line}: {escape(error.message)}", highlight=False, soft_wrap=True
            )
        fail(f"{file} refused: {len(exc.errors)} problem(s); no partner enrolled", EXIT_BAD_INPUT)
    except RegistryError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    finally:
        runtime.close()
    out.print(
        f"{len(result.enrolled)} partners enrolled"
        + (f" (merchant ids {', '.join(map(str, result.enrolled))})" if result.enrolled else "")
        + f", {len(result.skipped)} already registered (skipped)",
        highlight=False,
        soft_wrap=True,
    )
