"""The OpenAPI document is one clients can trust: schemathesis runs every check against it.

``schemathesis run --checks all`` against ``make run`` found 74 failures (a dangling
``TokenIn`` reference, datetimes without an offset, undocumented status codes and content types,
no ``Allow`` on 405, schema-valid requests refused). Here schemathesis' own engine (the one its
CLI drives: examples, coverage, fuzzing and stateful phases) runs in-process against the app on
its own runtime (embedded anvil, SQLite in a tmp dir), with every check, a fixed seed, a bounded
number of examples per operation and rate limits off. Staff routes get an admin token, merchant
routes a terminal token, holder routes a holder token.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events, from_schema
from schemathesis.specs.openapi.checks import is_unexpected_http_status_case

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from api.main import create_app
from api.problems import PROBLEM_MEDIA_TYPE
from api.runtime import Runtime
from tests.api.conftest import dev_settings, logins

MAX_EXAMPLES = 10
SEED = 20261204

_PERIOD = "the period's days must exist and be in order (2026-02-30, 2026-03-01..2026-01-01)"

#: Operations with rules that JSON Schema cannot express (check digits, cross-field rules, an
#: uploaded file's content, values that must exist in a table or on the chain): a schema-valid
#: request may be refused there with 422 and the rule's own ``code``, never with
#: ``validation_failed`` (:func:`schema_valid_requests_pass_validation`). Everything a schema
#: can say (patterns, bounds, lengths, types) is in the document instead.
SEMANTIC_422: dict[str, str] = {
    "POST /admin/audit": "to_block must not be past the chain's head",
    "POST /admin/holders": "names printable; the postcode in the postcode-to-district table",
    "POST /admin/holders/{holder_id}/passes": "a mixed-case key must have its EIP-55 checksum",
    "POST /admin/merchants": "IBAN mod-97 check digits; printable names",
    "PUT /admin/merchants/{merchant_id}/location": "street and town printable",
    "POST /admin/schemes": "valid_until after valid_from; the terms each kind needs",
    "POST /admin/cohorts": "an age band or districts; districts that exist; passes that match",
    "POST /admin/entitlements/csv": "the file is CSV with the header pass_number,amount",
    "POST /admin/imports/partners": "the file is CSV with the header name,kvk_number,...; "
    "every line valid (KvK, IBAN mod-97, location)",
    "POST /admin/imports/holders": "the file is a holders CSV whose every line is valid",
    "POST /admin/imports/balances": "the file is a balances CSV of imported holders",
    "POST /admin/payouts": "the debtor IBAN's check digits; " + _PERIOD,
    "POST /admin/letters": "a district, passes and holders that exist; at least one letter",
    "POST /admin/postcodes": "the file is CSV with the columns pc6, wijkcode and wijknaam",
    "GET /admin/reports/schemes": _PERIOD,
    "GET /admin/reports/merchants": _PERIOD,
    "GET /admin/reports/districts": _PERIOD,
    "GET /admin/reports/governance": _PERIOD,
}


@schemathesis.check
def schema_valid_requests_pass_validation(ctx: Any, response: Any, case: Any) -> bool | None:
    """A request the schema allows is never refused by the service's request validation: a
    422 to a schema-valid request names a business rule, not ``validation_failed``."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 422:
        return None
    if is_unexpected_http_status_case(case):  # coverage probes of the request's shape
        return None
    code = response.json().get("code")
    if code == "validation_failed":
        raise AssertionError(f"schema-valid request refused by validation: {response.text[:300]}")
    return None


@pytest.fixture(scope="module")
def conformance_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    rt = Runtime.start(dev_settings(tmp_path_factory.mktemp("openapi-var"), rate_limit_per_s=0))
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture(scope="module")
def app(conformance_runtime: Runtime) -> Any:
    return create_app(conformance_runtime.settings, conformance_runtime)


@pytest.fixture(scope="module")
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as tc:
        yield tc


@pytest.fixture(scope="module")
def document(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


@pytest.fixture(scope="module")
def tokens(app: Any, client: TestClient) -> dict[str, dict[str, str]]:
    lg = logins(client)
    holder_token = app.state.settings.holder_token
    assert holder_token is not None
    return {
        "staff": lg.staff("admin"),
        "terminal": lg.terminal(1),
        "holder": {"Authorization": f"Bearer {holder_token.get_secret_value()}"},
    }


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    refs = set(_refs(document))
    assert "#/components/schemas/TokenIn" in refs
    dangling = sorted(
        ref for ref in refs if ref.removeprefix("#/components/schemas/") not in schemas
    )
    assert not dangling
    token_in = schemas["TokenIn"]
    assert set(token_in["required"]) == {"username", "password"}
    assert token_in["properties"]["kind"]["enum"] == ["staff", "terminal", "holder"]


def test_errors_are_documented_as_problem_details(document: dict[str, Any]) -> None:
    """Every 4xx/5xx response is ``application/problem+json`` (what the service sends), and every
    protected operation lists 401, 403 and 429."""
    for method, path, operation in _operations(document):
        responses = operation["responses"]
        for status, response in responses.items():
            if int(status) >= 400:
                assert list(response["content"]) == [PROBLEM_MEDIA_TYPE], (method, path, status)
                schema = response["content"][PROBLEM_MEDIA_TYPE]["schema"]
                assert schema == {"$ref": "#/components/schemas/Problem"}
        if operation.get("security"):
            assert {"401", "403", "429"} <= set(responses), (method, path)
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_non_json_answers_are_declared(document: dict[str, Any]) -> None:
    paths = document["paths"]
    assert "text/csv" in paths["/admin/reports/schemes"]["get"]["responses"]["200"]["content"]
    token = paths["/holder/passes/{pass_number}/token"]["get"]["responses"]["200"]["content"]
    assert {"image/png", "image/svg+xml"} <= set(token)
    assert "text/html" in paths["/merchant/scan"]["get"]["responses"]["200"]["content"]


def test_405_allows_every_method_of_the_path(
    client: TestClient, tokens: dict[str, dict[str, str]]
) -> None:
    """Starlette names only the first matching route's methods; the path has GET and DELETE."""
    response = client.request("PATCH", "/admin/holders/1", headers=tokens["staff"])
    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert {m.strip() for m in response.headers["allow"].split(",")} == {"GET", "DELETE"}
    only_post = client.request("PUT", "/merchant/redemptions", headers=tokens["terminal"])
    assert only_post.status_code == 405
    assert {m.strip() for m in only_post.headers["allow"].split(",")} == {"GET", "POST"}


def test_datetimes_carry_an_offset(client: TestClient, tokens: dict[str, dict[str, str]]) -> None:
    created = client.post(
        "/auth/terminals", json={"merchant_id": 1, "label": "till 9"}, headers=tokens["staff"]
    )
    assert created.status_code == 201, created.text
    listed = client.get("/auth/terminals", headers=tokens["staff"])
    assert listed.status_code == 200
    moments = [created.json()["created_at"]] + [row["created_at"] for row in listed.json()]
    for moment in moments:
        parsed = datetime.fromisoformat(moment)
        assert parsed.utcoffset() == timedelta(0), moment


@pytest.mark.parametrize("period", ["9999-12-31", "2026-02-30", "2026-03-01..2026-01-01"])
def test_a_period_the_pattern_allows_but_the_calendar_not_is_a_422(
    client: TestClient, tokens: dict[str, dict[str, str]], period: str
) -> None:
    """Found by fuzzing: the last day there is (no day after it) was a 500."""
    response = client.get(
        "/admin/reports/schemes", params={"period": period}, headers=tokens["staff"]
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "period_invalid"


def _who(path: str) -> str:
    if path.startswith("/merchant"):
        return "terminal"
    if path.startswith("/holder"):
        return "holder"
    return "staff"


def _config() -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
            "operations": [
                {
                    "include-name": name,
                    "checks": {
                        "positive_data_acceptance": {
                            "expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "422"]
                        }
                    },
                }
                for name in SEMANTIC_422
            ],
        }
    )


def _failures(app: Any, tokens: dict[str, dict[str, str]]) -> tuple[list[str], int]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=_config())
    schema.config.checks.update(included_check_names=["all"])

    @schema.auth()
    class _Bearer:
        def get(self, case: Any, ctx: Any) -> str:
            return _who(case.operation.path)

        def set(self, case: Any, data: str, ctx: Any) -> None:
            case.headers = {**(case.headers or {}), **tokens[data]}

    failures: list[str] = []
    scenarios = 0
    for event in from_schema(schema).execute():
        if isinstance(event, events.FatalError):
            raise AssertionError(f"schemathesis stopped: {event.exception!r}")
        if isinstance(event, events.NonFatalError):
            failures.append(f"{event.label}: error {event.info.message}")
        if not isinstance(event, events.ScenarioFinished):
            continue
        scenarios += 1
        if event.status not in {Status.FAILURE, Status.ERROR}:
            continue
        for case_id, checks in event.recorder.checks.items():
            for check in checks:
                if check.failure_info is None:
                    continue
                interaction = event.recorder.interactions.get(case_id)
                answer = ""
                if interaction is not None and interaction.response is not None:
                    body = interaction.response.content[:300].decode("utf-8", "replace")
                    answer = f"{interaction.response.status_code} {body}"
                failure = check.failure_info.failure
                failures.append(
                    f"[{event.phase.name}] {event.label} {check.name}: {failure.title}\n"
                    f"  {failure.message}\n  {check.failure_info.code_sample}\n  -> {answer}"
                )
    return failures, scenarios


@pytest.mark.slow
def test_schemathesis_finds_no_failures_with_every_check(
    app: Any, tokens: dict[str, dict[str, str]]
) -> None:
    failures, scenarios = _failures(app, tokens)
    assert scenarios > 40
    assert not failures, f"{len(failures)} failures:\n\n" + "\n\n".join(failures)
