"""The real app for the browser tests: its own embedded runtime (anvil in a tmp dir, SQLite,
demo data) served by uvicorn in a thread on 127.0.0.1 (a secure context, as the camera needs).
One per test module.

And the browser: headless Debian Chromium (``executable_path``, never a downloaded browser)
driven by Playwright's sync API. Every browser test module sets ``pytestmark = BROWSER_MARKS``;
the fixtures ``playwright``, ``browser``, ``new_page`` and ``launch`` and the helpers
:func:`launch_chromium`, :func:`log_in`, :func:`staff_login` and :func:`pass_balance` are
shared."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from api import services
from api.auth import DEV_STAFF
from api.runtime import Runtime
from api.settings import Settings
from tests.api.conftest import served_app

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
#: The esbuild bundle of the scanner (``make setup`` builds it), which the scan pages load.
SCANNER_BUNDLE = ROOT / "api" / "static" / "build" / "scanner.js"
#: Chromium's flags in every test: no sandbox (containers), no GPU, no calls home.
BASE_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-background-networking")
#: Default timeout of a :func:`new_page` page (ms).
PAGE_TIMEOUT_MS = 30_000

#: The marks of every browser test module: ``browser``, and skipped without Chromium or
#: Playwright.
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} missing (apt-get install -y chromium)"
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None, reason="playwright not installed"
    ),
]
#: The mark of a module whose pages load the scanner bundle: see :func:`needs_scanner_bundle`.
NEEDS_SCANNER_BUNDLE = pytest.mark.usefixtures("needs_scanner_bundle")


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    settings = Settings(
        env="development",
        var_dir=tmp_path_factory.mktemp("web-var"),
        build_dir=ROOT / "var" / "build",
        anvil_port=0,
        receipt_timeout_s=20.0,
    )
    with Runtime.start(settings) as rt:
        yield rt


@pytest.fixture(scope="module")
def base_url(runtime: Runtime) -> Iterator[str]:
    """The real app on a free port of 127.0.0.1 (base URL without trailing slash)."""
    with served_app(runtime, name="web-uvicorn") as url:
        yield url


@pytest.fixture(scope="module")
def needs_scanner_bundle() -> None:
    """Skip the test when the scanner bundle is not built (checked when the test starts, so a
    bundle that ``tests/web/test_scanner.py`` rebuilt counts)."""
    if not SCANNER_BUNDLE.exists():
        pytest.skip("scanner bundle missing: run `npm run build:web` (make setup)")


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    """Playwright's sync API for the module. Module-scoped and stopped at the module's end:
    while it is started it runs an event loop in the main thread, which would break later tests
    that run their own (``asyncio.run``, anyio) if it outlived this module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        yield pw


def launch_chromium(playwright: Any, *args: str) -> Any:
    """Headless Debian Chromium with :data:`BASE_ARGS` and ``args``."""
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=[*BASE_ARGS, *args]
    )


@pytest.fixture(scope="module")
def browser(playwright: Any) -> Iterator[Any]:
    """One Chromium for the module's tests (each opens its own contexts)."""
    chromium = launch_chromium(playwright)
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Callable[..., Any]]:
    """A page in a fresh context (own cookies; the keywords go to ``new_context``) with the
    :data:`PAGE_TIMEOUT_MS` timeout; uncaught page errors and CSP reports fail the test."""
    contexts: list[Any] = []
    errors: list[str] = []

    def open_page(**context: Any) -> Any:
        ctx = browser.new_context(**context)
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on(
            "console",
            lambda msg: (
                errors.append(msg.text)
                if msg.type == "error" and "Content Security Policy" in msg.text
                else None
            ),
        )
        return page

    yield open_page
    for ctx in contexts:
        ctx.close()
    assert errors == [], f"errors on the page: {errors}"


@pytest.fixture
def launch(playwright: Any) -> Iterator[Callable[..., Any]]:
    """A page in a Chromium of its own (the keywords go to ``new_context``), optionally with a
    fake camera playing a Y4M (``camera``); uncaught page errors fail the test."""
    browsers: list[Any] = []
    errors: list[str] = []

    def open_page(camera: Path | None = None, **context: Any) -> Any:
        args: list[str] = []
        if camera is not None:
            args += [
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-video-capture={camera}",
            ]
        chromium = launch_chromium(playwright, *args)
        browsers.append(chromium)
        page = chromium.new_context(**context).new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        return page

    yield open_page
    for chromium in browsers:
        chromium.close()
    assert errors == [], f"uncaught errors on the page: {errors}"


def log_in(page: Any, url: str, username: str, password: str) -> None:
    """Submit the login form of the page at ``url`` (holder, merchant or admin login)."""
    page.goto(url)
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("button[type=submit]")


def staff_login(page: Any, base_url: str, role: str = "admin", lang: str = "en") -> None:
    """Log in to the admin pages as the development staff ``role`` and land on ``/admin``."""
    log_in(page, f"{base_url}/admin/login?lang={lang}", role, DEV_STAFF[role][1])
    page.wait_for_url(f"{base_url}/admin")


def pass_balance(runtime: Runtime, pass_number: str, scheme_id: int) -> int:
    """The pass's balance in ``scheme_id`` as the service tells it (``services.balances``)."""
    for balance in services.balances(runtime, pass_number).balances:
        if balance.scheme_id == scheme_id:
            return balance.balance
    raise AssertionError(f"no scheme {scheme_id}")
