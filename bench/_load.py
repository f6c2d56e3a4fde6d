"""The load-generating client of :mod:`bench.api`: a separate process that talks to a running
service over loopback HTTP and prints one JSON object as its last line. The timed phases use
:mod:`bench._http` (one cheap keep-alive connection per worker); the set-up uses httpx.

Phases:

1. set-up: log in every demo holder (pass number + development PIN) and fetch a pass token URI
   for each; log in the development terminal of every merchant;
2. ``scan``: ``concurrency`` workers post ``POST /merchant/scan`` back to back for ``seconds``,
   each request timed on the client (send to full response);
3. ``redeem``: ``merchants x terminals`` workers post small budget redemptions (unique
   ``Idempotency-Key`` each) until ``seconds`` pass or ``count`` were sent; only HTTP 201 with a
   ``tx_hash`` counts as confirmed;
4. check: the merchants' on-chain ``merchantAccount`` totals (``eth_call`` to the node) and the
   holders' balances (read from the chain by the API) moved by exactly the confirmed amount.

Also measures in-process ``decode_token_uri`` + ``verify_pass_token`` for comparison.
Run by :mod:`bench.api`; by hand: ``python -m bench._load --base-url ... --rpc-url ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account
from eth_utils.crypto import keccak

from api.auth import DEV_HOLDER_PIN, dev_terminal_id, dev_terminal_secret
from api.demo import DEMO_HOLDER_COUNT, demo_pass_number
from api.runtime import DEV_ACCOUNT_INDEX
from bench._http import Connection, HttpError
from ledger.node import DEV_MNEMONIC
from wallet import Domain, decode_token_uri, verify_pass_token
from wallet.verify import recover_signer

__all__ = ["DEFAULTS", "LoadConfig", "main", "percentile", "run"]

MERCHANTS = 3
REDEEM_AMOUNT = 100  # cents
_DUMP = os.environ.get("BENCH_DUMP")  # debugging: write "due_s latency_ms" per scan there
_PHASE = os.environ.get("BENCH_PHASE")  # profiling: the name of the phase running is written there


def _phase(name: str) -> None:
    if _PHASE:
        Path(_PHASE).write_text(name + "\n", encoding="utf-8")


_DUMP_ROWS: list[tuple[float, float]] = []

_MERCHANT_ACCOUNT = keccak(text="merchantAccount(address)")[:4]


@dataclass(frozen=True, slots=True)
class LoadConfig:
    base_url: str
    rpc_url: str
    scan_seconds: float = 10.0
    scan_warmup_seconds: float = 1.0
    scan_rps: float = 400.0
    scan_connections: int = 16
    scan_max_seconds: float = 5.0
    scan_concurrency: int = 4
    redeem_seconds: float = 20.0
    redeem_count: int = 3_000
    terminals_per_merchant: int = 32
    merchants: int = MERCHANTS
    holders: int = DEMO_HOLDER_COUNT
    server_pid: int | None = None  # the service's process: its CPU time per phase is reported
    inprocess_iterations: int = 5_000


#: The default configuration (its URLs are placeholders).
DEFAULTS = LoadConfig(base_url="", rpc_url="")


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (all its threads; Linux ``/proc``),
    or None where that cannot be read."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_ms_per(before: float | None, after: float | None, count: int) -> float | None:
    if before is None or after is None or count == 0:
        return None
    return round((after - before) * 1000 / count, 2)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass(slots=True)
class _Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    confirmed_amount: int = 0
    tx_hashes: set[str] = field(default_factory=set)
    sent: int = 0


async def _login(client: httpx.AsyncClient, kind: str, username: str, password: str) -> str:
    body = {"kind": kind, "username": username, "password": password}
    response = await client.post("/auth/token", json=body)
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


async def _holder(client: httpx.AsyncClient, index: int) -> tuple[str, str, str]:
    """(pass number, holder bearer token, pass token URI) of demo holder ``index``."""
    number = demo_pass_number(index)
    bearer = await _login(client, "holder", number, DEV_HOLDER_PIN)
    response = await client.get(
        f"/holder/passes/{number}/token", headers={"Authorization": f"Bearer {bearer}"}
    )
    response.raise_for_status()
    uri: str = response.json()["token_uri"]
    return number, bearer, uri


async def _budget_scheme(client: httpx.AsyncClient, terminal: str, uri: str) -> int:
    response = await client.post(
        "/merchant/scan", json={"token": uri}, headers={"Authorization": f"Bearer {terminal}"}
    )
    response.raise_for_status()
    for item in response.json()["redeemable"]:
        if item["kind"] == "budget":
            return int(item["scheme_id"])
    raise RuntimeError("the demo pass has no budget scheme to redeem from")


async def _scan_at_rate(
    terminals: Sequence[str], uris: Sequence[str], cfg: LoadConfig
) -> tuple[_Tally, float]:
    """Open loop: request ``i`` is due at ``start + i / scan_rps`` and its latency counts from
    then (a request sent late because every connection was busy is charged the wait, so a slow
    server cannot hide behind fewer requests: no coordinated omission). Every connection is
    opened and used once before the clock starts, and the first ``scan_warmup_seconds`` at the
    rate are not counted (the service's first burst after idling)."""
    tally = _Tally()
    interval = 1.0 / cfg.scan_rps
    warmup = int(cfg.scan_warmup_seconds * cfg.scan_rps)
    total = warmup + int(cfg.scan_seconds * cfg.scan_rps)
    counter = itertools.count()
    loop = asyncio.get_running_loop()
    connections = [Connection(cfg.base_url) for _ in range(cfg.scan_connections)]
    headers = [
        {"Authorization": f"Bearer {terminals[n % len(terminals)]}"}
        for n in range(cfg.scan_connections)
    ]
    for n, connection in enumerate(connections):  # warm-up, not timed
        await connection.post("/merchant/scan", {"token": uris[n % len(uris)]}, headers[n])
    start = loop.time() + 0.05

    async def worker(n: int) -> None:
        connection = connections[n]
        while (i := next(counter)) < total:
            due = start + i * interval
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                response = await connection.post(
                    "/merchant/scan", {"token": uris[i % len(uris)]}, headers[n]
                )
            except HttpError:
                tally.statuses["connection error"] += 1
                continue
            if i < warmup:
                continue
            tally.latencies.append(loop.time() - due)
            tally.statuses[str(response.status_code)] += 1
            if _DUMP:
                _DUMP_ROWS.append((due - start, loop.time() - due))

    try:
        await asyncio.gather(*(worker(n) for n in range(cfg.scan_connections)))
    finally:
        for connection in connections:
            await connection.close()
    measured_from = start + warmup * interval
    if _DUMP:
        Path(_DUMP).write_text("\n".join(f"{a:.4f} {b * 1000:.2f}" for a, b in sorted(_DUMP_ROWS)))
    return tally, loop.time() - measured_from


async def _scan_phase(
    terminals: Sequence[str], uris: Sequence[str], cfg: LoadConfig
) -> tuple[_Tally, float]:
    """Closed loop: ``scan_concurrency`` workers back to back (the capacity figure)."""
    tally = _Tally()
    deadline = time.perf_counter() + cfg.scan_max_seconds
    counter = itertools.count()

    async def worker(n: int) -> None:
        headers = {"Authorization": f"Bearer {terminals[n % len(terminals)]}"}
        connection = Connection(cfg.base_url)  # one keep-alive connection per worker
        try:
            while time.perf_counter() < deadline:
                i = next(counter)
                start = time.perf_counter()
                try:
                    response = await connection.post(
                        "/merchant/scan", {"token": uris[i % len(uris)]}, headers
                    )
                except HttpError:
                    tally.statuses["connection error"] += 1
                    continue
                tally.latencies.append(time.perf_counter() - start)
                tally.statuses[str(response.status_code)] += 1
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(cfg.scan_concurrency)))
    return tally, time.perf_counter() - started


async def _redeem_phase(
    terminals: Sequence[str],
    uris: Sequence[str],
    scheme_id: int,
    cfg: LoadConfig,
) -> tuple[_Tally, float]:
    tally = _Tally()
    deadline = time.perf_counter() + cfg.redeem_seconds
    counter = itertools.count()
    run_id = uuid.uuid4().hex[:8]

    async def worker(merchant_index: int) -> None:
        connection = Connection(cfg.base_url)  # one keep-alive connection per terminal
        try:
            await redeem_until_done(connection, merchant_index)
        finally:
            await connection.close()

    async def redeem_until_done(connection: Connection, merchant_index: int) -> None:
        headers = {"Authorization": f"Bearer {terminals[merchant_index]}"}
        while time.perf_counter() < deadline:
            i = next(counter)
            if i >= cfg.redeem_count:
                return
            tally.sent += 1
            body = {"token": uris[i % len(uris)], "scheme_id": scheme_id, "amount": REDEEM_AMOUNT}
            key_headers = {**headers, "Idempotency-Key": f"bench-{run_id}-{i}"}
            start = time.perf_counter()
            response = None
            for _attempt in range(2):  # a dropped keep-alive connection: retry, same key
                try:
                    response = await connection.post("/merchant/redemptions", body, key_headers)
                    break
                except HttpError:
                    tally.statuses["connection error"] += 1
            if response is None:
                continue
            tally.latencies.append(time.perf_counter() - start)
            code = response.status_code
            if code == 201 and response.json().get("tx_hash"):
                data = response.json()
                tally.statuses["201"] += 1
                tally.confirmed_amount += int(data["debited"])
                tally.tx_hashes.add(str(data["tx_hash"]))
            else:
                try:
                    reason = str(response.json().get("code", ""))
                except ValueError:
                    reason = ""
                tally.statuses[f"{code} {reason}".strip()] += 1

    workers = [worker(m) for m in range(len(terminals)) for _ in range(cfg.terminals_per_merchant)]
    started = time.perf_counter()
    await asyncio.gather(*workers)
    return tally, time.perf_counter() - started


def _merchant_addresses(count: int) -> list[str]:
    Account.enable_unaudited_hdwallet_features()
    first = DEV_ACCOUNT_INDEX["merchant"]
    return [
        Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{first + i}").address
        for i in range(count)
    ]


async def _merchant_redeemed(client: httpx.AsyncClient, rpc_url: str, ledger: str, who: str) -> int:
    data = "0x" + (_MERCHANT_ACCOUNT + bytes(12) + bytes.fromhex(who[2:])).hex()
    payload = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "eth_call",
        "params": [{"to": ledger, "data": data}, "latest"],
    }
    response = await client.post(rpc_url, json=payload)
    response.raise_for_status()
    result = bytes.fromhex(str(response.json()["result"])[2:])
    return int.from_bytes(result[:32], "big")  # (redeemed, reversed, settled)


async def _budget_total(
    client: httpx.AsyncClient, holders: Sequence[tuple[str, str, str]], scheme_id: int
) -> int:
    async def one(number: str, bearer: str) -> int:
        response = await client.get(
            f"/holder/passes/{number}/balances", headers={"Authorization": f"Bearer {bearer}"}
        )
        response.raise_for_status()
        for item in response.json()["balances"]:
            if int(item["scheme_id"]) == scheme_id:
                return int(item["balance"])
        return 0

    totals = await asyncio.gather(*(one(number, bearer) for number, bearer, _ in holders))
    return sum(totals)


def _inprocess_verify(
    uris: Sequence[str], ledger: str, chain_id: int, signer: str, n: int
) -> list[float]:
    domain = Domain(chain_id=chain_id, verifying_contract=ledger)
    allowed = {signer}
    samples: list[float] = []
    for i in range(n):
        uri = uris[i % len(uris)]
        recover_signer.cache_clear()  # the full cost: as for a token seen for the first time
        start = time.perf_counter()
        signed = decode_token_uri(uri)
        verify_pass_token(
            signed, expected_domain=domain, now=int(time.time()), allowed_signers=allowed
        )
        samples.append(time.perf_counter() - start)
    return samples


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


async def run(cfg: LoadConfig) -> dict[str, Any]:
    """Run every phase against the service at ``cfg.base_url``; return the figures."""
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    timeout = httpx.Timeout(60.0)
    async with httpx.AsyncClient(base_url=cfg.base_url, limits=limits, timeout=timeout) as client:
        health = (await client.get("/health")).json()
        ledger, chain_id = str(health["ledger_address"]), int(health["chain_id"])
        holders = await asyncio.gather(*(_holder(client, i) for i in range(1, cfg.holders + 1)))
        uris = [uri for _, _, uri in holders]
        terminals = [
            await _login(client, "terminal", dev_terminal_id(m), dev_terminal_secret(m))
            for m in range(1, cfg.merchants + 1)
        ]
        scheme_id = await _budget_scheme(client, terminals[0], uris[0])

        for uri in uris[:20]:  # warm-up (imports, caches, connections)
            await client.post(
                "/merchant/scan",
                json={"token": uri},
                headers={"Authorization": f"Bearer {terminals[0]}"},
            )
        gc.collect()
        gc.freeze()  # the load process's own collector pauses would count as latency
        _phase("scan")
        scan_cpu = cpu_seconds(cfg.server_pid)
        scan, scan_elapsed = await _scan_at_rate(terminals, uris, cfg)
        scan_cpu_after = cpu_seconds(cfg.server_pid)
        _phase("scan-capacity")
        scan_max, scan_max_elapsed = await _scan_phase(terminals, uris, cfg)

        merchants = _merchant_addresses(cfg.merchants)
        before_chain = [await _merchant_redeemed(client, cfg.rpc_url, ledger, m) for m in merchants]
        before_balances = await _budget_total(client, holders, scheme_id)
        _phase("redeem")
        redeem_cpu = cpu_seconds(cfg.server_pid)
        redeem, redeem_elapsed = await _redeem_phase(terminals, uris, scheme_id, cfg)
        redeem_cpu_after = cpu_seconds(cfg.server_pid)
        _phase("done")
        after_chain = [await _merchant_redeemed(client, cfg.rpc_url, ledger, m) for m in merchants]
        after_balances = await _budget_total(client, holders, scheme_id)
        head = (await client.get("/health")).json()["head_block"]

    Account.enable_unaudited_hdwallet_features()
    signer = Account.from_mnemonic(
        DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{DEV_ACCOUNT_INDEX['pass_signer']}"
    ).address
    inproc = _inprocess_verify(uris, ledger, chain_id, signer, cfg.inprocess_iterations)

    confirmed = redeem.statuses["201"]
    chain_delta = sum(after_chain) - sum(before_chain)
    balance_delta = before_balances - after_balances
    scan_ok = scan.statuses["200"]
    return {
        "verify_p99_ms": _ms(percentile(scan.latencies, 0.99)),
        "verify_p50_ms": _ms(percentile(scan.latencies, 0.50)),
        "verify_max_ms": _ms(max(scan.latencies, default=0.0)),
        "verify_rps": round(scan_ok / scan_elapsed, 1),
        "verify_requests": len(scan.latencies),
        "verify_ok": scan_ok,
        "verify_offered_rps": cfg.scan_rps,
        "verify_connections": cfg.scan_connections,
        "verify_max_rps": round(scan_max.statuses["200"] / scan_max_elapsed, 1),
        "verify_max_p50_ms": _ms(percentile(scan_max.latencies, 0.50)),
        "verify_max_p99_ms": _ms(percentile(scan_max.latencies, 0.99)),
        "verify_concurrency": cfg.scan_concurrency,
        "verify_server_cpu_ms": _cpu_ms_per(scan_cpu, scan_cpu_after, len(scan.latencies)),
        "verify_inprocess_p99_ms": _ms(percentile(inproc, 0.99)),
        "verify_inprocess_p50_ms": _ms(percentile(inproc, 0.50)),
        "redemptions_per_s": round(confirmed / redeem_elapsed, 1),
        "redemptions_confirmed": confirmed,
        "redemptions_sent": redeem.sent,
        "redemptions_seconds": round(redeem_elapsed, 2),
        "redemption_p50_ms": _ms(percentile(redeem.latencies, 0.50)),
        "redemption_p99_ms": _ms(percentile(redeem.latencies, 0.99)),
        "redemption_statuses": dict(redeem.statuses),
        "redemption_transactions": len(redeem.tx_hashes),
        "redemptions_per_transaction": round(confirmed / max(1, len(redeem.tx_hashes)), 1),
        "redemption_server_cpu_ms": _cpu_ms_per(redeem_cpu, redeem_cpu_after, confirmed),
        "merchants": cfg.merchants,
        "concurrent_terminals": cfg.merchants * cfg.terminals_per_merchant,
        "onchain_redeemed_delta": chain_delta,
        "balance_delta": balance_delta,
        "confirmed_amount": redeem.confirmed_amount,
        "onchain_matches": chain_delta == redeem.confirmed_amount == balance_delta,
        "scan_statuses": dict(scan.statuses),
        "scan_mean_ms": _ms(statistics.fmean(scan.latencies)) if scan.latencies else 0.0,
        "head_block": head,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._load", description=__doc__)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--rpc-url", required=True)
    parser.add_argument("--scan-seconds", type=float, default=DEFAULTS.scan_seconds)
    parser.add_argument("--scan-rps", type=float, default=DEFAULTS.scan_rps)
    parser.add_argument("--scan-connections", type=int, default=DEFAULTS.scan_connections)
    parser.add_argument("--scan-max-seconds", type=float, default=DEFAULTS.scan_max_seconds)
    parser.add_argument("--scan-concurrency", type=int, default=DEFAULTS.scan_concurrency)
    parser.add_argument("--redeem-seconds", type=float, default=DEFAULTS.redeem_seconds)
    parser.add_argument("--redeem-count", type=int, default=DEFAULTS.redeem_count)
    parser.add_argument("--server-pid", type=int, default=None)
    parser.add_argument(
        "--terminals-per-merchant", type=int, default=DEFAULTS.terminals_per_merchant
    )
    args = parser.parse_args(argv)
    cfg = LoadConfig(
        base_url=args.base_url,
        rpc_url=args.rpc_url,
        scan_seconds=args.scan_seconds,
        scan_rps=args.scan_rps,
        scan_connections=args.scan_connections,
        scan_max_seconds=args.scan_max_seconds,
        scan_concurrency=args.scan_concurrency,
        redeem_seconds=args.redeem_seconds,
        redeem_count=args.redeem_count,
        terminals_per_merchant=args.terminals_per_merchant,
        server_pid=args.server_pid,
    )
    figures = asyncio.run(run(cfg))
    print(json.dumps(figures, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
