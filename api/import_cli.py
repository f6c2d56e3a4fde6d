"""``stadjerspas import holders FILE``, ``import balances FILE`` and ``import partners FILE``.

The commands post the file to the **running service** (``POST /admin/imports/...``) and follow
the job until it is done. They do not sign anything themselves: the service's issuer relayer
owns the issuer account's nonces, so a second process signing with the same key while the
service runs would collide with it. The service's URL and a staff login come from options or
the environment (``STADJERSPAS_API_URL``, ``STADJERSPAS_IMPORT_USERNAME``,
``STADJERSPAS_IMPORT_PASSWORD``); the holders and partners imports need the ``admin`` scope,
balances ``issue``. A partner enrolled through the service gets its relayer there at once; a
second process enrolling partners would also race the service for the admin account's nonces.
The partners file is checked here first (every line, :func:`ledger.partner_import.read_partners`),
so a bad file is refused without a service.

Exit 0 with a one-line summary; a rejected file exits 2 with one line per problem
(``line N, column: message``); anything else exits 1 with one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer

from ledger.partner_import import read_partners
from ledger.registry import CsvImportError

__all__ = ["app"]

app = typer.Typer(help="Import files: holders, partners, postcodes.", no_args_is_help=True)

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
URL_ENV = "STADJERSPAS_API_URL"
USERNAME_ENV = "STADJERSPAS_IMPORT_USERNAME"
PASSWORD_ENV = "STADJERSPAS_IMPORT_PASSWORD"  # noqa: S105 - a variable name

Url = Annotated[
    str | None,
    typer.Option(help=f"The running service [env {URL_ENV}, default http://127.0.0.1:8000]."),
]
Username = Annotated[str | None, typer.Option(help=f"Staff login [env {USERNAME_ENV}].")]
PasswordEnv = Annotated[str, typer.Option(help="Environment variable holding the staff password.")]
Timeout = Annotated[float, typer.Option(min=1, help="Give up following the job after seconds.")]


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _problem(response: httpx.Response) -> NoReturn:
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        _fail(f"the service answered {response.status_code}: {response.text[:200]}")
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        for error in errors:
            column = f", {error['column']}" if error.get("column") else ""
            typer.echo(f"line {error['line']}{column}: {error['message']}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    code = EXIT_BAD_INPUT if response.status_code in (413, 422) else EXIT_FAILURE
    _fail(f"{body.get('code', response.status_code)}: {body.get('detail')}", code)


def _call(http: httpx.Client, method: str, path: str, expect: int, **request: Any) -> Any:
    """The JSON answer of ``method path``; any status but ``expect`` fails (:func:`_problem`)."""
    response = http.request(method, path, **request)
    if response.status_code != expect:
        _problem(response)
    return response.json()


def _login(http: httpx.Client, username: str | None, password_env: str) -> None:
    user = username or os.environ.get(USERNAME_ENV)
    password = os.environ.get(password_env)
    if not user:
        _fail(f"no staff login: pass --username or set {USERNAME_ENV}", EXIT_BAD_INPUT)
    if not password:
        _fail(f"no password: set {password_env}", EXIT_BAD_INPUT)
    body = {"kind": "staff", "username": user, "password": password}
    token = _call(http, "POST", "/auth/token", 200, json=body)
    http.headers["Authorization"] = "Bearer " + str(token["access_token"])


@dataclasses.dataclass(frozen=True)
class _Service:
    """The running service and the staff login to use there (every command's options)."""

    url: str | None
    username: str | None
    password_env: str

    @contextlib.contextmanager
    def session(self, *, timeout: float) -> Iterator[httpx.Client]:
        """A client of the service, logged in; a service that cannot be reached (then or
        while the client is used) fails with one line."""
        base = self.url or os.environ.get(URL_ENV) or "http://127.0.0.1:8000"
        try:
            with httpx.Client(base_url=base, timeout=timeout) as http:
                _login(http, self.username, self.password_env)
                yield http
        except httpx.HTTPError as exc:
            _fail(f"cannot reach the service at {base}: {exc}")


def _run(
    path: str, file: Path, *, params: dict[str, Any], service: _Service, timeout: float
) -> dict[str, Any]:
    """Post ``file`` to ``/admin/imports/{path}`` and follow the job; its result."""
    if not file.is_file():
        _fail(f"no such file: {file}", EXIT_BAD_INPUT)
    with service.session(timeout=120.0) as http:
        with file.open("rb") as handle:
            job: dict[str, Any] = _call(
                http,
                "POST",
                f"/admin/imports/{path}",
                202,
                content=handle,
                params=params,
                headers={"Content-Type": "text/csv", "Content-Length": str(file.stat().st_size)},
            )
        deadline = time.monotonic() + timeout
        while job["status"] not in ("done", "failed"):
            if time.monotonic() > deadline:
                _fail(
                    f"import {job['id']} still {job['status']} after {timeout:.0f} s "
                    f"({job['done']}/{job['total']}); run the same file again to finish it"
                )
            time.sleep(0.5)
            job = _call(http, "GET", f"/admin/imports/jobs/{job['id']}", 200)
    if job["status"] == "failed":
        problem = job.get("problem") or {}
        _fail(
            f"import {job['id']} failed: {problem.get('code')}: {problem.get('detail')}; "
            "run the same file again to finish it"
        )
    result: dict[str, Any] = job["result"]
    return result


@app.command("holders")
def holders(
    file: Annotated[Path, typer.Argument(help="CSV of holders (see docs/architecture.md).")],
    url: Url = None,
    username: Username = None,
    password_env: PasswordEnv = PASSWORD_ENV,
    timeout: Timeout = 3600.0,
) -> None:
    """Import holders with their pass numbers, cards and households; register their passes."""
    r = _run(
        "holders",
        file,
        params={},
        service=_Service(url, username, password_env),
        timeout=timeout,
    )
    typer.echo(
        f"{r['lines']} lines: {r['imported']} holders imported, {r['skipped']} already there; "
        f"{r['registered']} passes registered on chain in {len(r['transactions'])} transactions "
        f"({r['encoding']}, '{r['delimiter']}')"
    )


@app.command("balances")
def balances(
    file: Annotated[Path, typer.Argument(help="CSV of opening balances.")],
    scheme: Annotated[
        int | None, typer.Option(min=1, help="Scheme of every line (else a scheme column).")
    ] = None,
    url: Url = None,
    username: Username = None,
    password_env: PasswordEnv = PASSWORD_ENV,
    timeout: Timeout = 3600.0,
) -> None:
    """Import opening balances (marked as migrated) and issue them on chain."""
    r = _run(
        "balances",
        file,
        params={"scheme_id": scheme} if scheme is not None else {},
        service=_Service(url, username, password_env),
        timeout=timeout,
    )
    typer.echo(
        f"{r['lines']} lines: {r['imported']} opening balances imported, {r['skipped']} already "
        f"there; {r['issued']} issued ({r['total_amount']} cents) in "
        f"{len(r['transactions'])} transactions"
    )


#: The service's limit for a partners CSV (``api.admin_services.MAX_CSV_BYTES``).
PARTNERS_MAX_BYTES = 5 * 1024 * 1024


@app.command("partners")
def partners(
    file: Annotated[Path, typer.Argument(help="CSV: name,kvk_number,category,iban[,location].")],
    url: Url = None,
    username: Username = None,
    password_env: PasswordEnv = PASSWORD_ENV,
) -> None:
    """Enrol partners: each gets a signing key in the service's encrypted keystore, the merchant
    role and a relayer at once; a KvK number already registered is skipped."""
    try:
        size = file.stat().st_size
    except OSError as exc:
        _fail(f"cannot read {file}: {exc.strerror}", EXIT_BAD_INPUT)
    if size > PARTNERS_MAX_BYTES:
        _fail(
            f"{file} is {size} bytes; a partners CSV may be at most {PARTNERS_MAX_BYTES}",
            EXIT_BAD_INPUT,
        )
    data = file.read_bytes()
    try:  # every line checked before anything is sent
        read_partners(data)
    except CsvImportError as exc:
        for error in exc.errors:
            typer.echo(f"{file}:{error.line}: {error.message}", err=True)
        _fail(f"{file} refused: {len(exc.errors)} problem(s); no partner enrolled", EXIT_BAD_INPUT)
    with _Service(url, username, password_env).session(timeout=600.0) as http:
        files = {"file": (file.name, data, "text/csv")}
        result: dict[str, Any] = _call(http, "POST", "/admin/imports/partners", 200, files=files)
    enrolled: list[int] = result["enrolled"]
    typer.echo(
        f"{len(enrolled)} partners enrolled"
        + (f" (merchant ids {', '.join(map(str, enrolled))})" if enrolled else "")
        + f", {len(result['skipped'])} already registered (skipped)"
    )
