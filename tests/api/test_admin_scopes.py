"""Scopes and object-level rules of every admin API route, on a real anvil, with SQLite and
PostgreSQL (the latter when ``STADJERSPAS_TEST_POSTGRES_URL`` is set).

The routes come from the app itself (``app.routes``, every API route under ``/admin``): a new
admin route without an entry in :data:`ROUTES` fails :func:`test_every_admin_route_has_a_case`.
For each route:

- no token, a garbage token, an expired token -> 401 (``unauthorized``, ``auth_token_invalid``,
  ``auth_token_expired``);
- a holder's token and a merchant terminal's token -> 403 ``wrong_principal_kind``;
- every staff role without the route's scope, and an admin whose token was narrowed to the other
  scopes -> 403 ``insufficient_scope``;
- every staff role with the scope gets through: the route's own answer to a harmless probe (an
  unknown id -> its 404 problem, an invalid body -> 422, a listing -> 200), never 401/403;
- unknown ids (in the path or the body) -> 404 problem with the route's stable code, malformed
  ids -> 422 ``validation_failed``; nothing changes on any of these.

The admin web pages (``/admin`` and ``/admin/web/...``, not in the OpenAPI document) use cookie
sessions, not bearer tokens; their own tests cover them.
"""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fastapi.routing
import pytest
from fastapi.routing import APIRoute

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from api.auth import AUDIENCE, ISSUER, ROLE_SCOPES, Role, Scope, encode_token
from api.main import create_app
from api.runtime import Runtime
from tests.api.conftest import dev_settings, holder, logins, merchant

PROBLEM = "application/problem+json"
UNKNOWN_ID = 987_654_321
UNKNOWN_PASS = "GR9999999"
UNKNOWN_REFERENCE = "STADJERSPAS-20990101-9999"


# -- the app under test, once per database --------------------------------------------------


@pytest.fixture(scope="module")
def runtime(
    module_database: str | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runtime]:
    settings = dev_settings(
        tmp_path_factory.mktemp("scopes-var"),
        database_url=module_database,
        rate_limit_per_s=0,  # hundreds of requests from one test client
    )
    with Runtime.start(settings) as rt:
        yield rt


@pytest.fixture(scope="module")
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime.settings, runtime), raise_server_exceptions=False) as tc:
        yield tc


@dataclass(frozen=True)
class Known:
    """Objects that exist: a holder outside any household, an empty household, a pass without
    a printed card, a demo pass (funded, with a PIN) and the chain's time."""

    holder_id: int
    household_id: int
    pass_number: str
    demo_pass: str
    now: int


@pytest.fixture(scope="module")
def known(client: TestClient, runtime: Runtime) -> Known:
    admin = logins(client).staff("admin")
    enrolled = client.post(
        "/admin/holders",
        json={
            "first_name": "Scope",
            "last_name": "Tester",
            "birth_date": "1985-01-02",
            "postcode": "9711AA",
        },
        headers=admin,
    )
    assert enrolled.status_code == 201, enrolled.text
    holder_id = enrolled.json()["id"]
    issued = client.post(f"/admin/holders/{holder_id}/passes", headers=admin)
    assert issued.status_code == 201, issued.text
    household = client.post(
        "/admin/households", json={"reference": f"HH-SCOPES-{uuid.uuid4().hex[:8]}"}, headers=admin
    )
    assert household.status_code == 201, household.text
    demo = [
        record.pass_number
        for record, _ in runtime.store.registry.pass_holders()
        if record.activation_code_hash is None
    ]
    return Known(
        holder_id=holder_id,
        household_id=household.json()["id"],
        pass_number=issued.json()["pass_number"],
        demo_pass=demo[0],
        now=int(runtime.w3.eth.get_block("latest")["timestamp"]),
    )


# -- the routes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request: ``path`` may name ``{holder}``, ``{household}``, ``{pass_number}``."""

    path: str
    json: Any = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None

    def send(
        self, client: TestClient, method: str, known: Known, headers: dict[str, str] | None = None
    ) -> Any:
        path = self.path.format(
            holder=known.holder_id,
            household=known.household_id,
            pass_number=known.pass_number,
            demo_pass=known.demo_pass,
        )
        kwargs: dict[str, Any] = {"headers": headers or {}}
        if self.json is not None:
            kwargs["json"] = self.json(known) if callable(self.json) else self.json
        if self.data is not None:
            kwargs["data"] = self.data
        if self.files is not None:
            kwargs["files"] = {
                name: (filename, content.replace(b"{demo_pass}", known.demo_pass.encode()), kind)
                for name, (filename, content, kind) in self.files.items()
            }
        return client.request(method, path, **kwargs)


@dataclass(frozen=True)
class Route:
    scope: Scope
    #: A harmless request and what a caller with the scope gets for it: (status, code or None).
    probe: Call
    expect: tuple[int, str | None]
    #: Requests naming an unknown object, each with its 404 code.
    unknown: list[tuple[Call, str]] = field(default_factory=list)
    #: Requests with a malformed id in the path (422 ``validation_failed``).
    malformed: list[Call] = field(default_factory=list)


def _scheme(known: Known) -> dict[str, Any]:
    return {
        "name": "Scope test",
        "kind": "budget",
        "valid_from": known.now - 60,
        "valid_until": known.now + 86_400,
        "budget_cap": 1_000,
        "allowed_merchants": [UNKNOWN_ID],
    }


def _csv(scheme_id: int, body: bytes) -> Call:
    return Call(
        "/admin/entitlements/csv",
        data={"scheme_id": str(scheme_id)},
        files={"file": ("e.csv", body, "text/csv")},
    )


_INVALID = (422, "validation_failed")
_LOCATION = {"street": "Kraneweg 90", "postcode": "9718 JN", "town": "Groningen"}
_MEMBER = "/admin/households/{household}/members/{holder}"

ROUTES: dict[tuple[str, str], Route] = {
    # -- entitlements (the slice) --
    ("POST", "/admin/entitlements"): Route(
        Scope.ISSUE,
        Call(
            "/admin/entitlements", json={"pass_number": UNKNOWN_PASS, "scheme_id": 1, "amount": 1}
        ),
        (404, "pass_number_unknown"),
        unknown=[
            (
                Call(
                    "/admin/entitlements",
                    json={"pass_number": UNKNOWN_PASS, "scheme_id": 1, "amount": 1},
                ),
                "pass_number_unknown",
            ),
            (
                Call(
                    "/admin/entitlements",
                    json=lambda k: {
                        "pass_number": k.demo_pass,
                        "scheme_id": UNKNOWN_ID,
                        "amount": 1,
                    },
                ),
                "scheme_unknown",
            ),
        ],
    ),
    # -- holders --
    ("POST", "/admin/holders"): Route(Scope.ADMIN, Call("/admin/holders", json={}), _INVALID),
    ("GET", "/admin/holders/{holder_id}"): Route(
        Scope.ADMIN,
        Call(f"/admin/holders/{UNKNOWN_ID}"),
        (404, "holder_unknown"),
        unknown=[(Call(f"/admin/holders/{UNKNOWN_ID}"), "holder_unknown")],
        malformed=[Call("/admin/holders/abc"), Call("/admin/holders/0")],
    ),
    ("DELETE", "/admin/holders/{holder_id}"): Route(
        Scope.ADMIN,
        Call(f"/admin/holders/{UNKNOWN_ID}"),
        (404, "holder_unknown"),
        unknown=[(Call(f"/admin/holders/{UNKNOWN_ID}"), "holder_unknown")],
        malformed=[Call("/admin/holders/-1")],
    ),
    ("POST", "/admin/holders/{holder_id}/passes"): Route(
        Scope.ISSUE,
        Call(f"/admin/holders/{UNKNOWN_ID}/passes"),
        (404, "holder_unknown"),
        unknown=[(Call(f"/admin/holders/{UNKNOWN_ID}/passes"), "holder_unknown")],
        malformed=[Call("/admin/holders/x/passes")],
    ),
    # -- households --
    ("GET", "/admin/households"): Route(Scope.ADMIN, Call("/admin/households"), (200, None)),
    ("POST", "/admin/households"): Route(Scope.ADMIN, Call("/admin/households", json={}), _INVALID),
    ("GET", "/admin/households/{household_id}"): Route(
        Scope.ADMIN,
        Call(f"/admin/households/{UNKNOWN_ID}"),
        (404, "household_unknown"),
        unknown=[(Call(f"/admin/households/{UNKNOWN_ID}"), "household_unknown")],
        malformed=[Call("/admin/households/abc")],
    ),
    ("DELETE", "/admin/households/{household_id}"): Route(
        Scope.ADMIN,
        Call(f"/admin/households/{UNKNOWN_ID}"),
        (404, "household_unknown"),
        unknown=[(Call(f"/admin/households/{UNKNOWN_ID}"), "household_unknown")],
        malformed=[Call("/admin/households/0")],
    ),
    ("PUT", "/admin/households/{household_id}/members/{holder_id}"): Route(
        Scope.ADMIN,
        Call(f"/admin/households/{UNKNOWN_ID}/members/{{holder}}", json={"role": "child"}),
        (404, "household_unknown"),
        unknown=[
            (
                Call(f"/admin/households/{UNKNOWN_ID}/members/{{holder}}", json={"role": "child"}),
                "household_unknown",
            ),
            (
                Call(
                    f"/admin/households/{{household}}/members/{UNKNOWN_ID}", json={"role": "child"}
                ),
                "holder_unknown",
            ),
        ],
        malformed=[Call("/admin/households/x/members/{holder}", json={"role": "child"})],
    ),
    ("DELETE", "/admin/households/{household_id}/members/{holder_id}"): Route(
        Scope.ADMIN,
        Call(f"/admin/households/{UNKNOWN_ID}/members/{{holder}}"),
        (404, "household_unknown"),
        unknown=[
            (Call(f"/admin/households/{UNKNOWN_ID}/members/{{holder}}"), "household_unknown"),
            (Call(f"/admin/households/{{household}}/members/{UNKNOWN_ID}"), "holder_unknown"),
            # a real holder, but not a member of this household
            (Call(_MEMBER), "household_member_unknown"),
        ],
        malformed=[Call("/admin/households/{household}/members/x")],
    ),
    # -- passes and cards --
    **{
        ("POST", f"/admin/passes/{{pass_number}}/{action}"): Route(
            Scope.ISSUE,
            Call(f"/admin/passes/{UNKNOWN_PASS}/{action}"),
            (404, "pass_number_unknown"),
            unknown=[(Call(f"/admin/passes/{UNKNOWN_PASS}/{action}"), "pass_number_unknown")],
            malformed=[Call(f"/admin/passes/{'X' * 40}/{action}")],
        )
        for action in ("block", "unblock", "cards", "pin/unlock")
    },
    **{
        ("GET", f"/admin/passes/{{pass_number}}/card.{kind}"): Route(
            Scope.ISSUE,
            Call(f"/admin/passes/{UNKNOWN_PASS}/card.{kind}"),
            (404, "pass_number_unknown"),
            unknown=[
                (Call(f"/admin/passes/{UNKNOWN_PASS}/card.{kind}"), "pass_number_unknown"),
                (Call(f"/admin/passes/{{pass_number}}/card.{kind}"), "card_unknown"),
            ],
            malformed=[Call(f"/admin/passes/{'X' * 40}/card.{kind}")],
        )
        for kind in ("png", "pdf")
    },
    # -- schemes and issuance --
    ("POST", "/admin/schemes"): Route(
        Scope.ISSUE,
        Call("/admin/schemes", json={}),
        _INVALID,
        unknown=[(Call("/admin/schemes", json=_scheme), "merchant_unknown")],
    ),
    ("GET", "/admin/schemes"): Route(Scope.ISSUE, Call("/admin/schemes"), (200, None)),
    ("POST", "/admin/entitlements/csv"): Route(
        Scope.ISSUE,
        Call("/admin/entitlements/csv", data={"scheme_id": "1"}),
        _INVALID,
        unknown=[
            (_csv(UNKNOWN_ID, b"pass_number,amount\n{demo_pass},1\n"), "scheme_unknown"),
        ],
    ),
    ("POST", "/admin/cohorts"): Route(
        Scope.ISSUE,
        Call("/admin/cohorts", json={}),
        _INVALID,
        unknown=[
            (
                Call("/admin/cohorts", json={"scheme_id": UNKNOWN_ID, "amount": 1, "min_age": 0}),
                "scheme_unknown",
            )
        ],
    ),
    ("GET", "/admin/jobs/{job_id}"): Route(
        Scope.ISSUE,
        Call("/admin/jobs/no-such-job"),
        (404, "job_unknown"),
        unknown=[(Call("/admin/jobs/no-such-job"), "job_unknown")],
        malformed=[Call(f"/admin/jobs/{'j' * 65}")],
    ),
    # -- migration from an old system (an empty file is refused and changes nothing) --
    ("POST", "/admin/imports/holders"): Route(
        Scope.ADMIN, Call("/admin/imports/holders"), (422, "csv_lines_invalid")
    ),
    ("POST", "/admin/imports/balances"): Route(
        Scope.ISSUE, Call("/admin/imports/balances"), (422, "csv_lines_invalid")
    ),
    ("GET", "/admin/imports/jobs/{job_id}"): Route(
        Scope.ISSUE,
        Call("/admin/imports/jobs/no-such-job"),
        (404, "import_unknown"),
        unknown=[(Call("/admin/imports/jobs/no-such-job"), "import_unknown")],
        malformed=[Call(f"/admin/imports/jobs/{'j' * 65}")],
    ),
    # -- merchants --
    ("POST", "/admin/merchants"): Route(Scope.ADMIN, Call("/admin/merchants", json={}), _INVALID),
    ("GET", "/admin/merchants"): Route(Scope.ADMIN, Call("/admin/merchants"), (200, None)),
    ("POST", "/admin/imports/partners"): Route(
        Scope.ADMIN, Call("/admin/imports/partners"), _INVALID
    ),
    ("PUT", "/admin/merchants/{merchant_id}/location"): Route(
        Scope.ADMIN,
        Call(f"/admin/merchants/{UNKNOWN_ID}/location", json=_LOCATION),
        (404, "merchant_unknown"),
        unknown=[
            (Call(f"/admin/merchants/{UNKNOWN_ID}/location", json=_LOCATION), "merchant_unknown")
        ],
        malformed=[Call("/admin/merchants/abc/location", json=_LOCATION)],
    ),
    ("DELETE", "/admin/merchants/{merchant_id}/location"): Route(
        Scope.ADMIN,
        Call(f"/admin/merchants/{UNKNOWN_ID}/location"),
        (404, "merchant_unknown"),
        unknown=[(Call(f"/admin/merchants/{UNKNOWN_ID}/location"), "merchant_unknown")],
        malformed=[Call("/admin/merchants/0/location")],
    ),
    # -- audit and reports --
    ("POST", "/admin/audit"): Route(
        Scope.AUDIT, Call("/admin/audit", json={"to_block": -1}), _INVALID
    ),
    **{
        ("GET", f"/admin/reports/{kind}"): Route(
            Scope.AUDIT, Call(f"/admin/reports/{kind}?period=2026-13"), (422, "period_invalid")
        )
        for kind in ("schemes", "merchants", "districts", "governance")
    },
    # -- activation letters and the postcode table --
    ("POST", "/admin/letters"): Route(Scope.ISSUE, Call("/admin/letters", json={}), _INVALID),
    ("GET", "/admin/letters/{batch}.{kind}"): Route(
        Scope.ISSUE,
        Call("/admin/letters/no-such-batch.pdf"),
        (404, "letters_unknown"),
        unknown=[(Call("/admin/letters/no-such-batch.csv"), "letters_unknown")],
        malformed=[Call("/admin/letters/short.pdf"), Call("/admin/letters/no-such-batch.xls")],
    ),
    ("POST", "/admin/postcodes"): Route(Scope.ADMIN, Call("/admin/postcodes", json={}), _INVALID),
    # -- payouts --
    ("POST", "/admin/payouts"): Route(Scope.FINANCE, Call("/admin/payouts", json={}), _INVALID),
    **{
        (method, f"/admin/payouts/{{reference}}{suffix}"): Route(
            Scope.FINANCE,
            Call(f"/admin/payouts/{UNKNOWN_REFERENCE}{suffix}"),
            (404, "payout_run_unknown"),
            unknown=[(Call(f"/admin/payouts/{UNKNOWN_REFERENCE}{suffix}"), "payout_run_unknown")],
            malformed=[Call(f"/admin/payouts/{'R' * 36}{suffix}")],
        )
        for method, suffix in (("GET", ""), ("GET", "/pain001.xml"), ("POST", "/confirm"))
    },
}

ROUTE_IDS = [f"{method} {path}" for method, path in ROUTES]


def _admin_api_routes(client: TestClient) -> set[tuple[str, str]]:
    """(method, path) of every API route (in the OpenAPI document) under /admin, from
    ``app.routes``; FastAPI >= 0.16x keeps included routers lazily (``iter_route_contexts``)."""
    app: Any = client.app
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)
    found: set[tuple[str, str]] = set()
    for route in iterate(app.routes) if iterate is not None else app.routes:
        original = getattr(route, "original_route", route)
        if not isinstance(original, APIRoute) or not original.include_in_schema:
            continue
        path = str(route.path)
        if path == "/admin" or path.startswith("/admin/"):
            found.update((method, path) for method in set(route.methods or ()) - {"HEAD"})
    return found


def _problem(response: Any, status: int, code: str | None) -> None:
    assert response.status_code == status, response.text
    if code is not None:
        assert response.headers["content-type"] == PROBLEM, response.text
        assert response.json()["code"] == code, response.text


def _state(runtime: Runtime) -> tuple[int, ...]:
    registry = runtime.store.registry
    return (
        registry.holder_count(),
        registry.household_count(),
        registry.pass_count(),
        len(registry.merchants()),
        sum(m.street is not None for m in registry.merchants()),
        runtime.client.scheme_count(),
    )


# -- every route has a case, with the scope the OpenAPI document declares --------------------


def test_every_admin_route_has_a_case(client: TestClient) -> None:
    routes = _admin_api_routes(client)
    assert routes, "no admin routes found"
    missing = sorted(routes - ROUTES.keys())
    assert not missing, f"admin routes without a scope/object-level case in ROUTES: {missing}"
    stale = sorted(ROUTES.keys() - routes)
    assert not stale, f"cases for routes that no longer exist: {stale}"
    paths = client.get("/openapi.json").json()["paths"]
    for (method, path), route in ROUTES.items():
        security = paths[path][method.lower()].get("security")
        assert security == [{"BearerToken": [str(route.scope)]}], (method, path, security)


# -- authentication ---------------------------------------------------------------------------


def _expired_token(runtime: Runtime) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "admin",
        "kind": "staff",
        "scope": " ".join(sorted(ROLE_SCOPES[Role.ADMIN])),
        "role": "admin",
        "iat": now - 7200,
        "exp": now - 3600,
        "jti": uuid.uuid4().hex,
    }
    assert runtime.settings.auth_secret is not None
    return encode_token(claims, runtime.settings.auth_secret.get_secret_value().encode())


@pytest.mark.parametrize(("method", "path"), list(ROUTES), ids=ROUTE_IDS)
def test_no_valid_token_is_401(
    client: TestClient, runtime: Runtime, known: Known, method: str, path: str
) -> None:
    probe = ROUTES[method, path].probe
    response = probe.send(client, method, known)
    _problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    garbage = {"Authorization": "Bearer not.a-token"}
    _problem(probe.send(client, method, known, garbage), 401, "auth_token_invalid")
    expired = {"Authorization": "Bearer " + _expired_token(runtime)}
    _problem(probe.send(client, method, known, expired), 401, "auth_token_expired")


@pytest.mark.parametrize(("method", "path"), list(ROUTES), ids=ROUTE_IDS)
def test_holders_and_terminals_are_403(
    client: TestClient, known: Known, method: str, path: str
) -> None:
    probe = ROUTES[method, path].probe
    for headers in (holder(client, known.demo_pass), merchant(client, 1)):
        _problem(probe.send(client, method, known, headers), 403, "wrong_principal_kind")


@pytest.mark.parametrize(("method", "path"), list(ROUTES), ids=ROUTE_IDS)
def test_staff_without_the_scope_is_403(
    client: TestClient, known: Known, method: str, path: str
) -> None:
    route = ROUTES[method, path]
    lacking = [role for role in Role if route.scope not in ROLE_SCOPES[role]]
    assert lacking
    for role in lacking:
        response = route.probe.send(client, method, known, logins(client).staff(role.value))
        _problem(response, 403, "insufficient_scope")
    # an admin whose token was narrowed to every other scope
    narrowed = " ".join(sorted(ROLE_SCOPES[Role.ADMIN] - {route.scope}))
    response = route.probe.send(client, method, known, logins(client).staff("admin", narrowed))
    _problem(response, 403, "insufficient_scope")


@pytest.mark.parametrize(("method", "path"), list(ROUTES), ids=ROUTE_IDS)
def test_staff_with_the_scope_gets_through(
    client: TestClient, runtime: Runtime, known: Known, method: str, path: str
) -> None:
    route = ROUTES[method, path]
    allowed = [role for role in Role if route.scope in ROLE_SCOPES[role]]
    assert allowed
    before = _state(runtime)
    for role in allowed:
        for scope in ("", str(route.scope)):  # the full login, and one narrowed to this scope
            headers = logins(client).staff(role.value, scope)
            response = route.probe.send(client, method, known, headers)
            assert response.status_code not in {401, 403}, response.text
            _problem(response, *route.expect)
    assert _state(runtime) == before


# -- object level -----------------------------------------------------------------------------

UNKNOWN_CASES = [
    pytest.param(method, path, index, id=f"{method} {path} #{index}")
    for (method, path), route in ROUTES.items()
    for index in range(len(route.unknown))
]
MALFORMED_CASES = [
    pytest.param(method, path, index, id=f"{method} {path} #{index}")
    for (method, path), route in ROUTES.items()
    for index in range(len(route.malformed))
]


def _staff_for(client: TestClient, scope: Scope) -> dict[str, str]:
    return logins(client).staff("admin", str(scope))


@pytest.mark.parametrize(("method", "path", "index"), UNKNOWN_CASES)
def test_unknown_ids_are_404_and_change_nothing(
    client: TestClient, runtime: Runtime, known: Known, method: str, path: str, index: int
) -> None:
    route = ROUTES[method, path]
    call, code = route.unknown[index]
    before = _state(runtime)
    _problem(call.send(client, method, known, _staff_for(client, route.scope)), 404, code)
    assert _state(runtime) == before


@pytest.mark.parametrize(("method", "path", "index"), MALFORMED_CASES)
def test_malformed_ids_are_422(
    client: TestClient, known: Known, method: str, path: str, index: int
) -> None:
    route = ROUTES[method, path]
    response = route.malformed[index].send(client, method, known, _staff_for(client, route.scope))
    _problem(response, 422, "validation_failed")


def test_every_id_bearing_route_has_an_unknown_id_case() -> None:
    for (method, path), route in ROUTES.items():
        if "{" in path:
            assert route.unknown, f"{method} {path}: no unknown-id case"
            assert route.malformed, f"{method} {path}: no malformed-id case"


def test_a_household_member_case_names_a_real_holder(
    client: TestClient, runtime: Runtime, known: Known
) -> None:
    """The ``household_member_unknown`` case is about a holder that exists but is elsewhere."""
    assert runtime.store.registry.holder(known.holder_id).household_id is None
    assert runtime.store.registry.household(known.household_id).id == known.household_id
    headers = logins(client).staff("admin")
    response = client.get(f"/admin/holders/{known.holder_id}", headers=headers)
    assert response.status_code == 200
