"""The counter without a camera, in headless Chromium on the real app (api/short_codes.py).

The holder page shows a short code beside the QR and renews both together; on the merchant scan
page, where headless Chromium has no camera, "Geen camera gevonden" appears exactly once, the
cashier types the holder's code (lower case, with a space) into the manual field, sees the pass's
entitlements and redeems through the page.
"""

from __future__ import annotations

import re
from typing import Any

from api import services, short_codes
from api.auth import DEV_HOLDER_PIN, dev_terminal_id, dev_terminal_secret
from api.runtime import Runtime
from tests.web.conftest import BROWSER_MARKS, NEEDS_SCANNER_BUNDLE, log_in, pass_balance
from wallet import decode_token_uri

TIMEOUT_MS = 20_000
PASS_NUMBER = "GR0000029"
MERCHANT_ID = 1
BUDGET_SCHEME = 1  # the demo budget scheme (cents), open to all merchants
CODE = re.compile(r"^[23456789ABCDEFGHJKMNPQRSTVWXYZ]{4}-[23456789ABCDEFGHJKMNPQRSTVWXYZ]{4}$")

pytestmark = [*BROWSER_MARKS, NEEDS_SCANNER_BUNDLE]


def test_holder_page_shows_a_short_code_that_renews_with_the_qr(
    launch: Any, base_url: str, runtime: Runtime
) -> None:
    page = launch()
    page.clock.install()  # to move the page's renewal timer on without waiting 100 s
    log_in(page, f"{base_url}/holder/login?lang=en", PASS_NUMBER, DEV_HOLDER_PIN)
    page.wait_for_url(f"{base_url}/holder")
    page.wait_for_function("() => document.getElementById('pass-qr').naturalWidth > 0")
    code = page.text_content("#pass-code") or ""
    assert CODE.match(code), code
    assert page.is_visible("#pass-code")
    assert "No camera?" in (page.text_content(".short-code-line") or "")
    # screen readers get it character by character, not as a word
    assert page.get_attribute("#pass-code", "aria-hidden") == "true"
    spoken = page.text_content("#pass-code-spoken") or ""
    assert spoken == short_codes.spoken(code.replace("-", ""))
    # the code stands for the page's token, which expires with the QR
    expires = int(page.get_attribute("#pass-code", "data-expires-at") or "0")
    token = short_codes.resolve(runtime, code, terminal="browser-test")
    assert decode_token_uri(token).token.expiry == expires

    refresh_s = int(page.get_attribute("#pass-qr", "data-refresh-s") or "0")
    page.clock.run_for(refresh_s * 1000 + 500)
    page.wait_for_function(
        "() => document.getElementById('pass-qr').dataset.refreshed === '1'", timeout=TIMEOUT_MS
    )
    renewed = page.text_content("#pass-code") or ""
    assert CODE.match(renewed), renewed
    assert renewed != code
    assert page.text_content("#pass-code-spoken") == short_codes.spoken(renewed.replace("-", ""))
    assert page.get_attribute("#pass-qr", "src", timeout=TIMEOUT_MS).startswith("blob:")
    renewed_token = short_codes.resolve(runtime, renewed, terminal="browser-test")
    assert renewed_token != token
    assert int(page.get_attribute("#pass-code", "data-expires-at") or "0") == (
        decode_token_uri(renewed_token).token.expiry
    )


def test_cashier_types_the_short_code_without_a_camera_and_redeems(
    launch: Any, base_url: str, runtime: Runtime
) -> None:
    holder = launch()
    log_in(holder, f"{base_url}/holder/login?lang=nl", PASS_NUMBER, DEV_HOLDER_PIN)
    holder.wait_for_url(f"{base_url}/holder")
    code = holder.text_content("#pass-code") or ""
    assert CODE.match(code), code
    typed = code.replace("-", "").lower()
    typed = f"{typed[:4]} {typed[4:]}"  # as a cashier types it: lower case, a space

    merchant = launch(locale="nl-NL")
    log_in(
        merchant,
        f"{base_url}/merchant/login?lang=nl",
        dev_terminal_id(MERCHANT_ID),
        dev_terminal_secret(MERCHANT_ID),
    )
    merchant.wait_for_url(f"{base_url}/merchant/scan")
    # headless Chromium has no camera: the page says so once (an alert), and offers the field
    merchant.wait_for_function(
        "() => document.getElementById('scan-error').dataset.code === 'no_camera'",
        timeout=TIMEOUT_MS,
    )
    merchant.wait_for_function(
        "() => document.getElementById('scan-status').dataset.state === 'error'",
        timeout=TIMEOUT_MS,
    )
    visible = merchant.evaluate("document.body.innerText")
    assert visible.count("Geen camera gevonden") == 1, visible
    assert merchant.is_visible("#scan-error")
    assert merchant.get_by_text("Geen camera gevonden").count() == 1
    assert merchant.evaluate("document.activeElement.id") == "manual-code"

    before = pass_balance(runtime, PASS_NUMBER, BUDGET_SCHEME)
    merchant.fill("#manual-code", typed)
    merchant.click("#manual-entry button[type=submit]")
    merchant.wait_for_function(
        "() => document.getElementById('app').dataset.state === 'pass'", timeout=TIMEOUT_MS
    )
    assert merchant.evaluate("document.getElementById('app').dataset.source") == "manual"
    first_name = services.balances(runtime, PASS_NUMBER).first_name
    assert merchant.text_content("#pass-first-name") == first_name
    assert merchant.get_attribute("#pass-status", "data-status") == "active"
    schemes = merchant.locator("#scheme-list label")
    assert schemes.count() >= 1
    budget = merchant.text_content(f"label[for=scheme-{BUDGET_SCHEME}]") or ""
    whole, cents = divmod(before, 100)
    assert f"{whole:,}".replace(",", ".") + f",{cents:02d}" in budget, budget

    merchant.check(f"#scheme-{BUDGET_SCHEME}")
    merchant.fill("#amount", "1,25")
    merchant.click("#redeem-button")
    merchant.wait_for_function(
        "() => document.getElementById('result').dataset.outcome !== undefined", timeout=TIMEOUT_MS
    )
    result = merchant.locator("#result")
    assert result.get_attribute("data-outcome") == "ok", result.text_content()
    assert result.get_attribute("data-amount") == "125"
    assert result.get_attribute("data-balance") == str(before - 125)
    assert pass_balance(runtime, PASS_NUMBER, BUDGET_SCHEME) == before - 125


def test_a_mistyped_code_is_refused_with_its_reason(launch: Any, base_url: str) -> None:
    page = launch(locale="en-GB")
    log_in(
        page,
        f"{base_url}/merchant/login?lang=en",
        dev_terminal_id(2),
        dev_terminal_secret(2),
    )
    page.wait_for_url(f"{base_url}/merchant/scan")
    page.fill("#manual-code", "2222-2222")
    page.click("#manual-entry button[type=submit]")
    page.wait_for_function(
        "() => document.getElementById('result').dataset.outcome === 'refused'", timeout=TIMEOUT_MS
    )
    assert page.get_attribute("#result", "data-code") == "short_code_unknown"
    assert "does not exist or has expired" in (page.text_content("#result-reason") or "")
