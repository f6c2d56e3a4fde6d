"""The API docs page in Chromium: Swagger UI renders the service's own document, every request
goes to the service itself (no CDN, no validator badge) and the Content-Security-Policy
(scripts from 'self' only, no inline script) refuses nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.web.conftest import BROWSER_MARKS

ROOT = Path(__file__).resolve().parents[2]
SWAGGER = ROOT / "api" / "static" / "build" / "docs" / "swagger-ui-bundle.js"
TIMEOUT_MS = 20_000

pytestmark = BROWSER_MARKS


def test_docs_render_from_this_service_only(browser: Any, base_url: str) -> None:
    assert SWAGGER.exists(), "Swagger UI missing: run `npm run build:web` (make setup)"
    page = browser.new_page()
    requests: list[str] = []
    problems: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda msg: (
            problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None
        ),
    )
    try:
        page.goto(base_url + "/docs", wait_until="networkidle", timeout=TIMEOUT_MS)
        title = page.locator(".swagger-ui .info .title")
        title.wait_for(timeout=TIMEOUT_MS)
        assert "Stadjerspas Ledger API" in title.inner_text()
        # the operations of the document are listed (one tag section per tag at least)
        assert page.locator(".opblock-tag").count() >= 5
        health = page.locator(".opblock-summary-path", has_text="/health").first
        health.wait_for(timeout=TIMEOUT_MS)
        health.click()  # open the operation: parameters, responses, examples, models
        page.locator(".opblock-body .responses-table").first.wait_for(timeout=TIMEOUT_MS)
        page.locator("section.models").wait_for(timeout=TIMEOUT_MS)  # the schemas, too
        page.wait_for_load_state("networkidle", timeout=TIMEOUT_MS)
    finally:
        page.close()
    assert requests
    foreign = [url for url in requests if not url.startswith((base_url + "/", "data:"))]
    assert foreign == []
    assert base_url + "/openapi.json" in requests
    assert problems == []
