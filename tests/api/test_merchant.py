"""Merchant API: scan (first name only), batched concurrent redemptions applied exactly once,
idempotent retries, reversal and its refusals, own redemptions, statement and offers, and the
object-level rule (a terminal never sees or reverses another merchant's redemptions)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.runtime import Runtime
from tests.api.conftest import assert_problem as _problem
from tests.api.conftest import holder, merchant, signed_uri
from tests.api.conftest import holder_pass_id as _pid


def _token(runtime: Runtime, pass_number: str) -> str:
    return signed_uri(runtime, _pid(runtime, pass_number))


def _balance(runtime: Runtime, pass_number: str, scheme_id: int = 1) -> int:
    return runtime.client.balance_of(scheme_id, _pid(runtime, pass_number))


def _redeem(
    client: TestClient, runtime: Runtime, merchant_id: int, pass_number: str, amount: int, key: str
) -> Any:
    return client.post(
        "/merchant/redemptions",
        json={"token": _token(runtime, pass_number), "scheme_id": 1, "amount": amount},
        headers=merchant(client, merchant_id, key),
    )


# -- scan ---------------------------------------------------------------------------------------


def test_scan_shows_first_name_only(client: TestClient, runtime: Runtime) -> None:
    response = client.post(
        "/merchant/scan", json={"token": _token(runtime, "GR0000016")}, headers=merchant(client, 1)
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {
        "status",
        "first_name",
        "token_expires_at",
        "token_kind",
        "amount_cap",
        "redeemable",
        "checkout_token",
    }
    assert body["checkout_token"] is None  # only after a PIN
    record, person = runtime.store.registry.pass_holders("GR0000016")[0]
    assert body["status"] == "active"
    assert body["first_name"] == person.first_name
    text = response.text
    for personal in (person.last_name, record.pass_number, str(person.birth_date), person.postcode):
        assert personal not in text
    assert record.pass_id[2:] not in text.lower()
    kinds = {item["kind"]: item for item in body["redeemable"]}
    assert set(kinds) == {"budget", "uses", "discount"}  # merchant 1 may redeem swimming
    assert kinds["budget"]["balance"] == 15_000
    assert kinds["uses"]["balance"] == 10
    assert kinds["discount"]["unlimited"] is True
    assert kinds["discount"]["per_redemption_cap"] == 2_500
    assert kinds["budget"]["valid_until"] > time.time()
    # merchant 2 is not allowed for the swimming scheme: it does not see it
    other = client.post(
        "/merchant/scan", json={"token": _token(runtime, "GR0000016")}, headers=merchant(client, 2)
    ).json()
    assert {item["kind"] for item in other["redeemable"]} == {"budget", "discount"}


def test_scan_blocked_pass(client: TestClient, runtime: Runtime) -> None:
    registry = runtime.store.registry
    registry.block_pass("GR0000017")
    try:
        body = client.post(
            "/merchant/scan",
            json={"token": _token(runtime, "GR0000017")},
            headers=merchant(client, 2),
        ).json()
        assert body["status"] == "blocked"
        assert body["redeemable"] == []
    finally:
        registry.unblock_pass("GR0000017")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"token": "hello"}, 400, "token_malformed"),
        ({"token": "stadjerspas:1:not-a-token"}, 400, "token_truncated"),
        ({"token": ""}, 422, "validation_failed"),
        ({"token": 5}, 422, "validation_failed"),
        ({}, 422, "validation_failed"),
        ({"token": "x", "extra": 1}, 422, "validation_failed"),
        ({"token": "x" * 600}, 422, "validation_failed"),
    ],
)
def test_scan_bad_input(client: TestClient, body: Any, status: int, code: str) -> None:
    _problem(client.post("/merchant/scan", json=body, headers=merchant(client, 2)), status, code)


def test_scan_expired_token(client: TestClient, runtime: Runtime) -> None:
    uri = signed_uri(runtime, _pid(runtime, "GR0000016"), expiry=int(time.time()) - 600)
    response = client.post("/merchant/scan", json={"token": uri}, headers=merchant(client, 2))
    _problem(response, 422, "token_expired")


# -- redemptions: batching, exactly once, idempotent retries ----------------------------------


def test_concurrent_redemptions_batch_and_apply_once(client: TestClient, runtime: Runtime) -> None:
    # 20 passes, 10 redeemed at merchant 2 and 10 at merchant 3 (a token serves one checkout)
    passes = [f"GR{i:07d}" for i in range(21, 41)]
    jobs = [(2 if i < 10 else 3, p, f"conc-{p}") for i, p in enumerate(passes)]
    tokens = {p: _token(runtime, p) for p in passes}
    headers = {(m, key): merchant(client, m, key) for m, _, key in jobs}
    before = {p: _balance(runtime, p) for p in passes}
    sent_before = {m: runtime.merchant_batcher(m).batches_sent for m in (2, 3)}

    def redeem(job: tuple[int, str, str]) -> Any:
        m, p, key = job
        body = {"token": tokens[p], "scheme_id": 1, "amount": 100}
        return client.post("/merchant/redemptions", json=body, headers=headers[(m, key)])

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(redeem, jobs))
    assert all(r.status_code == 201 for r in responses), [r.text for r in responses]
    results = [r.json() for r in responses]
    assert len({r["redemption_id"] for r in results}) == 20
    transactions = {r["tx_hash"] for r in results}
    batches = sum(runtime.merchant_batcher(m).batches_sent - sent_before[m] for m in (2, 3))
    assert len(transactions) < 20
    assert batches < 20
    for p in passes:
        assert _balance(runtime, p) == before[p] - 100

    # retries (concurrent, same keys and bodies) return the first results and redeem nothing
    with ThreadPoolExecutor(max_workers=20) as pool:
        retries = list(pool.map(redeem, jobs))
    assert [r.json() for r in retries] == results
    assert all(r.headers["Idempotent-Replayed"] == "true" for r in retries)
    for p in passes:
        assert _balance(runtime, p) == before[p] - 100


def test_same_key_raced_redeems_once(client: TestClient, runtime: Runtime) -> None:
    before = _balance(runtime, "GR0000031")
    body = {"token": _token(runtime, "GR0000031"), "scheme_id": 1, "amount": 250}
    headers = merchant(client, 2, "race-1")
    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(
            pool.map(
                lambda _: client.post("/merchant/redemptions", json=body, headers=headers), range(6)
            )
        )
    assert all(r.status_code == 201 for r in responses), [r.text for r in responses]
    assert len({r.json()["redemption_id"] for r in responses}) == 1
    assert sorted(r.headers["Idempotent-Replayed"] for r in responses).count("false") == 1
    assert _balance(runtime, "GR0000031") == before - 250
    reused = client.post("/merchant/redemptions", json=body | {"amount": 251}, headers=headers)
    _problem(reused, 409, "idempotency_key_reused")
    missing = client.post("/merchant/redemptions", json=body, headers=merchant(client, 2))
    _problem(missing, 400, "idempotency_key_missing")
    assert _balance(runtime, "GR0000031") == before - 250


def test_a_retry_that_the_checks_would_now_refuse_returns_the_first_result(
    client: TestClient, runtime: Runtime
) -> None:
    """The first request spent the whole balance: its retry fails the balance check and still
    gets the first result, while a new key with the same body is refused as the contract would
    refuse it. The same key with a body the checks refuse otherwise is a reused key."""
    number = "GR0000048"
    everything = _balance(runtime, number)
    assert everything > 0
    body = {"token": _token(runtime, number), "scheme_id": 1, "amount": everything}
    headers = merchant(client, 3, "spend-all")
    first = client.post("/merchant/redemptions", json=body, headers=headers)
    assert first.status_code == 201, first.text
    assert first.json()["balance"] == 0 == _balance(runtime, number)

    again = client.post("/merchant/redemptions", json=body, headers=headers)
    assert again.status_code == 201, again.text
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    refused = client.post("/merchant/redemptions", json=body, headers=merchant(client, 3, "new"))
    _problem(refused, 409, "redemption_amount_over_balance")

    garbage = body | {"token": "stadjerspas:1:not-a-token"}
    _problem(
        client.post("/merchant/redemptions", json=garbage, headers=headers),
        409,
        "idempotency_key_reused",
    )
    fresh = merchant(client, 3, "garbage")
    _problem(
        client.post("/merchant/redemptions", json=garbage, headers=fresh), 400, "token_truncated"
    )
    assert _balance(runtime, number) == 0


@pytest.mark.parametrize(
    "body",
    [
        {"token": "x", "scheme_id": "one", "amount": 1},
        {"token": "x", "scheme_id": 1, "amount": -5},
        {"token": "x", "scheme_id": 1, "amount": 2**64},
        {"token": "x", "scheme_id": 1},
        {"token": None, "scheme_id": 1, "amount": 1},
    ],
)
def test_redeem_invalid_bodies(client: TestClient, body: Any) -> None:
    response = client.post("/merchant/redemptions", json=body, headers=merchant(client, 2, "inv"))
    _problem(response, 422, "validation_failed")


# -- reversal -----------------------------------------------------------------------------------


def test_reversal_and_refusals(client: TestClient, runtime: Runtime) -> None:
    before = _balance(runtime, "GR0000032")
    redeemed = _redeem(client, runtime, 2, "GR0000032", 500, "rev-1")
    assert redeemed.status_code == 201, redeemed.text
    rid = redeemed.json()["redemption_id"]
    owed_before = runtime.client.merchant_totals(runtime.merchant_relayer(2).address).owed

    # another merchant cannot reverse it, nor see it: it looks unknown
    other = client.post(f"/merchant/redemptions/{rid}/reversal", headers=merchant(client, 3))
    _problem(other, 404, "reversal_unknown_redemption")
    assert _balance(runtime, "GR0000032") == before - 500

    reversed_ = client.post(f"/merchant/redemptions/{rid}/reversal", headers=merchant(client, 2))
    assert reversed_.status_code == 201, reversed_.text
    body = reversed_.json()
    assert body["restored"] == 500
    assert body["credited_reversed"] == 500
    assert body["balance"] == before
    assert _balance(runtime, "GR0000032") == before
    assert runtime.client.is_reversed(rid)
    owed_after = runtime.client.merchant_totals(runtime.merchant_relayer(2).address).owed
    assert owed_after == owed_before - 500

    again = client.post(f"/merchant/redemptions/{rid}/reversal", headers=merchant(client, 2))
    _problem(again, 409, "reversal_already_done")
    unknown = client.post("/merchant/redemptions/987654/reversal", headers=merchant(client, 2))
    _problem(unknown, 404, "reversal_unknown_redemption")
    for bad in ("abc", "0", "-1", str(2**64)):
        _problem(
            client.post(f"/merchant/redemptions/{bad}/reversal", headers=merchant(client, 2)),
            422,
            "validation_failed",
        )
    assert _balance(runtime, "GR0000032") == before

    # the list shows it reversed; merchant 3's list does not show it at all
    items = client.get("/merchant/redemptions?limit=200", headers=merchant(client, 2)).json()
    mine = {item["redemption_id"]: item for item in items["items"]}
    assert mine[rid]["reversed"] is True
    assert mine[rid]["reversal_tx_hash"] == body["tx_hash"]
    theirs = client.get("/merchant/redemptions?limit=200", headers=merchant(client, 3)).json()
    assert rid not in {item["redemption_id"] for item in theirs["items"]}

    # the statement has the redemption and its reversal (once the index has caught up)
    deadline = time.monotonic() + 30
    while runtime.index_lag() != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    stmt = client.get("/merchant/statement", headers=merchant(client, 2)).json()
    assert stmt["source"] in ("api_records", "index")
    refs = {(line["kind"], line["reference"]) for line in stmt["lines"]}
    assert {("redemption", str(rid)), ("reversal", str(rid))} <= refs
    assert stmt["owed_now"] == owed_after
    stmt3 = client.get("/merchant/statement", headers=merchant(client, 3)).json()
    assert str(rid) not in {line["reference"] for line in stmt3["lines"]}


def test_reversal_after_the_window(client: TestClient, runtime: Runtime) -> None:
    window = runtime.client.reversal_window()
    runtime.transact(runtime.admin(), "setReversalWindow", 0)
    try:
        redeemed = _redeem(client, runtime, 2, "GR0000033", 100, "rev-window")
        assert redeemed.status_code == 201, redeemed.text
        rid = redeemed.json()["redemption_id"]
        time.sleep(1.1)  # the next block is at least a second later than the receipt root
        late = client.post(f"/merchant/redemptions/{rid}/reversal", headers=merchant(client, 2))
        _problem(late, 409, "reversal_window_closed")
        assert not runtime.client.is_reversed(rid)
    finally:
        runtime.transact(runtime.admin(), "setReversalWindow", window)


def test_failed_redemption_cannot_be_reversed(client: TestClient, runtime: Runtime) -> None:
    refused = _redeem(client, runtime, 2, "GR0000034", 10**6, "too-much")
    _problem(refused, 409, "redemption_amount_over_balance")
    # a refused preflight stores nothing; the list has no such id, a reversal of any id is 404
    page = client.get("/merchant/redemptions?status=failed", headers=merchant(client, 2)).json()
    for item in page["items"]:
        response = client.post(
            f"/merchant/redemptions/{item['redemption_id']}/reversal", headers=merchant(client, 2)
        )
        _problem(response, 404, "reversal_unknown_redemption")


# -- list, statement, offers --------------------------------------------------------------------


def test_list_is_own_and_paginated(client: TestClient, runtime: Runtime) -> None:
    for i in range(3):
        assert _redeem(client, runtime, 3, "GR0000035", 10, f"page-{i}").status_code == 201
    seen: list[int] = []
    before: int | None = None
    while True:
        query = "?limit=2" + (f"&before={before}" if before is not None else "")
        page = client.get("/merchant/redemptions" + query, headers=merchant(client, 3)).json()
        assert len(page["items"]) <= 2
        seen += [item["redemption_id"] for item in page["items"]]
        before = page["next_before"]
        if before is None:
            break
    assert seen == sorted(seen, reverse=True)
    assert len(seen) == len(set(seen)) >= 3
    own = {r.redemption_id for r in runtime.store.merchant_redemptions(3, limit=10_000)}
    assert set(seen) == own
    for query in ("?limit=0", "?limit=201", "?limit=x", "?before=0", "?status=lost"):
        _problem(
            client.get("/merchant/redemptions" + query, headers=merchant(client, 3)),
            422,
            "validation_failed",
        )


def test_statement_period_and_refusals(client: TestClient) -> None:
    ok = client.get(
        "/merchant/statement?from=2020-01-01&to=2020-01-31", headers=merchant(client, 2)
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["lines"] == []
    assert ok.json()["merchant_id"] == 2
    _problem(
        client.get(
            "/merchant/statement?from=2025-02-01&to=2025-01-01", headers=merchant(client, 2)
        ),
        422,
        "period_invalid",
    )
    _problem(
        client.get("/merchant/statement?from=yesterday", headers=merchant(client, 2)),
        422,
        "validation_failed",
    )


def test_offers(client: TestClient) -> None:
    for merchant_id in (1, 2, 3):
        offers = client.get("/merchant/offers", headers=merchant(client, merchant_id)).json()
        assert [o["kind"] for o in offers] == ["discount"]
        assert offers[0]["discount_bps"] == 2_500
    assert client.get("/merchant/offers", headers=holder(client, "GR0000001")).status_code == 403
