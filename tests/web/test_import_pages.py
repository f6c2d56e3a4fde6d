"""The admin import page ("Overzetten") in headless Chromium on the real app: an admin uploads
an old system's holders CSV in Dutch, sees the problems of a bad file by line and column, then
watches a good file's job finish (its passes on chain)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from api.runtime import Runtime
from tests.web.conftest import BROWSER_MARKS, staff_login

TIMEOUT_MS = 30_000

pytestmark = BROWSER_MARKS


HEADER = "external_reference;first_name;last_name;birth_date;postcode;pass_number;card_serial\n"


def test_admin_migrates_holders_from_the_page(
    browser: Any, base_url: str, runtime: Runtime, tmp_path: Path
) -> None:
    context = browser.new_context()
    errors: list[str] = []
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        staff_login(page, base_url, "admin", "nl")
        page.click("nav.admin-nav >> text=Overzetten")
        page.wait_for_url(f"{base_url}/admin/web/imports")
        assert page.text_content("h1") == "Overzetten"

        bad = tmp_path / "fout.csv"
        bad.write_text(HEADER + "WEB-1;Joke;Dijk;1966-06-06;9712AB;GR5100001;abc\n")
        page.set_input_files("#holders-file", str(bad))
        page.click("#holders-form button[type=submit]")
        page.wait_for_selector("#line-errors")
        assert "Problemen per regel (er is niets overgezet)" in page.text_content("#line-errors")
        assert "card_serial" in page.text_content("#line-errors tbody")
        assert runtime.store.registry.find_pass("GR5100001") is None

        good = tmp_path / "goed.csv"
        good.write_text(
            HEADER
            + "WEB-1;Joke;Dijk;1966-06-06;9712AB;GR5100001;4242\n"
            + "WEB-2;Kees;Dijk;1967-06-06;9712AB;GR5100002;\n"
        )
        page.set_input_files("#holders-file", str(good))
        page.click("#holders-form button[type=submit]")
        page.wait_for_url(f"{base_url}/admin/web/jobs/**")
        page.wait_for_function(
            "() => document.getElementById('job').dataset.status === 'done'", timeout=TIMEOUT_MS
        )
        assert page.text_content("#job-status") == "Klaar."
        assert page.text_content("#result-lines") == "2"
        record = runtime.store.registry.pass_by_number("GR5100001")
        state = runtime.client.pass_of(bytes.fromhex(record.pass_id[2:]))
        assert (state.registered, state.card_serial) == (True, 4242)
    finally:
        context.close()
    assert errors == [], f"errors on the page: {errors}"
