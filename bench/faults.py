"""Fault injection: seeded crashes and cuts while 96 terminals redeem, then the chain's verdict.

``python -m bench.faults`` runs scenarios (round-robin over ``--scenario``, default all) with
seeds ``--seed``, ``--seed + 1``, ... Each run:

1. a fresh temporary directory; the service (``stadjerspas up``, development defaults) on free
   loopback ports, as :mod:`bench.api` starts it; some scenarios put a node, a TCP proxy or
   PostgreSQL beside it (see :data:`SCENARIOS`);
2. 96 terminal workers (32 per demo merchant, over the merchants' development terminals) redeem
   small budget amounts from 400 demo passes for ``--duration`` seconds, each redemption a
   checkout of its own: a pass that no other terminal serves at that moment, a fresh token for
   it (a token serves one checkout, :mod:`bench._tokens`) and a fresh ``Idempotency-Key``. On a
   connection failure, a timeout, a 5xx, 408 or 429 a worker retries **the same key and body**
   (as a real terminal does) until it gets 201 or another 4xx; every 201 is recorded
   (redemption id, merchant, credited, transaction hash);
   beside them the municipality's office issues 1-cent entitlements to random passes
   (``POST /admin/entitlements``, the issuer's relayer) and enrols a partner every fourth
   request (``POST /admin/merchants``, the admin's relayer grants the merchant role), five a
   second, never retried (neither is idempotent);
3. at a seeded moment (25-60 % into the load) the scenario's fault is injected;
4. after the load (and every retry) has ended, the bench waits until ``/health`` is ``ok`` and the
   outbox has no open row (``signed``, ``sent``, ``mined``), then checks from the chain itself
   (``eth_getLogs`` of the ledger, decoded by :mod:`ledger.events`, and the contract's views):

   - ``lost``: a 201 whose redemption id has no ``Redeemed`` log, or one with another merchant
     or credited amount; a pass with fewer new 1-cent ``EntitlementIssued`` logs than its
     issuances answered 201; a partner answered 201 whose address lacks the merchant role;
   - ``doubled``: a redemption id logged twice, or more new ``Redeemed`` logs than keys that
     were answered 201 plus keys left without an answer (``unanswered``; such a key may still
     have landed: that is ``unanswered_landed``, neither lost nor doubled); a pass with more
     new 1-cent issuances than answered plus unanswered ones;
   - per merchant: credited on chain == credited in the 201 answers + what unanswered keys
     landed (``merchant_mismatch``);
   - per scheme: issued + claimed - redeemed + reversed - expired == the sum of the contract's
     ``balanceOf`` over every entitlement (``scheme_mismatch``);
   - ``stadjerspas audit`` (chain, index, reports, the service's promises, the outbox) exits 0.

5. the service is stopped with SIGINT.

Prints a table per run; ``--json`` prints one JSON object as the last line (``runs``,
``faults_injected``, ``confirmed``, ``lost``, ``doubled``, ``audit_clean_runs``, per scenario
under ``scenarios`` and every run under ``details``). Exit status 0 when nothing was lost or
doubled and every audit was clean. ``--keep`` keeps the temporary directories (logs:
``service.log``, ``var/anvil/anvil.log``). See ``docs/reliability.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from api.auth import DEV_STAFF, dev_terminal_id, dev_terminal_secret
from api.demo import demo_pass_number
from api.settings import PROJECT_ROOT
from bench._http import Connection, HttpError
from bench._load import MERCHANTS, _budget_scheme, _login
from bench._tokens import CheckoutTokens, demo_merchant_addresses, demo_pass_ids
from bench.api import BenchError, _executable, _free_port, _tail
from ledger.deploy import load_deployment
from wallet import Domain

__all__ = ["SCENARIOS", "main", "run_scenario", "summarize"]

#: Every scenario, in round-robin order.
SCENARIOS = (
    "node-kill",
    "service-kill",
    "both",
    "postgres-restart",
    "proxy-node",
    "proxy-db",
    "indexer-kill",
)
TERMINALS_PER_MERCHANT = 32  # x 3 merchants = 96 concurrent terminals
STARTUP_TIMEOUT_S = 120.0
QUIET_TIMEOUT_S = 120.0
#: how long after the load a key may still be retried before it counts as unanswered
RETRY_GRACE_S = 120.0
REQUEST_TIMEOUT_S = 45.0  # the service answers 504 after its 30 s receipt timeout
STOP_TIMEOUT_S = 30.0
AUDIT_TIMEOUT_S = 300.0
_OPEN_OUTBOX = ("signed", "sent", "mined")
_RETRIED_4XX = {408, 425, 429}


# ================================================================== processes


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux ``/proc``)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> str:
    try:
        return (
            (Path(f"/proc/{pid}/cmdline").read_bytes())
            .replace(b"\0", b" ")
            .decode(errors="replace")
        )
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _wait_gone(pids: Sequence[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def anvil_children(service_pid: int) -> list[int]:
    """The embedded anvil process(es) of the service ``service_pid``."""
    return [p for p in _children(service_pid) if "anvil" in _cmdline(p)]


class ServiceProcess:
    """``stadjerspas up`` in ``tmp`` that can be killed and started again on the same state
    directory and ports (the log is appended to)."""

    def __init__(self, tmp: Path, extra_env: dict[str, str]) -> None:
        self.tmp = tmp
        self.var_dir = tmp / "var"
        self.log = tmp / "service.log"
        self.api_port, self.anvil_port = _free_port(), _free_port()
        self.base_url = f"http://127.0.0.1:{self.api_port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("STADJERSPAS_")},
            "STADJERSPAS_ENV": "development",
            "STADJERSPAS_VAR_DIR": str(self.var_dir),
            "STADJERSPAS_HOST": "127.0.0.1",
            "STADJERSPAS_PORT": str(self.api_port),
            "STADJERSPAS_ANVIL_PORT": str(self.anvil_port),
            # 96 terminals on three logins: per-client rate limiting would refuse the load
            "STADJERSPAS_RATE_LIMIT_PER_S": "0",
            "STADJERSPAS_DEMO_HOLDERS": str(DEMO_HOLDERS),
            **extra_env,
        }
        self.rpc_url = self.env.get("STADJERSPAS_RPC_URL", f"http://127.0.0.1:{self.anvil_port}")
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> float:
        """Start the service and wait for ``/health``; returns the seconds it took."""
        started = time.monotonic()
        with self.log.open("ab") as out:
            out.write(f"\n===== bench.faults: start #{self.starts + 1} =====\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [*_executable(), "up", "--log-level", "warning"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        deadline = started + STARTUP_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"the service exited with {self.proc.returncode}: {_tail(self.log)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/health", timeout=2.0).status_code == 200:
                    return time.monotonic() - started
            if time.monotonic() > deadline:
                raise BenchError(f"no /health within {STARTUP_TIMEOUT_S:.0f} s: {_tail(self.log)}")
            time.sleep(0.2)

    def kill(self, *, group: bool) -> list[int]:
        """SIGKILL the service process (``group``: its whole process group, the embedded anvil
        included, at once). Returns the pids of the embedded anvil found before the kill."""
        assert self.proc is not None
        nodes = anvil_children(self.pid)
        if group:
            os.killpg(self.pid, signal.SIGKILL)
        else:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        return nodes

    def stop(self) -> int | None:
        """SIGINT, as an operator stops it; SIGKILL after :data:`STOP_TIMEOUT_S`."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        # nothing of this run may outlive it (an orphaned anvil would hold its port)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        return self.proc.returncode

    def health(self, timeout: float = 5.0) -> dict[str, Any] | None:
        try:
            response = httpx.get(f"{self.base_url}/health", timeout=timeout)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        data: dict[str, Any] = response.json()
        return data


# ================================================================== load


@dataclass(slots=True)
class Answer:
    key: str
    merchant_id: int
    amount: int
    redemption_id: int
    credited: int
    tx_hash: str
    attempts: int


@dataclass(slots=True)
class LoadTally:
    answers: list[Answer] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)  # definitive 4xx by code
    retried: Counter[str] = field(default_factory=Counter)  # why an attempt was retried
    #: key, merchant, amount, the last answer to a retry
    unanswered: list[tuple[str, int, int, str]] = field(default_factory=list)
    keys: int = 0
    attempts: int = 0
    #: the office's 201 answers: pass index -> 1-cent issuances confirmed, and the addresses
    #: of partners whose enrolment was confirmed
    issued: Counter[int] = field(default_factory=Counter)
    enrolled: list[str] = field(default_factory=list)
    #: office requests without a definitive answer (they may still have landed)
    office_unanswered: Counter[int] = field(default_factory=Counter)
    office_refused: Counter[str] = field(default_factory=Counter)


#: demo holders the service enrols for a run: with one checkout per pass at a time, each
#: resting a second, enough for every terminal to have a pass to serve
DEMO_HOLDERS = 400


def _checkout_tokens(var_dir: Path, database_url: str) -> CheckoutTokens:
    """One token per checkout for the run's demo passes (bench._tokens)."""
    deployment = load_deployment(var_dir / "deployment.json")
    if deployment is None:
        raise BenchError(f"no deployment record in {var_dir}")
    numbers = [demo_pass_number(i) for i in range(1, DEMO_HOLDERS + 1)]
    return CheckoutTokens(
        domain=Domain(deployment.chain_id, deployment.ledger_address),
        pass_ids=demo_pass_ids(database_url, numbers),
    )


async def _redeem_once(
    connection: Connection,
    headers: dict[str, str],
    body: dict[str, Any],
    give_up_at: float,
    tally: LoadTally,
) -> tuple[str, Any]:
    """Post one redemption, retrying the same key and body until 201 or a definitive 4xx.
    Returns ("201", json), ("refused", code) or ("unanswered", the last answer)."""
    delay = 0.1
    last = ""
    while True:
        tally.attempts += 1
        try:
            response = await connection.post("/merchant/redemptions", body, headers)
        except HttpError as exc:
            last = f"connection: {str(exc).split(':', 2)[-2].strip()}"
            tally.retried[last] += 1
        else:
            code = response.status_code
            if code == 201:
                return "201", response.json()
            try:
                reason = str(response.json().get("code", ""))
            except (ValueError, AttributeError):
                reason = ""
            if 400 <= code < 500 and code not in _RETRIED_4XX:
                return "refused", f"{code} {reason}".strip()
            last = f"{code} {reason}".strip()
            tally.retried[last] += 1
        if time.monotonic() > give_up_at:
            return "unanswered", last
        await asyncio.sleep(delay)
        delay = min(1.0, delay * 2)


async def run_load(
    base_url: str,
    *,
    tokens: CheckoutTokens,
    duration_s: float,
    rng: random.Random,
    fault: Callable[[], Any] | None,
    fault_at_s: float,
    events: list[tuple[float, str]],
) -> LoadTally:
    """96 terminals redeem for ``duration_s``, each redemption a checkout with a pass and a
    token of its own (``tokens``); ``fault`` (blocking, run in a thread) is called
    ``fault_at_s`` into the load."""
    tally = LoadTally()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30.0) as client:
        terminals = [
            await _login(client, "terminal", dev_terminal_id(m), dev_terminal_secret(m))
            for m in range(1, MERCHANTS + 1)
        ]
        # a scan does not spend a token: mint one to find the budget scheme
        scheme_id = await _budget_scheme(client, terminals[0], tokens.mint(0))
        run_id = uuid.uuid4().hex[:8]
        counter = itertools.count()
        amounts = [rng.randint(1, 9) for _ in range(4096)]
        t0 = time.monotonic()
        load_end = t0 + duration_s
        give_up_at = load_end + RETRY_GRACE_S

        async def worker(merchant_index: int) -> None:
            merchant_id = merchant_index + 1
            connection = Connection(base_url, timeout=REQUEST_TIMEOUT_S)
            try:
                while time.monotonic() < load_end:
                    i = next(counter)
                    key = f"faults-{run_id}-{i}"
                    amount = amounts[i % len(amounts)]
                    held, token = await tokens.take()
                    body = {"token": token, "scheme_id": scheme_id, "amount": amount}
                    headers = {
                        "Authorization": f"Bearer {terminals[merchant_index]}",
                        "Idempotency-Key": key,
                    }
                    tally.keys += 1
                    attempts_before = tally.attempts
                    try:  # a retry keeps the body, token included: the same checkout
                        kind, value = await _redeem_once(
                            connection, headers, body, give_up_at, tally
                        )
                    finally:
                        tokens.give_back(held)
                    if kind == "201":
                        tally.answers.append(
                            Answer(
                                key=key,
                                merchant_id=int(value["merchant_id"]),
                                amount=amount,
                                redemption_id=int(value["redemption_id"]),
                                credited=int(value["credited"]),
                                tx_hash=str(value["tx_hash"]),
                                attempts=tally.attempts - attempts_before,
                            )
                        )
                        if int(value["merchant_id"]) != merchant_id:
                            tally.refused["201 for another merchant"] += 1
                    elif kind == "refused":
                        tally.refused[str(value)] += 1
                    else:
                        tally.unanswered.append((key, merchant_id, amount, str(value)))
            finally:
                await connection.close()

        async def office() -> None:
            """The municipality's office at work during the fault: 1-cent issuances to random
            passes (the issuer's relayer) and, every fourth request from the second on, a
            partner enrolled (the admin's relayer grants its role). Neither is idempotent, so
            never retried: a request without a definitive answer is counted as unanswered (it
            may have landed)."""
            staff = await _login(client, "staff", "admin", DEV_STAFF["admin"][1])
            headers = {"Authorization": f"Bearer {staff}"}
            connection = Connection(base_url, timeout=REQUEST_TIMEOUT_S)
            try:
                for n in itertools.count():
                    if time.monotonic() >= load_end:
                        return
                    index = rng.randrange(len(tokens.pass_ids))
                    try:
                        if n % 4 == 1:
                            body: dict[str, Any] = {
                                "name": f"Partner {run_id} {n}",
                                "kvk_number": f"{70_000_000 + n:08d}",
                                "category": "sport",
                            }
                            response = await connection.post("/admin/merchants", body, headers)
                        else:
                            body = {
                                "pass_number": demo_pass_number(index + 1),
                                "scheme_id": scheme_id,
                                "amount": 1,
                            }
                            response = await connection.post("/admin/entitlements", body, headers)
                    except HttpError:
                        tally.office_unanswered[-1 if n % 4 == 1 else index] += 1
                        await asyncio.sleep(0.5)  # the service is down: as staff would wait
                        continue
                    if response.status_code == 201:
                        if n % 4 == 1:
                            tally.enrolled.append(str(response.json()["address"]))
                        else:
                            tally.issued[index] += 1
                    elif 400 <= response.status_code < 500:
                        tally.office_refused[str(response.status_code)] += 1
                    else:
                        tally.office_unanswered[-1 if n % 4 == 1 else index] += 1
                    await asyncio.sleep(0.2)
            finally:
                await connection.close()

        async def injector() -> None:
            if fault is None:
                return
            await asyncio.sleep(max(0.0, t0 + fault_at_s - time.monotonic()))
            events.append((round(time.monotonic() - t0, 2), "fault"))
            await asyncio.to_thread(fault)
            events.append((round(time.monotonic() - t0, 2), "recovered"))

        injecting = asyncio.create_task(injector())
        try:
            await asyncio.gather(
                office(),
                *(worker(m) for m in range(MERCHANTS) for _ in range(TERMINALS_PER_MERCHANT)),
            )
            await injecting
        finally:
            injecting.cancel()
            await asyncio.gather(injecting, return_exceptions=True)
    return tally


# ================================================================== the chain's verdict


@dataclass(slots=True)
class ChainView:
    """The ledger as its logs and views say."""

    redeemed: dict[int, list[tuple[str, int]]]  # redemption id -> [(merchant, credited)]
    scheme_mismatch: list[str]
    head: int
    #: pass id -> single 1-cent ``EntitlementIssued`` logs (the office's issuances)
    issued_cents: Counter[bytes] = field(default_factory=Counter)
    #: addresses asked about (``enrolled``) that do not hold the merchant role
    without_role: list[str] = field(default_factory=list)


def read_chain(rpc_url: str, var_dir: Path, *, enrolled: Sequence[str] = ()) -> ChainView:
    """Every ``Redeemed`` log of the ledger, the single 1-cent issuances per pass, per scheme
    the recomputed remainder against the contract's ``balanceOf``, and which of the
    ``enrolled`` addresses lack the merchant role."""
    from web3 import HTTPProvider, Web3

    from ledger.audit import fetch_events, recompute
    from ledger.client import LedgerClient, SchemeKind
    from ledger.compiler import compile_contracts
    from ledger.deploy import load_deployment
    from ledger.rpc import RpcClient

    deployment = load_deployment(var_dir / "deployment.json")
    if deployment is None:
        raise BenchError(f"no deployment record in {var_dir}")
    artifacts = compile_contracts(project_root=PROJECT_ROOT, cache_dir=var_dir / "build")
    abi = artifacts.get("StadjerspasLedger").abi
    w3 = Web3(HTTPProvider(rpc_url))
    client = LedgerClient(w3, address=deployment.ledger_address, abi=abi)
    rpc = RpcClient(rpc_url)
    try:
        head = int(str(rpc.call("eth_blockNumber")), 16)
        events = fetch_events(rpc, client, from_block=deployment.deployed_block, to_block=head)
        redeemed: dict[int, list[tuple[str, int]]] = {}
        issued_cents: Counter[bytes] = Counter()
        for event in events:
            if event.name == "Redeemed":
                rid = int(event.args["redemptionId"])
                merchant = str(event.args["merchant"]).lower()
                redeemed.setdefault(rid, []).append((merchant, int(event.args["credited"])))
            elif event.name == "EntitlementIssued" and int(event.args["amount"]) == 1:
                issued_cents[bytes(event.args["passId"])] += 1
        without_role = [a for a in enrolled if not client.has_role("merchant", a)]
        state = recompute(events)
        views: Counter[int] = Counter()
        recomputed: Counter[int] = Counter()
        for (scheme_id, pass_id), balance in state.balances.items():
            views[scheme_id] += client.balance_of(scheme_id, pass_id)
            recomputed[scheme_id] += balance
        mismatch: list[str] = []
        for scheme_id, figures in sorted(state.schemes.items()):
            finite = figures.kind in (SchemeKind.BUDGET, SchemeKind.USES)
            expected = figures.remaining_expected if finite else recomputed[scheme_id]
            if views[scheme_id] != expected or recomputed[scheme_id] != expected:
                mismatch.append(
                    f"scheme {scheme_id}: issued+claimed-redeemed+reversed-expired={expected}, "
                    f"recomputed balances={recomputed[scheme_id]}, balanceOf={views[scheme_id]}"
                )
        mismatch += [f"{d.kind} {d.key}" for d in state.anomalies]
    finally:
        rpc.close()
    return ChainView(
        redeemed=redeemed,
        scheme_mismatch=mismatch,
        head=head,
        issued_cents=issued_cents,
        without_role=without_role,
    )


def office_verdict(
    tally: LoadTally, before: Counter[bytes], chain: ChainView, *, pass_ids: Sequence[bytes]
) -> tuple[list[str], list[str]]:
    """(lost, doubled) of the office's answers: per pass, the 1-cent issuances new on chain
    must be at least those answered 201 and at most those plus the unanswered ones; every
    partner enrolment answered 201 holds the merchant role on chain."""
    lost: list[str] = []
    doubled: list[str] = []
    for index, pid in enumerate(pass_ids):
        landed = chain.issued_cents[pid] - before[pid]
        answered = tally.issued[index]
        if landed < answered:
            lost.append(f"pass {index + 1}: {answered} issuances answered 201, {landed} on chain")
        elif landed > answered + tally.office_unanswered[index]:
            doubled.append(
                f"pass {index + 1}: {landed} issuances on chain, {answered} answered 201 and "
                f"{tally.office_unanswered[index]} unanswered"
            )
    lost += [f"partner {address}: enrolled 201, no merchant role" for address in chain.without_role]
    return lost, doubled


def verdict(
    tally: LoadTally, before: set[int], chain: ChainView, *, merchant_addresses: list[str]
) -> dict[str, Any]:
    """Compare the 201 answers with the chain (see the module docstring)."""
    merchants = [a.lower() for a in merchant_addresses]
    lost: list[str] = []
    doubled = [
        f"id {rid} logged {len(logs)} times"
        for rid, logs in chain.redeemed.items()
        if len(logs) > 1
    ]
    answered_ids: set[int] = set()
    answered_credit: Counter[str] = Counter()
    for answer in tally.answers:
        merchant = merchants[answer.merchant_id - 1]
        answered_credit[merchant] += answer.credited
        if answer.redemption_id in answered_ids:
            doubled.append(f"id {answer.redemption_id} answered 201 to two keys")
        answered_ids.add(answer.redemption_id)
        logs = chain.redeemed.get(answer.redemption_id)
        if not logs:
            lost.append(
                f"{answer.key}: id {answer.redemption_id} (tx {answer.tx_hash}) not on chain"
            )
        elif logs[0] != (merchant, answer.credited):
            lost.append(
                f"{answer.key}: id {answer.redemption_id} on chain as {logs[0]}, "
                f"answered ({merchant}, {answer.credited})"
            )
    new_ids = set(chain.redeemed) - before
    extra = new_ids - answered_ids
    unanswered = len(tally.unanswered)
    if len(extra) > unanswered:
        doubled.append(
            f"{len(extra)} redemptions on chain without a 201, but only {unanswered} keys "
            "were left unanswered"
        )
    chain_credit: Counter[str] = Counter()
    for rid in new_ids:
        merchant, credited = chain.redeemed[rid][0]
        chain_credit[merchant] += credited
    extra_credit: Counter[str] = Counter()
    for rid in extra:
        merchant, credited = chain.redeemed[rid][0]
        extra_credit[merchant] += credited
    merchant_mismatch = [
        f"merchant {m}: on chain {chain_credit[m]}, answered {answered_credit[m]} "
        f"+ unanswered landed {extra_credit[m]}"
        for m in merchants
        if chain_credit[m] != answered_credit[m] + extra_credit[m]
    ]
    return {
        "confirmed": len(tally.answers),
        "lost": len(lost),
        "doubled": len(doubled),
        "unanswered": unanswered,
        "unanswered_landed": len(extra),
        "merchant_mismatch": merchant_mismatch,
        "scheme_mismatch": chain.scheme_mismatch,
        "unanswered_detail": [" ".join(map(str, u)) for u in tally.unanswered[:20]],
        "lost_detail": lost[:20],
        "doubled_detail": doubled[:20],
    }


def run_audit(rpc_url: str, database_url: str, var_dir: Path) -> tuple[bool, str]:
    """``stadjerspas audit`` against the run's chain and database: (exit 0, summary)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STADJERSPAS_")}
    env.update(
        STADJERSPAS_ENV="development",
        STADJERSPAS_VAR_DIR=str(var_dir),
        STADJERSPAS_RPC_URL=rpc_url,
        STADJERSPAS_DATABASE_URL=database_url,
    )
    cmd = [
        *_executable(),
        "audit",
        "--rpc-url",
        rpc_url,
        "--database-url",
        database_url,
        "--deployment",
        str(var_dir / "deployment.json"),
        "--json",
    ]
    done = subprocess.run(
        cmd,
        env=env,
        cwd=PROJECT_ROOT,  # where contracts/ is (the ABI is compiled from it, cached)
        capture_output=True,
        text=True,
        timeout=AUDIT_TIMEOUT_S,
        check=False,
    )
    summary = f"exit {done.returncode}"
    try:
        result = json.loads(done.stdout[done.stdout.index("{") :])
        kinds = Counter(str(d.get("kind")) for d in result.get("differences", []))
        if kinds:
            summary += ": " + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items()))
    except (ValueError, AttributeError):
        if done.returncode != 0:
            summary += ": " + (done.stderr.strip() or done.stdout.strip())[-300:]
    return done.returncode == 0, summary


# ================================================================== scenarios


@dataclass(slots=True)
class Setup:
    """What a scenario runs beside the service, and how it breaks things."""

    extra_env: dict[str, str] = field(default_factory=dict)
    #: the database and node as the checks reach them (never through a proxy)
    database_url: str | None = None
    rpc_url: str | None = None
    fault: Callable[[ServiceProcess], str] | None = None
    cleanup: list[Callable[[], Any]] = field(default_factory=list)
    #: started after the service, stopped before it (e.g. a separate indexer)
    after_start: Callable[[ServiceProcess], Any] | None = None


def _wait_health(svc: ServiceProcess, *, head: bool, timeout_s: float = 90.0) -> float:
    """Seconds until ``/health`` answers (``head``: and the node answers it too)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        health = svc.health(timeout=2.0)
        if health is not None and (not head or health.get("head_block") is not None):
            return time.monotonic() - started
        time.sleep(0.1)
    raise BenchError(f"the service did not recover within {timeout_s:.0f} s: {_tail(svc.log)}")


def fault_node_kill(svc: ServiceProcess) -> str:
    """SIGKILL the embedded anvil; the service's supervisor must start it again."""
    nodes = anvil_children(svc.pid)
    if not nodes:
        raise BenchError(f"no anvil child of the service (pid {svc.pid})")
    for pid in nodes:
        os.kill(pid, signal.SIGKILL)
    _wait_gone(nodes, 10)
    deadline = time.monotonic() + 60
    while not [p for p in anvil_children(svc.pid) if p not in nodes]:
        if time.monotonic() > deadline:
            raise BenchError("the supervisor did not start anvil again within 60 s")
        time.sleep(0.05)
    recovered = _wait_health(svc, head=True)
    return f"SIGKILL anvil {nodes}; restarted by the supervisor, answering after {recovered:.1f} s"


def fault_service_kill(svc: ServiceProcess) -> str:
    """SIGKILL the service's Python process alone; its orphaned anvil then gets SIGTERM (as
    systemd's ``KillMode=control-group`` does with what is left of a unit whose main process
    died), so it dumps its state and frees its port; then the service is started again."""
    nodes = svc.kill(group=False)
    for pid in nodes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if not _wait_gone(nodes, 15):
        for pid in nodes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_gone(nodes, 5)
    took = svc.start()
    return f"SIGKILL service, SIGTERM anvil {nodes}; started again in {took:.1f} s"


def fault_both(svc: ServiceProcess) -> str:
    """SIGKILL the service's whole process group (service and anvil at once), start again."""
    nodes = svc.kill(group=True)
    _wait_gone(nodes, 10)
    took = svc.start()
    return f"SIGKILL service + anvil {nodes} (process group); started again in {took:.1f} s"


def setup_embedded(name: str, tmp: Path) -> Setup:
    faults = {"node-kill": fault_node_kill, "service-kill": fault_service_kill, "both": fault_both}
    return Setup(fault=faults[name])


#: scenario -> how to set it up (more are added by :mod:`bench._faults_extra`)
SETUPS: dict[str, Callable[[str, Path], Setup]] = {
    "node-kill": setup_embedded,
    "service-kill": setup_embedded,
    "both": setup_embedded,
}


def _wait_quiet(svc: ServiceProcess) -> tuple[float | None, dict[str, Any] | None]:
    """Seconds until ``/health`` is ok with no open outbox row (None: not within the timeout)."""
    started = time.monotonic()
    health = None
    while time.monotonic() - started < QUIET_TIMEOUT_S:
        health = svc.health()
        if health is not None and health.get("status") == "ok":
            outbox = health.get("outbox") or {}
            if health.get("outbox") is not None and not any(outbox.get(s) for s in _OPEN_OUTBOX):
                return time.monotonic() - started, health
        time.sleep(0.25)
    return None, health


def run_scenario(name: str, seed: int, duration_s: float, *, keep: bool = False) -> dict[str, Any]:
    """One run of scenario ``name`` with ``seed``; returns its figures."""
    if name not in SETUPS:
        _load_extra()
    rng = random.Random(f"{name}/{seed}")  # noqa: S311 (a seeded schedule)
    fault_at = duration_s * rng.uniform(0.25, 0.6)
    tmp = Path(tempfile.mkdtemp(prefix=f"stadjerspas-faults-{name}-{seed}-"))
    result: dict[str, Any] = {
        "scenario": name,
        "seed": seed,
        "dir": str(tmp),
        "fault_at_s": round(fault_at, 2),
        "fault_injected": False,
    }
    events: list[tuple[float, str]] = []
    svc: ServiceProcess | None = None
    try:
        setup = SETUPS[name](name, tmp)
        try:
            svc = ServiceProcess(tmp, setup.extra_env)
            result["startup_s"] = round(svc.start(), 1)
            if setup.after_start is not None:
                setup.after_start(svc)
            rpc_url = setup.rpc_url or svc.rpc_url
            database_url = setup.database_url or f"sqlite:///{(svc.var_dir / 'stadjerspas.db')}"
            tokens = _checkout_tokens(svc.var_dir, database_url)
            start_view = read_chain(rpc_url, svc.var_dir)
            before = set(start_view.redeemed)
            notes: list[str] = []
            current = svc

            def inject() -> None:
                assert setup.fault is not None
                notes.append(setup.fault(current))

            started = time.monotonic()
            tally = asyncio.run(
                run_load(
                    svc.base_url,
                    tokens=tokens,
                    duration_s=duration_s,
                    rng=rng,
                    fault=inject,
                    fault_at_s=fault_at,
                    events=events,
                )
            )
            result["load_s"] = round(time.monotonic() - started, 1)
            result["fault_injected"] = any(kind == "fault" for _, kind in events)
            result["fault"] = notes[0] if notes else None
            result["events"] = events
            quiet, health = _wait_quiet(svc)
            result["quiet_after_s"] = None if quiet is None else round(quiet, 1)
            result["outbox"] = (health or {}).get("outbox")
            result["service_restarts"] = svc.starts - 1
            chain = read_chain(rpc_url, svc.var_dir, enrolled=tally.enrolled)
            result.update(
                verdict(
                    tally,
                    before,
                    chain,
                    merchant_addresses=demo_merchant_addresses(database_url, MERCHANTS),
                )
            )
            office_lost, office_doubled = office_verdict(
                tally, start_view.issued_cents, chain, pass_ids=tokens.pass_ids
            )
            result["lost"] += len(office_lost)
            result["doubled"] += len(office_doubled)
            result["lost_detail"] = (office_lost + result["lost_detail"])[:20]
            result["doubled_detail"] = (office_doubled + result["doubled_detail"])[:20]
            result["issued"] = sum(tally.issued.values())
            result["enrolled"] = len(tally.enrolled)
            result["office_unanswered"] = sum(tally.office_unanswered.values())
            result["office_refused"] = dict(tally.office_refused)
            result["keys"] = tally.keys
            result["attempts"] = tally.attempts
            result["refused"] = dict(tally.refused)
            result["retried"] = dict(tally.retried.most_common(8))
            result["audit_clean"], result["audit"] = run_audit(rpc_url, database_url, svc.var_dir)
        finally:
            if svc is not None:
                result["stop_exit"] = svc.stop()
            for cleanup in reversed(setup.cleanup):
                with contextlib.suppress(Exception):
                    cleanup()
    except (BenchError, OSError, subprocess.SubprocessError, httpx.HTTPError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        result.setdefault("audit_clean", False)
    finally:
        if (
            not keep
            and "error" not in result
            and result.get("audit_clean")
            and not (result.get("lost") or result.get("doubled"))
        ):
            shutil.rmtree(tmp, ignore_errors=True)
            result["dir"] = None
    return result


def _load_extra() -> None:
    """Register the scenarios that need a proxy, PostgreSQL or a separate indexer."""
    import importlib

    extra = importlib.import_module("bench._faults_extra")
    SETUPS.update(extra.SETUPS)


# ================================================================== report


def _ok(run: dict[str, Any]) -> bool:
    return (
        "error" not in run
        and run.get("lost") == 0
        and run.get("doubled") == 0
        and bool(run.get("audit_clean"))
        and not run.get("merchant_mismatch")
        and not run.get("scheme_mismatch")
    )


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The figures over ``runs``: totals, per scenario, and every run."""

    def totals(group: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {
            "runs": len(group),
            "faults_injected": sum(1 for r in group if r.get("fault_injected")),
            "confirmed": sum(int(r.get("confirmed", 0)) for r in group),
            "issued": sum(int(r.get("issued", 0)) for r in group),
            "enrolled": sum(int(r.get("enrolled", 0)) for r in group),
            "lost": sum(int(r.get("lost", 0)) for r in group),
            "doubled": sum(int(r.get("doubled", 0)) for r in group),
            "unanswered": sum(int(r.get("unanswered", 0)) for r in group),
            "unanswered_landed": sum(int(r.get("unanswered_landed", 0)) for r in group),
            "audit_clean_runs": sum(1 for r in group if r.get("audit_clean")),
            "errors": sum(1 for r in group if "error" in r),
            "mismatch_runs": sum(
                1 for r in group if r.get("merchant_mismatch") or r.get("scheme_mismatch")
            ),
        }

    out = totals(runs)
    names = sorted({str(r["scenario"]) for r in runs})
    out["scenarios"] = {n: totals([r for r in runs if r["scenario"] == n]) for n in names}
    out["ok"] = all(_ok(r) for r in runs)
    out["details"] = list(runs)
    return out


def table_row(run: dict[str, Any]) -> str:
    if "error" in run:
        return f"{run['scenario']:<16} {run['seed']:>5}  ERROR {run['error'][:200]}  ({run['dir']})"
    status = "ok" if _ok(run) else "FAIL"
    return (
        f"{run['scenario']:<16} {run['seed']:>5} {run['fault_at_s']:>6.1f} "
        f"{'yes' if run['fault_injected'] else 'NO':>5} {run['confirmed']:>6} {run['lost']:>5} "
        f"{run['doubled']:>5} {run['unanswered']:>5} {run['unanswered_landed']:>6} "
        f"{run['quiet_after_s'] if run['quiet_after_s'] is not None else 'never':>6} "
        f"{'clean' if run['audit_clean'] else 'DIRTY':>6}  {status}"
        + ("" if _ok(run) else f"  {run['audit']}  ({run['dir']})")
    )


TABLE_HEAD = (
    f"{'scenario':<16} {'seed':>5} {'at s':>6} {'fault':>5} {'201':>6} {'lost':>5} "
    f"{'doubl':>5} {'unans':>5} {'landed':>6} {'quiet':>6} {'audit':>6}  result"
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    parser.add_argument("--json", action="store_true", help="one JSON object as the last line")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        help="repeatable (default: every scenario, round-robin)",
    )
    parser.add_argument("--runs", type=int, default=None, help="runs in all (default: 56)")
    parser.add_argument("--seed", type=int, default=1, help="the first seed")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load per run")
    parser.add_argument("--keep", action="store_true", help="keep every run's directory")
    args = parser.parse_args(argv)
    scenarios: list[str] = args.scenario or list(SCENARIOS)
    count = args.runs if args.runs is not None else max(50, 8 * len(scenarios))
    runs: list[dict[str, Any]] = []
    print(TABLE_HEAD, file=sys.stderr if args.json else sys.stdout, flush=True)
    for n in range(count):
        name = scenarios[n % len(scenarios)]
        seed = args.seed + n // len(scenarios)
        result = run_scenario(name, seed, args.duration, keep=args.keep)
        runs.append(result)
        print(table_row(result), file=sys.stderr if args.json else sys.stdout, flush=True)
    summary = summarize(runs)
    totals = {k: v for k, v in summary.items() if k not in ("details", "scenarios")}
    if args.json:
        print(json.dumps(summary, sort_keys=True, default=str))
    else:
        print(json.dumps(totals, sort_keys=True))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
