"""CSV injection through the service: a merchant registered with a formula as its name comes
out of every CSV report (the report API and the admin pages' download) as text, escaped with a
leading quote (ledger/csv_safe.py); the JSON rendering keeps the name exactly."""

from __future__ import annotations

import csv
import io
import re
import warnings

from api.auth import DEV_STAFF
from tests.api.conftest import TestClient, logins  # type: ignore[attr-defined]

FORMULA = '=HYPERLINK("http://x")'
FIELD = re.compile(r'name="csrf" value="([0-9a-f]+)"')


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def _staff_page_client(client: TestClient, role: str) -> TestClient:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
        pages = TestClient(client.app, raise_server_exceptions=False)
    login = pages.get("/admin/login?lang=en")
    match = FIELD.search(login.text)
    assert match is not None
    response = pages.post(
        "/admin/login",
        data={"username": role, "password": DEV_STAFF[role][1], "csrf": match.group(1)},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return pages


def test_a_formula_name_is_escaped_in_every_csv_report(client: TestClient) -> None:
    created = client.post(
        "/admin/merchants",
        json={
            "name": FORMULA,
            "kvk_number": "87654321",
            "category": "sport",
            "iban": "NL91 ABNA 0417 1643 00",
        },
        headers=logins(client).staff("admin"),
    )
    assert created.status_code == 201, created.text
    assert created.json()["name"] == FORMULA  # stored as given
    address = created.json()["address"]  # the key the service created for the partner

    auditor = logins(client).staff("auditor")
    as_json = client.get("/admin/reports/merchants", headers=auditor).json()
    (exact,) = [row for row in as_json["rows"] if row["merchant"] == address]
    assert exact["name"] == FORMULA

    api_csv = client.get("/admin/reports/merchants?format=csv", headers=auditor)
    assert api_csv.status_code == 200
    assert api_csv.headers["content-type"].startswith("text/csv")
    pages = _staff_page_client(client, "auditor")
    try:
        page_csv = pages.get("/admin/web/reports/merchants.csv")
    finally:
        pages.close()
    assert page_csv.status_code == 200, page_csv.text
    assert page_csv.headers["content-type"].startswith("text/csv")
    for text in (api_csv.text, page_csv.text):
        rows = _rows(text)
        (row,) = [r for r in rows if r["merchant"] == address]
        assert row["name"] == "'" + FORMULA
        assert row["kvk_number"] == "87654321"
        assert row["owed"] == "0"
        # no cell of the file starts a formula
        assert not [cell for r in rows for cell in r.values() if cell and cell[0] in "=+@\t\r"]
        others = [r for r in rows if r["merchant"] != address and r["name"]]
        assert others
        assert all(not r["name"].startswith("'") for r in others)
