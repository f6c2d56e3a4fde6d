"""Holder API: the rotating token (JSON, raw text, PNG, SVG), balances with expiry dates,
history (index and API records), offers with where to use them, and the object-level rule."""

from __future__ import annotations

import re
import time
import warnings

import pytest
from fastapi.testclient import TestClient

from api import holder_services
from api.auth import AUDIENCE, DEV_HOLDER_PIN, ISSUER, encode_token
from api.demo import DEMO_MERCHANT_NAMES, DEMO_MERCHANTS
from api.runtime import Runtime
from ledger.registry import merchant_location
from tests.api.conftest import assert_problem as _problem
from tests.api.conftest import holder, merchant, signed_uri
from tests.api.conftest import holder_pass_id as _pid

OWN = "GR0000044"
OTHER = "GR0000045"
PROBLEM = "application/problem+json"
ROUTES = ("token", "token?format=png", "token?format=svg", "token?format=text")
ROUTES_ALL = (
    *ROUTES,
    "balances",
    "entitlements",
    "history",
    "history?limit=1&offset=1",
    "offers",
)


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
    for query in ("limit=0", "limit=201", "offset=-1", "offset=10001", "offset=x"):
        _problem(
            client.get(f"/holder/passes/{OWN}/history?{query}", headers=headers),
            422,
            "validation_failed",
        )
    assert client.get(f"/holder/passes/{OWN}/history?limit=1", headers=headers).status_code == 200


PAGED = "GR0000046"  # a pass only this test redeems from


def test_history_content_and_pages(client: TestClient, runtime: Runtime) -> None:
    amounts = (101, 102, 103)
    rids = []
    for amount in amounts:  # three checkouts, each with its own token
        redeemed = client.post(
            "/merchant/redemptions",
            json={
                "token": signed_uri(runtime, _pid(runtime, PAGED)),
                "scheme_id": 1,
                "amount": amount,
            },
            headers=merchant(client, 2, f"holder-pages-{time.time_ns()}"),
        )
        assert redeemed.status_code == 201, redeemed.text
        rids.append(str(redeemed.json()["redemption_id"]))
    swim = client.post(  # the uses scheme, allowed at merchant 1 only
        "/merchant/redemptions",
        json={"token": signed_uri(runtime, _pid(runtime, PAGED)), "scheme_id": 2, "amount": 2},
        headers=merchant(client, 1, f"holder-pages-{time.time_ns()}"),
    )
    assert swim.status_code == 201, swim.text
    rids.append(str(swim.json()["redemption_id"]))

    headers = holder(client, PAGED)
    url = f"/holder/passes/{PAGED}/history"
    deadline = time.monotonic() + 20
    while True:  # the indexer follows the chain asynchronously
        body = client.get(url, headers=headers).json()
        if {i["redemption_id"] for i in body["items"]} >= set(rids):
            break
        assert time.monotonic() < deadline, body
        time.sleep(0.2)
    items = body["items"]
    assert body["next_offset"] is None
    assert body["offset"] == 0
    # newest first, every item named: scheme, kind, unit, merchant
    assert [i["redemption_id"] for i in items] == rids[::-1]
    newest = items[0]
    assert newest["scheme_kind"] == "uses"
    assert newest["unit"] == "uses"
    assert newest["amount"] == 2
    assert newest["merchant_id"] == 1
    assert newest["merchant_name"] == DEMO_MERCHANT_NAMES[0]
    for item, amount in zip(items[1:], amounts[::-1], strict=True):
        assert item["kind"] == "redemption"
        assert (item["scheme_kind"], item["unit"], item["amount"]) == ("budget", "cents", amount)
        assert (item["merchant_id"], item["merchant_name"]) == (2, DEMO_MERCHANT_NAMES[1])
        assert item["scheme_name"] == runtime.store.scheme_labels()[1]
        assert item["tx_hash"].startswith("0x")
        assert item["block_number"] >= 1
        assert item["at"] >= int(time.time()) - 600
    blocks = [i["block_number"] for i in items]
    assert blocks == sorted(blocks, reverse=True)

    # paged: limit 1 at a time walks the same items in the same order, then stops
    walked: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = client.get(f"{url}?limit=1&offset={offset}", headers=headers).json()
        assert page["offset"] == offset
        assert len(page["items"]) == 1
        walked.append(page["items"][0]["redemption_id"])
        offset = page["next_offset"]
    assert walked == rids[::-1]
    beyond = client.get(f"{url}?offset={len(rids)}", headers=headers).json()
    assert beyond["items"] == []
    assert beyond["next_offset"] is None

    # the API-records fallback pages the same way
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(holder_services, "_index_is_live", lambda _runtime: False)
        first = holder_services.history(runtime, PAGED, limit=2)
        second = holder_services.history(runtime, PAGED, limit=2, offset=2)
    assert first.next_offset == 2
    assert second.next_offset is None
    assert [i.redemption_id for i in first.items + second.items] == rids[::-1]
    assert first.items[0].merchant_id == 1
    assert first.items[0].unit == "uses"


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
        for place in offer["where"]:
            assert set(place) == {"merchant_id", "name", "category", "location"}
        assert offer["unit"] == ("cents" if offer["kind"] == "budget" else "uses")

    # the demo schemes: a budget and the discount at every partner, swimming at the pool only
    by_name = {offer["name"]: offer for offer in offers}
    registry = {m.id: (m.name, m.category) for m in runtime.store.merchants() if m.active}
    discount = next(offer for offer in offers if offer["kind"] == "discount")
    assert discount["discount_bps"] == 2_500
    assert discount["per_redemption_cap"] == 2_500
    assert discount["unlimited"] is True
    assert {p["name"] for p in discount["where"]} >= set(DEMO_MERCHANT_NAMES)
    for place in discount["where"]:
        assert (place["name"], place["category"]) == registry[place["merchant_id"]]
    # where the demo partners are: street, postcode, town (and website, hours if given)
    places = {p["name"]: p["location"] for p in discount["where"]}
    for demo in DEMO_MERCHANTS:
        assert demo.place is not None
        assert places[demo.name] == {
            "street": demo.place.street,
            "postcode": demo.place.postcode,
            "town": demo.place.town,
            "website": demo.place.website,
            "opening_hours": demo.place.opening_hours,
        }
    swimming = next(offer for name, offer in by_name.items() if name.startswith("Zwemmen"))
    assert swimming["open_to_all_merchants"] is False
    assert [p["name"] for p in swimming["where"]] == [DEMO_MERCHANT_NAMES[0]]
    assert swimming["balance"] == runtime.client.balance_of(
        swimming["scheme_id"], _pid(runtime, OWN)
    )
    budget = next(offer for offer in offers if offer["kind"] == "budget")
    assert budget["unit"] == "cents"
    assert budget["per_redemption_cap"] is None


def test_offers_show_a_changed_or_removed_location(client: TestClient, runtime: Runtime) -> None:
    """What the admin sets is what the holder sees; a merchant without a location is listed by
    name only. Restores the demo location afterwards."""
    registry = runtime.store.registry
    before = registry.merchant(3)
    assert before.street is not None
    try:
        registry.set_merchant_location(3, None)
        offers = client.get(f"/holder/passes/{OWN}/offers", headers=holder(client, OWN)).json()
        discount = next(o for o in offers["offers"] if o["kind"] == "discount")
        place = next(p for p in discount["where"] if p["merchant_id"] == 3)
        assert place["location"] is None
        assert place["name"] == before.name
    finally:
        location = merchant_location(
            street=before.street,
            postcode=before.postcode or "",
            town=before.town or "",
            website=before.website,
            opening_hours=before.opening_hours,
        )
        registry.set_merchant_location(3, location)
    assert registry.merchant(3).street == before.street


def _holder_page(client: TestClient, pass_number: str, lang: str) -> str:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
        page_client = TestClient(client.app, raise_server_exceptions=False)
    with page_client:
        login = page_client.get(f"/holder/login?lang={lang}")
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', login.text)
        assert csrf is not None
        response = page_client.post(
            "/holder/login",
            data={"username": pass_number, "password": DEV_HOLDER_PIN, "csrf": csrf.group(1)},
            follow_redirects=False,
        )
        assert response.status_code == 303, response.text
        page = page_client.get("/holder")
        assert page.status_code == 200, page.text
        return str(page.text)


@pytest.mark.parametrize(
    ("lang", "hours", "website"),
    [("nl", "Openingstijden:", "Website:"), ("en", "Opening hours:", "Website:")],
)
def test_holder_page_shows_where_partners_are(
    client: TestClient, lang: str, hours: str, website: str
) -> None:
    html = _holder_page(client, OWN, lang)
    offers = html[html.index('id="offers"') :]
    for demo in DEMO_MERCHANTS:
        assert demo.place is not None
        # in the offers' where lists: name, street and town; in the partners table the address
        assert f"{demo.name} <" in offers
        assert f", {demo.place.street}, {demo.place.town}</span>" in offers
        assert f"{demo.place.street}<br>{demo.place.postcode}&nbsp;{demo.place.town}" in offers
        if demo.place.website:
            assert f'<span class="website">{demo.place.website}</span>' in offers
        for line in (demo.place.opening_hours or "").splitlines():
            assert f"<br>{line}" in offers
    assert hours in offers
    assert website in offers
    # text only: no link to a map or any other site, nothing loaded from elsewhere
    assert "maps" not in offers.lower()
    assert 'href="http' not in html
    assert 'src="http' not in html


def test_offers_are_per_pass(client: TestClient, runtime: Runtime) -> None:
    """A pass without a balance in a scheme is not offered it, unless it is a discount."""
    own = client.get(f"/holder/passes/{OWN}/offers", headers=holder(client, OWN)).json()
    assert own["pass_number"] == OWN
    pid = _pid(runtime, OWN)
    for offer in own["offers"]:
        balance = runtime.client.balance_of(offer["scheme_id"], pid)
        assert offer["balance"] == balance
        assert offer["kind"] == "discount" or balance > 0


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


@pytest.mark.parametrize("page", ["\u00b2", "9" * 5000, "-1", "x"])
def test_the_history_page_number_is_read_safely(client: TestClient, page: str) -> None:
    """A page number that is not a plain decimal of sane length (a superscript digit, which
    ``str.isdigit`` accepts but ``int`` refuses; 5,000 digits, over ``int``'s limit) shows the
    first page, never a 500."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
        page_client = TestClient(client.app, raise_server_exceptions=False)
    with page_client:
        login = page_client.get("/holder/login")
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', login.text)
        assert csrf is not None
        page_client.post(
            "/holder/login",
            data={"username": OWN, "password": DEV_HOLDER_PIN, "csrf": csrf.group(1)},
            follow_redirects=False,
        )
        response = page_client.get("/holder/history", params={"page": page})
        assert response.status_code == 200, response.text[:300]
