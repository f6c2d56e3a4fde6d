"""CSRF tokens bound to the session (api/csrf.py) on the real app: a token (and its cookie) from
another session is refused with a 403 problem ``csrf_failed`` and changes nothing; the cookie is
``__Host-csrf`` (Secure, Path=/, no Domain) except on plain http in development."""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr
from starlette.requests import Request

from api.auth import DEV_STAFF, dev_terminal_id, dev_terminal_secret
from api.csrf import DEV_COOKIE, HOST_COOKIE, cookie_for, issue, session_id, signed_for
from api.runtime import Runtime
from api.settings import Settings
from ledger.passid import pass_id
from tests.api.conftest import TestClient, holder, signed_uri  # type: ignore[attr-defined]

META = re.compile(r'<meta name="csrf-token" content="([0-9a-f]+)">')
FIELD = re.compile(r'name="csrf" value="([0-9a-f]+)"')
PASS_NUMBER = "GR0000039"  # a pass only this module redeems from (it is never redeemed)
BLOCK_PASS = "GR0000040"


@pytest.fixture
def pages(client: TestClient) -> Iterator[Any]:
    """New browser-like clients of the session's app (each its own cookie jar)."""
    made: list[TestClient] = []

    def new(base_url: str = "http://testserver") -> TestClient:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
            page_client = TestClient(client.app, base_url=base_url, raise_server_exceptions=False)
        made.append(page_client)
        return page_client

    yield new
    for page_client in made:
        page_client.close()


def _field(html: str) -> str:
    match = FIELD.search(html)
    assert match is not None, "no CSRF field on the page"
    return match.group(1)


def _meta(html: str) -> str:
    match = META.search(html)
    assert match is not None, "no CSRF meta tag on the page"
    return match.group(1)


def _terminal_login(page_client: TestClient, merchant_id: int) -> str:
    """Log a browser in at /merchant/login; the scanner page's CSRF token."""
    login = page_client.get("/merchant/login?lang=en")
    response = page_client.post(
        "/merchant/login",
        data={
            "username": dev_terminal_id(merchant_id),
            "password": dev_terminal_secret(merchant_id),
            "csrf": _field(login.text),
        },
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    scan = page_client.get("/merchant/scan")
    assert scan.status_code == 200
    return _meta(scan.text)


def _staff_login(page_client: TestClient, role: str) -> str:
    login = page_client.get("/admin/login?lang=en")
    response = page_client.post(
        "/admin/login",
        data={"username": role, "password": DEV_STAFF[role][1], "csrf": _field(login.text)},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return _field(page_client.get(f"/admin/web/holders?q={BLOCK_PASS}").text)


def _csrf_cookie(page_client: TestClient, name: str = DEV_COOKIE) -> str:
    value = page_client.cookies.get(name)
    assert value, f"no {name} cookie"
    return str(value)


def _plant(page_client: TestClient, value: str) -> None:
    """Replace the browser's CSRF cookie (as a planted cookie would)."""
    page_client.cookies.delete(DEV_COOKIE)
    page_client.cookies.set(DEV_COOKIE, value, domain="testserver.local", path="/")


def _balances(client: TestClient) -> Any:
    response = client.get(
        f"/holder/passes/{PASS_NUMBER}/balances", headers=holder(client, PASS_NUMBER)
    )
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------------------- tokens


def test_a_token_is_signed_for_one_session_only(runtime: Runtime) -> None:
    settings = runtime.settings
    first, second = session_id("session-cookie-a"), session_id("session-cookie-b")
    token = issue(settings, first)
    assert re.fullmatch(r"[0-9a-f]{96}", token)
    assert signed_for(settings, first, token)
    assert not signed_for(settings, second, token)
    assert not signed_for(settings, "", token)  # nor before login
    assert issue(settings, first) != token  # a fresh nonce each time
    assert not signed_for(settings, first, token[:-1] + ("0" if token[-1] != "0" else "1"))
    assert not signed_for(settings, first, token.upper())
    other_secret = settings.model_copy(update={"auth_secret": SecretStr("another-" + "x" * 40)})
    assert not signed_for(other_secret, first, token)


def _request(scheme: str) -> Request:
    return Request(
        {
            "type": "http",
            "scheme": scheme,
            "method": "GET",
            "path": "/holder/login",
            "query_string": b"",
            "headers": [(b"host", b"pas.example.nl")],
            "server": ("pas.example.nl", 443 if scheme == "https" else 80),
        }
    )


def test_the_cookie_is_host_prefixed_except_on_plain_http_in_development(
    runtime: Runtime,
) -> None:
    development = runtime.settings
    production = Settings.model_construct(**{**development.__dict__, "env": "production"})
    assert not production.is_development
    assert cookie_for(_request("http"), development).name == DEV_COOKIE
    assert not cookie_for(_request("http"), development).secure
    for settings in (development, production):
        cookie = cookie_for(_request("https"), settings)
        assert (cookie.name, cookie.secure) == (HOST_COOKIE, True)
    assert cookie_for(_request("http"), production).name == HOST_COOKIE  # never the fallback


def test_over_https_the_cookie_is_host_prefixed_secure_and_works(pages: Any) -> None:
    browser = pages("https://testserver")
    login = browser.get("/holder/login?lang=en")
    set_cookie = [v for k, v in login.headers.multi_items() if k == "set-cookie"]
    (csrf_cookie,) = [v for v in set_cookie if v.startswith(HOST_COOKIE + "=")]
    attributes = {part.strip().split("=")[0].lower() for part in csrf_cookie.split(";")[1:]}
    assert {"secure", "httponly", "path"} <= attributes
    assert "domain" not in attributes
    assert "path=/;" in csrf_cookie.replace(" ", "").lower() + ";"
    assert "samesite=strict" in csrf_cookie.lower()
    assert not [v for v in set_cookie if v.startswith(DEV_COOKIE + "=")]
    # the form of that page works over https (the jar sends the Secure cookie back)
    token = _terminal_login(browser, 1)
    assert browser.cookies.get(HOST_COOKIE) == token
    scan = browser.post(
        "/merchant/web/scan", json={"token": "stadjerspas:1:x.y"}, headers={"X-CSRF-Token": token}
    )
    assert scan.json().get("code") != "csrf_failed"


# ---------------------------------------------------------------------------- sessions


def test_a_token_from_another_session_is_refused_and_changes_nothing(
    client: TestClient, runtime: Runtime, pages: Any
) -> None:
    found = runtime.store.holder(PASS_NUMBER)
    assert found is not None
    pid = pass_id(pass_secret=found.pass_secret, pass_number=found.pass_number)
    before = _balances(client)
    alice, mallory = pages(), pages()
    alice_token = _terminal_login(alice, 1)
    mallory_token = _terminal_login(mallory, 2)
    alice_cookie = _csrf_cookie(alice)
    assert alice_token == alice_cookie
    assert alice_token != mallory_token

    body = {"token": signed_uri(runtime, pid), "scheme_id": 1, "amount": 100}
    attempts = [
        # Alice's token with Mallory's own cookie: no double submit
        ({"X-CSRF-Token": alice_token}, None),
        # Alice's token and cookie both planted in Mallory's session: signed for another session
        ({"X-CSRF-Token": alice_token}, alice_cookie),
        # no token at all
        ({}, None),
    ]
    for number, (headers, planted) in enumerate(attempts):
        if planted is not None:
            _plant(mallory, planted)
        for path, json in (
            ("/merchant/web/redemptions", body),
            ("/merchant/web/scan", {"token": body["token"]}),
        ):
            refused = mallory.post(
                path,
                json=json,
                headers={**headers, "Idempotency-Key": f"csrf-{number}-{time.time_ns()}"},
            )
            assert refused.status_code == 403, (number, path, refused.text)
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert refused.json()["code"] == "csrf_failed"
    assert _balances(client) == before

    # each session's own token still works
    scan = alice.post(
        "/merchant/web/scan", json={"token": body["token"]}, headers={"X-CSRF-Token": alice_token}
    )
    assert scan.status_code == 200, scan.text


def test_the_token_changes_with_the_session(pages: Any) -> None:
    browser = pages()
    login = browser.get("/merchant/login?lang=en")
    anonymous = _field(login.text)
    scan_token = _terminal_login(browser, 1)
    assert scan_token != anonymous  # a login is a new session: a new token
    # the login page's token is refused once logged in
    refused = browser.post(
        "/merchant/web/scan", json={"token": "x"}, headers={"X-CSRF-Token": anonymous}
    )
    assert refused.status_code == 403
    assert refused.json()["code"] == "csrf_failed"
    # the same session keeps its token from page to page
    assert _meta(browser.get("/merchant/scan").text) == scan_token
    logout = browser.post(
        "/logout", data={"csrf": scan_token, "next": "merchant"}, follow_redirects=False
    )
    assert logout.status_code == 303
    # after logout the old token belongs to no session of this browser any more
    again = browser.post(
        "/logout", data={"csrf": scan_token, "next": "merchant"}, follow_redirects=False
    )
    assert again.status_code == 403
    assert again.json()["code"] == "csrf_failed"


def test_a_staff_form_with_another_sessions_token_changes_nothing(
    pages: Any, runtime: Runtime
) -> None:
    admin, other = pages(), pages()
    admin_token = _staff_login(admin, "admin")
    _staff_login(other, "admin")
    _plant(other, _csrf_cookie(admin))
    refused = other.post(
        f"/admin/web/passes/{BLOCK_PASS}/block",
        data={"csrf": admin_token, "q": BLOCK_PASS},
        follow_redirects=False,
    )
    assert refused.status_code == 403
    assert str(runtime.store.registry.pass_by_number(BLOCK_PASS).status) != "blocked"
    # a login form posted with a logged-in session's token is refused too (form expired)
    stranger = pages()
    stranger.get("/admin/login?lang=en")
    _plant(stranger, _csrf_cookie(admin))
    login = stranger.post(
        "/admin/login",
        data={"username": "admin", "password": DEV_STAFF["admin"][1], "csrf": admin_token},
        follow_redirects=False,
    )
    assert login.status_code == 400
    assert "sp_session" not in stranger.cookies
