"""Indexer benchmark: backfill 100,000 redemptions from a local anvil into SQLite and PostgreSQL.

``.venv/bin/python -m bench.indexer`` prints a table; ``--json`` prints, as its last line, one JSON
object with ``events_per_s_sqlite`` and ``events_per_s_postgres`` (target >= 10,000 each).

Set-up (not timed): a private anvil (:func:`bench._chain.bench_chain`, no step tracing), 1,000
passes with budgets, then ``--events`` redemptions in ``redeemBatch`` transactions of ``--batch``
items (one pass token per pass, reused with fresh redemption ids), sent through the product's
:class:`ledger.relayer.Relayer` (``SEND_BATCH`` transactions per JSON-RPC batch; it resends lost
transactions and re-prices a nonce anvil has parked, which raw sends never recovered from), and
every receipt checked (a ``NonceConflict`` is checked against the chain, see
:func:`_receipt_despite_conflict`). Timed: :meth:`ledger.indexer.Indexer.sync` from the deployment
block to the head into a freshly migrated store (``events`` counts every log applied: the
redemptions, one ``ReceiptsRecorded`` per transaction and the set-up's events).

PostgreSQL runs when ``--postgres-url`` or ``$STADJERSPAS_TEST_POSTGRES_URL`` names a server: a
database of its own is created there and dropped afterwards. Otherwise its figure is ``null``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench._chain import CHAIN_ID, BenchChain, BenchError, bench_chain, bench_pass_ids
from ledger.client import RedemptionRequest
from ledger.errors import RelayerError
from ledger.indexer import Indexer, IndexerConfig, RangePolicy
from ledger.relayer import NonceConflict, Relayer, TxHandle, TxReceipt, TxRequest, parse_receipt
from ledger.rpc import RpcClient, RpcRequest
from ledger.store.db import Store, StoreConfig, open_store, upgrade
from wallet.eip712 import PassToken, sign_pass_token
from wallet.keys import as_private_key

__all__ = ["BenchResult", "generate", "main", "time_backfill"]

POSTGRES_ENV = "STADJERSPAS_TEST_POSTGRES_URL"
TARGET_EVENTS_PER_S = 10_000
PASSES = 1_000
BATCH_GAS = 12_000_000
SEND_BATCH = 8  # raw transactions per JSON-RPC batch (anvil refuses bodies over a few MB)
MINE_TIMEOUT_S = 600.0  # for every redeemBatch transaction to be mined
CONFLICT_CHECK_S = 10.0  # to find the receipt of a transaction the relayer called taken


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class BenchResult:
    database: str
    events: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def generate(chain: BenchChain, *, events: int, batch: int) -> int:
    """Send ``events`` accepted redemptions in ``redeemBatch`` transactions; return the head.

    The transactions go through :class:`ledger.relayer.Relayer`, the product's sender: it assigns
    the nonces, sends ``SEND_BATCH`` raw transactions per JSON-RPC batch, resends what the node
    lost and re-prices a nonce anvil has parked behind an already-mined one (its invariant 8).
    Every handle must resolve with a successful receipt carrying all of its redemptions (a
    :class:`~ledger.relayer.NonceConflict` counts if the transaction was mined after all).
    """
    a = chain.accounts
    scheme = chain.create_scheme()
    pass_ids = bench_pass_ids("idx", PASSES)
    chain.register_passes(pass_ids)
    for start in range(0, PASSES, 500):
        part = pass_ids[start : start + 500]
        chain.ledger_tx(a.issuer, "issueBatch", scheme, part, [10**9] * len(part))
    key = as_private_key(a.pass_signer.key)
    domain = chain.client.domain
    tokens = [
        sign_pass_token(
            PassToken(pass_id=p, serial=0, expiry=2**32 - 1), domain=domain, private_key=key
        )
        for p in pass_ids
    ]
    txs: list[TxRequest] = []
    expected_logs: list[int] = []  # the redemptions of each transaction + its ReceiptsRecorded
    for first in range(0, events, batch):
        requests = [
            RedemptionRequest(
                redemption_id=i + 1, scheme_id=scheme, amount=1, token=tokens[i % PASSES]
            )
            for i in range(first, min(events, first + batch))
        ]
        txs.append(
            TxRequest(
                to=chain.client.address,
                gas=BATCH_GAS,
                data=chain.client.redeem_batch_data(requests),
            )
        )
        expected_logs.append(len(requests) + 1)
    with (
        RpcClient(chain.node.rpc_url, timeout=300.0) as rpc,
        Relayer(rpc, account=a.merchant, chain_id=CHAIN_ID, max_batch=SEND_BATCH) as relayer,
    ):
        handles = relayer.submit_many(txs)
        deadline = time.monotonic() + MINE_TIMEOUT_S
        done = overruled = 0
        for n, (handle, logs) in enumerate(zip(handles, expected_logs, strict=True), 1):
            try:
                receipt = handle.result(timeout=max(0.0, deadline - time.monotonic()))
            except NonceConflict as conflict:
                receipt = _receipt_despite_conflict(rpc, handle, conflict)
                overruled += 1
            except RelayerError as exc:
                raise BenchError(
                    f"redeemBatch transaction (nonce {handle.nonce}) failed: {exc}"
                ) from exc
            if not receipt.ok:
                raise BenchError(f"redeemBatch transaction {receipt.tx_hash.to_0x_hex()} reverted")
            if len(receipt.logs) != logs:
                raise BenchError(
                    f"redeemBatch transaction {receipt.tx_hash.to_0x_hex()} rejected some "
                    f"redemptions ({len(receipt.logs)} logs, expected {logs})"
                )
            done += logs - 1
            if n % 50 == 0 or n == len(handles):
                say(f"  mined {done:,} redemptions")
        m = relayer.metrics()
        say(
            f"  relayer: {m.confirmed} confirmed in {m.batches} send batches, {m.resent} resent, "
            f"{m.repriced} re-priced, {m.resyncs} resyncs, {m.failed} failed; {overruled} "
            "NonceConflict(s) found mined after all"
        )
        return int(rpc.call("eth_blockNumber"), 16)


def _receipt_despite_conflict(
    rpc: RpcClient, handle: TxHandle, conflict: NonceConflict
) -> TxReceipt:
    """The receipt of a transaction the relayer gave up on with :class:`NonceConflict`.

    Nothing else signs with the merchant key on the benchmark's private node, so a conflict here
    is a false alarm: under load, anvil reports the account's ``latest`` nonce past a block's
    transactions a moment before their receipts can be read, and the relayer's "two polls without
    a receipt" can be two polls a few milliseconds apart. Poll the receipts of the hashes known
    for the nonce (the first signed and the current variant) for ``CONFLICT_CHECK_S`` seconds.
    """
    hashes = {conflict.tx_hash}
    if handle.tx_hash is not None:
        hashes.add(handle.tx_hash.to_0x_hex())
    say(f"  nonce {conflict.nonce}: the relayer reports a NonceConflict; checking its receipts")
    deadline = time.monotonic() + CONFLICT_CHECK_S
    while True:
        replies = rpc.batch([RpcRequest("eth_getTransactionReceipt", (h,)) for h in sorted(hashes)])
        for reply in replies:
            if isinstance(reply, dict):
                return parse_receipt(reply, conflict.nonce)
        if time.monotonic() >= deadline:
            raise BenchError(
                f"redeemBatch transaction (nonce {conflict.nonce}) failed: {conflict}; no receipt "
                f"for {', '.join(sorted(hashes))} after {CONFLICT_CHECK_S:.0f}s"
            ) from conflict
        time.sleep(0.1)


def time_backfill(
    chain: BenchChain, store: Store, *, head: int, database: str, ranges: RangePolicy
) -> BenchResult:
    """Migrate ``store``, then time a backfill from the deployment block to ``head``."""
    upgrade(store)
    rpc = RpcClient(chain.node.rpc_url, timeout=300.0)
    try:
        config = IndexerConfig(
            contract=chain.client.address,
            start_block=chain.deployment.deployed_block,
            ranges=ranges,
        )
        indexer = Indexer(store, rpc, chain.client.abi, config)
        began = time.perf_counter()
        applied = indexer.sync(until=head)
        seconds = time.perf_counter() - began
    finally:
        rpc.close()
    return BenchResult(database=database, events=applied, seconds=seconds)


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh database on the server of ``admin_url``, dropped afterwards."""
    admin = make_url(admin_url).set(drivername="postgresql+psycopg")
    name = f"stadjerspas_bench_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin.set(database=name).render_as_string(hide_password=False)
        finally:
            with engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


def run(
    *, events: int, batch: int, postgres_url: str | None, ranges: RangePolicy
) -> tuple[int, list[BenchResult], str | None]:
    results: list[BenchResult] = []
    note = None
    with bench_chain(steps_tracing=False) as chain:
        say(f"generating {events:,} redemptions in batches of {batch} ...")
        began = time.perf_counter()
        head = generate(chain, events=events, batch=batch)
        say(f"  done in {time.perf_counter() - began:.1f}s; head is block {head}")
        with tempfile.TemporaryDirectory(prefix="stadjerspas-bench-index-") as tmp:
            store = open_store(StoreConfig(f"sqlite:///{Path(tmp) / 'index.db'}"))
            try:
                say("backfilling into SQLite ...")
                results.append(
                    time_backfill(chain, store, head=head, database="sqlite", ranges=ranges)
                )
            finally:
                store.close()
        if postgres_url:
            with postgres_database(postgres_url) as url:
                store = open_store(StoreConfig(url))
                try:
                    say("backfilling into PostgreSQL ...")
                    results.append(
                        time_backfill(chain, store, head=head, database="postgres", ranges=ranges)
                    )
                finally:
                    store.close()
        else:
            note = f"PostgreSQL skipped: give --postgres-url or set {POSTGRES_ENV}"
            say(note)
    return head, results, note


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.indexer", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print JSON as the last line")
    parser.add_argument("--events", type=int, default=100_000, help="redemptions to index")
    parser.add_argument("--batch", type=int, default=200, help="redemptions per transaction")
    parser.add_argument("--postgres-url", default=os.environ.get(POSTGRES_ENV) or None)
    parser.add_argument("--initial-range", type=int, default=RangePolicy().initial)
    parser.add_argument("--target-logs", type=int, default=RangePolicy().target_logs)
    args = parser.parse_args(argv)
    ranges = RangePolicy(initial=args.initial_range, target_logs=args.target_logs)
    head, results, note = run(
        events=args.events, batch=args.batch, postgres_url=args.postgres_url, ranges=ranges
    )
    by_db = {r.database: r for r in results}
    figures: dict[str, object] = {
        "events": args.events,
        "batch": args.batch,
        "blocks": head,
        "target_events_per_s": TARGET_EVENTS_PER_S,
    }
    for db in ("sqlite", "postgres"):
        result = by_db.get(db)
        figures[f"events_per_s_{db}"] = None if result is None else round(result.events_per_s)
        figures[f"seconds_{db}"] = None if result is None else round(result.seconds, 3)
        figures[f"logs_applied_{db}"] = None if result is None else result.events
    if note:
        figures["note"] = note
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"Indexer backfill of {args.events:,} redemptions ({head} blocks)")
    print(
        f"{'database':<10} {'logs':>9} {'seconds':>8} {'events/s':>10}  "
        f"target >= {TARGET_EVENTS_PER_S:,}"
    )
    for db in ("sqlite", "postgres"):
        result = by_db.get(db)
        if result is None:
            print(f"{db:<10} {'-':>9} {'-':>8} {'-':>10}  (skipped)")
            continue
        verdict = "ok" if result.events_per_s >= TARGET_EVENTS_PER_S else "BELOW TARGET"
        print(
            f"{db:<10} {result.events:>9,} {result.seconds:>8.2f} "
            f"{result.events_per_s:>10,.0f}  {verdict}"
        )
    if note:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
