"""The thin slice end to end over HTTP: issue -> token -> redeem -> balance -> replay refused."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from api.runtime import Runtime
from api.store import RedemptionStatus
from ledger import contract_errors as ce
from ledger.client import RedemptionRequest
from ledger.passid import pass_id
from ledger.relayer import TxRequest
from tests.api.conftest import admin, holder, merchant, signed_uri
from wallet import Domain, decode_token_uri, generate_private_key

PROBLEM = "application/problem+json"


def _balance(client: TestClient, pass_number: str, scheme_id: int) -> int:
    response = client.get(
        f"/holder/passes/{pass_number}/balances", headers=holder(client, pass_number)
    )
    assert response.status_code == 200, response.text
    by_id = {b["scheme_id"]: b for b in response.json()["balances"]}
    return int(by_id[scheme_id]["balance"])


def _token(client: TestClient, pass_number: str) -> str:
    response = client.get(
        f"/holder/passes/{pass_number}/token", headers=holder(client, pass_number)
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["expires_at"] > time.time()
    return str(body["token_uri"])


def _pass_id(runtime: Runtime, pass_number: str) -> bytes:
    holder = runtime.store.holder(pass_number)
    assert holder is not None
    return pass_id(pass_secret=holder.pass_secret, pass_number=holder.pass_number)


def test_health(client: TestClient, runtime: Runtime) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["chain_id"] == 31337
    assert body["ledger_address"] == runtime.deployment.ledger_address
    assert body["head_block"] >= body["deployment_block"] >= 1
    assert body["rpc"] == "embedded-anvil"


def test_demo_seed(runtime: Runtime, client: TestClient) -> None:
    holders = runtime.store.holders()
    assert len([h for h in holders if h.pass_number.startswith("GR00000")]) == 50
    # the demo merchants (other tests of the session may enrol more)
    assert [m.id for m in runtime.store.merchants() if m.id <= 3] == [1, 2, 3]
    body = client.get(
        "/holder/passes/GR0000050/balances", headers=holder(client, "GR0000050")
    ).json()
    kinds = {b["kind"]: b for b in body["balances"]}
    assert kinds["budget"]["balance"] == 15_000
    assert kinds["uses"]["balance"] == 10
    assert kinds["discount"]["unlimited"] is True
    assert body["registered"] is True
    # nothing personal on chain: the pass appears by its pseudonym only
    assert runtime.client.pass_of(_pass_id(runtime, "GR0000050")).registered


def test_issue_token_redeem_replay(client: TestClient, runtime: Runtime) -> None:
    before = _balance(client, "GR0000002", 1)
    issued = client.post(
        "/admin/entitlements",
        json={"pass_number": "GR0000002", "scheme_id": 1, "amount": 2_500},
        headers=admin(client),
    )
    assert issued.status_code == 201, issued.text
    assert issued.json()["balance"] == before + 2_500
    assert issued.json()["tx_hash"].startswith("0x")

    token = _token(client, "GR0000002")
    body = {"token": token, "scheme_id": 1, "amount": 1_250}
    first = client.post("/merchant/redemptions", json=body, headers=merchant(client, 2, "slice-1"))
    assert first.status_code == 201, first.text
    result = first.json()
    assert first.headers["Idempotent-Replayed"] == "false"
    assert result["debited"] == 1_250
    assert result["credited"] == 1_250
    assert result["balance"] == before + 1_250
    assert _balance(client, "GR0000002", 1) == before + 1_250

    # the idempotent retry returns the first result and redeems nothing
    retry = client.post("/merchant/redemptions", json=body, headers=merchant(client, 2, "slice-1"))
    assert retry.status_code == 201
    assert retry.json() == result
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert _balance(client, "GR0000002", 1) == before + 1_250

    # replaying the same redemption id on chain is refused (preflight and on-chain)
    request = RedemptionRequest(
        redemption_id=result["redemption_id"],
        scheme_id=1,
        amount=1_250,
        token=decode_token_uri(token),
    )
    data = runtime.client.redeem_data(request)
    relayer = runtime.merchant_relayer(2)
    with pytest.raises(ce.RedemptionIdUsed):
        runtime.client.preflight(sender=relayer.address, data=data)
    tx = TxRequest(to=runtime.client.address, data=data, gas=200_000)
    receipt = relayer.submit(tx).result(timeout=20)
    assert receipt.status == 0
    error = runtime.client.revert_of(bytes(relayer.revert_data(tx, receipt) or b""))
    assert isinstance(error, ce.RedemptionIdUsed)
    assert _balance(client, "GR0000002", 1) == before + 1_250


def test_same_key_other_body_is_refused(client: TestClient) -> None:
    token = _token(client, "GR0000003")
    body = {"token": token, "scheme_id": 1, "amount": 100}
    assert (
        client.post(
            "/merchant/redemptions", json=body, headers=merchant(client, 3, "k")
        ).status_code
        == 201
    )
    other = client.post(
        "/merchant/redemptions", json=body | {"amount": 101}, headers=merchant(client, 3, "k")
    )
    assert other.status_code == 409
    assert other.headers["content-type"] == PROBLEM
    assert other.json()["code"] == "idempotency_key_reused"
    assert _balance(client, "GR0000003", 1) == 15_000 - 100
    # keys are per merchant: another merchant may use the same key (another checkout: a
    # token serves one)
    fresh = body | {"token": _token(client, "GR0000003")}
    assert (
        client.post(
            "/merchant/redemptions", json=fresh, headers=merchant(client, 2, "k")
        ).status_code
        == 201
    )


def test_discount_and_uses(client: TestClient) -> None:
    token = _token(client, "GR0000004")
    discount = client.post(
        "/merchant/redemptions",
        json={"token": token, "scheme_id": 3, "amount": 4_000},
        headers=merchant(client, 2, "d-1"),
    )
    assert discount.status_code == 201, discount.text
    assert discount.json()["discount"] == 1_000  # 25% of 40 euro
    assert discount.json()["credited"] == 500  # half reimbursed
    swim = client.post(  # another merchant: another checkout, another token
        "/merchant/redemptions",
        json={"token": _token(client, "GR0000004"), "scheme_id": 2, "amount": 1},
        headers=merchant(client, 1, "s-1"),
    )
    assert swim.status_code == 201, swim.text
    assert swim.json()["balance"] == 9


def _bad_token(runtime: Runtime, case: str) -> str:
    pid = _pass_id(runtime, "GR0000005")
    if case == "garbage":
        return "stadjerspas:1:not-a-token"
    if case == "expired":
        return signed_uri(runtime, pid, expiry=int(time.time()) - 600)
    if case == "wrong_chain":
        domain = Domain(chain_id=1, verifying_contract=runtime.client.address)
        return signed_uri(runtime, pid, domain=domain)
    if case == "wrong_contract":
        domain = Domain(chain_id=runtime.chain_id, verifying_contract="0x" + "11" * 20)
        return signed_uri(runtime, pid, domain=domain)
    if case == "wrong_signer":
        return signed_uri(runtime, pid, key=generate_private_key())
    return signed_uri(runtime, pid)


@pytest.mark.parametrize(
    ("case", "scheme_id", "amount", "status", "code"),
    [
        ("garbage", 1, 100, 400, "token_truncated"),
        ("expired", 1, 100, 422, "token_expired"),
        ("wrong_chain", 1, 100, 422, "token_wrong_chain"),
        ("wrong_contract", 1, 100, 422, "token_wrong_contract"),
        ("wrong_signer", 1, 100, 422, "token_signer_not_allowed"),
        ("valid", 1, 15_001, 409, "redemption_amount_over_balance"),
        ("valid", 99, 1, 404, "redemption_scheme_unknown"),
        ("valid", 2, 1, 403, "redemption_merchant_not_allowed"),
    ],
)
def test_bad_redemptions_change_nothing(
    client: TestClient,
    runtime: Runtime,
    case: str,
    scheme_id: int,
    amount: int,
    status: int,
    code: str,
) -> None:
    head = runtime.w3.eth.block_number
    next_id = runtime.store.peek_redemption_id()
    key = f"bad-{case}-{scheme_id}"
    response = client.post(
        "/merchant/redemptions",
        json={"token": _bad_token(runtime, case), "scheme_id": scheme_id, "amount": amount},
        headers=merchant(client, 2, key),
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["code"] == code
    assert problem["status"] == status
    assert problem["type"].endswith(code)
    assert problem["instance"] == "/merchant/redemptions"
    assert problem["detail"]
    assert _balance(client, "GR0000005", 1) == 15_000
    assert runtime.w3.eth.block_number == head  # no transaction was sent
    assert runtime.store.peek_redemption_id() == next_id  # no id used up
    assert runtime.store.redemption(2, key) is None  # the key stays free


def test_garbage_token_code(client: TestClient) -> None:
    response = client.post(
        "/merchant/redemptions",
        json={"token": "hello", "scheme_id": 1, "amount": 1},
        headers=merchant(client, 2, "garbage"),
    )
    assert response.status_code == 400
    assert response.json()["code"] == "token_malformed"


def test_unknown_pass_number(client: TestClient) -> None:
    for response in (
        client.get("/holder/passes/GR9999999/balances", headers=holder(client, "GR0000001")),
        client.get("/holder/passes/GR9999999/token", headers=holder(client, "GR0000001")),
        client.post(
            "/admin/entitlements",
            json={"pass_number": "GR9999999", "scheme_id": 1, "amount": 1},
            headers=admin(client),
        ),
    ):
        assert response.status_code == 404
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["code"] == "pass_number_unknown"


def test_issue_refusals(client: TestClient) -> None:
    unknown = client.post(
        "/admin/entitlements",
        json={"pass_number": "GR0000006", "scheme_id": 99, "amount": 1},
        headers=admin(client),
    )
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "scheme_unknown"
    over = client.post(
        "/admin/entitlements",
        json={"pass_number": "GR0000006", "scheme_id": 1, "amount": 10**9},
        headers=admin(client),
    )
    assert over.status_code == 409
    assert over.json()["code"] == "scheme_budget_exceeded"
    zero = client.post(
        "/admin/entitlements",
        json={"pass_number": "GR0000006", "scheme_id": 1, "amount": 0},
        headers=admin(client),
    )
    assert zero.status_code == 422
    assert zero.json()["code"] == "validation_failed"
    assert _balance(client, "GR0000006", 1) == 15_000


def test_auth_and_headers(client: TestClient, runtime: Runtime) -> None:
    body = {
        "token": signed_uri(runtime, _pass_id(runtime, "GR0000007")),
        "scheme_id": 1,
        "amount": 1,
    }
    no_auth = client.post("/merchant/redemptions", json=body, headers={"Idempotency-Key": "x"})
    assert no_auth.status_code == 401
    assert no_auth.json()["code"] == "unauthorized"
    assert no_auth.headers["www-authenticate"] == "Bearer"
    wrong_role = client.post(
        "/admin/entitlements",
        json={"pass_number": "GR0000007", "scheme_id": 1, "amount": 1},
        headers=holder(client, "GR0000001"),
    )
    assert wrong_role.status_code == 403
    assert wrong_role.json()["code"] == "wrong_principal_kind"
    no_key = client.post("/merchant/redemptions", json=body, headers=merchant(client, 2))
    assert no_key.status_code == 400
    assert no_key.json()["code"] == "idempotency_key_missing"
    assert _balance(client, "GR0000007", 1) == 15_000


def test_qr_images(client: TestClient) -> None:
    png = client.get(
        "/holder/passes/GR0000008/token?format=png", headers=holder(client, "GR0000008")
    )
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")
    svg = client.get(
        "/holder/passes/GR0000008/token?format=svg", headers=holder(client, "GR0000008")
    )
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in svg.content
    bad = client.get(
        "/holder/passes/GR0000008/token?format=gif", headers=holder(client, "GR0000008")
    )
    assert bad.json()["code"] == "validation_failed"


def test_openapi(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) >= {
        "/health",
        "/admin/entitlements",
        "/holder/passes/{pass_number}/token",
        "/holder/passes/{pass_number}/balances",
        "/merchant/redemptions",
    }
    responses = spec["paths"]["/merchant/redemptions"]["post"]["responses"]
    assert "application/problem+json" in responses["409"]["content"]
    assert client.get("/docs").status_code == 200


def test_pending_record_is_recovered(client: TestClient, runtime: Runtime) -> None:
    """A record left pending (e.g. the process died after sending) finishes on retry, once."""
    token = _token(client, "GR0000009")
    body = {"token": token, "scheme_id": 1, "amount": 300}
    first = client.post("/merchant/redemptions", json=body, headers=merchant(client, 2, "crash"))
    assert first.status_code == 201
    record = runtime.store.redemption(2, "crash")
    assert record is not None
    record.status = RedemptionStatus.PENDING  # as if the result had never been written
    record.tx_hash = None
    runtime.store.save_redemption(record)
    retry = client.post("/merchant/redemptions", json=body, headers=merchant(client, 2, "crash"))
    assert retry.status_code == 201, retry.text
    assert retry.json()["redemption_id"] == first.json()["redemption_id"]
    assert retry.json()["tx_hash"] == first.json()["tx_hash"]
    assert _balance(client, "GR0000009", 1) == 15_000 - 300
