"""Pass tokens at the counter, through the API and the real chain: an app token serves one
checkout (another merchant, or the same scheme again, is refused, and the contract refuses a
replay by another operator's relayer too), a printed card moves at most its limit without the
holder's PIN, a wrong PIN is counted and locks the PIN, and a holder without card or phone
redeems with the pass number and the PIN."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api import card_pins
from api.auth import DEV_HOLDER_PIN
from api.runtime import Runtime
from ledger import contract_errors as ce
from ledger.client import RedemptionRequest
from tests.api.conftest import admin, holder, merchant, signed_uri
from tests.api.conftest import assert_problem as _problem
from tests.api.conftest import holder_pass_id as _pid
from wallet import decode_token_uri

BUDGET = 1


def _balance(runtime: Runtime, pass_number: str, scheme_id: int = BUDGET) -> int:
    return runtime.client.balance_of(scheme_id, _pid(runtime, pass_number))


def _redeem(
    client: TestClient,
    *,
    merchant_id: int,
    key: str,
    token: str,
    amount: int,
    scheme_id: int = BUDGET,
    pin: str | None = None,
) -> Any:
    body: dict[str, Any] = {"token": token, "scheme_id": scheme_id, "amount": amount}
    if pin is not None:
        body["pin"] = pin
    return client.post(
        "/merchant/redemptions", json=body, headers=merchant(client, merchant_id, key)
    )


def _card(client: TestClient, pass_number: str) -> str:
    response = client.post(f"/admin/passes/{pass_number}/cards", headers=admin(client))
    assert response.status_code == 201, response.text
    token: str = response.json()["token_uri"]
    return token


# -- app tokens -----------------------------------------------------------------------------


def test_a_redeemed_app_token_is_refused_at_another_merchant(
    client: TestClient, runtime: Runtime
) -> None:
    token = signed_uri(runtime, _pid(runtime, "GR0000019"))
    first = _redeem(client, merchant_id=1, key="app-1", token=token, amount=100)
    assert first.status_code == 201, first.text
    before = _balance(runtime, "GR0000019")

    replay = _redeem(client, merchant_id=2, key="app-2", token=token, amount=100)

    _problem(replay, 409, "redemption_token_used")
    assert _balance(runtime, "GR0000019") == before
    # the same key again answers the same (nothing was stored for it)
    again = _redeem(client, merchant_id=2, key="app-2", token=token, amount=100)
    _problem(again, 409, "redemption_token_used")


def test_an_app_token_living_longer_than_the_token_lifetime_is_refused(
    client: TestClient, runtime: Runtime
) -> None:
    pid = _pid(runtime, "GR0000019")
    long_lived = signed_uri(runtime, pid, expiry=int(time.time()) + 15 * 60)
    response = client.post(
        "/merchant/scan", json={"token": long_lived}, headers=merchant(client, 1)
    )
    body = _problem(response, 422, "token_lifetime_too_long")
    assert str(runtime.settings.token_lifetime_s) in body["detail"]


def test_one_checkout_redeems_each_scheme_once_with_one_scan(
    client: TestClient, runtime: Runtime
) -> None:
    token = signed_uri(runtime, _pid(runtime, "GR0000020"))
    assert _redeem(client, merchant_id=1, key="co-1", token=token, amount=100).status_code == 201
    uses = _redeem(client, merchant_id=1, key="co-2", token=token, amount=1, scheme_id=2)
    assert uses.status_code == 201, uses.text
    before = _balance(runtime, "GR0000020")

    again = _redeem(client, merchant_id=1, key="co-3", token=token, amount=100)

    _problem(again, 409, "redemption_token_used")
    assert _balance(runtime, "GR0000020") == before
    # a retry of the first request is still its first answer
    retry = _redeem(client, merchant_id=1, key="co-1", token=token, amount=100)
    assert retry.status_code == 201
    assert retry.headers["Idempotent-Replayed"] == "true"


def test_a_refused_redemption_leaves_the_token_for_the_checkout(
    client: TestClient, runtime: Runtime
) -> None:
    token = signed_uri(runtime, _pid(runtime, "GR0000023"))
    balance = _balance(runtime, "GR0000023")
    too_much = _redeem(client, merchant_id=1, key="r-1", token=token, amount=balance + 1)
    _problem(too_much, 409, "redemption_amount_over_balance")

    ok = _redeem(client, merchant_id=1, key="r-2", token=token, amount=200)
    assert ok.status_code == 201, ok.text
    assert _balance(runtime, "GR0000023") == balance - 200


def test_another_operators_relayer_cannot_replay_a_token(
    client: TestClient, runtime: Runtime
) -> None:
    """The token a terminal saw, sent straight to the contract by another merchant's account."""
    token = signed_uri(runtime, _pid(runtime, "GR0000024"))
    assert _redeem(client, merchant_id=1, key="op-1", token=token, amount=100).status_code == 201
    before = _balance(runtime, "GR0000024")
    other = runtime.keys.merchants[1]
    request = RedemptionRequest(
        redemption_id=2**40 + int(time.time()),
        scheme_id=BUDGET,
        amount=100,
        token=decode_token_uri(token),
    )
    with pytest.raises(ce.RedemptionTokenUsed):
        runtime.client.transact(other, "redeem", request.as_tuple())
    assert _balance(runtime, "GR0000024") == before


# -- printed cards and PINs -----------------------------------------------------------------


def test_a_card_is_refused_above_its_limit_without_pin_and_accepted_with_it(
    client: TestClient, runtime: Runtime
) -> None:
    card = _card(client, "GR0000025")
    token = decode_token_uri(card)
    assert token.token.amount_cap == runtime.settings.card_pin_limit
    limit = runtime.settings.card_pin_limit
    before = _balance(runtime, "GR0000025")

    small = _redeem(client, merchant_id=1, key="card-1", token=card, amount=limit)
    assert small.status_code == 201, small.text
    big = _redeem(client, merchant_id=1, key="card-2", token=card, amount=limit + 1)
    body = _problem(big, 403, "card_pin_required")
    assert body["amount_cap"] == limit
    assert _balance(runtime, "GR0000025") == before - limit

    with_pin = _redeem(
        client, merchant_id=1, key="card-3", token=card, amount=limit + 1, pin=DEV_HOLDER_PIN
    )
    assert with_pin.status_code == 201, with_pin.text
    assert _balance(runtime, "GR0000025") == before - 2 * limit - 1
    # a retry of the PIN request with the same key is the same redemption
    retry = _redeem(
        client, merchant_id=1, key="card-3", token=card, amount=limit + 1, pin=DEV_HOLDER_PIN
    )
    assert retry.status_code == 201
    assert retry.json()["redemption_id"] == with_pin.json()["redemption_id"]
    assert _balance(runtime, "GR0000025") == before - 2 * limit - 1


def test_wrong_pins_lock_the_pin_not_the_card_until_the_holder_sets_a_new_one(
    client: TestClient, runtime: Runtime
) -> None:
    card = _card(client, "GR0000026")
    limit = runtime.settings.card_pin_limit
    before = _balance(runtime, "GR0000026")
    for attempt in range(card_pins.MAX_PIN_FAILURES - 1):
        wrong = _redeem(
            client, merchant_id=1, key=f"w-{attempt}", token=card, amount=limit + 1, pin="0000"
        )
        _problem(wrong, 403, "card_pin_wrong")
    last = _redeem(client, merchant_id=1, key="w-last", token=card, amount=limit + 1, pin="0000")
    _problem(last, 423, "card_pin_locked")
    right = _redeem(
        client, merchant_id=1, key="w-right", token=card, amount=limit + 1, pin=DEV_HOLDER_PIN
    )
    _problem(right, 423, "card_pin_locked")
    assert _balance(runtime, "GR0000026") == before
    # the card still works below its limit
    small = _redeem(client, merchant_id=1, key="w-small", token=card, amount=100)
    assert small.status_code == 201, small.text

    headers = holder(client, "GR0000026")
    response = client.put("/holder/passes/GR0000026/pin", json={"pin": "4827"}, headers=headers)
    assert response.status_code == 204, response.text
    unlocked = _redeem(client, merchant_id=1, key="w-new", token=card, amount=limit + 1, pin="4827")
    assert unlocked.status_code == 201, unlocked.text


def test_staff_unlock_a_locked_pin(client: TestClient, runtime: Runtime) -> None:
    for attempt in range(card_pins.MAX_PIN_FAILURES):
        client.post(
            "/merchant/scan",
            json={"token": "GR0000030", "pin": f"99{attempt:02d}"},
            headers=merchant(client, 2),
        )
    locked = client.post(
        "/merchant/scan",
        json={"token": "GR0000030", "pin": DEV_HOLDER_PIN},
        headers=merchant(client, 2),
    )
    _problem(locked, 423, "card_pin_locked")

    response = client.post("/admin/passes/GR0000030/pin/unlock", headers=admin(client))
    assert response.status_code == 204, response.text

    scanned = client.post(
        "/merchant/scan",
        json={"token": "GR0000030", "pin": DEV_HOLDER_PIN},
        headers=merchant(client, 2),
    )
    assert scanned.status_code == 200, scanned.text


def test_a_holder_without_card_or_phone_gives_pass_number_and_pin(
    client: TestClient, runtime: Runtime
) -> None:
    before = _balance(runtime, "GR0000036")
    scanned = client.post(
        "/merchant/scan",
        json={"token": "gr0000036", "pin": DEV_HOLDER_PIN},
        headers=merchant(client, 1),
    )
    assert scanned.status_code == 200, scanned.text
    body = scanned.json()
    assert body["token_kind"] == "app"
    checkout = body["checkout_token"]
    assert decode_token_uri(checkout).token.pass_id == _pid(runtime, "GR0000036")

    done = _redeem(client, merchant_id=1, key="pn-1", token=checkout, amount=300)
    assert done.status_code == 201, done.text
    assert _balance(runtime, "GR0000036") == before - 300
    # the checkout's token is spent for any other merchant
    _problem(
        _redeem(client, merchant_id=2, key="pn-2", token=checkout, amount=300),
        409,
        "redemption_token_used",
    )


def test_an_unknown_pass_number_and_a_wrong_pin_answer_alike(client: TestClient) -> None:
    unknown = client.post(
        "/merchant/scan",
        json={"token": "GR9999998", "pin": "1234"},
        headers=merchant(client, 2),
    )
    wrong = client.post(
        "/merchant/scan",
        json={"token": "GR0000037", "pin": "1234"},
        headers=merchant(client, 2),
    )
    a, b = _problem(unknown, 403, "card_pin_wrong"), _problem(wrong, 403, "card_pin_wrong")
    assert a["detail"] == b["detail"]


def test_a_terminal_guessing_pins_over_many_passes_is_throttled(
    client: TestClient, runtime: Runtime
) -> None:
    passes = [f"GR00000{n}" for n in (38, 41, 42, 43, 47, 49)]
    codes = []
    for attempt in range(card_pins.TERMINAL_MAX_FAILURES + 1):
        response = client.post(
            "/merchant/scan",
            json={"token": passes[attempt % len(passes)], "pin": "1111"},
            headers=merchant(client, 3),
        )
        codes.append(response.json()["code"])
    assert codes[: card_pins.TERMINAL_MAX_FAILURES] == ["card_pin_wrong"] * 10
    assert codes[-1] == "card_pin_throttled"
    # no pass was locked by it: each had at most two wrong entries
    right = client.post(
        "/merchant/scan",
        json={"token": "GR0000038", "pin": DEV_HOLDER_PIN},
        headers=merchant(client, 1),
    )
    assert right.status_code == 200, right.text
