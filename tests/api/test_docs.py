"""The API docs page /docs: every script, style and icon from the service itself, never a CDN."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from api.docs import ASSETS
from tests.api.conftest import TestClient  # type: ignore[attr-defined]


class _Refs(HTMLParser):
    """Every URL a page makes the browser load (script src, link href, img src), and inline
    scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []
        self.inline_scripts = 0
        self._in_script_without_src = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        for name in ("src", "href"):
            if name in values:
                self.urls.append((tag, values[name]))
        self._in_script_without_src = tag == "script" and "src" not in values

    def handle_data(self, data: str) -> None:
        if self._in_script_without_src and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script_without_src = False


def test_docs_page_loads_only_files_of_this_service(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    refs = _Refs()
    refs.feed(page.text)
    assert refs.inline_scripts == 0
    assert {tag for tag, _ in refs.urls} == {"script", "link"}
    assert sorted(url for _, url in refs.urls) == sorted(ASSETS.values())
    assert not re.search(r"(?i)https?:|//[a-z0-9]|jsdelivr|unpkg|googleapis", page.text)
    types = {".js": "javascript", ".css": "text/css", ".png": "image/png"}
    for _, url in refs.urls:
        assert url.startswith("/static/"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.content, url
        kind = next(v for k, v in types.items() if url.endswith(k))
        assert kind in asset.headers["content-type"], (url, asset.headers["content-type"])
    bundle = client.get(ASSETS["script"])
    assert b"SwaggerUIBundle" in bundle.content
    # the document the page shows is this service's own
    assert page.text.count('data-openapi-url="/openapi.json"') == 1
    assert client.get("/openapi.json").status_code == 200


def test_docs_policy_allows_scripts_from_this_origin_only(client: TestClient) -> None:
    policy = client.get("/docs").headers["content-security-policy"]
    directives = {part.split()[0]: part.split()[1:] for part in policy.split(";") if part.strip()}
    assert directives["script-src"] == ["'self'"]
    assert directives["default-src"] == ["'self'"]
    assert "http" not in policy
    assert "jsdelivr" not in policy


def test_redoc_and_the_cdn_pages_are_gone(client: TestClient) -> None:
    assert client.get("/redoc").status_code == 404
    assert client.get("/docs/oauth2-redirect").status_code == 404
    root = client.get("/", follow_redirects=False)
    assert root.headers["location"] == "/docs"
