"""Admin report routes: scope checks, JSON and CSV, a bad period, figures from the live index."""

from __future__ import annotations

import csv
import io
import time

from api.runtime import Runtime
from tests.api.conftest import TestClient, logins, merchant  # type: ignore[attr-defined]


def _wait_for_index(runtime: Runtime) -> None:
    deadline = time.monotonic() + 30
    while runtime.index_lag() != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert runtime.index_lag() == 0


def test_report_routes_need_the_audit_scope(client: TestClient) -> None:
    for kind in ("schemes", "merchants", "districts", "governance"):
        path = f"/admin/reports/{kind}"
        assert client.get(path).status_code == 401
        issuer = client.get(path, headers=logins(client).staff("issuer"))
        assert issuer.status_code == 403
        assert issuer.json()["code"] == "insufficient_scope"
        terminal = client.get(path, headers=merchant(client, 1))
        assert terminal.status_code == 403
        for role in ("auditor", "finance", "admin"):
            assert client.get(path, headers=logins(client).staff(role)).status_code == 200


def test_scheme_report_counts_the_demo_issuance(client: TestClient, runtime: Runtime) -> None:
    _wait_for_index(runtime)
    response = client.get("/admin/reports/schemes", headers=logins(client).staff("auditor"))
    body = response.json()
    issued = sum(row["issued"] for row in body["rows"])
    assert issued > 0
    as_csv = client.get(
        "/admin/reports/schemes?format=csv", headers=logins(client).staff("auditor")
    )
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert sum(int(row["issued"]) for row in rows if row["issued"]) == issued


def test_district_report_suppresses_small_cells(client: TestClient, runtime: Runtime) -> None:
    _wait_for_index(runtime)
    body = client.get("/admin/reports/districts", headers=logins(client).staff("auditor")).json()
    assert body["k"] == 10
    figures = [fig for cell in body["cells"] for fig in cell["figures"].values()]
    assert figures
    # the demo has 50 holders over a dozen wijken: cells below k = 10 holders are suppressed
    suppressed = [fig for fig in figures if fig["suppressed"]]
    assert suppressed
    assert all(fig["value"] is None for fig in suppressed)


def test_a_bad_period_is_a_problem_and_not_a_500(client: TestClient) -> None:
    response = client.get(
        "/admin/reports/merchants?period=2026-13", headers=logins(client).staff("auditor")
    )
    assert response.status_code == 422
    assert response.json()["code"] == "period_invalid"


def test_governance_report_names_the_roles_granted_at_deployment(
    client: TestClient, runtime: Runtime
) -> None:
    _wait_for_index(runtime)
    auditor = logins(client).staff("auditor")
    body = client.get("/admin/reports/governance", headers=auditor).json()
    assert body["report"] == "governance"
    grants = [row for row in body["rows"] if row["kind"] == "role_granted"]
    granted = {(row["role_name"], row["account"]) for row in grants}
    assert ("issuer", runtime.keys.issuer.address) in granted
    for account in runtime.keys.merchants:
        assert ("merchant", account.address) in granted
    blocks = [(row["block_number"], row["log_index"]) for row in body["rows"]]
    assert blocks == sorted(blocks, reverse=True)  # newest first

    only = client.get("/admin/reports/governance?kind=role_granted&limit=2", headers=auditor)
    assert [row["kind"] for row in only.json()["rows"]] == ["role_granted"] * 2
    as_csv = client.get("/admin/reports/governance?format=csv", headers=auditor)
    assert len(list(csv.DictReader(io.StringIO(as_csv.text)))) == len(body["rows"])
    for bad in ("kind=promoted", "limit=0", "limit=10001"):
        refused = client.get(f"/admin/reports/governance?{bad}", headers=auditor)
        assert refused.status_code == 422
        assert refused.json()["code"] == "validation_failed"
