"""Holder API: the rotating token (JSON, raw text, PNG, SVG), balances with expiry dates,
history (index and API records), offers with where to use them, and the object-level rule."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api import holder_services
from api.auth import AUDIENCE, ISSUER, encode_token
from api.runtime import Runtime
from ledger.passid import pass_id
from tests.api.conftest import holder, merchant, signed_uri

OWN = "GR0000044"
OTHER = "GR0000045"
PROBLEM = "application/problem+json"
ROUTES = ("token", "token?format=png", "token?format=svg", "token?format=text")
ROUTES_ALL = (*ROUTES, "balances", "entitlements", "history", "offers")


def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    return body


def _pid(runtime: Runtime, pass_number: str) -> bytes:
    found = runtime.store.holder(pass_number)
    assert found is not None
    return pass_id(pass_secret=found.pass_secret, pass_number=found.pass_number)


def test_token_formats(client: TestClient, runtime: Runtime) -> None:
    headers = holder(client, OWN)
    as_json = client.get(f"/holder/passes/{OWN}/token", headers=headers)
    assert as_json.status_code == 200, as_json.text
    body = as_json.json()
    assert body["token_uri"].startswith("stadjerspas:1:")
    now = int(time.time())
    assert now < body["expires_at"] <= now + runtime.settings.token_lifetime_s + 1
    text = client.get(f"/holder/passes/{OWN}/token?format=text", headers=headers)
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text.startswith("stadjerspas:1:")
    assert text.headers["cache-control"] == "no-store"
    assert int(text.headers["x-token-expires-at"]) >= now
    png = client.get(f"/holder/passes/{OWN}/token?format=png", headers=headers)
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")
    svg = client.get(f"/holder/passes/{OWN}/token?format=svg", headers=headers)
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in svg.content
    # rotating: a later token differs (new expiry, new signature) once a second has passed
    time.sleep(1.05)
    again = client.get(f"/holder/passes/{OWN}/token", headers=headers).json()
    assert again["token_uri"] != body["token_uri"]


def test_entitlements_with_expiry_dates(client: TestClient, runtime: Runtime) -> None:
    response = client.get(f"/holder/passes/{OWN}/entitlements", headers=holder(client, OWN))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["pass_number"] == OWN
    assert body["balances"], body
    pid = _pid(runtime, OWN)
    for item in body["balances"]:
        terms = runtime.client.scheme_of(item["scheme_id"]).terms
        assert item["valid_until"] == terms.valid_until
        assert item["expires_on"] == time.strftime("%Y-%m-%d", time.gmtime(terms.valid_until))
        assert item["balance"] == runtime.client.balance_of(item["scheme_id"], pid) != 0


def test_history_from_index_and_records(client: TestClient, runtime: Runtime) -> None:
    token = signed_uri(runtime, _pid(runtime, OWN))
    redeemed = client.post(
        "/merchant/redemptions",
        json={"token": token, "scheme_id": 1, "amount": 120},
        headers=merchant(client, 1, f"holder-history-{time.time_ns()}"),
    )
    assert redeemed.status_code in (200, 201), redeemed.text
    rid = redeemed.json()["redemption_id"]
    reversed_ = client.post(f"/merchant/redemptions/{rid}/reversal", headers=merchant(client, 1))
    assert reversed_.status_code == 201, reversed_.text

    headers = holder(client, OWN)
    deadline = time.monotonic() + 20
    while True:  # the indexer follows the chain asynchronously
        body = client.get(f"/holder/passes/{OWN}/history", headers=headers).json()
        kinds = {(i["kind"], i["redemption_id"]) for i in body["items"]}
        if {("redemption", str(rid)), ("reversal", str(rid))} <= kinds:
            break
        assert time.monotonic() < deadline, body
        time.sleep(0.2)
    assert body["source"] == "index"
    item = next(i for i in body["items"] if i["kind"] == "redemption")
    assert item["amount"] == 120
    assert item["merchant_name"]
    reversal = next(i for i in body["items"] if i["kind"] == "reversal")
    assert reversal["amount"] == -120

    # the other holder's history does not show it
    other = client.get(f"/holder/passes/{OTHER}/history", headers=holder(client, OTHER)).json()
    assert str(rid) not in {i["redemption_id"] for i in other["items"]}

    # without an index checkpoint: the API's own records
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(holder_services, "_index_is_live", lambda _runtime: False)
        fallback = holder_services.history(runtime, OWN)
    assert fallback.source == "api_records"
    found = {(i.kind, i.redemption_id, i.amount) for i in fallback.items}
    assert {("redemption", str(rid), 120), ("reversal", str(rid), -120)} <= found
    assert fallback.items[0].at is not None


def test_history_limit_validated(client: TestClient) -> None:
    headers = holder(client, OWN)
    _problem(
        client.get(f"/holder/passes/{OWN}/history?limit=0", headers=headers),
        422,
        "validation_failed",
    )
    assert client.get(f"/holder/passes/{OWN}/history?limit=1", headers=headers).status_code == 200


def test_offers_and_where_to_use_them(client: TestClient, runtime: Runtime) -> None:
    response = client.get(f"/holder/passes/{OWN}/offers", headers=holder(client, OWN))
    assert response.status_code == 200, response.text
    offers = response.json()["offers"]
    assert offers
    active = {m.id for m in runtime.store.merchants() if m.active}
    now = int(time.time())
    for offer in offers:
        assert offer["valid_until"] >= now
        ids = {place["merchant_id"] for place in offer["where"]}
        assert ids <= active
        if offer["open_to_all_merchants"]:
            assert ids == active
        assert set(offer["where"][0]) == {"merchant_id", "name", "category"} if ids else True


# -- object-level and auth refusals -------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES_ALL)
def test_other_holders_pass_looks_unknown(client: TestClient, route: str) -> None:
    response = client.get(f"/holder/passes/{OTHER}/{route}", headers=holder(client, OWN))
    body = _problem(response, 404, "pass_number_unknown")
    assert "first_name" not in body


@pytest.mark.parametrize("route", ROUTES_ALL)
def test_no_token_and_wrong_kind(client: TestClient, route: str) -> None:
    _problem(client.get(f"/holder/passes/{OWN}/{route}"), 401, "unauthorized")
    _problem(
        client.get(f"/holder/passes/{OWN}/{route}", headers=merchant(client, 1)),
        403,
        "wrong_principal_kind",
    )


def test_expired_and_forged_holder_tokens(client: TestClient, runtime: Runtime) -> None:
    secret = runtime.settings.auth_secret
    assert secret is not None
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": OWN,
        "kind": "holder",
        "scope": "holder:read",
        "pass": OWN,
        "iat": now - 3600,
        "exp": now - 60,
        "jti": "expired",
    }
    expired = encode_token(claims, secret.get_secret_value().encode())
    for route in ("token", "entitlements", "history", "offers"):
        response = client.get(
            f"/holder/passes/{OWN}/{route}", headers={"Authorization": f"Bearer {expired}"}
        )
        _problem(response, 401, "auth_token_expired")
        assert response.headers["www-authenticate"].startswith("Bearer")
    forged = encode_token(claims | {"exp": now + 600}, b"x" * 32)
    _problem(
        client.get(f"/holder/passes/{OWN}/offers", headers={"Authorization": f"Bearer {forged}"}),
        401,
        "auth_token_invalid",
    )


def test_garbage_pass_number_refused(client: TestClient) -> None:
    headers = holder(client, OWN)
    for bad in ("GR-01", "x" * 40, "GR0000044%00"):
        response = client.get(f"/holder/passes/{bad}/history", headers=headers)
        assert response.status_code in (404, 422), response.text
        assert response.headers["content-type"] == PROBLEM
    _problem(
        client.get(f"/holder/passes/{OWN}/token?format=gif", headers=headers),
        422,
        "validation_failed",
    )
