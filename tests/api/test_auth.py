"""Auth: logins of each kind, lockout, expired and tampered tokens, scopes of every route,
terminal and staff management, and the holder's object-level rule."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from sqlmodel import col, update

from api.auth import (
    DEV_HOLDER_PIN,
    DEV_PIN_CHECK_LIMIT,
    DEV_STAFF,
    Auth,
    DevelopmentCredentialsInProduction,
    dev_terminal_id,
    dev_terminal_secret,
    encode_token,
)
from api.main import create_app
from api.runtime import Runtime
from api.settings import DEV_AUTH_SECRET, Settings
from api.store import ApiStore, StaffUser, Terminal
from api.throttle import RedisThrottleState
from ledger.secrets_hash import hash_secret, legacy_scrypt_hash, verification_count
from ledger.store.registry import PassRecord
from tests.api.conftest import admin, dev_settings, holder, logins, merchant

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


# -- PyJWT: HS256 only, claims required ---------------------------------------------------------


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # HS384/512 forgeries
def test_tokens_are_hs256_jwts_with_required_claims(client: TestClient) -> None:
    key = DEV_AUTH_SECRET.encode()
    issued = logins(client).staff("auditor")["Authorization"].split()[1]
    assert jwt.get_unverified_header(issued) == {"alg": "HS256", "typ": "JWT"}
    claims = jwt.decode(issued, key, algorithms=["HS256"], audience="stadjerspas-api")
    assert set(claims) == {"iss", "aud", "sub", "kind", "scope", "role", "iat", "exp", "jti"}
    refused: dict[str, str] = {
        jwt.encode(_token_claims(), key, algorithm="HS512"): "algorithm 'HS512' is not HS256",
        jwt.encode(_token_claims(), key, algorithm="HS384"): "algorithm 'HS384' is not HS256",
        jwt.encode(_token_claims(), None, algorithm="none"): "algorithm 'none' is not HS256",
        encode_token(_token_claims(aud=["stadjerspas-api"]), key): "not for this service",
        encode_token(_token_claims(iss="someone"), key): "not for this service",
        encode_token(
            {k: v for k, v in _token_claims().items() if k != "exp"}, key
        ): "has no 'exp' claim",
        encode_token(
            {k: v for k, v in _token_claims().items() if k != "sub"}, key
        ): "has no 'sub' claim",
    }
    for token, detail in refused.items():
        body = _problem(client.get("/auth/me", headers=_bearer(token)), 401, "auth_token_invalid")
        assert detail in body["detail"]
    expired = encode_token(_token_claims(exp=1_700_000_000), key)
    body = _problem(client.get("/auth/me", headers=_bearer(expired)), 401, "auth_token_expired")
    assert "1700000000" in body["detail"]


# -- one hash (Argon2id); databases with scrypt hashes keep working ------------------------------


def test_holder_login_does_the_same_work_whether_or_not_the_pass_exists(
    client: TestClient, runtime: Runtime
) -> None:
    holder_id = runtime.store.holders()[0].holder_id
    with_code = runtime.store.registry.issue_pass(holder_id, pass_number="GR7000003")
    assert with_code.activation_code is not None
    attempts = [
        ("GR9999998", "wrong", 401),  # no such pass
        ("../etc", "wrong", 401),  # not even a pass number
        ("GR0000017", "wrong", 401),  # a PIN, no activation code
        ("GR7000003", "wrong", 401),  # an activation code, no PIN
        ("GR0000017", DEV_HOLDER_PIN, 200),
        ("GR7000003", with_code.activation_code, 200),
    ]
    for number, password, status in attempts:
        before = verification_count()
        assert _login(client, "holder", number, password).status_code == status
        assert verification_count() - before == 2, number


def test_scrypt_hashes_of_older_databases_verify_and_become_argon2(
    client: TestClient, runtime: Runtime
) -> None:
    store = runtime.store
    password = "an old staff passphrase"
    store.add_staff_user(
        StaffUser(
            username="legacy.user", password_hash=legacy_scrypt_hash(password), role="auditor"
        )
    )
    secret = "an-old-terminal-secret"
    store.add_terminal(
        Terminal(terminal_id="T3-legacy", merchant_id=3, secret_hash=legacy_scrypt_hash(secret))
    )
    store.set_holder_pins({"GR0000018": legacy_scrypt_hash(DEV_HOLDER_PIN)})
    holder_id = store.holders()[0].holder_id
    issued = store.registry.issue_pass(holder_id, pass_number="GR7000004")
    assert issued.activation_code is not None
    code_hash = legacy_scrypt_hash(issued.activation_code.replace("-", ""))
    with store.session() as session:
        session.exec(
            update(PassRecord)
            .where(col(PassRecord.pass_number) == "GR7000004")
            .values(activation_code_hash=code_hash)
        )
        session.commit()

    def stored() -> list[str | None]:
        user, terminal = store.staff_user("legacy.user"), store.terminal("T3-legacy")
        record = store.registry.find_pass("GR7000004")
        assert user is not None
        assert terminal is not None
        assert record is not None
        pin = store.holder_pin("GR0000018")
        return [user.password_hash, terminal.secret_hash, pin, record.activation_code_hash]

    assert all(h is not None and h.startswith("scrypt$") for h in stored())
    _problem(_login(client, "staff", "legacy.user", "wrong"), 401, "invalid_credentials")
    assert stored()[0] == store.staff_user("legacy.user").password_hash  # type: ignore[union-attr]
    assert all(h is not None and h.startswith("scrypt$") for h in stored())  # a failure: kept
    logins_ = [
        ("staff", "legacy.user", password),
        ("terminal", "T3-legacy", secret),
        ("holder", "GR0000018", DEV_HOLDER_PIN),
        ("holder", "GR7000004", issued.activation_code.lower()),
    ]
    for kind, username, secret_ in logins_:
        assert _login(client, kind, username, secret_).status_code == 200, username
    *secrets_, code = stored()
    assert all(h is not None and h.startswith("$argon2id$") for h in secrets_)
    assert code is not None
    assert code.startswith("hmac-sha256$")  # activation codes: the service's keyed hash
    for kind, username, secret_ in logins_:  # and they still log in
        assert _login(client, kind, username, secret_).status_code == 200, username


# -- throttling through the app: trusted proxies, IPv6 /64, shared between processes -----------


def test_x_forwarded_for_only_from_trusted_proxies(runtime: Runtime) -> None:
    settings = runtime.settings.model_copy(
        update={"trusted_proxies": ["10.0.0.1", "2001:db8:ffff::/48"], "auth_max_failures": 2}
    )
    app = create_app(settings, runtime)
    good = DEV_STAFF["finance"][1]

    def login(tc: TestClient, forwarded: str, password: str) -> Any:
        return tc.post(
            "/auth/token",
            json={"kind": "staff", "username": "finance", "password": password},
            headers={"X-Forwarded-For": forwarded},
        )

    with (
        TestClient(app, client=("10.0.0.1", 4711), raise_server_exceptions=False) as proxy,
        TestClient(app, client=("198.51.100.7", 4711), raise_server_exceptions=False) as direct,
    ):
        app.state.auth.throttle.reset()
        try:
            # behind the proxy: each client counts on its own
            for _ in range(2):
                _problem(login(proxy, "203.0.113.5", "wrong"), 401, "invalid_credentials")
            _problem(login(proxy, "203.0.113.5", good), 429, "login_locked")
            assert login(proxy, "203.0.113.6", good).status_code == 200
            # IPv6 clients by /64
            for host in ("::1", "::2"):
                login(proxy, f"2001:db8:1:2{host}", "wrong")
            _problem(login(proxy, "2001:db8:1:2::3", good), 429, "login_locked")
            assert login(proxy, "2001:db8:1:3::1", good).status_code == 200
            # a client that is no trusted proxy cannot choose its address
            for spoofed in ("203.0.113.50", "203.0.113.51"):
                _problem(login(direct, spoofed, "wrong"), 401, "invalid_credentials")
            _problem(login(direct, "203.0.113.99", good), 429, "login_locked")
        finally:
            app.state.auth.throttle.reset()


def test_two_processes_share_lockouts(runtime: Runtime) -> None:
    settings = runtime.settings.model_copy(update={"auth_max_failures": 2})
    first, second = create_app(settings, runtime), create_app(settings, runtime)
    if not isinstance(first.state.auth.throttle_state, RedisThrottleState):
        pytest.skip("Redis at redis://127.0.0.1:6379/0 does not answer (start redis-server)")
    # each app has its own Redis connection, as another process would
    assert first.state.auth.throttle_state is not second.state.auth.throttle_state
    with (
        TestClient(first, raise_server_exceptions=False) as one,
        TestClient(second, raise_server_exceptions=False) as two,
    ):
        first.state.auth.throttle.reset()
        try:
            _problem(_login(one, "staff", "issuer", "wrong"), 401, "invalid_credentials")
            _problem(_login(two, "staff", "issuer", "wrong"), 401, "invalid_credentials")
            _problem(_login(one, "staff", "issuer", DEV_STAFF["issuer"][1]), 429, "login_locked")
            _problem(_login(two, "staff", "issuer", DEV_STAFF["issuer"][1]), 429, "login_locked")
        finally:
            first.state.auth.throttle.reset()


# -- production refuses development credentials -------------------------------------------------


def _production(tmp_path: Path) -> Settings:
    values: dict[str, object] = {
        "env": "production",
        "var_dir": tmp_path,
        "rpc_url": "http://127.0.0.1:1",
        "keystore_password": "partner keystore secret",
        "auth_secret": "p" * 40,
        "payout_debtor_name": "Gemeente Groningen",
        "payout_debtor_iban": "NL91ABNA0417164300",
        "single_process": True,
    }
    for role in ("admin", "issuer", "pass_signer"):
        values[f"{role}_keystore"] = tmp_path / f"{role}.json"
        values[f"{role}_keystore_password"] = "pw"
    return Settings(**values)  # type: ignore[arg-type]


def test_production_refuses_to_start_while_a_development_credential_verifies(
    tmp_path: Path,
) -> None:
    store = ApiStore.open(f"sqlite:///{tmp_path / 'copied-from-development.db'}")
    try:
        Auth(dev_settings(tmp_path), store).bootstrap([1, 2])  # what development created
        dev_pin = hash_secret(DEV_HOLDER_PIN)  # development sets one hash for all its passes
        store.set_holder_pins({"GR0000001": dev_pin, "GR0000002": dev_pin})
        with store.session() as session:  # an older database: the scrypt hash verifies too
            session.exec(
                update(StaffUser)
                .where(col(StaffUser.username) == "auditor")
                .values(password_hash=legacy_scrypt_hash(DEV_STAFF["auditor"][1]))
            )
            session.commit()
        production = Auth(_production(tmp_path), store)

        def refusal() -> str:
            with pytest.raises(DevelopmentCredentialsInProduction) as info:
                production.bootstrap([1, 2])
            message = str(info.value)
            assert "\n" not in message
            assert message.startswith("refusing to start in production: development credentials")
            return message

        message = refusal()
        for role, (_, password) in DEV_STAFF.items():
            assert f"staff user {role!r} has the password {password!r}" in message
        for merchant_id in (1, 2):
            assert f"terminal {dev_terminal_id(merchant_id)!r} has the secret" in message
        assert f"the PIN {DEV_HOLDER_PIN!r} opens 2 passes (GR0000001, GR0000002)" in message

        # change or disable them, one kind after the other
        with store.session() as session:
            for username in DEV_STAFF:
                session.exec(
                    update(StaffUser)
                    .where(col(StaffUser.username) == username)
                    .values(password_hash=hash_secret(f"a new password for {username}"))
                )
            session.commit()
        assert "staff user" not in refusal()
        store.revoke_terminal(dev_terminal_id(1))
        message = refusal()
        assert "dev-terminal-1" not in message
        assert "terminal 'dev-terminal-2'" in message
        store.revoke_terminal(dev_terminal_id(2))
        store.set_holder_pins({"GR0000001": hash_secret("4711")})
        assert "opens 1 passes (GR0000002)" in refusal()
        store.set_holder_pins({"GR0000002": hash_secret("0815")})
        production.bootstrap([1, 2])  # nothing left: it starts
        assert production.development_credentials() == []
    finally:
        store.close()


def test_with_many_pins_the_check_looks_at_shared_hashes_and_demo_passes(tmp_path: Path) -> None:
    store = ApiStore.open(f"sqlite:///{tmp_path / 'many-pins.db'}")
    try:
        cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)  # real hashes, fast
        pins = {f"GR5{i:06d}": cheap.hash(f"{i:04d}") for i in range(DEV_PIN_CHECK_LIMIT + 10)}
        shared_dev = cheap.hash(DEV_HOLDER_PIN)
        pins |= {"GR5100000": shared_dev, "GR5100001": shared_dev}  # a bulk assignment
        pins["GR0000007"] = cheap.hash(DEV_HOLDER_PIN)  # a demo pass with a hash of its own
        pins["GR5200000"] = cheap.hash(DEV_HOLDER_PIN)  # neither: not looked at
        store.set_holder_pins(pins)
        production = Auth(_production(tmp_path), store)
        found = production.development_credentials()
        assert found == [
            f"the PIN {DEV_HOLDER_PIN!r} opens 3 passes (GR0000007, GR5100000, GR5100001)"
        ]
    finally:
        store.close()
