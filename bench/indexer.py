"""Indexer benchmark: backfill 100,000 redemptions from a local anvil into SQLite and PostgreSQL.

``.venv/bin/python -m bench.indexer`` prints a table; ``--json`` prints, as its last line, one JSON
object with ``events_per_s_sqlite`` and ``events_per_s_postgres`` (target >= 10,000 each).

Set-up (not timed): a private anvil (:func:`bench._chain.bench_chain`, no step tracing), 1,000
passes with budgets, then ``--events`` redemptions in ``redeemBatch`` transactions of ``--batch``
items, signed locally (one pass token per pass, reused with fresh redemption ids) and sent in
JSON-RPC batches with explicit nonces. Timed: :meth:`ledger.indexer.Indexer.sync` from the
deployment block to the head into a freshly migrated store (``events`` counts every log applied:
the redemptions, one ``ReceiptsRecorded`` per transaction and the set-up's events).

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
from ledger.indexer import Indexer, IndexerConfig, RangePolicy
from ledger.relayer import sign_transaction
from ledger.rpc import RpcClient, RpcError
from ledger.store.db import Store, StoreConfig, open_store, upgrade
from wallet.eip712 import PassToken, sign_pass_token
from wallet.keys import as_private_key

__all__ = ["BenchResult", "generate", "main", "time_backfill"]

POSTGRES_ENV = "STADJERSPAS_TEST_POSTGRES_URL"
TARGET_EVENTS_PER_S = 10_000
PASSES = 1_000
BATCH_GAS = 12_000_000
SEND_BATCH = 8  # raw transactions per JSON-RPC batch (anvil refuses bodies over a few MB)


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
    """Send ``events`` accepted redemptions in ``redeemBatch`` transactions; return the head."""
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
    rpc = RpcClient(chain.node.rpc_url, timeout=300.0)
    try:
        nonce = int(rpc.call("eth_getTransactionCount", a.merchant.address, "pending"), 16)
        raws: list[str] = []
        hashes: list[str] = []
        for first in range(0, events, batch):
            requests = [
                RedemptionRequest(
                    redemption_id=i + 1, scheme_id=scheme, amount=1, token=tokens[i % PASSES]
                )
                for i in range(first, min(events, first + batch))
            ]
            raw, tx_hash = sign_transaction(
                bytes(a.merchant.key),
                chain_id=CHAIN_ID,
                nonce=nonce,
                to=chain.client.address,
                gas=BATCH_GAS,
                data=chain.client.redeem_batch_data(requests),
                gas_price=0,
            )
            nonce += 1
            raws.append("0x" + raw.hex())
            hashes.append("0x" + tx_hash.hex())
        for start in range(0, len(raws), SEND_BATCH):
            replies = rpc.batch(
                [("eth_sendRawTransaction", [r]) for r in raws[start : start + SEND_BATCH]]
            )
            for reply in replies:
                if isinstance(reply, RpcError):
                    raise BenchError(f"sending a redeemBatch failed: {reply}")
            say(f"  sent {min(len(raws), start + SEND_BATCH) * batch:,} redemptions")
        deadline = time.monotonic() + 600
        receipts: list[object] = []
        while time.monotonic() < deadline:
            receipts = rpc.batch([("eth_getTransactionReceipt", [h]) for h in hashes[-1:]])
            if receipts and receipts[0] is not None:
                break
            time.sleep(0.2)
        for start in range(0, len(hashes), 200):
            for receipt in rpc.batch(
                [("eth_getTransactionReceipt", [h]) for h in hashes[start : start + 200]]
            ):
                if not isinstance(receipt, dict) or receipt.get("status") != "0x1":
                    raise BenchError(f"a redeemBatch transaction failed: {receipt!r}")
                if len(receipt["logs"]) != min(batch, events) + 1:
                    raise BenchError("a redeemBatch transaction rejected some redemptions")
        return int(rpc.call("eth_blockNumber"), 16)
    finally:
        rpc.close()


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
