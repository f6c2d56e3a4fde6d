"""The load-generating client of :mod:`bench.api`: a separate process that talks to a running
service over loopback HTTP and prints one JSON object as its last line. The timed phases use
:mod:`bench._http` (one cheap keep-alive connection per worker); the set-up uses httpx.

A short-lived pass token serves one checkout (docs/security.md, "Threat model"), so every
redemption carries a token of its own, signed for it by :class:`bench._tokens.CheckoutTokens`
(one checkout per pass at a time, then the pass rests 1 s): the run needs many demo holders
(``holders``, seeded by the service with ``STADJERSPAS_DEMO_HOLDERS``).

Phases:

1. set-up: log in one demo holder (pass number + development PIN) and fetch its pass token URI
   from the holder endpoint (its EIP-712 domain signs every token of the run); read the demo
   passes' ids from the run's registry (``database_url``); log in the development terminal of
   every merchant;
2. ``scan``: open loop at ``scan_rps`` on tokens of the first ``scan_passes`` passes (a scan
   spends nothing, so these are reused, as a holder's code is shown again), then
   ``concurrency`` workers back to back for ``scan_max_seconds``; each request timed on the
   client (send to full response); then one untimed scan of every pass (as a checkout scans
   before it redeems);
3. ``redeem``: ``merchants x terminals`` workers post small budget redemptions (unique
   ``Idempotency-Key`` each), each a checkout of a free pass with a fresh token, until
   ``seconds`` pass or ``count`` were sent; only HTTP 201 with a ``tx_hash`` counts as confirmed;
4. check: the merchants' on-chain ``merchantAccount`` totals and the budget balances of every
   demo pass (batched ``eth_call`` to the node) moved by exactly the confirmed amount.

Also measures in-process ``decode_token_uri`` + ``verify_pass_token`` for comparison.
Run by :mod:`bench.api`; by hand:
``python -m bench._load --base-url ... --rpc-url ... --database-url sqlite:///<var>/stadjerspas.db``.
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
from bench._tokens import CheckoutTokens, demo_merchant_addresses, demo_pass_ids
from ledger.node import DEV_MNEMONIC
from wallet import Domain, decode_token_uri, verify_pass_token
from wallet.verify import recover_signer

__all__ = ["BENCH_HOLDERS", "DEFAULTS", "LoadConfig", "main", "percentile", "run"]

MERCHANTS = 3
#: Demo holders of a run: at one checkout per pass per second (plus the redemption's own
#: latency) 1,000 passes carry about 750 redemptions/s, well above the 300/s target.
BENCH_HOLDERS = 1_000
_RPC_BATCH = 250  # eth_calls per JSON-RPC batch
REDEEM_AMOUNT = 100  # cents
_DUMP = os.environ.get("BENCH_DUMP")  # debugging: write "due_s latency_ms" per scan there
_PHASE = os.environ.get("BENCH_PHASE")  # profiling: the name of the phase running is written there


def _phase(name: str) -> None:
    if _PHASE:
        Path(_PHASE).write_text(name + "\n", encoding="utf-8")


_DUMP_ROWS: list[tuple[float, float]] = []

_MERCHANT_ACCOUNT = keccak(text="merchantAccount(address)")[:4]
_BALANCE_OF = keccak(text="balanceOf(uint256,bytes32)")[:4]


@dataclass(frozen=True, slots=True)
class LoadConfig:
    base_url: str
    rpc_url: str
    database_url: str = ""  # the service's registry: the demo passes' ids are read there
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
    holders: int = BENCH_HOLDERS  # demo passes the redemptions rotate through
    scan_passes: int = DEMO_HOLDER_COUNT  # passes whose tokens the scan phases show again
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
    passes_used: set[int] = field(default_factory=set)
    pass_waits: int = 0  # checkouts that found no pass free (the load, not the service, limits)


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
    tokens: CheckoutTokens,
    scheme_id: int,
    cfg: LoadConfig,
) -> tuple[_Tally, float]:
    """Each redemption is one checkout: a free pass, a token signed for it, one request (a
    dropped connection is retried with the same key and token); the pass is given back once
    the redemption is answered (a pass whose answer never came is not used again)."""
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

    held = _Held()  # passes in a checkout or resting after one: none free when all are
    loop = asyncio.get_running_loop()

    def rested() -> None:
        held.count -= 1

    def release(index: int) -> None:
        tokens.give_back(index)
        loop.call_later(tokens.rest_s, rested)

    async def redeem_until_done(connection: Connection, merchant_index: int) -> None:
        headers = {"Authorization": f"Bearer {terminals[merchant_index]}"}
        while time.perf_counter() < deadline:
            if held.count >= len(tokens.pass_ids):
                tally.pass_waits += 1
            index, uri = await tokens.take()
            held.count += 1
            i = next(counter)
            if i >= cfg.redeem_count or time.perf_counter() >= deadline:
                release(index)
                return
            tally.sent += 1
            tally.passes_used.add(index)
            body = {"token": uri, "scheme_id": scheme_id, "amount": REDEEM_AMOUNT}
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
            release(index)
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


async def _scan_every_pass(terminal: str, tokens: CheckoutTokens, cfg: LoadConfig) -> None:
    """One scan of every pass, not timed: a checkout scans the pass before it redeems, so the
    service knows every pass (its state cache) as it knew the 50 demo passes before the
    redemption phase when one token served every checkout. Each scan's token is new, so the
    redemptions' tokens are still recovered once each."""
    headers = {"Authorization": f"Bearer {terminal}"}
    indices = iter(range(len(tokens.pass_ids)))

    async def worker() -> None:
        connection = Connection(cfg.base_url)
        try:
            for index in indices:
                response = await connection.post(
                    "/merchant/scan", {"token": tokens.mint(index)}, headers
                )
                if response.status_code != 200:
                    raise RuntimeError(f"scan of demo pass {index + 1}: {response.status_code}")
        finally:
            await connection.close()

    await asyncio.gather(*(worker() for _ in range(cfg.scan_concurrency)))


@dataclass(slots=True)
class _Held:
    count: int = 0


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
    client: httpx.AsyncClient,
    rpc_url: str,
    ledger: str,
    scheme_id: int,
    pass_ids: Sequence[bytes],
) -> int:
    """The sum of ``balanceOf(scheme_id, pass)`` over ``pass_ids``: batched ``eth_call``s to
    the node (1,000 passes in a fraction of a second; a holder login per pass would cost an
    Argon2 hash each)."""
    total = 0
    scheme_word = scheme_id.to_bytes(32, "big")
    for first in range(0, len(pass_ids), _RPC_BATCH):
        chunk = pass_ids[first : first + _RPC_BATCH]
        payload = [
            {
                "jsonrpc": "2.0",
                "id": n,
                "method": "eth_call",
                "params": [
                    {"to": ledger, "data": "0x" + (_BALANCE_OF + scheme_word + pid).hex()},
                    "latest",
                ],
            }
            for n, pid in enumerate(chunk)
        ]
        response = await client.post(rpc_url, json=payload)
        response.raise_for_status()
        answers = response.json()
        if not isinstance(answers, list) or len(answers) != len(chunk):
            raise RuntimeError(f"the node answered a batch of {len(chunk)} with {answers!r:.200}")
        for answer in answers:
            if "result" not in answer:
                raise RuntimeError(f"balanceOf failed: {answer.get('error')!r}")
            total += int(str(answer["result"]), 16)
    return total


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
        _, _, holder_uri = await _holder(client, 1)
        domain = decode_token_uri(holder_uri).domain  # as the holder page signs it
        if domain != Domain(chain_id=chain_id, verifying_contract=ledger):
            raise RuntimeError(f"the holder endpoint signs for {domain}, /health says {ledger}")
        numbers = [demo_pass_number(i) for i in range(1, cfg.holders + 1)]
        pass_ids = demo_pass_ids(cfg.database_url, numbers)
        tokens = CheckoutTokens(domain=domain, pass_ids=pass_ids)
        uris = [tokens.mint(index) for index in range(min(cfg.scan_passes, len(pass_ids)))]
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

        _phase("scan-every-pass")
        await _scan_every_pass(terminals[0], tokens, cfg)
        merchants = demo_merchant_addresses(cfg.database_url, cfg.merchants)
        before_chain = [await _merchant_redeemed(client, cfg.rpc_url, ledger, m) for m in merchants]
        before_balances = await _budget_total(client, cfg.rpc_url, ledger, scheme_id, pass_ids)
        _phase("redeem")
        redeem_cpu = cpu_seconds(cfg.server_pid)
        redeem, redeem_elapsed = await _redeem_phase(terminals, tokens, scheme_id, cfg)
        redeem_cpu_after = cpu_seconds(cfg.server_pid)
        _phase("done")
        after_chain = [await _merchant_redeemed(client, cfg.rpc_url, ledger, m) for m in merchants]
        after_balances = await _budget_total(client, cfg.rpc_url, ledger, scheme_id, pass_ids)
        head = (await client.get("/health")).json()["head_block"]

    Account.enable_unaudited_hdwallet_features()
    signer = Account.from_mnemonic(
        DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{DEV_ACCOUNT_INDEX['pass_signer']}"
    ).address
    fresh = [tokens.mint(index) for index in range(len(uris))]  # the scan tokens may be old now
    inproc = _inprocess_verify(fresh, ledger, chain_id, signer, cfg.inprocess_iterations)

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
        "redemption_passes": cfg.holders,
        "redemption_passes_used": len(redeem.passes_used),
        "redemption_pass_waits": redeem.pass_waits,
        "scan_passes": len(uris),
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
    parser.add_argument(
        "--database-url", required=True, help="the service's registry (sqlite:///<var>/...)"
    )
    parser.add_argument("--holders", type=int, default=DEFAULTS.holders, help="demo passes")
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
        database_url=args.database_url,
        holders=args.holders,
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
