"""A cohort share is claimed on its first use at the counter (real anvil, SQLite, no mocks).

A cohort issued by Merkle root through the admin job shows in a scan and in the holder's
balances as ``unclaimed``; the first redemption sends ONE ``claimAndRedeem`` (a
``CohortClaimed`` and a ``Redeemed`` event), later ones are batched; a retried key returns the
first result without a second transaction; concurrent first uses claim the share exactly once.
On SQLite, and on PostgreSQL when ``STADJERSPAS_TEST_POSTGRES_URL`` is set.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from eth_utils import to_checksum_address
from eth_utils.crypto import keccak
from fastapi.testclient import TestClient
from hexbytes import HexBytes

from api import admin_services, cohort_claims, holder_services, services
from api.main import create_app
from api.runtime import Runtime
from ledger.events import DecodedEvent
from tests.api.conftest import assert_problem as _problem
from tests.api.conftest import dev_settings, logins, merchant, signed_uri
from tests.api.conftest import holder_pass_id as _pid

SHARE = 2_500
_CLAIMED_TOPIC = "0x" + keccak(text="CohortClaimed(bytes32,uint256,bytes32,uint64)").hex()
_counter = iter(range(1, 10_000))


@pytest.fixture(scope="module")
def runtime(
    module_database: str | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runtime]:
    settings = dev_settings(tmp_path_factory.mktemp("cohort-var"), database_url=module_database)
    with Runtime.start(settings) as rt:
        yield rt


@pytest.fixture(scope="module")
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime.settings, runtime), raise_server_exceptions=False) as tc:
        yield tc


def _staff(client: TestClient, role: str) -> dict[str, str]:
    return logins(client).staff(role)


def _new_pass(client: TestClient, birth_date: str) -> str:
    body = {
        "first_name": "Greet",
        "last_name": f"Cohort{next(_counter)}",
        "birth_date": birth_date,
        "postcode": "9711AA",
    }
    holder = client.post("/admin/holders", json=body, headers=_staff(client, "admin"))
    assert holder.status_code == 201, holder.text
    issued = client.post(
        f"/admin/holders/{holder.json()['id']}/passes", headers=_staff(client, "issuer")
    )
    assert issued.status_code == 201, issued.text
    return str(issued.json()["pass_number"])


def _wait_job(client: TestClient, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/admin/jobs/{job_id}", headers=_staff(client, "issuer"))
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if job["status"] in {"done", "failed"}:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


class Cohort:
    def __init__(self, scheme_id: int, root: bytes, members: list[str], outsider: str) -> None:
        self.scheme_id = scheme_id
        self.root = root
        self.members = members
        self.outsider = outsider


@pytest.fixture(scope="module")
def cohort(client: TestClient, runtime: Runtime) -> Cohort:
    """A budget scheme open to all merchants and a cohort of six 94-year-olds (2,500 each),
    issued by the admin job; one 45-year-old stays outside it."""
    now = int(runtime.w3.eth.get_block("latest")["timestamp"])
    scheme = client.post(
        "/admin/schemes",
        json={
            "name": "Cohort budget",
            "kind": "budget",
            "valid_from": now - 60,
            "valid_until": now + 86_400,
            "budget_cap": 1_000_000,
            "open_to_all_merchants": True,
        },
        headers=_staff(client, "issuer"),
    )
    assert scheme.status_code == 201, scheme.text
    scheme_id = int(scheme.json()["scheme_id"])
    members = [_new_pass(client, "1931-03-04") for _ in range(6)]
    outsider = _new_pass(client, "1980-05-17")
    criteria = {
        "scheme_id": scheme_id,
        "amount": SHARE,
        "min_age": 94,
        "max_age": 94,
        "age_at": "2026-01-01",
    }
    response = client.post("/admin/cohorts", json=criteria, headers=_staff(client, "issuer"))
    assert response.status_code == 202, response.text
    job = _wait_job(client, response.json()["id"])
    assert job["status"] == "done", job
    root = bytes.fromhex(job["result"]["root"][2:])
    stored = admin_services.load_cohort(runtime, root)
    assert stored is not None
    in_cohort = {leaf["pass_id"] for leaf in stored["leaves"]}
    assert all("0x" + _pid(runtime, p).hex() in in_cohort for p in members)
    assert "0x" + _pid(runtime, outsider).hex() not in in_cohort
    return Cohort(scheme_id, root, members, outsider)


def _token(runtime: Runtime, pass_number: str) -> str:
    return signed_uri(runtime, _pid(runtime, pass_number))


def _redeem(
    client: TestClient,
    runtime: Runtime,
    cohort: Cohort,
    pass_number: str,
    amount: int,
    key: str,
    merchant_id: int = 1,
    token: str | None = None,
) -> Any:
    body = {
        "token": token or _token(runtime, pass_number),
        "scheme_id": cohort.scheme_id,
        "amount": amount,
    }
    return client.post(
        "/merchant/redemptions", json=body, headers=merchant(client, merchant_id, key)
    )


def _scan_item(
    client: TestClient, runtime: Runtime, cohort: Cohort, pass_number: str
) -> dict[str, Any] | None:
    response = client.post(
        "/merchant/scan", json={"token": _token(runtime, pass_number)}, headers=merchant(client, 1)
    )
    assert response.status_code == 200, response.text
    for item in response.json()["redeemable"]:
        if item["scheme_id"] == cohort.scheme_id:
            found: dict[str, Any] = item
            return found
    return None


def _claims(runtime: Runtime, cohort: Cohort, pass_number: str) -> list[DecodedEvent]:
    """Every ``CohortClaimed`` event of ``pass_number``'s leaf in the cohort."""
    logs = runtime.w3.eth.get_logs(
        {
            "address": runtime.client.address,
            "fromBlock": runtime.deployment.deployed_block,
            "toBlock": "latest",
            "topics": [
                _CLAIMED_TOPIC,
                "0x" + cohort.root.hex(),
                None,
                "0x" + _pid(runtime, pass_number).hex(),
            ],
        }
    )
    return runtime.client.decode_logs([dict(item) for item in logs])


def _tx_events(runtime: Runtime, tx_hash: str) -> tuple[str, list[DecodedEvent]]:
    """The called function's name and the decoded events of ``tx_hash``."""
    tx = runtime.w3.eth.get_transaction(HexBytes(tx_hash))
    function, _ = runtime.client.contract.decode_function_input(tx["input"])
    receipt = runtime.w3.eth.get_transaction_receipt(HexBytes(tx_hash))
    events = runtime.client.decode_logs([dict(item) for item in receipt["logs"]])
    return str(function.fn_name), events


def _balance(runtime: Runtime, cohort: Cohort, pass_number: str) -> int:
    return runtime.client.balance_of(cohort.scheme_id, _pid(runtime, pass_number))


# -- scan and balances ------------------------------------------------------------------------


def test_scan_and_balances_show_the_unclaimed_share(
    client: TestClient, runtime: Runtime, cohort: Cohort
) -> None:
    member = cohort.members[5]
    item = _scan_item(client, runtime, cohort, member)
    assert item is not None
    assert (item["balance"], item["unclaimed"], item["kind"]) == (SHARE, SHARE, "budget")
    assert _balance(runtime, cohort, member) == 0  # nothing on chain yet: only the share
    holder = services.balances(runtime, member)
    entry = next(b for b in holder.balances if b.scheme_id == cohort.scheme_id)
    assert (entry.balance, entry.unclaimed) == (SHARE, SHARE)
    # other schemes are untouched: no share there
    assert all(b.unclaimed == 0 for b in holder.balances if b.scheme_id != cohort.scheme_id)
    # the holder's entitlements (with dates) and offer catalogue count it too
    dated = holder_services.balances_with_validity(runtime, member)
    entry_dated = next(b for b in dated.balances if b.scheme_id == cohort.scheme_id)
    assert (entry_dated.balance, entry_dated.unclaimed) == (SHARE, SHARE)
    offers = holder_services.offer_catalogue(runtime, member)
    assert any(o.scheme_id == cohort.scheme_id and o.balance == SHARE for o in offers.offers)
    outsider_dated = holder_services.balances_with_validity(runtime, cohort.outsider)
    assert all(b.scheme_id != cohort.scheme_id for b in outsider_dated.balances)
    # a pass outside the cohort has no share: nothing to redeem in that scheme
    assert _scan_item(client, runtime, cohort, cohort.outsider) is None
    outside = services.balances(runtime, cohort.outsider)
    entry = next(b for b in outside.balances if b.scheme_id == cohort.scheme_id)
    assert (entry.balance, entry.unclaimed) == (0, 0)


def test_pass_outside_the_cohort_cannot_redeem(
    client: TestClient, runtime: Runtime, cohort: Cohort
) -> None:
    refused = _redeem(client, runtime, cohort, cohort.outsider, 100, "outsider-1")
    _problem(refused, 409, "redemption_amount_over_balance")
    assert runtime.store.redemption(1, "outsider-1") is None  # refused before anything stored


# -- first use --------------------------------------------------------------------------------


def test_first_use_claims_and_redeems_in_one_transaction(
    client: TestClient, runtime: Runtime, cohort: Cohort
) -> None:
    member = cohort.members[0]
    token = _token(runtime, member)
    first = _redeem(client, runtime, cohort, member, 1_000, "first-use-1", token=token)
    assert first.status_code == 201, first.text
    assert first.headers["Idempotent-Replayed"] == "false"
    result = first.json()
    assert (result["amount"], result["debited"], result["balance"]) == (1_000, 1_000, SHARE - 1_000)
    function, events = _tx_events(runtime, result["tx_hash"])
    assert function == "claimAndRedeem"
    names = [e.name for e in events]
    assert names.count("CohortClaimed") == 1
    assert names.count("Redeemed") == 1
    claimed = next(e for e in events if e.name == "CohortClaimed")
    assert bytes(claimed.args["passId"]) == _pid(runtime, member)
    assert claimed.args["amount"] == SHARE
    redeemed = next(e for e in events if e.name == "Redeemed")
    assert redeemed.args["redemptionId"] == result["redemption_id"]
    assert _balance(runtime, cohort, member) == SHARE - 1_000
    assert len(_claims(runtime, cohort, member)) == 1

    # the scan now shows the claimed balance, nothing unclaimed
    item = _scan_item(client, runtime, cohort, member)
    assert item is not None
    assert (item["balance"], item["unclaimed"]) == (SHARE - 1_000, 0)

    # the second redemption is an ordinary batched one
    second = _redeem(client, runtime, cohort, member, 400, "first-use-2")
    assert second.status_code == 201, second.text
    function, events = _tx_events(runtime, second.json()["tx_hash"])
    assert function == "redeemBatch"
    assert "CohortClaimed" not in [e.name for e in events]
    assert second.json()["balance"] == SHARE - 1_400

    # a retry of the first key returns the first result, and sends nothing
    sender = to_checksum_address(runtime.merchant_relayer(1).address)
    nonce = runtime.w3.eth.get_transaction_count(sender)
    again = _redeem(client, runtime, cohort, member, 1_000, "first-use-1", token=token)
    assert again.status_code == 201, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == result
    assert runtime.w3.eth.get_transaction_count(sender) == nonce
    assert _balance(runtime, cohort, member) == SHARE - 1_400
    assert len(_claims(runtime, cohort, member)) == 1
    # the same key with another body is refused
    reused = _redeem(client, runtime, cohort, member, 999, "first-use-1", token=token)
    _problem(reused, 409, "idempotency_key_reused")

    # the claimAndRedeem redemption reverses like any other: its amount comes back
    rid = result["redemption_id"]
    reversed_ = client.post(f"/merchant/redemptions/{rid}/reversal", headers=merchant(client, 1))
    assert reversed_.status_code == 201, reversed_.text
    assert reversed_.json()["balance"] == SHARE - 400
    assert _balance(runtime, cohort, member) == SHARE - 400


def test_first_use_over_the_share_is_refused_and_claims_nothing(
    client: TestClient, runtime: Runtime, cohort: Cohort
) -> None:
    member = cohort.members[1]
    refused = _redeem(client, runtime, cohort, member, SHARE + 1, "over-1")
    _problem(refused, 409, "redemption_amount_over_balance")
    assert _claims(runtime, cohort, member) == []
    item = _scan_item(client, runtime, cohort, member)
    assert item is not None
    assert item["unclaimed"] == SHARE


def test_claimed_elsewhere_is_seen_and_not_counted_twice(
    client: TestClient, runtime: Runtime, cohort: Cohort
) -> None:
    """A claim sent by someone else (any account may claim) reaches the index through the
    state cache's log follower: the share is then part of the balance, not added to it."""
    member = cohort.members[2]
    assert cohort_claims.unclaimed_amount(runtime, _pid(runtime, member), cohort.scheme_id) == SHARE
    stored = admin_services.load_cohort(runtime, cohort.root)
    assert stored is not None
    leaf = next(x for x in stored["leaves"] if x["pass_id"] == "0x" + _pid(runtime, member).hex())
    claim = (
        cohort.root,
        leaf["index"],
        _pid(runtime, member),
        leaf["amount"],
        [bytes.fromhex(p[2:]) for p in leaf["proof"]],
    )
    runtime.transact(runtime.admin(), "claim", claim)
    deadline = time.monotonic() + 10
    while cohort_claims.unclaimed_amount(runtime, _pid(runtime, member), cohort.scheme_id):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    deadline = time.monotonic() + 10
    while True:
        item = _scan_item(client, runtime, cohort, member)
        assert item is not None
        if item["unclaimed"] == 0 and item["balance"] == SHARE:
            break
        assert item["balance"] <= SHARE  # never the share twice
        assert time.monotonic() < deadline, item
        time.sleep(0.02)
    done = _redeem(client, runtime, cohort, member, 300, "elsewhere-1")
    assert done.status_code == 201, done.text
    assert _tx_events(runtime, done.json()["tx_hash"])[0] == "redeemBatch"
    assert len(_claims(runtime, cohort, member)) == 1


# -- concurrency ------------------------------------------------------------------------------


def test_concurrent_first_uses_claim_once(
    client: TestClient, runtime: Runtime, cohort: Cohort
) -> None:
    """Six first uses at once, from one scan at three merchants (a token serves one checkout):
    one redemption claims the share once, the others are refused before anything is sent."""
    member = cohort.members[3]
    token = _token(runtime, member)
    jobs = [(m, f"conc-{m}-{i}") for m in (1, 2, 3) for i in range(2)]
    headers = {key: merchant(client, m, key) for m, key in jobs}
    body = {"token": token, "scheme_id": cohort.scheme_id, "amount": 400}

    def redeem(job: tuple[int, str]) -> Any:
        return client.post("/merchant/redemptions", json=body, headers=headers[job[1]])

    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(redeem, jobs))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201, 409, 409, 409, 409, 409], [r.text for r in responses]
    assert {r.json()["code"] for r in responses if r.status_code == 409} == {
        "redemption_token_used"
    }
    assert len(_claims(runtime, cohort, member)) == 1
    assert _balance(runtime, cohort, member) == SHARE - 400

    # retried concurrently: the same results, nothing redeemed or claimed again
    with ThreadPoolExecutor(max_workers=6) as pool:
        retries = list(pool.map(redeem, jobs))
    assert [r.status_code for r in retries] == [r.status_code for r in responses]
    done = next(r for r in responses if r.status_code == 201)
    assert [r.json() for r in retries if r.status_code == 201] == [done.json()]
    assert _balance(runtime, cohort, member) == SHARE - 400
    assert len(_claims(runtime, cohort, member)) == 1


def test_concurrent_first_uses_over_the_share(
    client: TestClient, runtime: Runtime, cohort: Cohort
) -> None:
    """Three first uses at once from a 2,500 share, in three schemes' worth of checkouts at one
    merchant: 1,000 and 2,000 cannot both come out of it. One claim, one redemption, one
    refusal (stored with its key, so a retry gets the same refusal)."""
    member = cohort.members[4]
    keys = [(1, f"over-conc-{amount}", amount) for amount in (1_000, 2_000)]
    tokens = {key: _token(runtime, member) for _, key, _ in keys}
    headers = {key: merchant(client, m, key) for m, key, _ in keys}

    def redeem(job: tuple[int, str, int]) -> Any:
        _, key, amount = job
        body = {"token": tokens[key], "scheme_id": cohort.scheme_id, "amount": amount}
        return client.post("/merchant/redemptions", json=body, headers=headers[key])

    with ThreadPoolExecutor(max_workers=2) as pool:
        responses = list(pool.map(redeem, keys))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201, 409], [r.text for r in responses]
    refused = next(r for r in responses if r.status_code == 409)
    assert refused.json()["code"] in {"redemption_amount_over_balance", "redemption_token_used"}
    done = next(r for r in responses if r.status_code == 201)
    assert len(_claims(runtime, cohort, member)) == 1
    assert _balance(runtime, cohort, member) == SHARE - done.json()["amount"]
    again = redeem(keys[[r.status_code for r in responses].index(409)])
    assert again.status_code == 409
    assert again.json()["code"] == refused.json()["code"]
    assert _balance(runtime, cohort, member) == SHARE - done.json()["amount"]


# -- the index itself -------------------------------------------------------------------------


def test_a_fresh_index_reads_the_files_and_the_chain(
    client: TestClient, runtime: Runtime, cohort: Cohort
) -> None:
    """After a restart the index is rebuilt from ``<var>/cohorts`` and the claim bitmap: a
    claimed share is not shown again, an unclaimed one is; a file whose cohort never reached
    the chain (its ``issueCohort`` failed or is not yet mined) gives no share."""
    directory = runtime.settings.var_dir / "cohorts"
    fresh = cohort_claims.CohortShares(directory, runtime.client, runtime.rpc)
    claimed, unclaimed = _pid(runtime, cohort.members[0]), _pid(runtime, cohort.members[5])
    assert fresh.unclaimed(claimed) == []
    assert [(s.root, s.amount) for s in fresh.unclaimed(unclaimed)] == [(cohort.root, SHARE)]
    assert fresh.amounts(unclaimed) == {cohort.scheme_id: SHARE}
    assert fresh.unclaimed(_pid(runtime, cohort.outsider)) == []

    bogus_root = keccak(text="never issued")
    stray = directory / f"0x{bogus_root.hex()}.json"
    stray.write_text(
        json.dumps(
            {
                "scheme_id": cohort.scheme_id,
                "root": "0x" + bogus_root.hex(),
                "holder_count": 1,
                "total_amount": 777,
                "leaves": [
                    {"index": 0, "pass_id": "0x" + unclaimed.hex(), "amount": 777, "proof": []}
                ],
            }
        ),
        encoding="utf-8",
    )
    try:
        os.utime(directory, ns=(time.time_ns(), time.time_ns() + 1_000_000))
        assert fresh.amounts(unclaimed) == {cohort.scheme_id: SHARE}
        assert cohort_claims.unclaimed_amount(runtime, unclaimed, cohort.scheme_id) == SHARE
    finally:
        stray.unlink()
        os.utime(directory, ns=(time.time_ns(), time.time_ns() + 2_000_000))
    assert fresh.amounts(unclaimed) == {cohort.scheme_id: SHARE}


def test_two_unclaimed_shares_in_one_scheme_are_both_claimed(
    client: TestClient, runtime: Runtime, cohort: Cohort
) -> None:
    """A second cohort in the same scheme (1,000 each): the pass that has claimed neither sees
    both; its first use claims the one with a plain ``claim`` sent just before, the other in
    the ``claimAndRedeem`` (runs last: every member gets the second share)."""
    criteria = {
        "scheme_id": cohort.scheme_id,
        "amount": 1_000,
        "min_age": 94,
        "max_age": 94,
        "age_at": "2026-01-01",
    }
    response = client.post("/admin/cohorts", json=criteria, headers=_staff(client, "issuer"))
    assert response.status_code == 202, response.text
    job = _wait_job(client, response.json()["id"])
    assert job["status"] == "done", job
    member = cohort.members[5]
    item = _scan_item(client, runtime, cohort, member)
    assert item is not None
    assert (item["balance"], item["unclaimed"]) == (SHARE + 1_000, SHARE + 1_000)

    done = _redeem(client, runtime, cohort, member, SHARE + 500, "two-shares-1")
    assert done.status_code == 201, done.text
    assert done.json()["balance"] == 500
    assert _tx_events(runtime, done.json()["tx_hash"])[0] == "claimAndRedeem"
    assert len(_claims(runtime, cohort, member)) == 1  # the first cohort's leaf
    second_root = bytes.fromhex(job["result"]["root"][2:])
    second = Cohort(cohort.scheme_id, second_root, cohort.members, cohort.outsider)
    assert len(_claims(runtime, second, member)) == 1
    assert _balance(runtime, cohort, member) == 500
    item = _scan_item(client, runtime, cohort, member)
    assert item is not None
    assert (item["balance"], item["unclaimed"]) == (500, 0)
