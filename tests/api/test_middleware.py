"""The hardening middleware: security headers, CORS, size and rate limits, access logs."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI, Request

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from api.middleware import CSP, TokenBuckets, install_middleware
from api.problems import install_problem_handlers
from api.runtime import Runtime
from api.settings import Settings
from tests.api.conftest import holder, logins, merchant

ORIGIN = "https://pas.example.nl"


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"env": "development", "var_dir": tmp_path}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def _app(settings: Settings) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    install_middleware(app, settings)

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"length": len(await request.body())}

    @app.post("/json")
    def json_body(body: dict[str, str]) -> dict[str, int]:
        return {"keys": len(body)}

    @app.get("/items/{item}")
    def item(item: str) -> dict[str, str]:
        return {"item": item}

    return app


@pytest.fixture
def small(tmp_path: Path) -> Iterator[TestClient]:
    settings = _settings(
        tmp_path,
        max_request_body_bytes=2048,
        rate_limit_per_s=1000,
        rate_limit_burst=1000,
        cors_allow_origins=[ORIGIN],
    )
    with TestClient(_app(settings), raise_server_exceptions=False) as tc:
        yield tc


def _problem(response: object, status: int, code: str) -> dict[str, object]:
    from httpx import Response

    assert isinstance(response, Response)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = response.json()
    assert body["code"] == code
    return body


# -- security headers ---------------------------------------------------------------------------


def test_security_headers_on_every_response(client: TestClient) -> None:
    for response in (
        client.get("/health"),
        client.get("/holder/passes/GR0000001/balances"),  # 401 problem
        client.get("/no/such/route"),  # 404 problem
    ):
        headers = response.headers
        assert headers["content-security-policy"] == CSP
        assert "default-src 'self'" in CSP
        assert "frame-ancestors 'none'" in CSP
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["permissions-policy"].startswith("camera=(self)")
        assert headers["cache-control"] == "no-store"
        assert "strict-transport-security" not in headers  # development
        assert headers["x-request-id"]


def test_hsts_only_in_production(tmp_path: Path) -> None:
    from api.middleware import HardeningMiddleware, MiddlewareConfig

    app = FastAPI()

    @app.get("/x")
    def x() -> dict[str, int]:
        return {}

    app.add_middleware(HardeningMiddleware, config=MiddlewareConfig(production=True))
    with TestClient(app) as tc:
        assert tc.get("/x").headers["strict-transport-security"].startswith("max-age=")


def test_request_id_propagated_or_generated(small: TestClient) -> None:
    assert small.get("/items/a", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == (
        "abc-123"
    )
    generated = small.get("/items/a", headers={"X-Request-ID": "bad id <script>"})
    assert generated.headers["x-request-id"] != "bad id"
    assert len(generated.headers["x-request-id"]) == 32


# -- CORS ---------------------------------------------------------------------------------------


def test_cors_allow_list(small: TestClient) -> None:
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
    ok = small.options("/items/a", headers=preflight)
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    assert ok.headers["content-security-policy"] == CSP  # preflights get the headers too
    assert ok.headers["x-content-type-options"] == "nosniff"
    simple = small.get("/items/a", headers={"Origin": ORIGIN})
    assert simple.headers["access-control-allow-origin"] == ORIGIN

    evil = {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    refused = small.options("/items/a", headers=evil)
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    other = small.get("/items/a", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_no_cors_by_default(client: TestClient) -> None:
    response = client.get("/health", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in response.headers
    preflight = client.options(
        "/health", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in preflight.headers


# -- request size -------------------------------------------------------------------------------


def test_body_within_limit(small: TestClient) -> None:
    assert small.post("/echo", content=b"x" * 2048).json() == {"length": 2048}


def test_oversized_body_refused_by_content_length(small: TestClient) -> None:
    body = _problem(small.post("/echo", content=b"x" * 2049), 413, "body_too_large")
    assert "2048" in str(body["detail"])
    _problem(small.post("/json", json={"a": "x" * 5000}), 413, "body_too_large")


def test_oversized_chunked_body_refused_while_streaming(small: TestClient) -> None:
    sent: list[int] = []

    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            sent.append(1)
            yield b"y" * 1000

    response = small.post("/echo", content=chunks())
    _problem(response, 413, "body_too_large")
    assert "content-length" not in response.request.headers  # it was sent chunked

    def json_chunks() -> Iterator[bytes]:
        yield b'{"a": "'
        for _ in range(10):
            yield b"z" * 1000
        yield b'"}'

    _problem(
        small.post("/json", content=json_chunks(), headers={"Content-Type": "application/json"}),
        413,
        "body_too_large",
    )
    assert small.post("/echo", content=iter([b"a" * 1000, b"b" * 1000])).json() == {"length": 2000}


def test_chunked_body_not_read_past_the_limit(tmp_path: Path) -> None:
    """At the ASGI level: the app stops pulling chunks once the limit is passed."""
    import asyncio

    app = _app(_settings(tmp_path, max_request_body_bytes=2048))
    pulled = 0
    messages: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"q" * 1000, "more_body": pulled < 1000}

    async def send(message: dict[str, object]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/echo",
        "raw_path": b"/echo",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    assert messages[0]["status"] == 413
    assert pulled == 3  # 3000 bytes > 2048: refused, the other 997 chunks never read


def test_real_app_refuses_oversized_login(client: TestClient) -> None:
    body = {"kind": "staff", "username": "admin", "password": "x" * (1024 * 1024 + 1)}
    _problem(client.post("/auth/token", json=body), 413, "body_too_large")


def test_csv_uploads_over_the_general_body_limit_reach_their_routes(client: TestClient) -> None:
    """A CSV of 2 MiB (over the 1 MiB body limit, under the 5 MiB a CSV may be) is read by the
    route, which judges its content (here: every line invalid); a body over the CSV limit is
    still stopped by the middleware before it is read."""
    staff = logins(client).staff("admin")
    line = b"GR9999999," + b"x" * 34 + b"\n"  # 45 bytes; the route reads up to 100,000 lines
    big = b"pass_number,amount\n" + line * (2 * 1024 * 1024 // len(line))
    assert len(big) > 2 * 1024 * 1024 - 100
    issued = client.post(
        "/admin/entitlements/csv",
        data={"scheme_id": "1"},
        files={"file": ("e.csv", big, "text/csv")},
        headers=staff,
    )
    _problem(issued, 422, "csv_lines_invalid")
    too_large = client.post(
        "/admin/entitlements/csv",
        content=b"x",
        headers={
            **staff,
            "content-length": str(6 * 1024 * 1024),
            "content-type": "multipart/form-data; boundary=b",
        },
    )
    _problem(too_large, 413, "body_too_large")
    # the general limit still holds for every other path
    login = {"kind": "staff", "username": "admin", "password": "x" * (2 * 1024 * 1024)}
    _problem(client.post("/auth/token", json=login), 413, "body_too_large")


# -- rate limit ---------------------------------------------------------------------------------


def test_token_bucket_refills() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=3, clock=lambda: now[0])
    assert [buckets.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("k") == pytest.approx(0.5)
    assert buckets.take("other") == 0.0
    now[0] += 0.5
    assert buckets.take("k") == 0.0
    assert TokenBuckets(rate=0, burst=1).take("k") == 0.0  # disabled


def test_rate_limit_429_then_recovery(tmp_path: Path) -> None:
    settings = _settings(tmp_path, rate_limit_per_s=5, rate_limit_burst=3)
    app = _app(settings)
    with TestClient(app, raise_server_exceptions=False) as tc:
        statuses = [tc.get("/items/a").status_code for _ in range(3)]
        assert statuses == [200, 200, 200]
        limited = tc.get("/items/a")
        body = _problem(limited, 429, "rate_limited")
        assert int(limited.headers["retry-after"]) >= 1
        assert "retry" in str(body["detail"])
        assert limited.headers["content-security-policy"] == CSP
        import time

        time.sleep(0.25)  # 5/s refills one token in 0.2 s
        assert tc.get("/items/a").status_code == 200


def test_rate_limit_keyed_by_bearer_subject(runtime: Runtime) -> None:
    from api.main import create_app

    settings = runtime.settings.model_copy(update={"rate_limit_per_s": 0.01, "rate_limit_burst": 2})
    with TestClient(create_app(settings, runtime), raise_server_exceptions=False) as tc:
        # logging in is anonymous (keyed by IP): two logins use up the client's IP bucket
        a = merchant(tc, 1)
        b = merchant(tc, 2)
        assert tc.post("/auth/token", json={}).status_code == 429
        # ... but each terminal has its own bucket
        for headers in (a, b):
            assert tc.get("/merchant/offers", headers=headers).status_code == 200
            assert tc.get("/merchant/offers", headers=headers).status_code == 200
            _problem(tc.get("/merchant/offers", headers=headers), 429, "rate_limited")


# -- access log ---------------------------------------------------------------------------------


def test_access_log_has_no_personal_data(
    client: TestClient, runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    pass_number = "GR0000021"
    found = runtime.store.holder(pass_number)
    assert found is not None
    headers = {**holder(client, pass_number), "X-Request-ID": "req-log-1"}
    token = headers["Authorization"].split()[1]
    with caplog.at_level(logging.INFO, logger="api.access"):
        ok = client.get(f"/holder/passes/{pass_number}/token?format=json&x=secret", headers=headers)
        assert ok.status_code == 200
        refused = client.get("/holder/passes/GR0000022/balances?q=1", headers=headers)
        assert refused.status_code == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "api.access"]
    assert len(lines) >= 2
    for line in lines:
        for secret in (
            pass_number,
            "GR0000022",
            found.first_name,
            token,
            ok.json()["token_uri"],
            "secret",
            "q=1",
            "testclient",
        ):
            assert secret not in line
    first = json.loads(lines[-2])
    assert first == {
        "event": "http_request",
        "method": "GET",
        "route": "/holder/passes/{pass_number}/token",
        "status": 200,
        "duration_ms": first["duration_ms"],
        "principal": "holder",
        "request_id": "req-log-1",
    }
    assert isinstance(first["duration_ms"], float)
    assert json.loads(lines[-1])["status"] == 404


def test_access_log_unmatched_route(small: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="api.access"):
        small.get("/nothing/GR0000001")
    record = json.loads([r.getMessage() for r in caplog.records if r.name == "api.access"][-1])
    assert record["route"] == "(unmatched)"
    assert record["status"] == 404
    assert record["principal"] == "anonymous"
