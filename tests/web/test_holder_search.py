"""The admin holder search in Chromium: the name goes in a POST body, never in a URL.

The app runs in the uvicorn thread of ``tests/web/conftest.py``; headless Debian Chromium is
driven by Playwright with ``executable_path``. Every URL the browser asks for is recorded.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, quote_plus

from api.runtime import Runtime
from tests.web.conftest import BROWSER_MARKS, staff_login

TIMEOUT_MS = 30_000

pytestmark = BROWSER_MARKS


def test_search_by_name_posts_it_and_actions_come_back_by_number(
    browser: Any, base_url: str, runtime: Runtime
) -> None:
    record, person = runtime.store.registry.pass_holders()[8]
    name, number = person.last_name, record.pass_number
    context = browser.new_context(locale="en-GB")
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        urls: list[str] = []
        errors: list[str] = []
        page.on("request", lambda request: urls.append(request.url))
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        staff_login(page, base_url, "admin", "en")

        page.goto(f"{base_url}/admin/web/holders")
        page.fill("#holder-q", name)
        with page.expect_navigation():
            page.click("form[role=search] button[type=submit]")
        assert page.url == f"{base_url}/admin/web/holders"
        assert page.locator(f"#pass-{number}").count() == 1
        assert page.input_value("#holder-q") == name

        with page.expect_navigation():
            page.click(f"#block-{number}")
        page.wait_for_selector(f"#pass-{number}[data-status=blocked]")
        assert f"q={number}" in page.url
        with page.expect_navigation():
            page.click(f"#unblock-{number}")
        page.wait_for_selector(f"#pass-{number}[data-status=active]")

        assert errors == []
        for url in urls:
            for written in (name, quote(name), quote_plus(name)):
                assert written not in url, url
    finally:
        context.close()
