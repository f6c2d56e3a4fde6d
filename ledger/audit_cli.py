"""``stadjerspas audit`` and ``stadjerspas export``: Typer commands the main CLI mounts.

``app`` is a Typer app with three commands (``audit``, ``export``, ``verify-export``); the main
``stadjerspas`` CLI adds them with ``app.add_typer(audit_cli.app)`` or registers the functions
:func:`audit_command`, :func:`export_command` and :func:`verify_export_command` one by one.

Exit codes: 0 clean, 1 a mismatch (audit) or a failed verification (verify-export), 2 bad input
(unreachable node or database, missing deployment record, bad scope); bad input prints one line.

:func:`run_audit` is the audit command's body, shared with ``stadjerspas audit`` (``api.cli``),
which adds the service's promises (``promises``: read from the database it opened) and the
defaults of the embedded service. This command alone has no promises to compare (``ledger``
never reads the API's tables) and says so in a note; it still compares the outbox.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from web3 import HTTPProvider, Web3

from ledger.audit import (
    DEFAULT_STUCK_AFTER_S,
    PROMISE_KINDS,
    AuditError,
    AuditResult,
    ServicePromise,
    audit,
)
from ledger.client import LedgerClient
from ledger.deploy import load_deployment
from ledger.errors import LedgerError
from ledger.export import ExportError, Scope, export, verify_export
from ledger.rpc import RpcClient

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_MISMATCH",
    "PromiseLoader",
    "app",
    "audit_command",
    "export_command",
    "run_audit",
    "verify_export_command",
]

#: Reads the service's promises from the database the audit opened (None: it holds none).
PromiseLoader = Callable[[Engine], Sequence[ServicePromise] | None]

EXIT_MISMATCH = 1
EXIT_BAD_INPUT = 2

app = typer.Typer(
    help="Audit the ledger against the chain, and export it in open formats.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _engine(database_url: str) -> Engine:
    """An engine on an existing database; never creates an SQLite file by accident."""
    try:
        url = make_url(database_url)
    except ArgumentError:
        _fail(f"not a database URL: {database_url!r}")
    if url.get_backend_name() == "sqlite":
        if not url.database or not Path(url.database).is_file():
            _fail(f"no SQLite database at {url.database!r}")
    elif url.get_backend_name() == "postgresql" and url.drivername in {"postgresql", "postgres"}:
        url = url.set(drivername="postgresql+psycopg")
    try:
        engine = create_engine(url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, ImportError) as exc:
        reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or ["?"])[0]
        _fail(f"cannot reach the database at {url.render_as_string(hide_password=True)}: {reason}")
    return engine


def _load_abi(
    abi_path: Path | None, project_root: Path, build_dir: Path | None = None
) -> list[dict[str, Any]]:
    if abi_path is not None:
        try:
            data = json.loads(abi_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            _fail(f"cannot read the ABI at {abi_path}: {exc}")
        abi = data.get("abi", data) if isinstance(data, dict) else data
        if not isinstance(abi, list):
            _fail(f"{abi_path} holds no ABI list")
        return [dict(item) for item in abi]
    from ledger.compiler import compile_contracts

    try:
        artifacts = compile_contracts(
            project_root=project_root, cache_dir=build_dir or project_root / "var" / "build"
        )
        return [dict(item) for item in artifacts.get("StadjerspasLedger").abi]
    except (LedgerError, KeyError, OSError) as exc:
        _fail(f"no ABI: pass --abi, or compile the contracts ({exc})")


def _print_result(result: AuditResult) -> None:
    console.print(
        f"audited {result.contract} on chain {result.chain_id}, blocks "
        f"{result.from_block}..{result.to_block}: {result.events} events; "
        f"compared {', '.join(result.checked) or 'nothing'}",
        highlight=False,
    )
    state = result.state
    console.print(
        f"{len(state.schemes)} schemes, {len(state.balances)} entitlements, "
        f"{len(state.merchants)} merchants, {len(state.used_ids)} redemptions, "
        f"{len(state.reversed_ids)} reversals",
        highlight=False,
    )
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    if result.ok:
        console.print("[bold green]clean:[/] no differences")
        return
    promises = [d for d in result.differences if d.about_promises]
    others = [d for d in result.differences if not d.about_promises]
    console.print(
        f"[bold red]{len(result.differences)} difference(s)[/]"
        + (f", {len(promises)} between the service's promises and the chain" if promises else ""),
        highlight=False,
    )
    if others:
        table = Table(title=f"ledger vs chain: {len(others)} difference(s)")
        for column in ("kind", "key", "expected", "actual"):
            table.add_column(column, overflow="fold")
        for d in others:
            table.add_row(d.kind, d.key, _short(d.expected), _short(d.actual))
        console.print(table)
        for d in others:
            if d.detail:
                console.print(f"{d.key}: {d.detail}", highlight=False, soft_wrap=True)
    if promises:
        console.print(f"service promises vs chain: {len(promises)} difference(s)", highlight=False)
        for d in promises:
            what = d.detail or PROMISE_KINDS[d.kind]
            console.print(f"  {_label(d.key)}: {what}", highlight=False, soft_wrap=True)


def _label(key: str) -> str:
    """``redemption=17`` -> ``redemption 17``; ``tx=0x..`` -> ``tx 0x..``."""
    name, _, value = key.partition("=")
    return f"{name} {value}" if value else key


def _short(value: Any, limit: int = 160) -> str:
    text_value = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text_value if len(text_value) <= limit else text_value[:limit] + "…"


@app.command("audit")
def audit_command(
    rpc_url: Annotated[
        str, typer.Option(envvar="STADJERSPAS_RPC_URL", help="JSON-RPC endpoint of the chain.")
    ],
    deployment: Annotated[
        Path, typer.Option(help="Deployment record (contract, chain id, deployment block).")
    ] = Path("var/deployment.json"),
    database_url: Annotated[
        str | None,
        typer.Option(envvar="STADJERSPAS_DATABASE_URL", help="Index database (unset: chain only)."),
    ] = None,
    block: Annotated[
        int | None, typer.Option(help="Audit up to this block (default: index checkpoint/head).")
    ] = None,
    abi: Annotated[Path | None, typer.Option(help="ABI JSON (default: compile).")] = None,
    project_root: Annotated[Path, typer.Option(help="Where contracts/ is.")] = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    reports: Annotated[bool, typer.Option(help="Compare with the reports too.")] = True,
    stuck_after: Annotated[
        float,
        typer.Option(min=0, help="Seconds after which an open outbox transaction is stuck."),
    ] = DEFAULT_STUCK_AFTER_S,
) -> None:
    """Recompute every balance and total from the chain; compare with the contract, the index,
    the reports and the outbox. Exit 1 on any difference."""
    run_audit(
        rpc_url=rpc_url,
        deployment=deployment,
        database_url=database_url,
        block=block,
        abi=abi,
        project_root=project_root,
        as_json=as_json,
        reports=reports,
        stuck_after_s=stuck_after,
    )


def run_audit(
    *,
    rpc_url: str,
    deployment: Path,
    database_url: str | None,
    block: int | None = None,
    abi: Path | None = None,
    project_root: Path = Path("."),
    build_dir: Path | None = None,
    as_json: bool = False,
    reports: bool = True,
    stuck_after_s: float = DEFAULT_STUCK_AFTER_S,
    promises: PromiseLoader | None = None,
) -> NoReturn:
    """Run the audit and print it; always ends with ``typer.Exit``: 0 clean, 1 differences,
    2 bad input (one line on stderr)."""
    record = load_deployment(deployment) if deployment.is_file() else None
    if record is None:
        _fail(f"no deployment record at {deployment}")
    ledger_abi = _load_abi(abi, project_root, build_dir)
    engine = _engine(database_url) if database_url else None
    rpc = RpcClient(rpc_url, timeout=60.0)
    try:
        w3 = Web3(HTTPProvider(rpc_url, cache_allowed_requests=True))
        client = LedgerClient(w3, address=record.ledger_address, abi=ledger_abi)
        # read when the audit asks (after it has read the chain's head)
        source = None if promises is None or engine is None else partial(promises, engine)
        result = audit(
            rpc=rpc,
            client=client,
            from_block=record.deployed_block,
            to_block=block,
            store=engine,
            compare_reports=reports,
            promises=source,
            stuck_after_s=stuck_after_s,
        )
    except AuditError as exc:
        _fail(str(exc))
    finally:
        rpc.close()
        if engine is not None:
            engine.dispose()
    if result.chain_id != record.chain_id:
        _fail(f"the node is chain {result.chain_id}, the deployment record says {record.chain_id}")
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2, default=str))
    else:
        _print_result(result)
    raise typer.Exit(0 if result.ok else EXIT_MISMATCH)


@app.command("export")
def export_command(
    out: Annotated[Path, typer.Option(help="New or empty directory to write to.")],
    database_url: Annotated[
        str, typer.Option(envvar="STADJERSPAS_DATABASE_URL", help="The store's database.")
    ],
    scope: Annotated[
        Scope, typer.Option(help="auditor: index + pseudonymous registry; admin: everything.")
    ] = Scope.AUDITOR,
    include_secrets: Annotated[
        bool,
        typer.Option(
            help="Admin only: include pass secrets, needed to keep pass ids when moving to "
            "another system."
        ),
    ] = False,
) -> None:
    """Write the index and registry as CSV and JSON Lines with a manifest of checksums."""
    engine = _engine(database_url)
    try:
        result = export(engine, out, scope=scope, include_secrets=include_secrets)
    except ExportError as exc:
        _fail(str(exc))
    finally:
        engine.dispose()
    table = Table(title=f"export to {out} ({result.scope.value} scope)")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name in result.manifest["tables"]:
        table.add_row(name, str(result.rows(name)))
    console.print(table)
    if include_secrets:
        console.print(
            "[bold yellow]warning:[/] this export contains pass secrets: keep it encrypted",
            highlight=False,
        )


@app.command("verify-export")
def verify_export_command(
    directory: Annotated[Path, typer.Argument(help="An export directory.")],
) -> None:
    """Check an export's files against its manifest (checksums, sizes, row counts)."""
    if not directory.is_dir():
        _fail(f"{directory} is not a directory")
    result = verify_export(directory)
    for problem in result.problems:
        console.print(f"[red]✗[/] {problem}", highlight=False)
    if result.ok:
        console.print(f"[green]✓[/] {result.files} files match the manifest", highlight=False)
        raise typer.Exit(0)
    raise typer.Exit(EXIT_MISMATCH)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("COLUMNS", "160")
    app()
