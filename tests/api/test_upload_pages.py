"""The refusals every CSV upload page shares (api/routes/admin_pages.py ``read_upload_form``,
``upload_missing``): a request over the size limit is a 413 page, a wrong CSRF token a 403
page, a form without its file the page again, 422, with the page's own Dutch message; nothing
is imported in each case."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from api.runtime import Runtime
from tests.api.conftest import StaffLogin, dev_settings, page_csrf

#: (page, form action, the fields besides the file, the page's message for a missing file).
PAGES = (
    ("/admin/web/issuance", "/admin/web/issuance", {"scheme_id": "1"}, "Kies een regeling"),
    ("/admin/web/imports", "/admin/web/imports/holders", {}, "Kies een CSV-bestand (en voor"),
    ("/admin/web/imports", "/admin/web/imports/balances", {"scheme_id": "1"}, "Kies een CSV"),
    ("/admin/web/merchants", "/admin/web/merchants/import", {}, "Kies een CSV-bestand."),
    ("/admin/web/postcodes", "/admin/web/postcodes", {}, "Kies een bestand"),
)
MULTIPART = "multipart/form-data; boundary=b"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    # The middleware's body limit is raised so that the pages' own limits answer; the import
    # page's limit is its least, 1 KiB.
    settings = dev_settings(
        tmp_path_factory.mktemp("upload-pages-var"),
        max_request_body_bytes=256 * 1024 * 1024,
        import_max_bytes=1024,
    )
    with Runtime.start(settings) as rt:
        yield rt


@pytest.mark.parametrize(("page", "action", "fields", "missing"), PAGES)
def test_upload_refusals(
    staff_login: StaffLogin, page: str, action: str, fields: dict[str, str], missing: str
) -> None:
    client = staff_login("admin")
    csrf = page_csrf(client.get(page).text)
    no_file = client.post(action, data={"csrf": csrf, **fields})
    assert no_file.status_code == 422, no_file.text
    assert missing in no_file.text
    wrong_csrf = client.post(
        action, data={"csrf": "wrong", **fields}, files={"file": ("a.csv", b"x\n", "text/csv")}
    )
    assert wrong_csrf.status_code == 403
    too_large = client.post(
        action,
        content=b"x",
        headers={"content-length": str(200 * 1024 * 1024), "content-type": MULTIPART},
    )
    assert too_large.status_code == 413
    assert "Het bestand is te groot" in too_large.text


def test_postcodes_without_a_file_name_is_no_file(staff_login: StaffLogin) -> None:
    client = staff_login("admin")
    csrf = page_csrf(client.get("/admin/web/postcodes").text)
    unnamed = client.post(
        "/admin/web/postcodes",
        data={"csrf": csrf},
        files={"file": ("", b"pc6;wijkcode;wijknaam\n9711AA;WK001400;Centrum\n", "text/csv")},
    )
    assert unnamed.status_code == 422
    assert "Kies een bestand" in unnamed.text


def test_an_import_over_its_limit_is_refused_once_read(
    staff_login: StaffLogin, runtime: Runtime
) -> None:
    client = staff_login("admin")
    csrf = page_csrf(client.get("/admin/web/imports").text)
    rows = "".join(f"OUD-{n};Naam;Achternaam;1980-01-01;9712AB;GR70{n:05d};\n" for n in range(40))
    data = (
        "external_reference;first_name;last_name;birth_date;postcode;pass_number;card_serial\n"
        + rows
    ).encode()
    assert len(data) > runtime.settings.import_max_bytes
    refused = client.post(
        "/admin/web/imports/holders",
        data={"csrf": csrf},
        files={"file": ("oud.csv", data, "text/csv")},
    )
    assert refused.status_code == 413
    assert "Het bestand is te groot" in refused.text
    assert runtime.store.registry.find_pass("GR7000000") is None
