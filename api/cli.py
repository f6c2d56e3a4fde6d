"""The ``stadjerspas`` command (Typer + Rich).

- ``stadjerspas up``: what ``make run`` calls. Starts (or attaches to) the chain, deploys on first
  start, seeds the demo once, serves the API on http://127.0.0.1:8000. Ctrl-C stops the server,
  the relayers and the embedded anvil cleanly; the next start keeps all data.
- ``stadjerspas deploy``: deploy the ledger to a JSON-RPC endpoint with a keystore.
- ``stadjerspas node``: run only the local anvil node (state under ``var/anvil``).
- ``stadjerspas qr``: render a pass token URI as a QR code (terminal, PNG or SVG).
- ``stadjerspas index``: backfill the index from the node and follow the head.
- ``stadjerspas report scheme|merchant|district|chart``: reports as CSV/JSON, charts as PNG/SVG.
- ``stadjerspas audit``: recompute everything from the node; compare with contract, index, reports,
  and the service's promises and outbox. Without options it audits the embedded default of
  ``make run`` (``var/``: its deployment record, its SQLite database, its node; see
  :func:`audit`).
- ``stadjerspas export`` / ``verify-export``: the whole ledger and registry in open formats.
- ``stadjerspas letters``: activation letters (PDF, CSV) with new codes (:mod:`api.letters_cli`).
- ``stadjerspas import postcodes FILE``: the CBS postcode-to-wijk table (:mod:`api.letters_cli`).

Errors print one line (``error: ...``) and exit with 2 for bad input, 1 for anything else.
"""

from __future__ import annotations

import contextlib
import gc
import getpass
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from api import import_cli, letters_cli
from api.settings import PROJECT_ROOT, Settings
from ledger import audit_cli
from ledger.audit import DEFAULT_STUCK_AFTER_S
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
    log_level: Annotated[
        str, typer.Option(help="Log level of the service's loggers (api, ledger, uvicorn).")
    ] = "info",
) -> None:
    """Start the chain (embedded anvil unless STADJERSPAS_RPC_URL is set) and serve the API."""
    import uvicorn

    from api.log_privacy import configure_logging, scrub
    from api.main import create_app
    from api.runtime import Runtime, StartupError

    settings = _settings(host=host, port=port, var_dir=var_dir, anvil_port=anvil_port)
    # Logs without personal data (api.log_privacy): one redacting handler for every logger,
    # installed before anything logs; uvicorn's access log (client IP, path, query) stays off,
    # api.access_log writes one line per request with the route template instead.
    configure_logging(log_level)
    console.print(f"[bold]Stadjerspas Ledger[/] ({settings.env}), state in {settings.var_dir}")
    try:
        # start-up progress is log output too: scrubbed like every log line
        runtime = Runtime.start(settings, report=lambda m: console.print(f"  {escape(scrub(m))}"))
    except KeyboardInterrupt:
        _fail("interrupted while starting")
    except (StartupError, LedgerError, WalletError, OSError) as exc:
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    try:
        try:
            app = create_app(settings, runtime)
        except StartupError as exc:  # e.g. production with a development credential
            runtime.close()
            _fail(scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
        _print_banner(settings, runtime)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=log_level,
            log_config=None,  # configured above
            access_log=False,
            # X-Forwarded-For is read by api.throttle, from STADJERSPAS_TRUSTED_PROXIES only
            proxy_headers=False,
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
            if token is not None:  # by id: registry values never go to the console
                table.add_row(f"merchant {merchant.id}", token.get_secret_value())
        holders = runtime.store.holders()
        if holders:
            table.add_row("demo passes", f"{len(holders)} (numbers and PIN in README.md)")
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
app.command("export")(audit_cli.export_command)
app.command("verify-export")(audit_cli.verify_export_command)

# ---------------------------------------------------------------- imports
import_app = import_cli.app
app.add_typer(import_app, name="import")
import_app.command("postcodes")(letters_cli.import_postcodes)

# ---------------------------------------------------------------- letters
app.command("letters")(letters_cli.letters)


# ---------------------------------------------------------------- audit


@app.command("audit")
def audit(
    rpc_url: Annotated[
        str | None,
        typer.Option(
            envvar="STADJERSPAS_RPC_URL",
            help="JSON-RPC endpoint (default: the embedded node of var/, started if it is down).",
        ),
    ] = None,
    deployment: Annotated[
        Path | None, typer.Option(help="Deployment record (default: <var-dir>/deployment.json).")
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="STADJERSPAS_DATABASE_URL",
            help="The service's database (default: SQLite <var-dir>/stadjerspas.db).",
        ),
    ] = None,
    database: Annotated[
        bool, typer.Option(help="Compare with the database (--no-database: the chain only).")
    ] = True,
    var_dir: Annotated[Path | None, typer.Option(help="State directory (default: var).")] = None,
    block: Annotated[
        int | None, typer.Option(help="Audit up to this block (default: index checkpoint/head).")
    ] = None,
    abi: Annotated[Path | None, typer.Option(help="ABI JSON (default: compile).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    reports: Annotated[bool, typer.Option(help="Compare with the reports too.")] = True,
    stuck_after: Annotated[
        float,
        typer.Option(min=0, help="Seconds after which an open outbox transaction is stuck."),
    ] = DEFAULT_STUCK_AFTER_S,
) -> None:
    """Recompute every balance and total from the chain; compare with the contract, the index,
    the reports, the service's promises and its outbox. Exit 0 clean, 1 differences, 2 bad input.

    Every option left out is the service's own setting, as `stadjerspas up` reads it; with none,
    the embedded default of `make run`: its node when it answers on its port, else a copy of its
    saved chain (var/anvil) started for the audit and stopped after it (nothing in var/ changes).
    """
    from api.audit_promises import load_promises

    if deployment is not None:
        _check_record(deployment)
    settings = None
    if rpc_url is None or deployment is None or (database and database_url is None):
        settings = _settings(var_dir=var_dir)
    record = deployment if deployment is not None else _need(settings).deployment_file
    _check_record(record)
    url = None
    if database:
        url = database_url if database_url is not None else _need(settings).sqlalchemy_url
    project_root = settings.project_root if settings is not None else PROJECT_ROOT
    build_dir = settings.artifacts_dir if settings is not None else None
    with _audit_chain(rpc_url, settings) as chain:
        audit_cli.run_audit(
            rpc_url=chain,
            deployment=record,
            database_url=url,
            block=block,
            abi=abi,
            project_root=project_root,
            build_dir=build_dir,
            as_json=as_json,
            reports=reports,
            stuck_after_s=stuck_after,
            promises=load_promises,
        )


def _check_record(record: Path) -> None:
    if not record.is_file():
        _fail(
            f"no deployment record at {record}: start the service once (`make run`) or pass "
            "--deployment",
            EXIT_BAD_INPUT,
        )


def _need(settings: Settings | None) -> Settings:
    assert settings is not None
    return settings


def _answers(url: str, chain_id: int) -> int | None:
    """The chain id of the node at ``url``, or None when nothing answers there."""
    from ledger.rpc import RpcClient

    with RpcClient(url, timeout=2.0, retries=0) as rpc:
        try:
            return int(str(rpc.call("eth_chainId")), 16)
        except (LedgerError, OSError, ValueError):
            return None


@contextlib.contextmanager
def _audit_chain(rpc_url: str | None, settings: Settings | None) -> Iterator[str]:
    """The node to audit: ``rpc_url``; else ``STADJERSPAS_RPC_URL``; else the embedded node on
    its port when it answers; else a copy of the embedded node's saved chain, started on a free
    port for the audit (the copy: anvil rewrites its state file every second and when it
    stops, and an audit writes nothing; a free port: ``make run`` may start meanwhile)."""
    if rpc_url is not None:
        yield rpc_url
        return
    settings = _need(settings)
    if settings.rpc_url is not None:
        yield settings.rpc_url
        return
    if not settings.is_development:
        _fail("STADJERSPAS_RPC_URL is required in production (or pass --rpc-url)", EXIT_BAD_INPUT)
    if settings.anvil_port != 0:
        url = f"http://127.0.0.1:{settings.anvil_port}"
        chain_id = _answers(url, settings.anvil_chain_id)
        if chain_id is not None:
            if chain_id != settings.anvil_chain_id:
                _fail(
                    f"the node on port {settings.anvil_port} is chain {chain_id}, not the "
                    f"embedded chain {settings.anvil_chain_id}",
                    EXIT_BAD_INPUT,
                )
            err.print(f"auditing the embedded node at {url}", highlight=False)
            yield url
            return
    from ledger.node import STATE_FILE, AnvilConfig, AnvilNode

    saved = settings.anvil_dir / STATE_FILE
    if not saved.is_file():
        _fail(
            f"the embedded node is not running and there is no saved chain at {saved}",
            EXIT_BAD_INPUT,
        )
    with tempfile.TemporaryDirectory(prefix="stadjerspas-audit-") as tmp:
        state_dir = Path(tmp) / "anvil"
        state_dir.mkdir()
        for name in (STATE_FILE, STATE_FILE + ".bak"):  # the backup, should anvil refuse it
            if (settings.anvil_dir / name).is_file():
                shutil.copyfile(settings.anvil_dir / name, state_dir / name)
        node = AnvilNode(
            AnvilConfig(
                state_dir=state_dir,
                port=0,
                chain_id=settings.anvil_chain_id,
                project_root=settings.project_root,
            )
        )
        try:
            node.start()
        except LedgerError as exc:
            _fail(f"cannot start the embedded node from {saved}: {exc}".splitlines()[0])
        try:
            err.print(
                f"the embedded node is not running: auditing a copy of {saved} on {node.rpc_url}",
                highlight=False,
            )
            yield node.rpc_url
        finally:
            node.stop()


if __name__ == "__main__":  # pragma: no cover
    app()
