"""A partner enrolled end to end, in headless Chromium on the real app: from enrolment to its
first payout.

An admin logs in, enrols a sports club on the merchants page (name, KvK, IBAN: no address, the
service creates its key), creates a terminal for it on the same page (the secret shown once);
the terminal logs in on the merchant scan page, scans a demo holder's pass (typed, as headless
Chromium has no camera) and redeems; then the admin creates a payout run and the club appears
in the run and in its SEPA pain.001 document with the amount it redeemed, paid to its IBAN.
Also: a partners CSV with a bad line is refused on the page with its errors by line.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from api.runtime import Runtime
from ledger.passid import pass_id
from tests.api.conftest import signed_uri
from tests.web.conftest import BROWSER_MARKS, NEEDS_SCANNER_BUNDLE, staff_login

HOLDER_PASS = "GR0000033"  # no other browser test of this module uses it
BUDGET_SCHEME = 1  # the demo budget scheme (cents), open to all merchants
CLUB = "Judovereniging Kano Groningen"
CLUB_KVK = "40123456"
CLUB_IBAN = "NL02 ABNA 0123 4567 89"

pytestmark = [*BROWSER_MARKS, NEEDS_SCANNER_BUNDLE]


def _wait_indexed(runtime: Runtime, tx_block: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        state = runtime.index_state()
        head = int(runtime.w3.eth.block_number)
        if state is not None and state.lag == 0 and head >= tx_block:
            return
        assert time.monotonic() < deadline, f"the index did not catch up: {state}"
        time.sleep(0.2)


def test_a_partner_enrolled_on_the_page_redeems_and_is_paid(
    new_page: Any, base_url: str, runtime: Runtime
) -> None:
    merchants_before = {m.id for m in runtime.store.registry.merchants()}

    # the admin enrols the club on the merchants page: no address asked
    page = new_page(locale="nl-NL")
    staff_login(page, base_url, "admin", "nl")
    page.goto(f"{base_url}/admin/web/merchants?lang=nl")
    assert page.locator("#enrol-form input[name=address]").count() == 0
    page.fill("#p-name", CLUB)
    page.fill("#p-kvk", CLUB_KVK)
    page.fill("#p-category", "sport")
    page.fill("#p-iban", "NL00 ABNA 0123 4567 89")  # a wrong check digit first
    page.click("#enrol-submit")
    assert "iban_invalid" in (page.text_content("#error") or "")
    assert page.input_value("#p-name") == CLUB  # the form keeps what was typed
    assert {m.id for m in runtime.store.registry.merchants()} == merchants_before
    page.fill("#p-iban", CLUB_IBAN)
    page.click("#enrol-submit")
    page.wait_for_url("**/admin/web/merchants?done=partner_enrolled*")
    assert "kan meteen afrekenen" in (page.text_content("#notice") or "")
    (club,) = [m for m in runtime.store.registry.merchants() if m.id not in merchants_before]
    assert club.id is not None
    row = page.locator(f"#merchant-{club.id}")
    assert CLUB in (row.text_content() or "")
    assert "NL02ABNA0123456789" in (row.text_content() or "")
    account = runtime.keys.merchant(club.id)
    assert account is not None
    assert account.address == club.address
    assert club.id in runtime.merchant_relayers  # started at once, no restart

    # a terminal for the club, from the same page; its secret is shown once
    page.click(f"#terminal-{club.id}")
    terminal_id = page.text_content("#terminal-id") or ""
    secret = page.text_content("#terminal-secret") or ""
    assert terminal_id.startswith(f"T{club.id}-")
    assert len(secret) >= 32

    # the terminal scans a demo holder's pass and redeems 12,50
    record = runtime.store.holder(HOLDER_PASS)
    assert record is not None
    token = signed_uri(
        runtime, pass_id(pass_secret=record.pass_secret, pass_number=record.pass_number)
    )
    counter = new_page(locale="nl-NL")
    counter.goto(f"{base_url}/merchant/login?lang=nl")
    counter.fill("#username", terminal_id)
    counter.fill("#password", secret)
    counter.click("button[type=submit]")
    counter.wait_for_url(f"{base_url}/merchant/scan")
    counter.wait_for_function(
        "() => document.getElementById('scan-error').dataset.code === 'no_camera'"
    )
    counter.fill("#manual-code", token)
    counter.click("#manual-entry button[type=submit]")
    counter.wait_for_function("() => document.getElementById('app').dataset.state === 'pass'")
    counter.check(f"#scheme-{BUDGET_SCHEME}")
    counter.fill("#amount", "12,50")
    counter.click("#redeem-button")
    counter.wait_for_function(
        "() => document.getElementById('result').dataset.outcome !== undefined"
    )
    result = counter.locator("#result")
    assert result.get_attribute("data-outcome") == "ok", result.text_content()
    assert result.get_attribute("data-amount") == "1250"
    totals = runtime.client.merchant_totals(club.address)
    assert totals.redeemed == 1250  # credited on chain to the club's own account
    _wait_indexed(runtime, int(runtime.w3.eth.block_number))

    # the admin creates a payout run: the club is in it, and in the pain.001 document
    today = datetime.now(UTC).date()
    page.goto(f"{base_url}/admin/web/payouts?lang=nl")
    page.fill("#period", f"{today - timedelta(days=1)}..{today + timedelta(days=1)}")
    page.click("#payout-form button[type=submit]")
    page.wait_for_url("**/admin/web/payouts/*?done=payout_created")
    lines = page.locator("#lines-table tbody tr", has_text=CLUB)
    assert lines.count() == 1
    assert "12,50" in (lines.text_content() or "")
    href = page.get_attribute("#pain001", "href")
    assert href is not None
    document = page.request.get(f"{base_url}{href}")
    assert document.status == 200
    root = ET.fromstring(document.body())
    ns = {"p": root.tag.split("}")[0].strip("{")}
    paid = [
        tx
        for tx in root.iterfind(".//p:CdtTrfTxInf", ns)
        if tx.findtext("p:CdtrAcct/p:Id/p:IBAN", namespaces=ns) == "NL02ABNA0123456789"
    ]
    assert len(paid) == 1
    assert paid[0].findtext("p:Amt/p:InstdAmt", namespaces=ns) == "12.50"
    assert paid[0].findtext("p:Cdtr/p:Nm", namespaces=ns) == CLUB


def test_a_partner_csv_with_a_bad_line_is_refused_on_the_page(
    new_page: Any, base_url: str, runtime: Runtime, tmp_path: Path
) -> None:
    before = len(runtime.store.registry.merchants())
    csv = tmp_path / "partners.csv"
    csv.write_text(
        "name,kvk_number,category,iban\n"
        "Scouting Groningen,40123457,youth,NL20INGB0001234567\n"
        "Dansschool,4012345,culture,NL20INGB0001234567\n",
        encoding="utf-8",
    )
    page = new_page(locale="nl-NL")
    staff_login(page, base_url, "admin", "nl")
    page.goto(f"{base_url}/admin/web/merchants?lang=nl")
    page.set_input_files("#partners-file", str(csv))
    page.click("#import-submit")
    page.wait_for_selector("#line-errors")
    rows = page.locator("#line-errors tbody tr")
    assert rows.count() == 1
    assert "'4012345'" in (rows.first.text_content() or "")
    assert (rows.first.locator("td").first.text_content() or "").strip() == "3"
    assert len(runtime.store.registry.merchants()) == before  # nothing enrolled

    csv.write_text(
        "name,kvk_number,category,iban\nScouting Groningen,40123457,youth,NL20INGB0001234567\n",
        encoding="utf-8",
    )
    page.set_input_files("#partners-file", str(csv))
    page.click("#import-submit")
    page.wait_for_selector("#imported")
    assert "1 partners aangemeld, 0 al bekend" in (page.text_content("#imported") or "")
    page.set_input_files("#partners-file", str(csv))
    page.click("#import-submit")
    page.wait_for_selector("#imported")
    assert "0 partners aangemeld, 1 al bekend" in (page.text_content("#imported") or "")
    assert len(runtime.store.registry.merchants()) == before + 1
