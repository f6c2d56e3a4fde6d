"""Browser tests of the scanner component (web/src/scanner.js) on its harness page.

Headless Debian Chromium is driven by Playwright (``executable_path``, never a downloaded
browser). Its fake camera plays a Y4M video made here from a QR PNG rendered by
:func:`wallet.qr.render_png`; the harness page ``api/static/scanner.html`` is served from
``api/static/`` by a local ``http.server`` on 127.0.0.1 (a secure context, as getUserMedia
requires).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.web.conftest import BROWSER_MARKS, launch_chromium
from tests.web.y4m import write_y4m
from wallet import Amount, Domain, PassToken, sign_pass_token
from wallet.qr import render_png
from wallet.uri import TOKEN_URI_LENGTH, encode_token_uri

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "api" / "static"
BUNDLE = STATIC / "build" / "scanner.js"
SCAN_TIMEOUT_MS = 10_000

pytestmark = BROWSER_MARKS


# Never use this key anywhere real.
TEST_KEY = bytes.fromhex("8da4ef21b864d2cc526dbdb2a120bd2874c36c9d0a1fb7f8c63d7f7a8b41de8f")


def _bundle_is_stale() -> bool:
    if not BUNDLE.exists():
        return True
    built = BUNDLE.stat().st_mtime
    sources = [*(ROOT / "web" / "src").rglob("*"), ROOT / "web" / "build.mjs"]
    return any(path.is_file() and path.stat().st_mtime > built for path in sources)


@pytest.fixture(scope="session")
def scanner_bundle() -> Path:
    """The esbuild bundle (``make setup`` builds it); rebuilt here when missing or stale."""
    if _bundle_is_stale():
        npm = shutil.which("npm")
        if npm is None or not (ROOT / "node_modules" / "esbuild").is_dir():
            pytest.skip("scanner bundle missing and esbuild not installed: run `make setup`")
        subprocess.run([npm, "run", "--silent", "build:web"], cwd=ROOT, check=True)
    return BUNDLE


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def static_url(scanner_bundle: Path) -> Iterator[str]:
    """``api/static/`` served on 127.0.0.1 on a free port (base URL, no trailing slash)."""
    handler = functools.partial(_QuietHandler, directory=str(STATIC))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="static-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="session")
def token_uri() -> str:
    """A real, signed pass token URI (short-lived web token of a made-up pass)."""
    domain = Domain(chain_id=31337, verifying_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3")
    token = PassToken(
        pass_id=bytes.fromhex("5a" * 32), serial=0, expiry=4_102_444_800, amount_cap=Amount(2_500)
    )
    uri = encode_token_uri(sign_pass_token(token, domain=domain, private_key=TEST_KEY))
    assert len(uri) == TOKEN_URI_LENGTH
    return uri


def qr_video(tmp_path: Path, text: str) -> Path:
    """A 640x480, 30 fps, 1 s Y4M of ``text``'s QR code (6 px per module) on white."""
    return write_y4m(tmp_path / "camera.y4m", render_png(text, box_size=6))


OpenPage = Callable[..., Any]


@pytest.fixture
def open_scanner(playwright: Any, static_url: str) -> Iterator[OpenPage]:
    """Open the harness page in a fresh Chromium; ``camera`` is a Y4M file or None (no camera).

    ``grant=False`` leaves out the flag that accepts the camera permission prompt.
    Uncaught page errors fail the test.
    """
    browsers: list[Any] = []
    errors: list[str] = []

    def open_page(camera: Path | None, *, grant: bool = True, query: str = "") -> Any:
        args: list[str] = []
        if grant:
            args.append("--use-fake-ui-for-media-stream")
        if camera is not None:
            args += [
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-video-capture={camera}",
            ]
        browser = launch_chromium(playwright, *args)
        browsers.append(browser)
        page = browser.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{static_url}/scanner.html{query}")
        return page

    yield open_page
    for browser in browsers:
        browser.close()
    assert errors == [], f"uncaught errors on the page: {errors}"


def _state(page: Any) -> dict[str, Any]:
    return page.evaluate(
        """() => {
          const code = document.getElementById("scanner-code");
          const error = document.getElementById("scanner-error");
          const status = document.getElementById("scanner-status");
          return {
            scanner: document.body.dataset.scanner,
            code: code.textContent,
            count: Number(code.dataset.count || "0"),
            source: code.dataset.source || null,
            error: error.dataset.code || null,
            errorText: error.textContent,
            status: status.dataset.state || null,
            statusText: status.textContent,
            manualHidden: document.getElementById("manual-entry").hidden,
            focused: document.activeElement && document.activeElement.id,
          };
        }"""
    )


def test_reads_pass_token_from_camera(
    open_scanner: OpenPage, tmp_path: Path, token_uri: str
) -> None:
    page = open_scanner(qr_video(tmp_path, token_uri))
    page.wait_for_function(
        "document.getElementById('scanner-code').dataset.count >= 1", timeout=SCAN_TIMEOUT_MS
    )
    state = _state(page)
    assert state["code"] == token_uri
    assert state["source"] == "camera"
    assert state["error"] is None
    assert state["status"] == "found"
    assert state["statusText"]  # something for the live region to announce
    assert state["manualHidden"]

    # The code stays in view (the video loops): it is decoded ~10 times a second but reported once.
    page.wait_for_timeout(1_000)
    assert _state(page)["count"] == 1

    # stopScanner() releases the camera: every track of the stream ends.
    page.evaluate(
        "window.__tracks = document.getElementById('scanner-video').srcObject.getTracks()"
    )
    page.click("#stop")
    assert page.evaluate("window.__tracks.length") >= 1
    assert page.evaluate("window.__tracks.every((t) => t.readyState === 'ended')")
    assert page.evaluate("document.getElementById('scanner-video').srcObject") is None
    assert _state(page)["status"] == "stopped"


def test_refuses_a_qr_code_that_is_not_a_pass_token(open_scanner: OpenPage, tmp_path: Path) -> None:
    page = open_scanner(qr_video(tmp_path, "https://example.org"))
    page.wait_for_function(
        "document.getElementById('scanner-error').dataset.code !== undefined",
        timeout=SCAN_TIMEOUT_MS,
    )
    state = _state(page)
    assert state["error"] == "not_a_pass_token"
    assert "not a Stadjerspas pass" in state["errorText"]
    assert state["code"] == ""
    assert state["count"] == 0
    # Not fatal: the camera keeps scanning for a real pass.
    assert state["scanner"] == "running"
    assert state["status"] == "scanning"
    assert state["manualHidden"]


def test_no_camera_offers_manual_entry(open_scanner: OpenPage) -> None:
    page = open_scanner(None)
    page.wait_for_function("document.body.dataset.scanner === 'failed'", timeout=SCAN_TIMEOUT_MS)
    state = _state(page)
    assert state["error"] == "no_camera", state
    assert state["status"] == "error"
    assert "No camera" in state["statusText"]
    assert not state["manualHidden"]
    assert state["focused"] == "manual-code"

    # The fallback works: a typed code is used like a scanned one.
    page.fill("#manual-code", "  stadjerspas:1:typed  ")
    page.click("#manual-entry button[type=submit]")
    state = _state(page)
    assert (state["code"], state["source"]) == ("stadjerspas:1:typed", "manual")


def test_permission_denied_offers_manual_entry(open_scanner: OpenPage, tmp_path: Path) -> None:
    # A camera exists but the permission prompt is not accepted (headless dismisses it).
    page = open_scanner(qr_video(tmp_path, "https://example.org"), grant=False)
    page.wait_for_function("document.body.dataset.scanner === 'failed'", timeout=SCAN_TIMEOUT_MS)
    state = _state(page)
    assert state["error"] == "permission_denied", state
    assert not state["manualHidden"]
