"""Browser tests of the server-rendered pages (api/routes/pages.py) on the real app.

The app runs in a uvicorn thread on 127.0.0.1 (a secure context, as the camera needs) with its
own embedded runtime (anvil in a tmp dir, SQLite, demo data). Headless Debian Chromium is driven
by Playwright with ``executable_path``. The holder's QR ``<img>`` is screenshotted, decoded with
``zbarimg`` and played to the merchant page through Chromium's fake camera (a Y4M video).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from api import redemptions, services
from api.auth import DEV_HOLDER_PIN, dev_terminal_id, dev_terminal_secret
from api.demo import DEMO_MERCHANT_NAMES, DEMO_MERCHANTS
from api.runtime import Runtime
from tests.web.conftest import BROWSER_MARKS, NEEDS_SCANNER_BUNDLE, log_in, pass_balance
from tests.web.y4m import write_y4m

TIMEOUT_MS = 20_000
PASS_NUMBER = "GR0000001"
MERCHANT_ID = 1

pytestmark = [*BROWSER_MARKS, NEEDS_SCANNER_BUNDLE]


def _zbar(png: Path) -> str | None:
    zbarimg = shutil.which("zbarimg")
    if zbarimg is None:
        return None
    out = subprocess.run(
        [zbarimg, "--raw", "-q", "--nodbus", str(png)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_holder_qr_is_scanned_and_redeemed_at_the_merchant(
    launch: Any, base_url: str, runtime: Runtime, tmp_path: Path
) -> None:
    # (a) The holder logs in and sees a large QR image that decodes to a pass token.
    holder = launch()
    log_in(holder, f"{base_url}/holder/login?lang=en", PASS_NUMBER, DEV_HOLDER_PIN)
    holder.wait_for_url(f"{base_url}/holder")
    qr = holder.locator("#pass-qr")
    holder.wait_for_function(
        "() => document.getElementById('pass-qr').complete && "
        "document.getElementById('pass-qr').naturalWidth > 0"
    )
    box = qr.bounding_box()
    assert box is not None
    assert box["width"] >= 300  # large, on a 1280 px wide window
    assert "QR" in (qr.get_attribute("alt") or "")
    shot = tmp_path / "holder-qr.png"
    qr.screenshot(path=str(shot))
    decoded = _zbar(shot)
    if decoded is None:
        pytest.skip("zbarimg not installed (apt-get install zbar-tools): cannot decode the QR")
    assert decoded.startswith("stadjerspas:1:"), decoded

    # (b) The merchant page is fed THAT QR through the fake camera and redeems 2,50 euro.
    scheme_id = 1  # the demo budget scheme (cents), open to all merchants
    before = pass_balance(runtime, PASS_NUMBER, scheme_id)
    merchant = launch(camera=write_y4m(tmp_path / "camera.y4m", shot.read_bytes()))
    merchant.on("dialog", lambda dialog: dialog.accept())
    log_in(
        merchant,
        f"{base_url}/merchant/login?lang=en",
        dev_terminal_id(MERCHANT_ID),
        dev_terminal_secret(MERCHANT_ID),
    )
    merchant.wait_for_url(f"{base_url}/merchant/scan")
    merchant.wait_for_function(
        "() => document.getElementById('app').dataset.state === 'pass'", timeout=TIMEOUT_MS
    )
    assert merchant.evaluate("document.getElementById('app').dataset.source") == "camera"
    first_name = services.balances(runtime, PASS_NUMBER).first_name
    assert merchant.text_content("#pass-first-name") == first_name
    assert merchant.evaluate("document.activeElement.id") == "amount"
    merchant.check(f"#scheme-{scheme_id}")
    merchant.fill("#amount", "2,50")
    merchant.click("#redeem-button")
    merchant.wait_for_function(
        "() => document.getElementById('result').dataset.outcome !== undefined", timeout=TIMEOUT_MS
    )
    result = merchant.locator("#result")
    assert result.get_attribute("data-outcome") == "ok", result.text_content()
    assert result.get_attribute("data-amount") == "250"
    assert result.get_attribute("data-balance") == str(before - 250)
    text = result.text_content() or ""
    assert "€2.50" in text
    whole, cents = divmod(before - 250, 100)
    assert f"€{whole:,}.{cents:02d}" in text
    assert pass_balance(runtime, PASS_NUMBER, scheme_id) == before - 250

    # Reverse the last redemption: the pass gets exactly the amount back.
    merchant.click("#reverse-last")
    merchant.wait_for_function(
        "() => document.getElementById('result').dataset.reversed !== undefined", timeout=TIMEOUT_MS
    )
    assert pass_balance(runtime, PASS_NUMBER, scheme_id) == before


def test_refusal_is_shown_with_its_translated_reason(launch: Any, base_url: str) -> None:
    page = launch()
    log_in(
        page,
        f"{base_url}/merchant/login?lang=nl",
        dev_terminal_id(MERCHANT_ID),
        dev_terminal_secret(MERCHANT_ID),
    )
    page.wait_for_url(f"{base_url}/merchant/scan")
    page.fill("#manual-code", "garbage")
    page.click("#manual-entry button[type=submit]")
    page.wait_for_function(
        "() => document.getElementById('result').dataset.outcome === 'refused'", timeout=TIMEOUT_MS
    )
    assert page.get_attribute("#result", "data-code") == "token_malformed"
    assert "Geweigerd" in (page.text_content("#result") or "")
    assert "geen geldige pascode" in (page.text_content("#result-reason") or "")


def test_language_switch(launch: Any, base_url: str) -> None:
    page = launch(locale="nl-NL")
    page.goto(f"{base_url}/holder/login")
    assert page.get_attribute("html", "lang") == "nl"
    assert page.text_content("h1") == "Inloggen met je Stadjerspas"
    assert page.text_content("label[for=password]").startswith("Activeringscode")

    # Keyboard: the first Tab reaches the skip link, which is then visible.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"

    page.click("#lang-en")
    page.wait_for_url("**/holder/login?lang=en")
    assert page.get_attribute("html", "lang") == "en"
    assert page.text_content("h1") == "Log in with your Stadjerspas"
    assert page.get_attribute("#lang-en", "aria-current") == "true"

    # The choice is remembered (cookie) without the query parameter.
    page.goto(f"{base_url}/holder/login")
    assert page.text_content("h1") == "Log in with your Stadjerspas"

    # A wrong PIN is announced as an alert, in the chosen language.
    page.fill("#username", PASS_NUMBER)
    page.fill("#password", "wrong-pin")
    page.click("button[type=submit]")
    assert "Logging in failed" in (page.text_content("[role=alert]") or "")
    assert page.get_attribute("#password", "aria-invalid") == "true"


def _redeem(runtime: Runtime, pass_number: str, scheme_id: int, amount: int) -> int:
    """Redeem as the API does, on an event loop of its own (Playwright's sync API keeps one
    running on this thread)."""
    token = services.make_pass_token(runtime, runtime.settings, pass_number).token_uri
    redemption = partial(
        redemptions.redeem,
        runtime,
        merchant_id=MERCHANT_ID,
        idempotency_key=f"pages-{time.time_ns()}",
        token=token,
        scheme_id=scheme_id,
        amount=amount,
    )
    with ThreadPoolExecutor(max_workers=1) as pool:
        outcome = pool.submit(lambda: asyncio.run(redemption())).result()
    return outcome.result.redemption_id


def _history_row(page: Any, kind: str, redemption_merchant: str, amount: str) -> Any:
    return (
        page.locator(f"#history tr[data-kind={kind}]")
        .filter(has_text=amount)
        .filter(has_text=redemption_merchant)
    )


def test_holder_page_shows_history_and_offers_with_where_to_use_them(
    launch: Any, base_url: str, runtime: Runtime
) -> None:
    pass_number = "GR0000002"  # not the pass the other tests redeem from
    merchant_name = DEMO_MERCHANT_NAMES[MERCHANT_ID - 1]
    rid = _redeem(runtime, pass_number, 1, 175)  # the budget scheme: 1,75 euro
    services.reverse(runtime, merchant_id=MERCHANT_ID, redemption_id=rid)
    _redeem(runtime, pass_number, 1, 1_234)  # 12,34 euro, not reversed

    page = launch(locale="nl-NL")
    blocked: list[str] = []
    page.on(
        "console",
        lambda message: (
            blocked.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    log_in(page, f"{base_url}/holder/login?lang=nl", pass_number, DEV_HOLDER_PIN)
    page.wait_for_url(f"{base_url}/holder")
    assert page.get_attribute("html", "lang") == "nl"

    # History: newest first, with merchant name, scheme, Dutch euro amounts and a date. The
    # indexer follows the chain on its own, so the page may need a reload or two.
    deadline = time.monotonic() + 20
    while _history_row(page, "redemption", merchant_name, "€ 12,34").count() == 0:
        assert time.monotonic() < deadline, page.text_content("#history")
        page.wait_for_timeout(300)
        page.reload()
    history = page.locator("#history table")
    assert "Laatste keren" in (history.locator("caption").text_content() or "")
    headers = history.locator("thead th")
    assert headers.count() == 3
    assert all(headers.nth(i).get_attribute("scope") == "col" for i in range(3))
    newest = history.locator("tbody tr").first
    assert newest.get_attribute("data-kind") == "redemption"
    assert "€\xa012,34" in (newest.text_content() or "")  # a no-break space after €
    assert "Kindpakket" in (newest.text_content() or "")
    assert newest.locator("th").get_attribute("scope") == "row"
    assert newest.locator("time").get_attribute("datetime")
    assert _history_row(page, "redemption", merchant_name, "€ 1,75").count() == 1
    reversal = _history_row(page, "reversal", merchant_name, "€ 1,75")
    assert reversal.count() == 1
    assert "Teruggedraaid" in (reversal.text_content() or "")
    assert "€\xa01,75 terug op je pas" in (reversal.text_content() or "")

    # Offers: every scheme the pass can use, with the partners where it can be used.
    offers = page.locator("#offers li.offer")
    texts = [offers.nth(i).text_content() or "" for i in range(offers.count())]
    discount = next(text for text in texts if "25% korting bij partners" in text)
    assert "25% korting" in discount
    assert "bij alle partners" in discount
    assert all(name in discount for name in DEMO_MERCHANT_NAMES)
    swimming = next(text for text in texts if "Zwemmen" in text)
    assert "10 keer" in swimming
    assert DEMO_MERCHANT_NAMES[0] in swimming
    assert not any(name in swimming for name in DEMO_MERCHANT_NAMES[1:])
    assert page.locator("#offers li.offer h3").count() == len(texts)
    partners = page.locator("#offers table.partners tbody th[scope=row] .partner-name")
    assert sorted(partners.all_text_contents()) == sorted(DEMO_MERCHANT_NAMES)
    assert page.locator("#offers table.partners caption").count() == 1
    # where each partner is: street, postcode and town as text (no map, no link elsewhere)
    addresses = page.locator("#offers table.partners address.place").all_text_contents()
    for demo in DEMO_MERCHANTS:
        assert demo.place is not None
        assert any(
            demo.place.street in text and f"{demo.place.postcode}\xa0{demo.place.town}" in text
            for text in addresses
        ), addresses
    assert page.locator("#offers a[href^='http']").count() == 0

    # The whole history on its own page, in English too.
    page.goto(f"{base_url}/holder/history?lang=en")
    assert page.get_attribute("html", "lang") == "en"
    assert page.text_content("h1") == "History"
    row = _history_row(page, "redemption", merchant_name, "€12.34")
    assert row.count() == 1
    assert "Redeemed" in (row.text_content() or "")
    assert page.locator("#history-older").count() == 0  # three items: one page
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    # A page past the end goes back to the first; garbage is page 1.
    page.goto(f"{base_url}/holder/history?page=999")
    page.wait_for_url(f"{base_url}/holder/history")
    page.goto(f"{base_url}/holder/history?page=x")
    assert _history_row(page, "redemption", merchant_name, "€12.34").count() == 1
    assert blocked == [], blocked

    # Logged out, the history page sends to the login page.
    other = launch()
    other.goto(f"{base_url}/holder/history")
    other.wait_for_url(f"{base_url}/holder/login")


def test_holder_page_prints_the_qr_large_without_navigation(launch: Any, base_url: str) -> None:
    page = launch(locale="en-GB")
    log_in(page, f"{base_url}/holder/login?lang=en", PASS_NUMBER, DEV_HOLDER_PIN)
    page.wait_for_url(f"{base_url}/holder")
    assert page.is_visible("header.site")
    assert not page.is_visible(".qr-card .print-only")
    page.emulate_media(media="print")
    assert not page.is_visible("header.site")
    assert not page.is_visible("nav.sections")
    assert page.is_visible("#pass-qr")
    assert "works until" in (page.text_content(".qr-card .print-only") or "")
    box = page.locator("#pass-qr").bounding_box()
    assert box is not None
    assert box["width"] >= 400
    pdf = page.pdf(format="A4")
    assert pdf.startswith(b"%PDF")
