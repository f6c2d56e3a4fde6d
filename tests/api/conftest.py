"""Fixtures for the API tests: a real runtime (embedded anvil in a tmp dir, SQLite); no mocks."""

from __future__ import annotations

import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn

with warnings.catch_warnings():
    # starlette 1.x prefers httpx2 for its TestClient; httpx works and is what we install
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from api.auth import DEV_HOLDER_PIN, DEV_STAFF, dev_terminal_id, dev_terminal_secret
from api.main import create_app
from api.runtime import Runtime
from api.settings import Settings
from ledger.passid import pass_id
from tests.conftest import DATABASE_BACKENDS, postgres_database
from wallet import Domain, PassToken, encode_token_uri, sign_pass_token

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Logins:
    """Real logins at ``POST /auth/token`` with the development credentials, cached per app."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self._cache: dict[tuple[str, str, str], str] = {}

    def token(self, kind: str, username: str, password: str, scope: str = "") -> str:
        key = (kind, username, scope)
        if key not in self._cache:
            body = {"kind": kind, "username": username, "password": password}
            if scope:
                body["scope"] = scope
            response = self.client.post("/auth/token", json=body)
            assert response.status_code == 200, response.text
            self._cache[key] = str(response.json()["access_token"])
        return self._cache[key]

    def staff(self, role: str = "admin", scope: str = "") -> dict[str, str]:
        password = DEV_STAFF[role][1]
        return {"Authorization": "Bearer " + self.token("staff", role, password, scope)}

    def terminal(self, merchant_id: int, key: str | None = None) -> dict[str, str]:
        token = self.token(
            "terminal", dev_terminal_id(merchant_id), dev_terminal_secret(merchant_id)
        )
        headers = {"Authorization": "Bearer " + token}
        if key is not None:
            headers["Idempotency-Key"] = key
        return headers

    def holder(self, pass_number: str) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.token("holder", pass_number, DEV_HOLDER_PIN)}


_LOGINS: dict[int, Logins] = {}


def logins(client: TestClient) -> Logins:
    found = _LOGINS.get(id(client))
    if found is None or found.client is not client:
        found = _LOGINS[id(client)] = Logins(client)
    return found


def admin(client: TestClient) -> dict[str, str]:
    return logins(client).staff("admin")


def holder(client: TestClient, pass_number: str) -> dict[str, str]:
    return logins(client).holder(pass_number)


def merchant(client: TestClient, merchant_id: int, key: str | None = None) -> dict[str, str]:
    return logins(client).terminal(merchant_id, key)


#: The media type of a problem answer (RFC 9457).
PROBLEM = "application/problem+json"


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    """The body of ``response``, after checking it is a problem with ``status`` and ``code``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


def holder_pass_id(runtime: Runtime, pass_number: str) -> bytes:
    """The on-chain pass id of the stored pass ``pass_number``."""
    found = runtime.store.holder(pass_number)
    assert found is not None
    return pass_id(pass_secret=found.pass_secret, pass_number=found.pass_number)


#: The CSRF field of a server-rendered page's form.
PAGE_CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')
#: Logs in to the admin pages as a development staff role (``staff_login``).
StaffLogin = Callable[[str], TestClient]


def page_csrf(html: str) -> str:
    """The CSRF token of the page's form."""
    match = PAGE_CSRF.search(html)
    assert match is not None, "no CSRF field on the page"
    return match.group(1)


@pytest.fixture
def staff_login(runtime: Runtime) -> Iterator[StaffLogin]:
    """A client of the admin pages per call, logged in at ``/admin/login`` as the development
    staff role named (on the test module's ``runtime``); closed after the test."""
    app = create_app(runtime.settings, runtime)
    clients: list[TestClient] = []

    def log_in(role: str) -> TestClient:
        client = TestClient(app, raise_server_exceptions=False)
        clients.append(client)
        page = client.get("/admin/login")
        response = client.post(
            "/admin/login",
            data={"username": role, "password": DEV_STAFF[role][1], "csrf": page_csrf(page.text)},
            follow_redirects=False,
        )
        assert response.status_code == 303, response.text
        return client

    yield log_in
    for client in clients:
        client.close()


def dev_settings(var_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "env": "development",
        "var_dir": var_dir,
        "build_dir": PROJECT_ROOT / "var" / "build",
        "anvil_port": 0,
        "receipt_timeout_s": 20.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


_last_expiry: dict[bytes, int] = {}


def signed_uri(
    runtime: Runtime,
    pass_id: bytes,
    *,
    expiry: int | None = None,
    domain: Domain | None = None,
    key: bytes | None = None,
) -> str:
    """A short-lived token signed by the pass signer. Without ``expiry`` each call makes a new
    checkout's token: it expires later than every earlier one of the pass, those the service
    signed or saw redeemed included, and within the token lifetime (a token serves one
    checkout, and a token older than one already redeemed is refused)."""
    while expiry is None:
        now = int(time.time())
        with runtime.token_expiries_lock:  # what the service signed or saw redeemed
            known = runtime.token_expiries.get(pass_id, 0)
        candidate = max(now + 100, _last_expiry.get(pass_id, 0) + 1, known + 1)
        if candidate <= now + 120:
            expiry = _last_expiry[pass_id] = candidate
        else:
            time.sleep(0.2)  # many tokens of one pass this second: the next second
    token = PassToken(pass_id=pass_id, serial=0, expiry=expiry)
    signed = sign_pass_token(
        token, domain=domain or runtime.domain, private_key=key or runtime.keys.pass_signer.key
    )
    return encode_token_uri(signed)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("STADJERSPAS_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    with Runtime.start(dev_settings(tmp_path_factory.mktemp("var"))) as rt:
        yield rt


@pytest.fixture(scope="session")
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime.settings, runtime), raise_server_exceptions=False) as tc:
        yield tc


@pytest.fixture(scope="module", params=DATABASE_BACKENDS)
def module_database(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Once per test module and database: None (SQLite under the runtime's var dir) or the URL
    of a fresh PostgreSQL database, dropped afterwards."""
    if request.param == "sqlite":
        yield None
        return
    with postgres_database(request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")) as url:
        yield url


@contextmanager
def served_app(runtime: Runtime, *, name: str) -> Iterator[str]:
    """The real app of ``runtime`` served by uvicorn on a free port of 127.0.0.1, in a thread
    named ``name``; yields the base URL (no trailing slash) and stops the server afterwards."""
    config = uvicorn.Config(
        create_app(runtime.settings, runtime),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
