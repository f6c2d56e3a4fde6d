"""Auth: logins of each kind, lockout, expired and tampered tokens, scopes of every route,
terminal and staff management, and the holder's object-level rule."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.auth import DEV_HOLDER_PIN, DEV_STAFF, dev_terminal_id, dev_terminal_secret, encode_token
from api.main import create_app
from api.runtime import Runtime
from api.settings import DEV_AUTH_SECRET
from tests.api.conftest import admin, holder, logins, merchant

PROBLEM = "application/problem+json"


@pytest.fixture(autouse=True)
def _fresh_throttle(client: TestClient) -> Iterator[None]:
    client.app.state.auth.throttle.reset()  # type: ignore[attr-defined]
    yield
    client.app.state.auth.throttle.reset()  # type: ignore[attr-defined]


def _login(client: TestClient, kind: str, username: str, password: str, **extra: str) -> Any:
    return client.post(
        "/auth/token", json={"kind": kind, "username": username, "password": password, **extra}
    )


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert body["status"] == status
    return body


# -- logins -------------------------------------------------------------------------------------


def test_staff_login_and_me(client: TestClient) -> None:
    for role, (_, password) in DEV_STAFF.items():
        response = _login(client, "staff", role, password)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["token_type"] == "bearer"
        assert body["kind"] == "staff"
        assert body["expires_in"] == 30 * 60
        claims = _claims(body["access_token"])
        assert claims["sub"] == role
        assert claims["exp"] - claims["iat"] == 30 * 60
        me = client.get("/auth/me", headers=_bearer(body["access_token"])).json()
        assert me["role"] == role
        assert me["kind"] == "staff"
    scopes = _login(client, "staff", "admin", DEV_STAFF["admin"][1]).json()["scope"].split()
    assert set(scopes) == {"admin", "issue", "finance", "audit"}
    assert _login(client, "staff", "auditor", DEV_STAFF["auditor"][1]).json()["scope"] == "audit"


def test_oauth2_form_login(client: TestClient) -> None:
    form = {"grant_type": "password", "username": "issuer", "password": DEV_STAFF["issuer"][1]}
    response = client.post("/auth/token", data=form)
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "issue"
    terminal = client.post(
        "/auth/token",
        data={
            "kind": "terminal",
            "username": dev_terminal_id(2),
            "password": dev_terminal_secret(2),
        },
    )
    assert terminal.json()["merchant_id"] == 2
    _problem(
        client.post("/auth/token", data=form | {"grant_type": "client_credentials"}),
        400,
        "unsupported_grant_type",
    )


def test_terminal_login(client: TestClient) -> None:
    body = _login(client, "terminal", dev_terminal_id(3), dev_terminal_secret(3)).json()
    assert body["kind"] == "terminal"
    assert body["merchant_id"] == 3
    assert body["expires_in"] == 15 * 60
    assert set(body["scope"].split()) == {"merchant:redeem", "merchant:read"}
    claims = _claims(body["access_token"])
    assert claims["mid"] == 3
    assert claims["kind"] == "terminal"


def test_holder_login_with_pin_and_activation_code(client: TestClient, runtime: Runtime) -> None:
    body = _login(client, "holder", "gr0000012", DEV_HOLDER_PIN).json()
    assert body["kind"] == "holder"
    assert body["pass_number"] == "GR0000012"
    assert body["scope"] == "holder:read"
    # a pass issued with an activation code (the letter) logs in with that code
    registry = runtime.store.registry
    holder_id = runtime.store.holders()[0].holder_id
    issued = registry.issue_pass(holder_id, pass_number="GR7000001")
    assert issued.activation_code is not None
    ok = _login(client, "holder", "GR7000001", issued.activation_code)
    assert ok.status_code == 200, ok.text
    assert ok.json()["pass_number"] == "GR7000001"
    _problem(_login(client, "holder", "GR7000001", "WRONG-CODE-0000"), 401, "invalid_credentials")
    _problem(_login(client, "holder", "GR7000001", DEV_HOLDER_PIN), 401, "invalid_credentials")


@pytest.mark.parametrize(
    ("kind", "username", "password"),
    [
        ("staff", "admin", "wrong"),
        ("staff", "nobody", "whatever"),
        ("terminal", "dev-terminal-2", "wrong"),
        ("terminal", "dev-terminal-99", dev_terminal_secret(2)),
        ("holder", "GR0000012", "0000"),
        ("holder", "GR9999999", DEV_HOLDER_PIN),
        ("holder", "../etc", DEV_HOLDER_PIN),
        ("terminal", "admin", DEV_STAFF["admin"][1]),  # right password, wrong kind
    ],
)
def test_bad_credentials(client: TestClient, kind: str, username: str, password: str) -> None:
    response = _login(client, kind, username, password)
    body = _problem(response, 401, "invalid_credentials")
    assert response.headers["www-authenticate"] == "Bearer"
    assert "access_token" not in body


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"json": {"kind": "robot", "username": "a", "password": "b"}}, 422, "validation_failed"),
        ({"json": {"username": "a"}}, 422, "validation_failed"),
        ({"json": {"username": 5, "password": []}}, 422, "validation_failed"),
        ({"json": {"username": "a", "password": "b", "x": 1}}, 422, "validation_failed"),
        ({"json": ["a"]}, 422, "validation_failed"),
        (
            {"content": b"{nope", "headers": {"content-type": "application/json"}},
            400,
            "body_malformed",
        ),
        (
            {"content": b"x", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        (
            {"content": b"a" * 5000, "headers": {"content-type": "application/json"}},
            413,
            "body_too_large",
        ),
    ],
)
def test_bad_login_bodies(client: TestClient, kwargs: Any, status: int, code: str) -> None:
    _problem(client.post("/auth/token", **kwargs), status, code)


def test_scope_narrowing(client: TestClient) -> None:
    narrowed = _login(
        client, "terminal", dev_terminal_id(2), dev_terminal_secret(2), scope="merchant:read"
    )
    assert narrowed.json()["scope"] == "merchant:read"
    refused = _login(client, "terminal", dev_terminal_id(2), dev_terminal_secret(2), scope="admin")
    _problem(refused, 400, "invalid_scope")


def test_lockout(runtime: Runtime) -> None:
    settings = runtime.settings.model_copy(
        update={
            "auth_max_failures": 3,
            "auth_max_client_failures": 4,
            "auth_max_account_failures": 1000,
            "auth_lockout_s": 60,
        }
    )
    with TestClient(create_app(settings, runtime), raise_server_exceptions=False) as tc:
        tc.app.state.auth.throttle.reset()  # type: ignore[attr-defined]
        good = DEV_STAFF["finance"][1]
        for _ in range(3):
            _problem(_login(tc, "staff", "finance", "wrong"), 401, "invalid_credentials")
        locked = _login(tc, "staff", "finance", good)  # even the right password is refused
        body = _problem(locked, 429, "login_locked")
        assert 1 <= int(locked.headers["retry-after"]) <= 61
        assert "try again in" in body["detail"]
        # twenty bad logins for one account lock no other account, even from the same client
        for _ in range(20):
            _problem(_login(tc, "staff", "finance", "wrong"), 429, "login_locked")
        assert _login(tc, "staff", "auditor", DEV_STAFF["auditor"][1]).status_code == 200
        # one client trying many accounts is throttled as a client: finance + 3 more = 4
        for account in ("nobody-1", "nobody-2", "nobody-3"):
            _problem(_login(tc, "staff", account, "wrong"), 401, "invalid_credentials")
        _problem(
            _login(tc, "terminal", dev_terminal_id(1), dev_terminal_secret(1)), 429, "login_locked"
        )
        tc.app.state.auth.throttle.reset()  # type: ignore[attr-defined]
        assert _login(tc, "staff", "finance", good).status_code == 200


# -- tokens -------------------------------------------------------------------------------------


def _token_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "stadjerspas",
        "aud": "stadjerspas-api",
        "sub": "admin",
        "kind": "staff",
        "scope": "admin issue finance audit",
        "iat": now,
        "exp": now + 60,
        "jti": "x",
    }
    claims.update(overrides)
    return claims


def test_expired_token(client: TestClient) -> None:
    token = encode_token(_token_claims(exp=int(time.time()) - 1), DEV_AUTH_SECRET.encode())
    response = client.get("/auth/me", headers=_bearer(token))
    _problem(response, 401, "auth_token_expired")
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    fresh = encode_token(_token_claims(), DEV_AUTH_SECRET.encode())
    assert client.get("/auth/me", headers=_bearer(fresh)).status_code == 200


def test_tampered_and_garbage_tokens(client: TestClient) -> None:
    token = logins(client).terminal(2)["Authorization"].split()[1]
    header, payload, signature = token.split(".")
    claims = _claims(token)
    claims["mid"] = 3  # try to become another merchant
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    cases = [
        f"{header}.{forged}.{signature}",
        f"{none_header}.{payload}.",
        f"{none_header}.{payload}.{signature}",
        f"{header}.{payload}.{signature[:-2]}AA",
        encode_token(_token_claims(), b"another secret of at least 32 bytes!!"),
        encode_token(_token_claims(aud="someone-else"), DEV_AUTH_SECRET.encode()),
        encode_token(_token_claims(kind="terminal"), DEV_AUTH_SECRET.encode()),  # no merchant
        encode_token(_token_claims(exp="never"), DEV_AUTH_SECRET.encode()),
        "not-a-token",
        "a.b.c",
        "%.%.%",
        "x" * 5000,
    ]
    for bad in cases:
        response = client.get("/merchant/offers", headers=_bearer(bad))
        _problem(response, 401, "auth_token_invalid")
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    for headers in ({}, {"Authorization": "Basic YTpi"}, {"Authorization": "Bearer "}):
        response = client.get("/merchant/offers", headers=headers)
        _problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"


def test_development_static_tokens(client: TestClient) -> None:
    me = client.get("/auth/me", headers=_bearer("development-only-admin-token")).json()
    assert me["kind"] == "staff"
    me = client.get("/auth/me", headers=_bearer("development-only-merchant-2-token")).json()
    assert me["merchant_id"] == 2


# -- scopes of every route ----------------------------------------------------------------------

ROUTES: list[tuple[str, str, dict[str, Any] | None, str]] = [
    # (method, path, json body, who may call it: staff:<scope>, terminal:<scope>, holder)
    ("POST", "/admin/entitlements", {"pass_number": "GR0000013", "scheme_id": 99, "amount": 1},
     "staff:issue"),
    ("GET", "/holder/passes/GR0000013/balances", None, "holder"),
    ("GET", "/holder/passes/GR0000013/token", None, "holder"),
    ("POST", "/merchant/scan", {"token": "garbage"}, "terminal:merchant:redeem"),
    ("POST", "/merchant/redemptions", {"token": "garbage", "scheme_id": 1, "amount": 1},
     "terminal:merchant:redeem"),
    ("POST", "/merchant/redemptions/999999/reversal", None, "terminal:merchant:redeem"),
    ("GET", "/merchant/redemptions", None, "terminal:merchant:read"),
    ("GET", "/merchant/statement", None, "terminal:merchant:read"),
    ("GET", "/merchant/offers", None, "terminal:merchant:read"),
    ("POST", "/auth/staff", {"username": "x", "password": "short", "role": "admin"}, "staff:admin"),
    ("POST", "/auth/terminals", {"merchant_id": 999}, "staff:admin"),
    ("GET", "/auth/terminals", None, "staff:admin"),
    ("DELETE", "/auth/terminals/nope", None, "staff:admin"),
]  # fmt: skip


def _principals(client: TestClient) -> dict[str, dict[str, str]]:
    lg = logins(client)
    terminal = (dev_terminal_id(2), dev_terminal_secret(2))
    return {
        "staff:admin": lg.staff("admin"),
        "staff:issuer": lg.staff("issuer"),
        "staff:finance": lg.staff("finance"),
        "staff:auditor": lg.staff("auditor"),
        "terminal": lg.terminal(2),
        "terminal:read-only": _bearer(lg.token("terminal", *terminal, scope="merchant:read")),
        "terminal:redeem-only": _bearer(lg.token("terminal", *terminal, scope="merchant:redeem")),
        "holder": lg.holder("GR0000013"),
    }


def _allowed(rule: str, who: str) -> bool:
    if rule == "holder":
        return who == "holder"
    kind, scope = rule.split(":", 1)
    if kind == "staff":
        staff_scopes = {
            "staff:admin": {"admin", "issue", "finance", "audit"},
            "staff:issuer": {"issue"},
            "staff:finance": {"finance", "audit"},
            "staff:auditor": {"audit"},
        }
        return scope in staff_scopes.get(who, set())
    terminal_scopes = {
        "terminal": {"merchant:redeem", "merchant:read"},
        "terminal:read-only": {"merchant:read"},
        "terminal:redeem-only": {"merchant:redeem"},
    }
    return scope in terminal_scopes.get(who, set())


@pytest.mark.parametrize(("method", "path", "body", "rule"), ROUTES)
def test_every_route_checks_its_scope(
    client: TestClient, method: str, path: str, body: dict[str, Any] | None, rule: str
) -> None:
    anonymous = client.request(method, path, json=body)
    _problem(anonymous, 401, "unauthorized")
    assert anonymous.headers["www-authenticate"] == "Bearer"
    for who, headers in _principals(client).items():
        response = client.request(method, path, json=body, headers=headers)
        if _allowed(rule, who):
            assert response.status_code not in (401, 403), (who, response.text)
        else:
            assert response.status_code == 403, (who, path, response.text)
            assert response.json()["code"] in ("insufficient_scope", "wrong_principal_kind")


def test_openapi_declares_scopes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    flows = spec["components"]["securitySchemes"]["BearerToken"]["flows"]
    assert flows["password"]["tokenUrl"] == "/auth/token"
    redeem = spec["paths"]["/merchant/redemptions"]["post"]
    assert {"BearerToken": ["merchant:redeem"]} in redeem["security"]
    assert "/merchant/scan" in spec["paths"]


# -- holders reach only their own pass -------------------------------------------------------


def test_holder_sees_only_own_pass(client: TestClient) -> None:
    own = client.get("/holder/passes/GR0000014/balances", headers=holder(client, "GR0000014"))
    assert own.status_code == 200
    for path in ("/holder/passes/GR0000015/balances", "/holder/passes/GR0000015/token"):
        other = client.get(path, headers=holder(client, "GR0000014"))
        _problem(other, 404, "pass_number_unknown")


# -- management ---------------------------------------------------------------------------------


def test_terminal_issue_list_revoke(client: TestClient) -> None:
    issued = client.post(
        "/auth/terminals", json={"merchant_id": 3, "label": "Kassa 2"}, headers=admin(client)
    )
    assert issued.status_code == 201, issued.text
    terminal = issued.json()
    assert terminal["merchant_id"] == 3
    token = _login(client, "terminal", terminal["terminal_id"], terminal["secret"]).json()
    headers = _bearer(token["access_token"])
    assert client.get("/merchant/offers", headers=headers).status_code == 200
    listed = client.get("/auth/terminals?merchant_id=3", headers=admin(client)).json()
    assert terminal["terminal_id"] in {t["terminal_id"] for t in listed}
    assert all("secret" not in t for t in listed)
    revoked = client.delete(f"/auth/terminals/{terminal['terminal_id']}", headers=admin(client))
    assert revoked.json()["active"] is False
    _problem(client.get("/merchant/offers", headers=headers), 401, "auth_token_revoked")
    _problem(
        _login(client, "terminal", terminal["terminal_id"], terminal["secret"]),
        401,
        "invalid_credentials",
    )
    _problem(
        client.post("/auth/terminals", json={"merchant_id": 99}, headers=admin(client)),
        404,
        "merchant_unknown",
    )
    _problem(
        client.post("/auth/terminals", json={"merchant_id": "x"}, headers=admin(client)),
        422,
        "validation_failed",
    )
    _problem(client.delete("/auth/terminals/nope", headers=admin(client)), 404, "terminal_unknown")


def test_staff_create(client: TestClient) -> None:
    body = {"username": "j.devries", "password": "a long passphrase", "role": "issuer"}
    created = client.post("/auth/staff", json=body, headers=admin(client))
    assert created.status_code == 201, created.text
    assert created.json() == {"username": "j.devries", "role": "issuer", "active": True}
    assert _login(client, "staff", "j.devries", "a long passphrase").json()["scope"] == "issue"
    _problem(
        client.post("/auth/staff", json=body, headers=admin(client)), 409, "staff_username_taken"
    )
    for bad in (
        body | {"password": "short"},
        body | {"role": "root"},
        body | {"username": "has space"},
        {"username": "x"},
    ):
        _problem(
            client.post("/auth/staff", json=bad, headers=admin(client)), 422, "validation_failed"
        )
    assert "password_hash" not in created.text
    # merchant helper import keeps the shared login cache warm for the merchant tests
    assert merchant(client, 1)["Authorization"].startswith("Bearer ")
