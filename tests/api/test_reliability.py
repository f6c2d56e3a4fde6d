"""Nothing confirmed is ever lost (issue 9), in process, on the embedded anvil, real signals:

- the node is SIGKILLed after confirmed redemptions that it never wrote to its state file: the
  supervisor restarts it from its older state, ``/health`` comes back to ``ok`` by itself, and
  the reconciler replays every lost transaction with its original bytes, so every 201 answer is
  on chain exactly once and no record contradicts the chain;
- the same with the service gone too: a new service on the same state replays at start;
- a node that comes back as another chain (its state lost): nothing is replayed, the service
  says why and stays degraded.

The node writes its state only when told to (``anvil_state_interval_s`` of an hour, and a
graceful restart after the demo data is in), so what the kill loses is exactly the redemptions.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api import redemptions
from api.main import create_app
from api.runtime import Runtime
from api.store import RedemptionStatus
from ledger.rpc import RpcClient, RpcRequest
from tests.api.conftest import admin, dev_settings, holder, logins, merchant

_REDEEMED = "Redeemed"


def _wait(
    what: str, check: Callable[[], bool], timeout: float = 60.0, show: Callable[[], Any] = str
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {show()}")
        time.sleep(0.1)


def _onchain_redemptions(runtime: Runtime) -> dict[int, list[dict[str, Any]]]:
    """Redemption id -> its ``Redeemed`` events, read from the node's logs."""
    with RpcClient(runtime.rpc_url) as rpc:
        (logs,) = rpc.batch(
            [
                RpcRequest(
                    "eth_getLogs",
                    (
                        {
                            "address": runtime.deployment.ledger_address,
                            "fromBlock": hex(runtime.deployment.deployed_block),
                            "toBlock": "latest",
                        },
                    ),
                )
            ]
        )
    assert isinstance(logs, list)
    found: dict[int, list[dict[str, Any]]] = {}
    for event in runtime.client.decode_logs([dict(item) for item in logs]):
        if event.name == _REDEEMED:
            found.setdefault(int(event.args["redemptionId"]), []).append(dict(event.args))
    return found


def _onchain_events(runtime: Runtime, name: str) -> list[dict[str, Any]]:
    """The arguments of every ``name`` event, read from the node's logs."""
    with RpcClient(runtime.rpc_url) as rpc:
        logs = rpc.call(
            "eth_getLogs",
            {
                "address": runtime.deployment.ledger_address,
                "fromBlock": hex(runtime.deployment.deployed_block),
                "toBlock": "latest",
            },
        )
    assert isinstance(logs, list)
    decoded = runtime.client.decode_logs([dict(item) for item in logs])
    return [dict(event.args) for event in decoded if event.name == name]


def _demo_pass_id(runtime: Runtime, number: str) -> bytes:
    record = runtime.store.registry.find_pass(number)
    assert record is not None
    return bytes.fromhex(record.pass_id.removeprefix("0x"))


def _redeem_many(client: TestClient, count: int, *, prefix: str = "rel") -> list[dict[str, Any]]:
    """``count`` redemptions of 1 euro from 8 concurrent terminals on 2 merchants and 20 passes;
    each a checkout with a token of its own from the holder page (a pass is at one counter at
    a time); each request retried with the same key and body until it is answered 201."""
    heads = {m: merchant(client, m) for m in (1, 2)}
    counters = {f"GR{n:07d}": threading.Lock() for n in range(1, 21)}

    def one(i: int) -> dict[str, Any]:
        number = f"GR{i % 20 + 1:07d}"
        merchant_id = 1 + i % 2
        with counters[number]:
            token = client.get(f"/holder/passes/{number}/token", headers=holder(client, number))
            body = {"token": token.json()["token_uri"], "scheme_id": 1, "amount": 100}
            headers = {**heads[merchant_id], "Idempotency-Key": f"{prefix}-{i}"}
            for _ in range(20):
                response = client.post("/merchant/redemptions", json=body, headers=headers)
                if response.status_code == 201:
                    return {"merchant_id": merchant_id, **response.json()}
                time.sleep(0.5)
        raise AssertionError(f"redemption {i} never confirmed: {response.text}")

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def _assert_chain_keeps_every_answer(runtime: Runtime, answers: list[dict[str, Any]]) -> None:
    onchain = _onchain_redemptions(runtime)
    for answer in answers:
        events = onchain.get(answer["redemption_id"], [])
        assert len(events) == 1, f"redemption {answer['redemption_id']}: {len(events)} on chain"
        assert events[0]["credited"] == answer["credited"]
    records = runtime.store.redemptions_by_ids(a["redemption_id"] for a in answers)
    assert all(r.status is RedemptionStatus.SUCCEEDED for r in records.values())
    assert all(r.promise_broken_at is None for r in records.values())


def _persist_now(runtime: Runtime) -> None:
    """A graceful restart: anvil writes its state file on SIGINT."""
    assert runtime.node is not None
    runtime.node.restart()
    _wait("the node after a graceful restart", runtime.node.is_healthy)


@pytest.mark.slow
def test_a_killed_node_heals_and_loses_no_confirmed_redemption(tmp_path: Path) -> None:
    settings = dev_settings(tmp_path / "var", anvil_state_interval_s=3600)
    with Runtime.start(settings) as runtime, TestClient(create_app(settings, runtime)) as client:
        assert runtime.node is not None
        _persist_now(runtime)
        head_before = runtime.w3.eth.block_number
        answers = _redeem_many(client, 60)
        assert runtime.w3.eth.block_number > head_before
        os.kill(runtime.node.pid or 0, signal.SIGKILL)
        _wait(
            "the supervisor's restart",
            lambda: runtime.node is not None and runtime.node.restarts == 1,
        )
        _wait("/health ok", lambda: client.get("/health").json()["status"] == "ok")
        _wait(
            "every confirmed redemption back on chain",
            lambda: all(a["redemption_id"] in _onchain_redemptions(runtime) for a in answers),
        )
        _assert_chain_keeps_every_answer(runtime, answers)
        # the counter keeps working after the heal
        more = _redeem_many(client, 10, prefix="after")
        _assert_chain_keeps_every_answer(runtime, answers + more)
        health = client.get("/health").json()
        assert health["status"] == "ok"
        assert health["detail"] is None


@pytest.mark.slow
def test_node_and_service_both_gone_the_next_start_replays(tmp_path: Path) -> None:
    settings = dev_settings(tmp_path / "var", anvil_state_interval_s=3600)
    with Runtime.start(settings) as first, TestClient(create_app(settings, first)) as client:
        _persist_now(first)
        answers = _redeem_many(client, 40)
        assert first.node is not None
        first.node._stop_supervising()  # the service is gone: nobody restarts it
        os.kill(first.node.pid or 0, signal.SIGKILL)  # the node dies with the service
    with Runtime.start(settings) as second:
        # the start itself replayed them, before any new transaction was signed
        _assert_chain_keeps_every_answer(second, answers)
        assert second.reconciler is not None
        assert second.reconciler.last_report is not None
        assert second.reconciler.last_report.replayed > 0


@pytest.mark.slow
def test_grants_schemes_budgets_and_settlements_a_restored_node_lost_are_replayed(
    tmp_path: Path,
) -> None:
    """Not only redemptions: every transaction of the service goes through the outbox. After
    the last state file, a partner is enrolled (the admin account grants its merchant role), a
    scheme is created and a pass gets a budget in it (issuer account), and a payout run is
    confirmed (the admin account settles). The node is SIGKILLed and comes back without them:
    the reconciler replays them all, so the partner redeems, the scheme and the budget are
    there, and the merchant's settlement is on chain exactly once."""
    settings = dev_settings(tmp_path / "var", anvil_state_interval_s=3600)
    with Runtime.start(settings) as runtime, TestClient(create_app(settings, runtime)) as client:
        assert runtime.node is not None
        _persist_now(runtime)
        staff = admin(client)
        enrolled = client.post(
            "/admin/merchants",
            json={"name": "Hockeyclub Stad", "kvk_number": "41234568", "category": "sport"},
            headers=staff,
        )
        assert enrolled.status_code == 201, enrolled.text
        partner = enrolled.json()
        issuer = logins(client).staff("issuer")
        now = int(time.time())
        scheme = client.post(
            "/admin/schemes",
            json={
                "name": "Zwemles na herstel",
                "kind": "budget",
                "valid_from": now - 60,
                "valid_until": now + 86_400,
                "budget_cap": 100_000,
                "per_redemption_cap": 5_000,
                "open_to_all_merchants": True,
            },
            headers=issuer,
        )
        assert scheme.status_code == 201, scheme.text
        scheme_id = scheme.json()["scheme_id"]
        pid = _demo_pass_id(runtime, "GR0000009")
        funded = client.post(
            "/admin/entitlements",
            json={"pass_number": "GR0000009", "scheme_id": scheme_id, "amount": 2_500},
            headers=issuer,
        )
        assert funded.status_code == 201, funded.text
        _wait("the budget", lambda: runtime.client.balance_of(scheme_id, pid) == 2_500)
        answers = _redeem_many(client, 6, prefix="before-settle")
        merchant_one = runtime.keys.merchants[0].address
        _wait("the index", lambda: runtime.index_lag() == 0)
        time.sleep(0.3)  # the indexer commits the block it has reached
        finance = logins(client).staff("finance")
        today = datetime.now(UTC).date()
        period = f"{today - timedelta(days=1)}..{today + timedelta(days=1)}"
        run = client.post("/admin/payouts", json={"period": period}, headers=finance)
        assert run.status_code == 201, run.text
        reference = run.json()["reference"]
        confirmed = client.post(f"/admin/payouts/{reference}/confirm", headers=finance)
        assert confirmed.status_code == 200, confirmed.text
        assert runtime.client.merchant_totals(merchant_one).owed == 0

        os.kill(runtime.node.pid or 0, signal.SIGKILL)
        _wait(
            "the supervisor's restart",
            lambda: runtime.node is not None and runtime.node.restarts == 1,
        )
        _wait("/health ok", lambda: client.get("/health").json()["status"] == "ok")

        def replayed() -> bool:
            return (
                runtime.client.has_role("merchant", partner["address"])
                and runtime.client.scheme_count() >= scheme_id
                and runtime.client.balance_of(scheme_id, pid) == 2_500
                and runtime.client.merchant_totals(merchant_one).owed == 0
                and all(a["redemption_id"] in _onchain_redemptions(runtime) for a in answers)
            )

        _wait("the lost transactions back on chain", replayed)
        settled = [e for e in _onchain_events(runtime, "Settled") if e["merchant"] == merchant_one]
        assert len(settled) == 1, settled
        _assert_chain_keeps_every_answer(runtime, answers)

        # the partner enrolled before the kill redeems from the new scheme's budget
        issued = client.post("/auth/terminals", json={"merchant_id": partner["id"]}, headers=staff)
        assert issued.status_code == 201, issued.text
        terminal = logins(client).token(
            "terminal", issued.json()["terminal_id"], issued.json()["secret"]
        )
        token = client.get(
            "/holder/passes/GR0000009/token", headers=holder(client, "GR0000009")
        ).json()["token_uri"]
        redeemed = client.post(
            "/merchant/redemptions",
            json={"token": token, "scheme_id": scheme_id, "amount": 1_000},
            headers={"Authorization": "Bearer " + terminal, "Idempotency-Key": "partner-after"},
        )
        assert redeemed.status_code == 201, redeemed.text
        assert runtime.client.balance_of(scheme_id, pid) == 1_500


@pytest.mark.slow
def test_a_demo_seed_the_node_lost_with_the_service_comes_back_at_the_next_start(
    tmp_path: Path,
) -> None:
    """The demo seed is sent through the issuer's relayer like everything else: the node's
    state file holds the deployment but not the seed when service and node die together, and
    the next start replays the seed from the outbox before it signs anything new."""
    var = tmp_path / "var"
    with Runtime.start(dev_settings(var, demo_seed=False, anvil_state_interval_s=3600)) as first:
        _persist_now(first)  # the deployment and the partners' grants, no demo data
        assert first.client.scheme_count() == 0
    seeding = dev_settings(var, anvil_state_interval_s=3600)
    with Runtime.start(seeding) as second:
        assert second.demo_seeded_now
        schemes = second.client.scheme_count()
        pid = _demo_pass_id(second, "GR0000001")
        balance = second.client.balance_of(1, pid)
        assert schemes > 0
        assert balance > 0
        assert second.node is not None
        second.node._stop_supervising()  # the service is gone: nobody restarts the node
        os.kill(second.node.pid or 0, signal.SIGKILL)
    with Runtime.start(seeding) as third:
        assert not third.demo_seeded_now  # the marker says seeded: only the replay brings it
        assert third.reconciler is not None
        assert third.reconciler.last_report is not None
        assert third.reconciler.last_report.replayed > 0
        assert third.client.scheme_count() == schemes
        assert third.client.pass_of(pid).registered
        assert third.client.balance_of(1, pid) == balance


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.slow
def test_a_node_that_comes_back_as_another_chain_is_not_replayed_on(tmp_path: Path) -> None:
    settings = dev_settings(tmp_path / "var", anvil_state_interval_s=3600, anvil_port=_free_port())
    with Runtime.start(settings) as runtime, TestClient(create_app(settings, runtime)) as client:
        assert runtime.node is not None
        _redeem_many(client, 4)
        state_file = runtime.node.state_file
        runtime.node._stop_supervising()
        process = runtime.node._process
        assert process is not None
        process.kill()
        process.wait(10)
        runtime.node._process = None
        runtime.node._close_log()
        for leftover in state_file.parent.glob(state_file.name + "*"):
            leftover.unlink()  # the node's state is gone: it comes back empty
        runtime.node.start()
        assert runtime.reconciler_loop is not None
        runtime.reconciler_loop.wake(deep=True)
        _wait(
            "/health degraded with the reason",
            lambda: (
                "not the chain this service deployed to"
                in (client.get("/health").json()["detail"] or "")
            ),
            timeout=20,
            show=lambda: client.get("/health").json(),
        )
        assert client.get("/health").json()["status"] == "degraded"
        assert runtime.w3.eth.get_code(runtime.deployment.ledger_address) == b""


@pytest.mark.slow
def test_a_retry_of_a_landed_but_unrecorded_redemption_after_a_node_restart(
    tmp_path: Path,
) -> None:
    """The service died after the redemption was mined but before it recorded the outcome (its
    record is pending, not even marked sent), and the node restarted from its state file, which
    keeps no history. The retry with the same key finds the redemption on chain and answers with
    it (the balance after is read at the head when the node no longer has the block's state)."""
    settings = dev_settings(tmp_path / "var", anvil_state_interval_s=3600)
    with Runtime.start(settings) as runtime, TestClient(create_app(settings, runtime)) as client:
        number = "GR0000003"
        token = client.get(f"/holder/passes/{number}/token", headers=holder(client, number))
        body = {"token": token.json()["token_uri"], "scheme_id": 1, "amount": 250}
        headers = {**merchant(client, 1), "Idempotency-Key": "landed-unrecorded"}
        first = client.post("/merchant/redemptions", json=body, headers=headers)
        assert first.status_code == 201, first.text
        rid = first.json()["redemption_id"]
        runtime.store.complete_redemptions(
            {
                rid: {
                    "status": RedemptionStatus.PENDING,
                    "tx_hash": None,
                    "block_number": None,
                    "debited": None,
                    "credited": None,
                    "balance_after": None,
                    "sent_at": None,
                }
            }
        )
        assert runtime.node is not None
        runtime.node.rpc("anvil_mine", ["0x2"])  # the redemption's block is no longer the head
        _persist_now(runtime)  # the restarted node has the redemption, not its block's state
        retry = client.post("/merchant/redemptions", json=body, headers=headers)
        assert retry.status_code == 201, retry.text
        assert retry.json()["redemption_id"] == rid
        assert retry.json()["credited"] == first.json()["credited"]
        assert retry.json()["balance"] == first.json()["balance"]
        assert len(_onchain_redemptions(runtime)[rid]) == 1


def test_a_database_that_cannot_be_written_answers_503_and_the_retry_succeeds(
    runtime: Runtime, client: TestClient
) -> None:
    """Another process holds the SQLite file's write lock longer than the busy timeout (as a
    PostgreSQL restart or a cut connection would fail a statement): the redemption is answered
    503 ``store_unavailable`` with Retry-After, nothing is stored, and the same request
    retried afterwards is redeemed once."""
    number = "GR0000004"
    token = client.get(f"/holder/passes/{number}/token", headers=holder(client, number))
    body = {"token": token.json()["token_uri"], "scheme_id": 1, "amount": 100}
    headers = {**merchant(client, 1), "Idempotency-Key": "db-locked"}
    path = runtime.store.db.engine.url.database
    assert path is not None
    blocker = sqlite3.connect(path, timeout=1)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        refused = client.post("/merchant/redemptions", json=body, headers=headers)
    finally:
        blocker.rollback()
        blocker.close()
    assert refused.status_code == 503, refused.text
    assert refused.json()["code"] == "store_unavailable"
    assert refused.headers["Retry-After"] == "1"
    retry = client.post("/merchant/redemptions", json=body, headers=headers)
    assert retry.status_code == 201, retry.text
    assert len(_onchain_redemptions(runtime)[retry.json()["redemption_id"]]) == 1


@pytest.mark.slow
def test_a_lost_transaction_fails_its_redemptions_everywhere(tmp_path: Path) -> None:
    """The reconciler found the transaction of a confirmed redemption will never be mined (its
    nonce was taken): the record fails with the reason, flagged as a broken promise; the
    terminal's list shows it; a retry with the key answers the failure, never the old 201.
    (A runtime of its own: the record then contradicts the chain, as the audit will say.)"""
    settings = dev_settings(tmp_path / "var")
    with Runtime.start(settings) as runtime, TestClient(create_app(settings, runtime)) as client:
        _lose_a_confirmed_redemption(runtime, client)


def _lose_a_confirmed_redemption(runtime: Runtime, client: TestClient) -> None:
    number = "GR0000005"
    token = client.get(f"/holder/passes/{number}/token", headers=holder(client, number))
    body = {"token": token.json()["token_uri"], "scheme_id": 1, "amount": 100}
    headers = {**merchant(client, 2), "Idempotency-Key": "lost-tx"}
    first = client.post("/merchant/redemptions", json=body, headers=headers)
    assert first.status_code == 201, first.text
    rid = first.json()["redemption_id"]
    runtime.outbox.flush()
    (row,) = [r for r in runtime.outbox.all_rows() if rid in r.refs]
    lost = dataclasses.replace(row, reason="nonce 7 of 0xabc was taken by another transaction")
    redemptions.record_lost(runtime, [lost])

    retry = client.post("/merchant/redemptions", json=body, headers=headers)
    assert retry.status_code == 409, retry.text
    assert retry.json()["code"] == "confirmation_lost"
    assert "was never mined (nonce 7 of 0xabc was taken" in retry.json()["detail"]
    listed = client.get("/merchant/redemptions", headers=merchant(client, 2)).json()["items"]
    (item,) = [i for i in listed if i["redemption_id"] == rid]
    assert item["status"] == "failed"
    assert item["promise_broken"] is True
    assert item["problem_code"] == "confirmation_lost"
    assert "never mined" in item["problem_detail"]
