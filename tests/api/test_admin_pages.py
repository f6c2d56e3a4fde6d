"""The admin web pages (api/routes/admin_pages.py) without a browser: scopes, CSRF, forms.

A runtime of its own (embedded anvil in a tmp dir, SQLite, demo data), so that issuing, blocking
and payout runs here never change what the other API tests see. Each test logs in with its own
TestClient (own cookie jar) as a development staff user.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, insert

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from api import redemptions, services
from api.auth import DEV_STAFF
from api.main import create_app
from api.runtime import Runtime
from api.store import RedemptionRecord, RedemptionStatus
from ledger.reports import scheme_report
from tests.api.conftest import dev_settings

CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')
PNG = b"\x89PNG\r\n\x1a\n"

Login = Callable[[str], TestClient]


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    rt = Runtime.start(dev_settings(tmp_path_factory.mktemp("admin-pages-var")))
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture(scope="module")
def app(runtime: Runtime) -> object:
    return create_app(runtime.settings, runtime)


@pytest.fixture
def login(app: object) -> Iterator[Login]:
    clients: list[TestClient] = []

    def log_in(role: str) -> TestClient:
        client = TestClient(app, raise_server_exceptions=False)  # type: ignore[arg-type]
        clients.append(client)
        page = client.get("/admin/login?lang=en")
        assert page.status_code == 200
        response = client.post(
            "/admin/login",
            data={"username": role, "password": DEV_STAFF[role][1], "csrf": _csrf(page.text)},
            follow_redirects=False,
        )
        assert response.status_code == 303, response.text
        assert response.headers["location"] == "/admin"
        return client

    yield log_in
    for client in clients:
        client.close()


def _csrf(html: str) -> str:
    match = CSRF.search(html)
    assert match is not None, "no CSRF field on the page"
    return match.group(1)


def _wait_for_job(client: TestClient, job_id: str, timeout: float = 60.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/admin/web/jobs/{job_id}/status")
        assert status.status_code == 200, status.text
        job: dict[str, object] = status.json()
        if job["status"] == "failed" or (job["status"] == "done" and job["indexed"]):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def test_pages_need_a_staff_login(app: object) -> None:
    with TestClient(app, raise_server_exceptions=False) as client:  # type: ignore[arg-type]
        for path in ("/admin", "/admin/web/schemes", "/admin/web/reports", "/admin/web/payouts"):
            response = client.get(path, follow_redirects=False)
            assert response.status_code == 303, path
            assert response.headers["location"] == "/admin/login"
        page = client.get("/admin/login")
        assert page.status_code == 200
        assert '<html lang="nl">' in page.text
        assert "Inloggen voor medewerkers" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        status = client.get("/admin/web/jobs/abc/status")
        assert status.status_code == 401


def test_login_without_csrf_is_refused(app: object) -> None:
    with TestClient(app, raise_server_exceptions=False) as client:  # type: ignore[arg-type]
        client.get("/admin/login")
        response = client.post(
            "/admin/login",
            data={"username": "admin", "password": DEV_STAFF["admin"][1]},
            follow_redirects=False,
        )
        assert response.status_code == 400
        assert "sp_session" not in response.cookies


def test_navigation_follows_the_role(login: Login) -> None:
    admin = login("admin").get("/admin")
    for path in ("schemes", "issuance", "holders", "merchants", "reports", "payouts", "audit"):
        assert f'href="/admin/web/{path}"' in admin.text
    issuer = login("issuer")
    home = issuer.get("/admin").text
    assert 'href="/admin/web/issuance"' in home
    assert 'href="/admin/web/payouts"' not in home
    assert 'href="/admin/web/reports"' not in home
    for path in (
        "/admin/web/payouts",
        "/admin/web/reports",
        "/admin/web/reports/schemes.png",
        "/admin/web/audit",
        "/admin/web/holders",
        "/admin/web/merchants",
    ):
        response = issuer.get(path)
        assert response.status_code == 403, path
        assert 'id="problem"' in response.text
    assert issuer.get("/admin/web/schemes").status_code == 200
    finance = login("finance")
    assert finance.get("/admin/web/payouts").status_code == 200
    assert finance.get("/admin/web/issuance").status_code == 403
    forbidden = finance.post("/admin/web/issuance", data={"csrf": "x"})
    assert forbidden.status_code == 403


def test_posts_without_the_csrf_token_change_nothing(login: Login, runtime: Runtime) -> None:
    client = login("admin")
    audit = client.post("/admin/web/audit", data={"compare_reports": "on"})
    assert audit.status_code == 403
    assert 'id="audit-result"' not in audit.text
    block = client.post("/admin/web/passes/GR0000003/block", data={"csrf": "wrong"})
    assert block.status_code == 403
    record = runtime.store.registry.pass_by_number("GR0000003")
    assert str(record.status) != "blocked"
    upload = client.post(
        "/admin/web/issuance",
        data={"scheme_id": "1"},
        files={"file": ("e.csv", b"pass_number,amount\nGR0000001,100\n", "text/csv")},
    )
    assert upload.status_code == 403


def test_csv_with_bad_lines_is_refused_by_line(login: Login) -> None:
    client = login("admin")
    page = client.get("/admin/web/issuance")
    csv = b"pass_number,amount\nGR0000001,100\nGR9999999,100\nGR0000002,ten\n"
    response = client.post(
        "/admin/web/issuance",
        data={"scheme_id": "1", "csrf": _csrf(page.text)},
        files={"file": ("e.csv", csv, "text/csv")},
        follow_redirects=False,
    )
    assert response.status_code == 422
    assert 'id="line-errors"' in response.text
    assert "GR9999999" in response.text
    assert '<td class="num">3</td>' in response.text
    assert '<td class="num">4</td>' in response.text


def test_csv_issuance_job_and_reports(login: Login, runtime: Runtime) -> None:
    client = login("admin")
    engine = runtime.store.db.engine
    before = sum(row.issued for row in scheme_report(engine, scheme_ids=[1]).rows)
    page = client.get("/admin/web/issuance")
    csv = b"pass_number,amount\nGR0000004,1234\nGR0000005,766\n"
    response = client.post(
        "/admin/web/issuance",
        data={"scheme_id": "1", "csrf": _csrf(page.text)},
        files={"file": ("e.csv", csv, "text/csv")},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    job_path = response.headers["location"]
    assert job_path.startswith("/admin/web/jobs/")
    job_page = client.get(job_path)
    assert job_page.status_code == 200
    assert '<script src="/static/js/admin-job.js" defer></script>' in job_page.text
    assert "<script>" not in job_page.text
    job = _wait_for_job(client, job_path.rsplit("/", 1)[1])
    assert job["status"] == "done", job
    assert job["result"]["total_amount"] == 2000  # type: ignore[index]
    assert job["report"] == "/admin/web/reports?scheme=1"

    report = client.get("/admin/web/reports?scheme=1&lang=en")
    assert report.status_code == 200
    row = re.search(r'id="scheme-row-1" data-issued="(\d+)"', report.text)
    assert row is not None
    assert int(row.group(1)) == before + 2000
    assert 'id="schemes-chart"' in report.text
    png = client.get("/admin/web/reports/schemes.png?scheme=1&metric=issued")
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(PNG)
    svg = client.get("/admin/web/reports/districts.svg?scheme=1")
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in svg.content
    csv_out = client.get("/admin/web/reports/merchants.csv")
    assert csv_out.headers["content-type"].startswith("text/csv")
    data = client.get("/admin/web/reports/schemes.json?scheme=1")
    assert sum(r["issued"] for r in data.json()["rows"]) == before + 2000
    assert client.get("/admin/web/reports?period=2026-13").status_code == 422


def test_holders_block_unblock_and_card(login: Login, runtime: Runtime) -> None:
    client = login("admin")
    found = client.get("/admin/web/holders?q=gr0000007")
    assert found.status_code == 200
    assert 'id="pass-GR0000007"' in found.text
    assert 'class="data balances-table"' in found.text  # the demo budget, from the holder service
    csrf = _csrf(found.text)
    blocked = client.post(
        "/admin/web/passes/GR0000007/block", data={"csrf": csrf, "q": "GR0000007"}
    )
    assert blocked.status_code == 200
    assert 'data-status="blocked"' in blocked.text
    assert 'id="notice"' in blocked.text
    assert runtime.client.pass_of(
        bytes.fromhex(runtime.store.registry.pass_by_number("GR0000007").pass_id[2:])
    ).blocked
    unblocked = client.post("/admin/web/passes/GR0000007/unblock", data={"csrf": csrf})
    assert 'data-status="active"' in unblocked.text
    carded = client.post("/admin/web/passes/GR0000007/card", data={"csrf": csrf})
    assert "/admin/web/passes/GR0000007/card.png" in carded.text
    png = client.get("/admin/web/passes/GR0000007/card.png")
    assert png.status_code == 200
    assert png.content.startswith(PNG)
    none = client.get("/admin/web/holders?q=nobody-by-this-name")
    assert 'id="no-holders"' in none.text
    merchants = client.get("/admin/web/merchants")
    assert "Zwembad Noorderbad" in merchants.text


def test_merchant_location_shown_and_edited(login: Login, runtime: Runtime) -> None:
    registry = runtime.store.registry
    client = login("admin")
    page = client.get("/admin/web/merchants")
    assert page.status_code == 200
    assert "Kraneweg 90<br>9718 JN&nbsp;Groningen" in page.text  # the demo pool
    assert 'href="/admin/web/merchants/2/location"' in page.text
    issuer = login("issuer")
    assert issuer.get("/admin/web/merchants/2/location").status_code == 403
    refused = issuer.post("/admin/web/merchants/2/location", data={"csrf": "x", "street": "X"})
    assert refused.status_code == 403
    unknown = client.get("/admin/web/merchants/999/location")
    assert unknown.status_code == 404
    assert 'id="problem"' in unknown.text
    assert client.get("/admin/web/merchants/abc/location").status_code == 422

    form_page = client.get("/admin/web/merchants/2/location")
    assert form_page.status_code == 200
    assert 'value="Oude Ebbingestraat 21"' in form_page.text
    assert 'value="9712 HB"' in form_page.text
    csrf = _csrf(form_page.text)
    before = registry.merchant(2)
    new = {
        "street": "Vismarkt 7",
        "postcode": "9712cs",
        "town": "Groningen",
        "website": "",
        "opening_hours": "ma-za 9:00-18:00\r\nzo gesloten",
    }

    def unchanged() -> None:
        after = registry.merchant(2)
        assert (after.street, after.postcode, after.town, after.opening_hours) == (
            before.street,
            before.postcode,
            before.town,
            before.opening_hours,
        )

    no_csrf = client.post("/admin/web/merchants/2/location", data=new)
    assert no_csrf.status_code == 403
    unchanged()
    for change, fragment in (
        ({"postcode": "97 12"}, "postcode_invalid"),
        ({"website": "vismarkt.example"}, "location_invalid"),
        ({"town": ""}, "town"),
        ({"street": "x" * 201}, "street"),
    ):
        bad = client.post("/admin/web/merchants/2/location", data={**new, **change, "csrf": csrf})
        assert bad.status_code == 422, change
        error = re.search(r'id="error">(.*?)</div>', bad.text, re.DOTALL)
        assert error is not None, change
        assert fragment in error.group(1)
        assert 'value="Vismarkt 7"' in bad.text or "x" * 201 in bad.text  # the input is kept
        unchanged()

    saved = client.post(
        "/admin/web/merchants/2/location", data={**new, "csrf": csrf}, follow_redirects=False
    )
    assert saved.status_code == 303, saved.text
    assert saved.headers["location"].startswith("/admin/web/merchants?done=location_saved")
    listed = client.get("/admin/web/merchants?done=location_saved")
    assert 'id="notice"' in listed.text
    assert "Vismarkt 7<br>9712 CS&nbsp;Groningen" in listed.text
    assert '<span class="hours">zo gesloten</span>' in listed.text
    row = registry.merchant(2)
    assert (row.street, row.postcode, row.opening_hours) == (
        "Vismarkt 7",
        "9712CS",
        "ma-za 9:00-18:00\nzo gesloten",
    )

    cleared = client.post(
        "/admin/web/merchants/2/location",
        data={"csrf": csrf, "street": " ", "postcode": "", "town": ""},
        follow_redirects=False,
    )
    assert cleared.status_code == 303
    assert "done=location_cleared" in cleared.headers["location"]
    assert registry.merchant(2).street is None
    listed = client.get("/admin/web/merchants")
    assert 'id="edit-location-2"' in listed.text
    assert "no address" in listed.text


def test_create_scheme_from_the_form(login: Login, runtime: Runtime) -> None:
    client = login("issuer")
    page = client.get("/admin/web/schemes")
    count = runtime.client.scheme_count()
    bad = client.post(
        "/admin/web/schemes",
        data={"csrf": _csrf(page.text), "name": "X", "kind": "budget", "budget_cap": "abc"},
    )
    assert bad.status_code == 422
    assert runtime.client.scheme_count() == count
    today = datetime.now(UTC).date()
    response = client.post(
        "/admin/web/schemes",
        data={
            "csrf": _csrf(page.text),
            "name": "Sportfonds 2027",
            "kind": "budget",
            "valid_from": today.isoformat(),
            "valid_until": today.replace(year=today.year + 1).isoformat(),
            "budget_cap": "10.000,00",
            "open_to_all_merchants": "on",
        },
    )
    assert response.status_code == 200, response.text
    assert 'id="notice"' in response.text
    assert runtime.client.scheme_count() == count + 1
    assert "Sportfonds 2027" in response.text
    assert runtime.client.scheme_of(count + 1).terms.budget_cap == 1_000_000


def test_payout_run_create_download_confirm(login: Login, runtime: Runtime) -> None:
    token = services.make_pass_token(runtime, runtime.settings, "GR0000010").token_uri
    asyncio.run(
        redemptions.redeem(
            runtime,
            merchant_id=2,
            idempotency_key=str(uuid.uuid4()),
            token=token,
            scheme_id=1,
            amount=700,
        )
    )
    client = login("finance")
    deadline = time.monotonic() + 30
    while (runtime.index_lag() or 0) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    page = client.get("/admin/web/payouts")
    invalid = client.post("/admin/web/payouts", data={"csrf": _csrf(page.text), "period": "x"})
    assert invalid.status_code == 422
    assert 'id="error"' in invalid.text
    period = datetime.now(UTC).strftime("%Y-%m")
    created = client.post(
        "/admin/web/payouts",
        data={"csrf": _csrf(page.text), "period": period},
        follow_redirects=False,
    )
    assert created.status_code == 303, created.text
    run_path = created.headers["location"].split("?")[0]
    run = client.get(run_path)
    assert 'data-status="pending"' in run.text
    reference = run_path.rsplit("/", 1)[1]
    xml = client.get(f"{run_path}/pain001.xml")
    assert xml.status_code == 200
    assert b"pain.001" in xml.content
    listing = client.get("/admin/web/payouts")
    assert reference in listing.text
    confirmed = client.post(f"{run_path}/confirm", data={"csrf": _csrf(run.text)})
    assert confirmed.status_code == 200, confirmed.text
    assert 'id="confirm-result" data-complete="true"' in confirmed.text
    assert 'data-status="confirmed"' in confirmed.text


def test_audit_runs_and_shows_the_result(login: Login) -> None:
    client = login("auditor")
    page = client.get("/admin/web/audit")
    assert page.status_code == 200
    result = client.post(
        "/admin/web/audit", data={"csrf": _csrf(page.text), "compare_reports": "on"}
    )
    assert result.status_code == 200, result.text
    assert 'id="audit-result"' in result.text
    assert 'id="audit-verdict"' in result.text


def test_audit_shows_service_promises_against_the_chain(login: Login, runtime: Runtime) -> None:
    """The section "Service promises vs chain": clean, then a confirmed redemption the chain
    does not have, listed by its id."""
    client = login("auditor")
    page = client.get("/admin/web/audit")
    form = {"csrf": _csrf(page.text)}
    clean = client.post("/admin/web/audit", data=form)
    assert clean.status_code == 200, clean.text
    section = clean.text[clean.text.index('id="audit-promises"') :]
    assert "Service promises vs chain" in section
    assert "Every promise matches the chain." in section

    table = RedemptionRecord.__table__  # type: ignore[attr-defined]
    ghost = 900_000_123
    now = datetime.now(UTC)
    with runtime.store.db.engine.begin() as conn:
        conn.execute(
            insert(table).values(
                merchant_id=1,
                idempotency_key="ghost",
                request_hash="0" * 64,
                redemption_id=ghost,
                token_uri="stadjerspas:1:x",
                scheme_id=1,
                amount=100,
                status=RedemptionStatus.SUCCEEDED.value,
                tx_hash="0x" + "ab" * 32,
                block_number=1,
                debited=100,
                credited=100,
                created_at=now,
                updated_at=now,
            )
        )
    try:
        broken = client.post("/admin/web/audit", data=form)
    finally:
        with runtime.store.db.engine.begin() as conn:
            conn.execute(delete(table).where(table.c.redemption_id == ghost))
    assert broken.status_code == 200, broken.text
    assert 'id="audit-result" data-ok="false"' in broken.text
    section = broken.text[broken.text.index('id="audit-promises"') :]
    assert 'data-ok="false"' in section
    assert "1 promise(s) do not match the chain." in section
    assert f"Redemption {ghost}" in section
    assert "Confirmed here, missing on chain" in section
    assert 'data-kind="promise.missing_on_chain"' in section
    assert "0x" + "ab" * 32 in section  # what the service recorded
    dutch = client.post("/admin/web/audit?lang=nl", data=form)
    assert "Beloften van de dienst tegenover de keten" in dutch.text


def test_cohort_issuance_from_the_form(login: Login, runtime: Runtime) -> None:
    client = login("issuer")
    page = client.get("/admin/web/issuance")
    assert 'id="cohort-form"' in page.text
    missing = client.post(
        "/admin/web/cohorts", data={"csrf": _csrf(page.text), "scheme_id": "1", "amount": "500"}
    )
    assert missing.status_code == 422
    assert "cohort_criteria_missing" in missing.text
    district = next(
        holder.district_code
        for _, holder in runtime.store.registry.pass_holders()
        if holder.district_code is not None
    )
    response = client.post(
        "/admin/web/cohorts",
        data={
            "csrf": _csrf(page.text),
            "scheme_id": "1",
            "amount": "500",
            "min_age": "0",
            "max_age": "150",
            "district_codes": [district],
        },
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    job = _wait_for_job(client, response.headers["location"].rsplit("/", 1)[1])
    assert job["status"] == "done", job
    assert job["kind"] == "cohort"
    assert job["result"]["amount"] == 500  # type: ignore[index]
