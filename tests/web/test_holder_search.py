"""The admin holder search in Chromium: the name goes in a POST body, never in a URL.

The app runs in the uvicorn thread of ``tests/web/conftest.py``; headless Debian Chromium is
driven by Playwright with ``executable_path``. Every URL the browser asks for is recorded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from api.auth import DEV_STAFF
from api.runtime import Runtime

CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT_MS = 30_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} missing (apt-get install -y chromium)"
    ),
]

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield browser
        finally:
            browser.close()


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

        page.goto(f"{base_url}/admin/login?lang=en")
        page.fill("#username", "admin")
        page.fill("#password", DEV_STAFF["admin"][1])
        page.click("button[type=submit]")
        page.wait_for_url(f"{base_url}/admin")

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
