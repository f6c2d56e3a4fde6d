"""The ``stadjerspas`` command (Typer + Rich).

- ``stadjerspas up``: what ``make run`` calls. Starts (or attaches to) the chain, deploys on first
  start, seeds the demo once, serves the API on http://127.0.0.1:8000. Ctrl-C stops the server,
  the relayers and the embedded anvil cleanly; the next start keeps all data.
- ``stadjerspas deploy``: deploy the ledger to a JSON-RPC endpoint with a keystore.
- ``stadjerspas node``: run only the local anvil node (state under ``var/anvil``).
- ``stadjerspas qr``: render a pass token URI as a QR code (terminal, PNG or SVG).
- ``stadjerspas index``: backfill the index from the node and follow the head.
- ``stadjerspas report scheme|merchant|district|chart``: reports as CSV/JSON, charts as PNG/SVG.
- ``stadjerspas audit``: recompute everything from the node; compare with contract, index, reports.
- ``stadjerspas export`` / ``verify-export``: the whole ledger and registry in open formats.

Errors print one line (``error: ...``) and exit with 2 for bad input, 1 for anything else.
"""

from __future__ import annotations

import contextlib
import gc
import getpass
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from api.settings import PROJECT_ROOT, Settings
from ledger import audit_cli
from ledger.errors import LedgerError
from ledger.indexer import cli as index_cli
from ledger.reports import cli as reports_cli
from wallet import WalletError

app = typer.Typer(
    name="stadjerspas",
    help="Stadjerspas Ledger: run the service, deploy the contract, run a node, render QR codes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
DEPLOY_PASSWORD_ENV = "STADJERSPAS_DEPLOY_KEYSTORE_PASSWORD"  # noqa: S105 - a variable name
STDIN = "-"


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            (f"{'.'.join(str(p) for p in e['loc'])}: " if e["loc"] else "")
            + str(e["msg"]).removeprefix("Value error, ")
            for e in exc.errors()
        )
        _fail(f"invalid settings: {problems}", EXIT_BAD_INPUT)


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="Bind address [default: 127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port [default: 8000].")] = None,
    var_dir: Annotated[Path | None, typer.Option(help="State directory [default: var].")] = None,
    anvil_port: Annotated[int | None, typer.Option(help="Embedded anvil port.")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Start the chain (embedded anvil unless STADJERSPAS_RPC_URL is set) and serve the API."""
    import uvicorn

    from api.main import create_app
    from api.runtime import Runtime, StartupError

    settings = _settings(host=host, port=port, var_dir=var_dir, anvil_port=anvil_port)
    console.print(f"[bold]Stadjerspas Ledger[/] ({settings.env}), state in {settings.var_dir}")
    try:
        runtime = Runtime.start(settings, report=lambda m: console.print(f"  {m}"))
    except KeyboardInterrupt:
        _fail("interrupted while starting")
    except (StartupError, LedgerError, WalletError, OSError) as exc:
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    try:
        _print_banner(settings, runtime)
        config = uvicorn.Config(
            create_app(settings, runtime),
            host=settings.host,
            port=settings.port,
            log_level=log_level,
            access_log=True,
        )
        server = uvicorn.Server(config)
        # What start-up built (ABIs, compiled contracts, web3, templates) lives as long as the
        # process: keep it out of the collector's full passes, which otherwise stall requests.
        gc.collect()
        gc.freeze()
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
    finally:
        console.print("stopping: relayers, store and node …")
        with contextlib.suppress(KeyboardInterrupt):
            runtime.close()
        console.print(f"stopped; all data is kept in {settings.var_dir}")
    if not server.started:
        _fail(f"the HTTP server did not start on {settings.host}:{settings.port}")


def _print_banner(settings: Settings, runtime: Any) -> None:
    base = f"http://{settings.host}:{settings.port}"
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_row("API", base)
    table.add_row("OpenAPI", f"{base}/docs")
    table.add_row("chain", f"{runtime.chain_id} via {runtime.rpc_url}")
    table.add_row("ledger", runtime.deployment.ledger_address)
    if settings.is_development:
        assert settings.admin_token is not None
        assert settings.holder_token is not None
        table.add_row("admin token", settings.admin_token.get_secret_value())
        table.add_row("holder token", settings.holder_token.get_secret_value())
        for merchant in runtime.store.merchants():
            token = settings.merchant_tokens.get(merchant.id)
            if token is not None:
                table.add_row(
                    f"merchant {merchant.id}", f"{merchant.name}: {token.get_secret_value()}"
                )
        holders = runtime.store.holders()
        if holders:
            table.add_row("demo passes", f"{holders[0].pass_number} .. {holders[-1].pass_number}")
    console.print(table)
    if settings.is_development:
        console.print("[dim]development keys and tokens: never use them in production[/]")
    console.print("Press Ctrl-C to stop.")


@app.command()
def deploy(
    rpc_url: Annotated[str, typer.Option(help="JSON-RPC endpoint of the chain.")],
    keystore: Annotated[
        Path, typer.Option(help="Encrypted keystore of the admin (deployer) account.")
    ],
    password_env: Annotated[
        str, typer.Option(help="Environment variable holding the keystore password.")
    ] = DEPLOY_PASSWORD_ENV,
    out: Annotated[Path, typer.Option(help="Where to write the deployment record.")] = Path(
        "var/deployment.json"
    ),
    grant: Annotated[
        list[str] | None,
        typer.Option(help="Role grant ROLE=ADDRESS (repeatable): issuer, merchant, pass_signer, …"),
    ] = None,
    reversal_window_s: Annotated[int, typer.Option(min=0)] = 14 * 24 * 3600,
    force: Annotated[bool, typer.Option(help="Overwrite an existing deployment record.")] = False,
) -> None:
    """Deploy the ledger contract and save its deployment record."""
    from eth_account import Account
    from eth_utils.address import is_address
    from web3 import HTTPProvider, Web3

    from ledger.client import ROLES
    from ledger.compiler import compile_contracts
    from ledger.deploy import RoleGrant, deploy_ledger, save_deployment
    from wallet import load_keystore

    grants: list[RoleGrant] = []
    for item in grant or []:
        role, _, address = item.partition("=")
        if role not in ROLES or not is_address(address):
            _fail(f"--grant {item!r}: expected ROLE=0xADDRESS with ROLE in {sorted(ROLES)}", 2)
        grants.append(RoleGrant(role, address))
    if out.exists() and not force:
        _fail(f"{out} exists (a ledger is already deployed); pass --force to replace it", 2)
    if not keystore.is_file():
        _fail(f"keystore {keystore} does not exist", EXIT_BAD_INPUT)
    password = os.environ.get(password_env)
    if password is None:
        if not sys.stdin.isatty():
            _fail(f"set {password_env} to the keystore password", EXIT_BAD_INPUT)
        password = getpass.getpass(f"password for {keystore}: ")
    try:
        admin = Account.from_key(load_keystore(keystore, password=password))
    except (WalletError, OSError) as exc:
        _fail(f"cannot open keystore {keystore}: {exc}", EXIT_BAD_INPUT)
    w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    try:
        chain_id = int(w3.eth.chain_id)
    except Exception as exc:
        _fail(f"cannot reach a JSON-RPC node at {rpc_url}: {type(exc).__name__}", EXIT_BAD_INPUT)
    try:
        artifacts = compile_contracts(project_root=PROJECT_ROOT, cache_dir=out.parent / "build")
        deployment = deploy_ledger(
            w3, artifacts=artifacts, admin=admin, grants=grants, reversal_window_s=reversal_window_s
        )
    except LedgerError as exc:
        _fail(str(exc).splitlines()[0])
    save_deployment(deployment, out)
    console.print(
        f"deployed the ledger at [bold]{deployment.ledger_address}[/] on chain {chain_id} "
        f"(block {deployment.deployed_block}); record written to {out}"
    )


@app.command()
def node(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8545,
    state_dir: Annotated[Path, typer.Option(help="State directory.")] = Path("var/anvil"),
    chain_id: Annotated[int, typer.Option(help="Chain id.")] = 31337,
) -> None:
    """Run only the local anvil node (development), with its state kept in STATE_DIR."""
    from ledger.node import AnvilConfig, AnvilNode

    anvil = AnvilNode(
        AnvilConfig(
            state_dir=state_dir.resolve(),
            port=port,
            chain_id=chain_id,
            project_root=PROJECT_ROOT,
        )
    )
    try:
        anvil.start()
    except LedgerError as exc:
        _fail(str(exc).splitlines()[0])
    console.print(f"anvil on [bold]{anvil.rpc_url}[/] (chain {chain_id}, state in {state_dir})")
    console.print("Press Ctrl-C to stop.")
    # explicit: a background job may inherit SIGINT ignored; SIGTERM stops it the same way
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while anvil.is_running():
            time.sleep(0.5)
        _fail(f"anvil exited unexpectedly; see {anvil.log_file}")
    except KeyboardInterrupt:
        pass
    finally:
        anvil.stop()
    console.print("stopped; state saved")


@app.command()
def qr(
    token: Annotated[str, typer.Argument(help="The token URI (stadjerspas:1:…), or - for stdin.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write a .png or .svg file.")
    ] = None,
    image_format: Annotated[
        str | None, typer.Option("--format", help="png or svg (default: from --out's suffix).")
    ] = None,
) -> None:
    """Check a pass token URI and show it as a QR code, or write it as PNG or SVG."""
    from wallet import decode_token_uri, render_png, render_svg
    from wallet.qr import qr_matrix

    text = sys.stdin.read().strip() if token == STDIN else token.strip()
    try:
        signed = decode_token_uri(text)
    except WalletError as exc:
        _fail(f"{exc.code}: {exc.message}", EXIT_BAD_INPUT)
    fmt = (image_format or (out.suffix.lstrip(".") if out else "")).lower()
    if out is not None:
        if fmt not in ("png", "svg"):
            _fail("choose --format png or svg (or an --out file ending in .png or .svg)", 2)
        data = render_png(text) if fmt == "png" else render_svg(text).encode()
        out.write_bytes(data)
        console.print(f"wrote {out} ({len(data)} bytes, {fmt})")
        return
    matrix = qr_matrix(text)
    size = len(matrix) + 4
    grid = [[False] * size for _ in range(size)]
    for y, row in enumerate(matrix):
        for x, dark in enumerate(row):
            grid[y + 2][x + 2] = dark
    grid.append([False] * size)
    glyphs = {(False, False): "█", (True, False): "▄", (False, True): "▀", (True, True): " "}
    for y in range(0, size, 2):
        console.print("".join(glyphs[(grid[y][x], grid[y + 1][x])] for x in range(size)))
    token_ = signed.token
    console.print(
        f"chain {signed.domain.chain_id}, contract {signed.domain.verifying_contract}, "
        f"pass 0x{token_.pass_id.hex()[:16]}…, serial {token_.serial}, expiry {token_.expiry}"
    )


# ---------------------------------------------------------------- ledger commands
# The off-chain side lives in `ledger` (no API needed): mirror, report, audit and export.
app.command("index")(index_cli.index)
app.add_typer(reports_cli.app, name="report")
app.command("audit")(audit_cli.audit_command)
app.command("export")(audit_cli.export_command)
app.command("verify-export")(audit_cli.verify_export_command)


if __name__ == "__main__":  # pragma: no cover
    app()
