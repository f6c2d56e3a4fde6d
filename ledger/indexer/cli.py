"""``stadjerspas index``: backfill with a Rich progress bar (events/s), then follow the head.

:func:`run_index` is what the ``stadjerspas`` CLI (``api/cli.py``) calls with its settings;
:data:`app` is a stand-alone Typer app over the same function (``python -m ledger.indexer``),
used by the crash tests, which give it everything on the command line.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from ledger.errors import LedgerError
from ledger.indexer.checkpoint import HasEngine
from ledger.indexer.fetch import RangePolicy, RetryNotice, RetryPolicy
from ledger.indexer.follow import Indexer, IndexerConfig, ReorgNotice
from ledger.indexer.follow import Progress as IndexProgress
from ledger.rpc import RpcClient

__all__ = ["app", "run_index"]

app = typer.Typer(
    name="index",
    help="Mirror the ledger's events into the index tables: backfill, then follow the head.",
    add_completion=False,
    pretty_exceptions_enable=False,
)


def run_index(
    store: HasEngine,
    rpc: RpcClient,
    abi: Sequence[Mapping[str, Any]],
    config: IndexerConfig,
    *,
    follow: bool = True,
    until: int | None = None,
    console: Console | None = None,
    progress: bool = True,
    stop: threading.Event | None = None,
) -> int:
    """Backfill to ``until`` (default: head minus confirmations), then follow unless told not to.

    Shows a progress bar with blocks done and events/s on ``console`` (stderr by default), says
    when the node stops answering and when it is back, and when a reorganisation was rewound.
    Returns the number of events applied.
    """
    out = console or Console(stderr=True)
    stop = stop or threading.Event()

    def on_retry(notice: RetryNotice) -> None:
        if notice.recovered:
            out.print(f"[green]node answering again[/] after {notice.attempt} failed attempts")
        else:
            out.print(
                f"[yellow]node not answering[/] ({notice.what}, attempt {notice.attempt}): "
                f"{notice.error}; retrying in {notice.delay_s:.1f}s",
                highlight=False,
            )

    def on_reorg(notice: ReorgNotice) -> None:
        back_to = "the start" if notice.ancestor is None else f"block {notice.ancestor.number}"
        out.print(f"[yellow]reorganisation[/]: rewound {notice.depth} blocks to {back_to}")

    indexer = Indexer(store, rpc, abi, config, on_retry=on_retry, on_reorg=on_reorg, stop=stop)
    target = indexer.target() if until is None else until
    cp = indexer.checkpoint
    first = cp.number + 1 if cp is not None else config.start_block
    total_blocks = max(0, target - first + 1)
    bar = Progress(
        TextColumn("[bold]indexing[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("blocks"),
        TextColumn("{task.fields[events]:>9,} events"),
        TextColumn("{task.fields[rate]:>9,.0f} events/s"),
        TimeElapsedColumn(),
        console=out,
        disable=not progress,
    )
    with bar:
        task = bar.add_task("backfill", total=total_blocks, events=0, rate=0.0)

        def on_progress(p: IndexProgress) -> None:
            bar.update(
                task,
                completed=min(total_blocks, max(0, p.checkpoint - first + 1)),
                events=p.events,
                rate=p.events_per_s,
            )

        indexer.on_progress = on_progress
        indexer.sync(until=target)
    out.print(
        f"indexed up to block {target}: {indexer.events:,} events "
        f"({indexer.events / max(1e-9, indexer.elapsed_s):,.0f} events/s)"
    )
    if follow and not stop.is_set():
        out.print(
            f"following the head (confirmations {config.confirmations}); Ctrl-C stops",
            highlight=False,
        )
        indexer.on_progress = None
        indexer.follow()
    return indexer.events


@app.command()
def index(
    rpc_url: Annotated[str, typer.Option(help="JSON-RPC endpoint of the node.")],
    database_url: Annotated[str, typer.Option(help="SQLAlchemy URL of the store.")],
    contract: Annotated[str, typer.Option(help="Address of the ledger contract.")],
    abi_file: Annotated[Path, typer.Option(help="JSON file with the contract's ABI.", exists=True)],
    start_block: Annotated[int, typer.Option(help="The ledger's deployment block.")] = 0,
    confirmations: Annotated[int, typer.Option(help="Blocks to stay behind the head.")] = 0,
    max_reorg_depth: Annotated[int, typer.Option(help="Deepest reorg to rewind.")] = 64,
    until: Annotated[int | None, typer.Option(help="Stop after this block.")] = None,
    follow: Annotated[bool, typer.Option(help="Keep following the head.")] = True,
    migrate: Annotated[bool, typer.Option(help="Migrate the store first.")] = False,
    initial_range: Annotated[int, typer.Option(help="Blocks per first eth_getLogs.")] = 2_000,
    max_range: Annotated[int, typer.Option(help="Most blocks per eth_getLogs.")] = 200_000,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Backfill the index from the node, then follow the head (Ctrl-C stops)."""
    from ledger.store.db import StoreConfig, open_store, upgrade

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    err = Console(stderr=True)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    abi = json.loads(abi_file.read_text())
    if isinstance(abi, dict):
        abi = abi["abi"]
    store = open_store(StoreConfig(database_url))
    rpc = RpcClient(rpc_url)
    try:
        if migrate:
            upgrade(store)
        config = IndexerConfig(
            contract=contract,
            start_block=start_block,
            confirmations=confirmations,
            max_reorg_depth=max_reorg_depth,
            ranges=RangePolicy(initial=initial_range, maximum=max_range),
            retry=RetryPolicy(),
        )
        run_index(
            store,
            rpc,
            abi,
            config,
            follow=follow and until is None,
            until=until,
            console=err,
            progress=progress,
            stop=stop,
        )
    except LedgerError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        rpc.close()
        store.close()


def main() -> None:  # pragma: no cover - the console entry
    app(args=sys.argv[1:], prog_name="python -m ledger.indexer")
