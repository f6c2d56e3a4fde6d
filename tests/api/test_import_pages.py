"""The admin import page (api/routes/import_pages.py) without a browser: Dutch texts, scopes,
CSRF, problems by line and column, and an upload through to its job and the chain."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator

import pytest

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from api.runtime import Runtime
from tests.api.conftest import StaffLogin, dev_settings, page_csrf

HOLDERS = (
    "external_reference;first_name;last_name;birth_date;postcode;pass_number;card_serial\n"
    "PAGE-1;Griet;Smit-Ünal;1971-04-05;9712AB;GR6100001;555\n"
    "PAGE-2;Henk;Smit;1972-04-05;9712AB;GR6100002;\n"
).encode("cp1252")


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    with Runtime.start(dev_settings(tmp_path_factory.mktemp("import-pages-var"))) as rt:
        yield rt


def _upload(client: TestClient, kind: str, data: bytes, **fields: str) -> object:
    page = client.get("/admin/web/imports")
    return client.post(
        f"/admin/web/imports/{kind}",
        data={"csrf": page_csrf(page.text), **fields},
        files={"file": ("oud.csv", data, "text/csv")},
        follow_redirects=False,
    )


def test_the_page_is_dutch_and_follows_the_role(staff_login: StaffLogin) -> None:
    admin = staff_login("admin")
    page = admin.get("/admin/web/imports")
    assert page.status_code == 200
    assert "Pashouders overzetten met een CSV-bestand" in page.text
    assert "Saldi overzetten met een CSV-bestand" in page.text
    assert 'href="/admin/web/imports"' in admin.get("/admin").text
    issuer = staff_login("issuer")
    page = issuer.get("/admin/web/imports")
    assert 'id="holders-form"' not in page.text
    assert 'id="balances-form"' in page.text
    refused = _upload(issuer, "holders", HOLDERS)
    assert refused.status_code == 403  # type: ignore[attr-defined]
    assert staff_login("finance").get("/admin/web/imports").status_code == 403


def test_without_csrf_nothing_is_imported(staff_login: StaffLogin, runtime: Runtime) -> None:
    client = staff_login("admin")
    response = client.post(
        "/admin/web/imports/holders",
        data={"csrf": "wrong"},
        files={"file": ("oud.csv", HOLDERS, "text/csv")},
    )
    assert response.status_code == 403
    assert runtime.store.registry.find_pass("GR6100001") is None


def test_bad_lines_are_shown_by_line_and_column(staff_login: StaffLogin, runtime: Runtime) -> None:
    client = staff_login("admin")
    bad = HOLDERS + b"PAGE-3;Ina;Smit;1973-04-05;9712AB;GR6100001;x\n"
    response = _upload(client, "holders", bad)
    assert response.status_code == 422  # type: ignore[attr-defined]
    text = response.text  # type: ignore[attr-defined]
    assert "Problemen per regel (er is niets overgezet)" in text
    assert '<td class="num">4</td><td>pass_number</td>' in text
    assert '<td class="num">4</td><td>card_serial</td>' in text
    assert runtime.store.registry.find_pass("GR6100001") is None


def test_an_upload_runs_as_a_job_to_the_chain(staff_login: StaffLogin, runtime: Runtime) -> None:
    client = staff_login("admin")
    response = _upload(client, "holders", HOLDERS)
    assert response.status_code == 303, response.text  # type: ignore[attr-defined]
    job_path = response.headers["location"]  # type: ignore[attr-defined]
    assert job_path.startswith("/admin/web/jobs/")
    job_page = client.get(job_path)
    assert "Pashouders overzetten" in job_page.text
    deadline = time.monotonic() + 60
    while True:
        job = client.get(job_path + "/status").json()
        if job["status"] in ("done", "failed"):
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert job["status"] == "done", job
    assert job["result"]["encoding"] == "cp1252"
    record = runtime.store.registry.pass_by_number("GR6100001")
    state = runtime.client.pass_of(bytes.fromhex(record.pass_id[2:]))
    assert (state.registered, state.card_serial) == (True, 555)

    balances = _upload(
        client, "balances", b"external_reference,amount\nPAGE-1,700\n", scheme_id="1"
    )
    assert balances.status_code == 303, balances.text  # type: ignore[attr-defined]
    missing = _upload(client, "balances", b"external_reference,amount\nPAGE-2,700\n")
    assert missing.status_code == 422  # type: ignore[attr-defined]
    assert "Kies een CSV-bestand" in missing.text  # type: ignore[attr-defined]
