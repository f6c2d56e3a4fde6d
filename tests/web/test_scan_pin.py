"""The holder's PIN at the counter, in headless Chromium on the real app (api/card_pins.py).

(a) A printed card alone moves at most the card limit (2500 cents): above it the scan page asks
for the holder's PIN, shows a wrong PIN as such (the typed amount stays), and with the right PIN
the same redemption goes through, on the same Idempotency-Key (the refusals stored nothing).
(b) A holder without card or phone gives the pass number and the PIN: the page scans with both
and redeems with the scan's ``checkout_token``, not the pass number.
(c) A locked PIN and a terminal throttled after too many wrong PINs are said so in Dutch, the
typed amount kept.

The PIN is sent in POST bodies only: never in a URL, never left in a field after the request.
The page runs under its strict Content-Security-Policy without a violation or console error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from api import services
from api.auth import DEV_HOLDER_PIN, DEV_STAFF, dev_terminal_id, dev_terminal_secret
from api.runtime import Runtime
from api.store import HolderPin, PinFailure
from tests.web.conftest import BROWSER_MARKS, NEEDS_SCANNER_BUNDLE, launch_chromium
from tests.web.conftest import pass_balance as _balance

TIMEOUT_MS = 20_000
CARD_PASS = "GR0000011"  # no other test uses these two demo passes
NUMBER_PASS = "GR0000047"
LOCKED_PASS = "GR0000043"
BUDGET_SCHEME = 1  # the demo budget scheme (cents), open to all merchants
WRONG_PIN = "0000-not-the-pin"

pytestmark = [*BROWSER_MARKS, NEEDS_SCANNER_BUNDLE]


# Collects CSP violations in the page (an init script is not itself subject to the page's CSP).
WATCH_CSP = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__cspViolations.push(e.violatedDirective + " " + e.blockedURI);
});
"""


class Watched:
    """A page with what it sent to /merchant/web/ and the console errors it logged."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.requests: list[dict[str, Any]] = []
        self.urls: list[str] = []
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._console)
        page.on("request", self._request)

    def _console(self, message: Any) -> None:
        if message.type != "error":
            return
        # the refusals these tests provoke (403 card_pin_required / card_pin_wrong, 423
        # card_pin_locked, 429 card_pin_throttled) are logged
        # by Chromium as failed loads; anything else is an error of the page
        failed_load = "Failed to load resource" in message.text
        if failed_load and any(f"status of {n}" in message.text for n in (403, 423, 429)):
            return
        # the browser's own request for /favicon.ico (the app serves none), not the page's
        if failed_load and str(message.location.get("url", "")).endswith("/favicon.ico"):
            return
        self.errors.append(f"{message.text} ({message.location.get('url')})")

    def _request(self, request: Any) -> None:
        self.urls.append(request.url)
        if "/merchant/web/" in request.url and request.method == "POST":
            self.requests.append(
                {
                    "url": request.url,
                    "key": request.headers.get("idempotency-key"),
                    "body": json.loads(request.post_data or "{}"),
                }
            )

    def sent(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["url"].endswith(path)]


@pytest.fixture
def launch(playwright: Any) -> Iterator[Any]:
    """Launch Chromium without a camera; page errors, console errors and CSP violations fail."""
    browsers: list[Any] = []
    pages: list[Watched] = []

    def open_page(**context: Any) -> Watched:
        browser = launch_chromium(playwright)
        browsers.append(browser)
        ctx = browser.new_context(**context)
        ctx.add_init_script(WATCH_CSP)
        page = ctx.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        watched = Watched(page)
        pages.append(watched)
        return watched

    yield open_page
    violations = [w.page.evaluate("window.__cspViolations") for w in pages]
    errors = [e for w in pages for e in w.errors]
    for browser in browsers:
        browser.close()
    assert errors == [], f"errors on the page: {errors}"
    assert all(v == [] for v in violations), f"CSP violations: {violations}"


def _issue_card(base_url: str, pass_number: str) -> str:
    """A printed card for ``pass_number`` through the admin API (an issuer's login)."""
    with httpx.Client(base_url=base_url, timeout=60) as client:
        login = client.post(
            "/auth/token",
            json={"kind": "staff", "username": "issuer", "password": DEV_STAFF["issuer"][1]},
        )
        assert login.status_code == 200, login.text
        headers = {"Authorization": "Bearer " + login.json()["access_token"]}
        card = client.post(f"/admin/passes/{pass_number}/cards", headers=headers)
        assert card.status_code == 201, card.text
        return str(card.json()["token_uri"])


def _scan_page(watched: Watched, base_url: str, merchant_id: int) -> None:
    page = watched.page
    page.goto(f"{base_url}/merchant/login?lang=nl")
    page.fill("#username", dev_terminal_id(merchant_id))
    page.fill("#password", dev_terminal_secret(merchant_id))
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/merchant/scan")
    # headless Chromium has no camera: the manual field is the way in
    page.wait_for_function(
        "() => document.getElementById('scan-error').dataset.code === 'no_camera'"
    )
    csp = page.request.get(f"{base_url}/merchant/scan").headers["content-security-policy"]
    assert "script-src 'self'" in csp, csp
    assert "unsafe-inline" not in csp, csp
    assert page.locator("script:not([src])").evaluate_all(
        "els => els.every(e => e.type === 'application/json')"
    ), "an inline script on the scan page"


def _state(page: Any, state: str) -> None:
    page.wait_for_function(
        f"() => document.getElementById('app').dataset.state === '{state}'", timeout=TIMEOUT_MS
    )


def _no_pin_left(watched: Watched, pins: list[str]) -> None:
    """No PIN in any URL the page loaded, in the page's fields or storage."""
    page = watched.page
    for pin in pins:
        assert not any(pin in url for url in watched.urls), watched.urls
        assert pin not in page.url
    values = page.locator("input").evaluate_all("els => els.map(e => e.value)")
    assert not any(pin in value for value in values for pin in pins), values
    storage = page.evaluate("JSON.stringify([localStorage, sessionStorage])")
    assert not any(pin in storage for pin in pins)


def test_a_card_above_its_limit_asks_for_the_pin(
    launch: Any, base_url: str, runtime: Runtime
) -> None:
    card_token = _issue_card(base_url, CARD_PASS)
    before = _balance(runtime, CARD_PASS, BUDGET_SCHEME)
    assert before >= 3000, before

    watched = launch(locale="nl-NL")
    page = watched.page
    _scan_page(watched, base_url, 1)
    assert page.is_hidden("#manual-pin-field")
    page.fill("#manual-code", card_token)
    page.click("#manual-entry button[type=submit]")
    _state(page, "pass")
    assert page.text_content("#pass-first-name") == services.balances(runtime, CARD_PASS).first_name
    page.check(f"#scheme-{BUDGET_SCHEME}")
    assert "25,00" in (page.text_content("#card-limit") or "")
    assert page.is_hidden("#pin-field")

    # above the card's limit: refused with card_pin_required, and the PIN field appears
    page.fill("#amount", "30,00")
    page.click("#redeem-button")
    page.wait_for_selector("#pin-field", state="visible")
    assert page.get_attribute("#pin-error", "data-code") == "card_pin_required"
    needed = page.text_content("#pin-needed") or ""
    assert "25,00" in needed, needed
    assert "pincode van de pashouder nodig" in needed, needed
    pin = page.locator("#pin-field").get_by_label("Pincode van de pashouder")
    assert pin.count() == 1
    assert pin.get_attribute("type") == "password"
    assert pin.get_attribute("inputmode") == "numeric"
    assert pin.get_attribute("autocomplete") == "off"
    assert pin.get_attribute("name") is None  # never part of a form submission
    assert page.evaluate("document.activeElement.id") == "pin"
    assert page.input_value("#amount") == "30,00"
    assert app_state(page) == "pass"

    # a wrong PIN: said so, nothing redeemed, the amount stays, the PIN field is empty
    pin.fill(WRONG_PIN)
    page.click("#redeem-button")
    page.wait_for_function(
        "() => document.getElementById('pin-error').dataset.code === 'card_pin_wrong'"
    )
    assert page.is_visible("#pin-error")
    assert "De pincode klopt niet" in (page.text_content("#pin-error") or "")
    assert page.get_attribute("#pin", "aria-invalid") == "true"
    assert page.input_value("#amount") == "30,00"
    assert page.input_value("#pin") == ""
    assert app_state(page) == "pass"
    assert _balance(runtime, CARD_PASS, BUDGET_SCHEME) == before

    # the right PIN: the same redemption goes through
    pin.fill(DEV_HOLDER_PIN)
    page.click("#redeem-button")
    page.wait_for_function("() => document.getElementById('result').dataset.outcome !== undefined")
    result = page.locator("#result")
    assert result.get_attribute("data-outcome") == "ok", result.text_content()
    assert result.get_attribute("data-amount") == "3000"
    assert result.get_attribute("data-balance") == str(before - 3000)
    assert "30,00" in (page.text_content("#result-amount") or "")
    assert _balance(runtime, CARD_PASS, BUDGET_SCHEME) == before - 3000

    # three requests of one redemption: one key (the two refusals stored nothing); the card
    # token itself each time, the PIN in the body of the last two only
    sent = watched.sent("/merchant/web/redemptions")
    assert len(sent) == 3, sent
    assert len({r["key"] for r in sent}) == 1
    assert sent[0]["key"]
    assert all(r["body"]["token"] == card_token and r["body"]["amount"] == 3000 for r in sent)
    assert [r["body"].get("pin") for r in sent] == [None, WRONG_PIN, DEV_HOLDER_PIN]
    _no_pin_left(watched, [WRONG_PIN, DEV_HOLDER_PIN])


def app_state(page: Any) -> str:
    return str(page.evaluate("document.getElementById('app').dataset.state"))


def test_a_pass_number_with_the_pin_scans_and_redeems(
    launch: Any, base_url: str, runtime: Runtime
) -> None:
    before = _balance(runtime, NUMBER_PASS, BUDGET_SCHEME)
    assert before >= 3000, before

    watched = launch(locale="nl-NL")
    page = watched.page
    _scan_page(watched, base_url, 2)
    page.check("#manual-with-pin")
    assert page.text_content("#manual-code-label") == "Pasnummer (bijv. GR0000047)"
    page.wait_for_selector("#manual-pin-field", state="visible")
    pin = page.locator("#manual-pin-field").get_by_label("Pincode van de pashouder")
    assert pin.count() == 1
    assert pin.get_attribute("type") == "password"
    assert pin.get_attribute("inputmode") == "numeric"
    assert pin.get_attribute("autocomplete") == "off"

    # no PIN typed: asked for, nothing sent
    page.fill("#manual-code", NUMBER_PASS)
    page.click("#manual-entry button[type=submit]")
    assert "Vul de pincode" in (page.text_content("#manual-pin-error") or "")
    assert watched.sent("/merchant/web/scan") == []

    # a wrong PIN: said so, the pass number stays, the PIN field is empty
    pin.fill(WRONG_PIN)
    page.click("#manual-entry button[type=submit]")
    page.wait_for_function(
        "() => document.getElementById('manual-pin-error').dataset.code === 'card_pin_wrong'"
    )
    assert "pasnummer of de pincode klopt niet" in (page.text_content("#manual-pin-error") or "")
    assert page.input_value("#manual-code") == NUMBER_PASS
    assert page.input_value("#manual-pin") == ""
    assert page.is_visible("#scan-view")
    assert page.is_hidden("#pass-view")

    # the right PIN: the pass's entitlements
    pin.fill(DEV_HOLDER_PIN)
    page.click("#manual-entry button[type=submit]")
    _state(page, "pass")
    assert (
        page.text_content("#pass-first-name") == services.balances(runtime, NUMBER_PASS).first_name
    )
    assert page.get_attribute("#pass-status", "data-status") == "active"
    budget = page.text_content(f"label[for=scheme-{BUDGET_SCHEME}]") or ""
    whole, cents = divmod(before, 100)
    assert f"{whole:,}".replace(",", ".") + f",{cents:02d}" in budget, budget
    assert page.is_hidden("#card-limit")  # the checkout token has no card limit

    page.check(f"#scheme-{BUDGET_SCHEME}")
    page.fill("#amount", "30,00")
    page.click("#redeem-button")
    page.wait_for_function("() => document.getElementById('result').dataset.outcome !== undefined")
    result = page.locator("#result")
    assert result.get_attribute("data-outcome") == "ok", result.text_content()
    assert result.get_attribute("data-amount") == "3000"
    assert _balance(runtime, NUMBER_PASS, BUDGET_SCHEME) == before - 3000

    scans = watched.sent("/merchant/web/scan")
    assert [s["body"] for s in scans] == [
        {"token": NUMBER_PASS, "pin": WRONG_PIN},
        {"token": NUMBER_PASS, "pin": DEV_HOLDER_PIN},
    ]
    (redeemed,) = watched.sent("/merchant/web/redemptions")
    token = redeemed["body"]["token"]
    assert token.startswith("stadjerspas:")  # the checkout token
    assert token != NUMBER_PASS
    assert "pin" not in redeemed["body"]
    _no_pin_left(watched, [WRONG_PIN, DEV_HOLDER_PIN])


def test_a_locked_pin_and_a_throttled_terminal_are_said_so(
    launch: Any, base_url: str, runtime: Runtime
) -> None:
    card_token = _issue_card(base_url, LOCKED_PASS)
    before = _balance(runtime, LOCKED_PASS, BUDGET_SCHEME)
    watched = launch(locale="nl-NL")
    page = watched.page
    _scan_page(watched, base_url, 3)
    page.fill("#manual-code", card_token)
    page.click("#manual-entry button[type=submit]")
    _state(page, "pass")
    page.check(f"#scheme-{BUDGET_SCHEME}")
    page.fill("#amount", "40,00")
    page.click("#redeem-button")
    page.wait_for_selector("#pin-field", state="visible")

    # the PIN was locked (as after five wrong entries elsewhere)
    with runtime.store.session() as session:
        row = session.get(HolderPin, LOCKED_PASS)
        assert row is not None
        row.locked_at = datetime.now(UTC)
        session.add(row)
        session.commit()
    page.fill("#pin", DEV_HOLDER_PIN)
    page.click("#redeem-button")
    page.wait_for_function(
        "() => document.getElementById('pin-error').dataset.code === 'card_pin_locked'"
    )
    assert "pincode van deze pas is geblokkeerd" in (page.text_content("#pin-error") or "")
    assert page.input_value("#amount") == "40,00"
    assert page.input_value("#pin") == ""

    # this terminal entered too many wrong PINs: refused for a while, said so with the wait
    now_ms = int(time.time() * 1000)
    with runtime.store.session() as session:
        for _ in range(10):
            session.add(PinFailure(terminal=dev_terminal_id(3), at_ms=now_ms))
        session.commit()
    page.fill("#pin", DEV_HOLDER_PIN)
    page.click("#redeem-button")
    page.wait_for_function(
        "() => document.getElementById('pin-error').dataset.code === 'card_pin_throttled'"
    )
    throttled = page.text_content("#pin-error") or ""
    assert "Te veel foute pincodes op deze kassa" in throttled
    assert "over 10 min." in throttled, throttled
    assert page.input_value("#amount") == "40,00"
    assert page.input_value("#pin") == ""
    assert app_state(page) == "pass"
    assert _balance(runtime, LOCKED_PASS, BUDGET_SCHEME) == before
    _no_pin_left(watched, [DEV_HOLDER_PIN])
