"""Browser tests of the admin pages (api/routes/admin_pages.py) on the real app.

The app runs in a uvicorn thread on 127.0.0.1 with its own embedded runtime (anvil in a tmp dir,
SQLite, demo data); headless Debian Chromium is driven by Playwright with ``executable_path``.
An admin logs in, uploads an entitlements CSV, watches the job page (its script polls the job)
finish, follows it to the report and sees the chart image load and the issued amounts in the
table beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from api.auth import DEV_STAFF
from api.runtime import Runtime
from ledger.reports import scheme_report
from tests.web.conftest import BROWSER_MARKS, staff_login

TIMEOUT_MS = 30_000
SCHEME_ID = 1  # the demo budget scheme (cents)

pytestmark = BROWSER_MARKS


def _issued(runtime: Runtime, scheme_id: int) -> int:
    report = scheme_report(runtime.store.db.engine, scheme_ids=[scheme_id])
    return sum(row.issued for row in report.rows)


def test_admin_uploads_csv_sees_job_finish_and_chart(
    new_page: Any, base_url: str, runtime: Runtime, tmp_path: Path
) -> None:
    before = _issued(runtime, SCHEME_ID)
    lines = [f"GR{n:07d},{1000 + n}" for n in range(11, 41)]  # 30 passes
    total = sum(1000 + n for n in range(11, 41))
    csv = tmp_path / "entitlements.csv"
    csv.write_text("pass_number,amount\n" + "\n".join(lines) + "\n", encoding="utf-8")

    page = new_page()
    staff_login(page, base_url, "admin")
    assert page.text_content("h1") == "Administration"
    page.click("nav.admin-nav >> text=Issuance")
    page.wait_for_url(f"{base_url}/admin/web/issuance")
    page.select_option("#scheme", str(SCHEME_ID))
    page.set_input_files("#csv-file", str(csv))
    page.click("#upload-form button[type=submit]")

    # The job page: its script polls the job until it is done and the index has it.
    page.wait_for_url(f"{base_url}/admin/web/jobs/**")
    page.wait_for_function(
        "() => document.getElementById('job').dataset.status === 'done'", timeout=TIMEOUT_MS
    )
    assert page.get_attribute("#job", "data-done") == "30"
    assert page.get_attribute("#job", "data-total") == "30"
    assert page.evaluate("document.getElementById('job-progress').value") == 30
    assert page.text_content("#job-count") == "30 of 30 done"
    assert page.text_content("#job-status") == "Done."
    assert page.text_content("#result-lines") == "30"
    assert page.text_content("#result-total") == str(total)
    assert page.evaluate("document.activeElement.id") == "job-result-title"
    page.wait_for_selector("#result-report:not([hidden])", timeout=TIMEOUT_MS)

    # The report: the chart image loads, and the table beside it shows the issued amount.
    page.click("#report-link")
    page.wait_for_url(f"{base_url}/admin/web/reports?scheme={SCHEME_ID}")
    page.wait_for_function(
        "() => { const img = document.getElementById('schemes-chart');"
        " return img.complete && img.naturalWidth > 0; }"
    )
    for chart in ("merchants-chart", "districts-chart"):
        page.wait_for_function(
            f"() => {{ const img = document.getElementById('{chart}');"
            " return img.complete && img.naturalWidth > 0; }"
        )
    row = page.locator(f"#scheme-row-{SCHEME_ID}")
    assert row.get_attribute("data-issued") == str(before + total)
    whole, cents = divmod(before + total, 100)
    assert f"€{whole:,}.{cents:02d}" in (row.text_content() or "")
    alt = page.get_attribute("#schemes-chart", "alt") or ""
    assert "Issued" in alt
    assert page.get_attribute("#schemes-chart", "aria-describedby") == "schemes-table-caption"
    # The SVG rendering of the same chart is an SVG document.
    svg = page.request.get(base_url + (page.get_attribute("#schemes-svg", "href") or ""))
    assert svg.ok
    assert "<svg" in svg.text()


def test_csv_problems_are_shown_by_line(new_page: Any, base_url: str, tmp_path: Path) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("pass_number,amount\nGR0000001,100\nGR9999999,5\nGR0000002,-3\n")
    page = new_page()
    staff_login(page, base_url, "issuer")
    page.goto(f"{base_url}/admin/web/issuance")
    page.set_input_files("#csv-file", str(csv))
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("#line-errors")
    assert "csv_lines_invalid" in (page.text_content("[role=alert]") or "")
    rows = page.locator("#line-errors tbody tr")
    assert rows.count() == 2
    assert (rows.nth(0).text_content() or "").strip().startswith("3")
    assert "GR9999999" in (rows.nth(0).text_content() or "")


def test_issuer_cannot_open_payouts(new_page: Any, base_url: str) -> None:
    page = new_page()
    staff_login(page, base_url, "issuer")
    nav = page.text_content("nav.admin-nav") or ""
    assert "Issuance" in nav
    assert "Payouts" not in nav
    assert "Reports" not in nav
    response = page.goto(f"{base_url}/admin/web/payouts")
    assert response.status == 403
    assert page.text_content("h1") == "You do not have access to this page"
    assert page.locator("[role=alert]").count() == 1
    response = page.goto(f"{base_url}/admin/web/reports")
    assert response.status == 403


def test_post_without_csrf_is_refused(new_page: Any, base_url: str, runtime: Runtime) -> None:
    page = new_page()
    staff_login(page, base_url, "admin")
    page.goto(f"{base_url}/admin/web/holders?q=GR0000005")
    # Strip the form's CSRF field, then submit it: refused, the pass stays active.
    page.evaluate(
        "document.querySelectorAll('#pass-GR0000005 form input[name=csrf]')"
        ".forEach(e => e.remove())"
    )
    with page.expect_navigation():
        page.click("#block-GR0000005")
    assert page.text_content("h1") == "The form expired. Please try again."
    record = runtime.store.registry.pass_by_number("GR0000005")
    assert str(record.status) == "active"

    # With the token the same button works, and the pass can be unblocked again.
    page.goto(f"{base_url}/admin/web/holders?q=GR0000005")
    page.click("#block-GR0000005")
    page.wait_for_selector("#pass-GR0000005[data-status=blocked]")
    assert "The pass is blocked." in (page.text_content("#notice") or "")
    page.click("#unblock-GR0000005")
    page.wait_for_selector("#pass-GR0000005[data-status=active]")


def test_language_switch(new_page: Any, base_url: str) -> None:
    page = new_page(locale="nl-NL")
    page.goto(f"{base_url}/admin/login")
    assert page.get_attribute("html", "lang") == "nl"
    assert page.text_content("h1") == "Inloggen voor medewerkers"
    assert page.get_attribute("#username", "autocapitalize") == "none"  # usernames: lower case

    # A wrong password is announced as an alert, in Dutch.
    page.fill("#username", "admin")
    page.fill("#password", "wrong-password")
    page.click("button[type=submit]")
    assert "Inloggen is niet gelukt" in (page.text_content("[role=alert]") or "")
    assert page.get_attribute("#password", "aria-invalid") == "true"
    page.fill("#username", "admin")
    page.fill("#password", DEV_STAFF["admin"][1])
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/admin")
    assert page.text_content("h1") == "Beheer"
    assert "Rapportages" in (page.text_content("nav.admin-nav") or "")

    # Keyboard: the first Tab reaches the skip link.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"

    page.click("#lang-en")
    page.wait_for_url(f"{base_url}/admin?lang=en")
    assert page.get_attribute("html", "lang") == "en"
    assert page.text_content("h1") == "Administration"
    assert page.get_attribute("#lang-en", "aria-current") == "true"
    page.goto(f"{base_url}/admin/web/reports")
    assert page.text_content("h1") == "Reports"  # remembered without ?lang=

    # Logging out ends the session.
    page.click("#logout")
    page.wait_for_url(f"{base_url}/admin/login")
    page.goto(f"{base_url}/admin/web/reports")
    assert page.url == f"{base_url}/admin/login"


def test_pages_fit_a_phone(new_page: Any, base_url: str) -> None:
    """Mobile first: no page scrolls sideways on a 360 px wide phone (wide tables scroll inside
    their own region)."""
    page = new_page(viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True)
    staff_login(page, base_url, "admin")
    for path in (
        "/admin",
        "/admin/web/schemes",
        "/admin/web/issuance",
        "/admin/web/holders?q=GR0000001",
        "/admin/web/merchants",
        "/admin/web/merchants/1/location",
        "/admin/web/reports",
        "/admin/web/payouts",
        "/admin/web/audit",
        "/admin/web/letters",
        "/admin/web/postcodes",
    ):
        page.goto(base_url + path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 360, f"{path} is {width} px wide"
