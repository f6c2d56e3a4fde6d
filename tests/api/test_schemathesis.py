"""Schemathesis 4 against the app's own OpenAPI document, in-process: no operation answers
with a server error (5xx) to generated input.

It runs on its own runtime (embedded anvil, SQLite in a tmp dir), so the generated admin calls
(blocking passes, revoking terminals, ...) never touch the session runtime of the other tests.
Staff routes get an admin token, merchant routes a terminal token, holder routes a holder
token; the rate limit is off for this app. A bounded number of examples per operation keeps the
run short.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from api.main import create_app
from api.runtime import Runtime
from tests.api.conftest import dev_settings, logins

MAX_EXAMPLES = 15


@pytest.fixture(scope="module")
def fuzz_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    rt = Runtime.start(dev_settings(tmp_path_factory.mktemp("fuzz-var"), rate_limit_per_s=0))
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture(scope="module")
def fuzz_app(fuzz_runtime: Runtime) -> Any:
    return create_app(fuzz_runtime.settings, fuzz_runtime)


@pytest.fixture(scope="module")
def fuzz_headers(fuzz_app: Any) -> dict[str, dict[str, str]]:
    with TestClient(fuzz_app) as tc:
        lg = logins(tc)
        return {
            "staff": lg.staff("admin"),
            "terminal": lg.terminal(1),
            # the development static holder token reaches every pass (more than 404s)
            "holder": {"Authorization": f"Bearer {_static_holder_token(fuzz_app)}"},
        }


def _static_holder_token(app: Any) -> str:
    token = app.state.settings.holder_token
    assert token is not None
    return str(token.get_secret_value())


@pytest.fixture(scope="module")
def api_schema(fuzz_app: Any) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


def _who(path: str) -> str:
    if path.startswith("/merchant"):
        return "terminal"
    if path.startswith("/holder"):
        return "holder"
    return "staff"


def _runner(operation: Any, headers: dict[str, str]) -> Any:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=[not_a_server_error])

    return run


def test_no_server_errors(api_schema: Any, fuzz_headers: dict[str, dict[str, str]]) -> None:
    """Every operation, ``MAX_EXAMPLES`` generated cases each; all failures are collected and
    reported together (operation, then schemathesis' reproduction and the response)."""
    failures: list[str] = []
    operations = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1
        run = _runner(operation, fuzz_headers[_who(operation.path)])
        try:
            run()
        except Exception as exc:  # collected and reported below
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert operations > 10
    assert not failures, "\n\n".join(failures)


def test_schema_is_served(fuzz_app: Any, tmp_path: Path) -> None:
    with TestClient(fuzz_app) as tc:
        document = tc.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert "/holder/passes/{pass_number}/history" in document["paths"]
