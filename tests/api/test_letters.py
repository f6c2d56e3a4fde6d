"""Activation letters through the API on a real runtime (anvil, SQLite): the job, the one-time
downloads, the PDF read as a person would (rendered with pdfium, its text and its card QR read
back with zbarimg), the CSV, the codes working end to end at ``POST /auth/token`` and the
previous ones refused; bad selections; the postcode import; the admin pages; the CLI."""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.cli import app as cli_app
from api.main import create_app
from api.runtime import Runtime
from ledger import activation as act
from tests.api.conftest import admin, dev_settings
from wallet import decode_token_uri
from wallet.verify import verify_pass_token

FIRST, LAST = "Ëlisabeth-Maria", "van der Heijden-IJsbrandtsz Straße de la Fontaine-Őrsi"
LONG_NAME = f"{FIRST} {LAST}"


@pytest.fixture(scope="module")
def runtime(
    module_database: str | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runtime]:
    """A runtime of this module's own (SQLite, then PostgreSQL): letters renew the demo passes'
    codes and these tests enrol holders, which other modules' shared runtime must not see."""
    settings = dev_settings(tmp_path_factory.mktemp("letters-var"), database_url=module_database)
    with Runtime.start(settings) as rt:
        yield rt


@pytest.fixture(scope="module")
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime.settings, runtime), raise_server_exceptions=False) as tc:
        yield tc


DIACRITIC_STREET = "Oude Ebbingestraat 12-Ë bis"


def _enrol(
    runtime: Runtime, first: str, last: str, postcode: str, *, street: str | None = "Vismarkt 1"
) -> int:
    registry = runtime.store.registry
    holder = registry.enrol_holder(
        first_name=first, last_name=last, birth_date="1975-06-07", postcode=postcode
    )
    assert holder.id is not None
    if street is not None:
        act.set_address(runtime.store.registry, holder.id, street=street, town="Groningen")
    return holder.id


def _issue(client: TestClient, holder_id: int) -> str:
    """A pass registered on chain through the API (its first code is thrown away)."""
    response = client.post(f"/admin/holders/{holder_id}/passes", json={}, headers=admin(client))
    assert response.status_code == 201, response.text
    return str(response.json()["pass_number"])


def _letters(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/admin/letters", json=body, headers=admin(client))
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    for _ in range(600):
        job = client.get(f"/admin/jobs/{job_id}", headers=admin(client)).json()
        if job["status"] in ("done", "failed"):
            assert job["status"] == "done", job
            assert job["kind"] == "letters"
            return dict(job["result"])
        time.sleep(0.1)
    raise AssertionError("the letters job did not finish")


def _download(client: TestClient, path: str) -> bytes:
    response = client.get(path, headers=admin(client))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return response.content


def _pages(pdf: bytes) -> list[str]:
    doc = pdfium.PdfDocument(pdf)
    try:
        texts = []
        for page in doc:
            width, height = page.get_size()
            assert (round(width), round(height)) == (595, 842)  # A4 in points
            texts.append(page.get_textpage().get_text_range())
        return texts
    finally:
        doc.close()


def _login(client: TestClient, number: str, code: str) -> int:
    body = {"kind": "holder", "username": number, "password": code}
    return client.post("/auth/token", json=body).status_code


def test_letters_for_a_list_of_passes_end_to_end(client: TestClient, runtime: Runtime) -> None:
    holders = [
        _enrol(runtime, FIRST, LAST, "9711AA", street=DIACRITIC_STREET),
        _enrol(runtime, "Piet", "de Jong", "9721AB"),
        _enrol(runtime, "=HYPERLINK(1)", "Bakker", "9717EA"),
    ]
    numbers = [_issue(client, h) for h in holders]

    result = _letters(client, {"selection": {"kind": "passes", "pass_numbers": numbers}})

    assert result["letters"] == 3
    assert result["skipped"] == []
    assert result["pdf"] == f"/admin/letters/{result['batch']}.pdf"
    pdf = _download(client, result["pdf"])
    rows = list(csv.DictReader(io.StringIO(_download(client, result["csv"]).decode())))
    # each file is served once
    again = client.get(result["pdf"], headers=admin(client))
    assert again.status_code == 404
    assert again.json()["code"] == "letters_unknown"

    pages = _pages(pdf)
    assert len(pages) == 3  # exactly one letter per pass
    codes = {row["pasnummer"]: row["activeringscode"] for row in rows}
    assert sorted(codes) == sorted(numbers)
    for number, page in zip(sorted(numbers), pages, strict=True):
        assert number in page
        assert codes[number] in page
        assert "Activeringscode".lower() in page.lower()
        assert runtime.settings.holder_login_url in page
    first = pages[sorted(numbers).index(numbers[0])]
    flat = " ".join(first.split())
    # the long name wraps in the address window instead of being cut; the font lacks Ő, which
    # is printed as O (never an empty box), the CSV keeps it exactly
    assert "Ëlisabeth-Maria van der Heijden-IJsbrandtsz Straße de la Fontaine-Orsi" in flat
    assert DIACRITIC_STREET in first
    assert "9711 AA GRONINGEN" in flat
    assert "Gemeente Groningen" in first
    by_number = {row["pasnummer"]: row for row in rows}
    assert by_number[numbers[0]]["naam"] == LONG_NAME
    assert by_number[numbers[0]]["postcode"] == "9711 AA"
    assert by_number[numbers[2]]["naam"] == "'=HYPERLINK(1) Bakker"  # no formula in a sheet

    # the codes work at the holder login; renewing them refuses the old ones
    for number in numbers:
        assert _login(client, number, codes[number].lower().replace("-", "")) == 200
    renewed = _letters(client, {"selection": {"kind": "passes", "pass_numbers": numbers[:1]}})
    new_rows = list(csv.DictReader(io.StringIO(_download(client, renewed["csv"]).decode())))
    assert _login(client, numbers[0], codes[numbers[0]]) == 401
    assert _login(client, numbers[0], new_rows[0]["activeringscode"]) == 200
    assert _login(client, numbers[1], codes[numbers[1]]) == 200  # not renewed


def test_letters_with_the_printed_cards_qr(client: TestClient, runtime: Runtime) -> None:
    holder = _enrol(runtime, "Kaart", "Houder", "9715AB")
    without = _enrol(runtime, "Geen", "Kaart", "9715AB")
    number, other = _issue(client, holder), _issue(client, without)
    card = client.post(f"/admin/passes/{number}/cards", headers=admin(client))
    assert card.status_code == 201, card.text
    token_uri = card.json()["token_uri"]

    result = _letters(
        client,
        {"selection": {"kind": "passes", "pass_numbers": [number, other]}, "with_card_qr": True},
    )

    assert result["without_card"] == [other]
    rows = list(csv.DictReader(io.StringIO(_download(client, result["csv"]).decode())))
    assert {r["pasnummer"]: r["kaart_token"] for r in rows} == {number: token_uri, other: ""}
    pdf = _download(client, result["pdf"])
    # the card was not re-issued: its serial is still the active one
    active = runtime.store.registry.active_card(number)
    assert active is not None
    assert active.serial == card.json()["serial"]

    zbarimg = shutil.which("zbarimg")
    assert zbarimg is not None, "zbar-tools is in the Makefile's APT_PACKAGES"
    doc = pdfium.PdfDocument(pdf)
    try:
        page_index = 0 if number < other else 1
        image = doc[page_index].render(scale=3).to_pil()
        path = Path(runtime.settings.var_dir) / "letter-page.png"
        image.save(path)
    finally:
        doc.close()
    decoded = subprocess.run(
        [zbarimg, "--quiet", "--raw", "-Sdisable", "-Sqrcode.enable", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert decoded == [token_uri]
    verified = verify_pass_token(
        decode_token_uri(decoded[0]),
        expected_domain=runtime.domain,
        now=int(time.time()),
        allowed_signers={runtime.keys.pass_signer.address},
        max_lifetime_s=None,
    )
    assert verified.token.serial == card.json()["serial"]


def _problem(client: TestClient, body: dict[str, Any], status: int, code: str) -> str:
    response = client.post("/admin/letters", json=body, headers=admin(client))
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    return str(response.json()["detail"])


def test_bad_selections_change_nothing(client: TestClient, runtime: Runtime) -> None:
    blocked = _enrol(runtime, "Geblokkeerd", "Persoon", "9716AD")
    homeless = _enrol(runtime, "Zonder", "Adres", "9716AD", street=None)
    numbers = [_issue(client, blocked), _issue(client, homeless)]
    response = client.post(f"/admin/passes/{numbers[0]}/block", headers=admin(client))
    assert response.status_code == 200, response.text
    registry = runtime.store.registry
    hashes = {n: registry.pass_by_number(n).activation_code_hash for n in numbers}

    detail = _problem(
        client,
        {"selection": {"kind": "district", "district": "WK999999"}},
        422,
        "district_unknown",
    )
    assert "WK999999" in detail
    _problem(client, {"selection": {"kind": "passes", "pass_numbers": []}}, 422, "selection_empty")
    assert "GR8888888" in _problem(
        client,
        {"selection": {"kind": "passes", "pass_numbers": [numbers[0], "GR8888888"]}},
        422,
        "selection_unknown",
    )
    # every pass skipped: blocked, and no address
    assert "blocked, no_address" in _problem(
        client, {"selection": {"kind": "passes", "pass_numbers": numbers}}, 422, "selection_empty"
    )
    _problem(client, {"selection": {"kind": "everyone"}}, 422, "validation_failed")
    assert {n: registry.pass_by_number(n).activation_code_hash for n in numbers} == hashes

    # in a district, they are reported and skipped, the others get their letter
    result = _letters(client, {"selection": {"kind": "district", "district": "WK001403"}})
    skipped = {(s["pass_number"], s["reason"]) for s in result["skipped"]}
    assert {(numbers[0], "blocked"), (numbers[1], "no_address")} <= skipped
    assert {n: registry.pass_by_number(n).activation_code_hash for n in numbers} == hashes


def test_everyone_not_yet_activated(client: TestClient, runtime: Runtime) -> None:
    fresh = _enrol(runtime, "Nieuw", "Persoon", "9714AC")
    number = _issue(client, fresh)
    first = _letters(client, {"selection": {"kind": "not_activated"}})
    rows = list(csv.DictReader(io.StringIO(_download(client, first["csv"]).decode())))
    code = {r["pasnummer"]: r["activeringscode"] for r in rows}[number]
    assert len(_pages(_download(client, first["pdf"]))) == first["letters"] == len(rows)
    assert _login(client, number, code) == 200  # activates the pass

    second = _letters(client, {"selection": {"kind": "not_activated"}})
    again = list(csv.DictReader(io.StringIO(_download(client, second["csv"]).decode())))
    assert number not in {r["pasnummer"] for r in again}
    assert _login(client, number, code) == 200  # its code was not renewed


def test_postcode_import_through_the_api(client: TestClient, runtime: Runtime) -> None:
    holder = _enrol(runtime, "Verhuisd", "Persoon", "9718AP")
    number = _issue(client, holder)
    lines = ["PC6;Wijkcode;Wijknaam;Gemeentenaam"]
    lines += [f"{pc};WK001402;Oud-West;Groningen" for pc in ("9717EA", "9717KL")]
    keep = runtime.store.registry.postcodes()
    bad = "\r\n".join([*lines, "9717XX;WK00;Oud-West;Groningen"]).encode("cp1252")
    refused = client.post(
        "/admin/postcodes", files={"file": ("pc6.csv", bad)}, headers=admin(client)
    )
    assert refused.status_code == 422
    assert refused.json()["code"] == "csv_lines_invalid"
    assert refused.json()["errors"] == [
        {"line": 4, "message": "wijk code 'WK00' must be WK and 6 digits (WK001401)"}
    ]
    assert runtime.store.registry.postcodes() == keep

    # a full table for Groningen: every sample postcode but 9718AP
    table = [
        f"{pc};{code};Wijk {code};Groningen" for pc, code in sorted(keep.items()) if pc != "9718AP"
    ]
    body = "\r\n".join(["PC6;Wijkcode;Wijknaam;Gemeentenaam", *table])
    done = client.post(
        "/admin/postcodes", files={"file": ("pc6.csv", body.encode())}, headers=admin(client)
    )
    assert done.status_code == 200, done.text
    out = done.json()
    assert out["postcodes"] == len(keep) - 1
    assert {"holder_id": holder, "postcode": "9718AP", "pass_numbers": [number]} in out["unknown"]
    assert out["unknown_count"] == len(out["unknown"])
    assert runtime.store.registry.holder(holder).district_code is None
    # put the sample back for the other tests
    runtime.store.registry.load_sample_geography()
    from ledger.geography import rederive_districts

    rederive_districts(runtime.store.registry)
    assert runtime.store.registry.holder(holder).district_code == "WK001402"


CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


def _page_login(runtime: Runtime) -> TestClient:
    from api.auth import DEV_STAFF

    client = TestClient(create_app(runtime.settings, runtime), raise_server_exceptions=False)
    page = client.get("/admin/login?lang=nl")
    match = CSRF.search(page.text)
    assert match is not None
    response = client.post(
        "/admin/login",
        data={"username": "admin", "password": DEV_STAFF["admin"][1], "csrf": match.group(1)},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return client


def test_admin_pages_produce_and_download_letters(runtime: Runtime, client: TestClient) -> None:
    holder = _enrol(runtime, "Pagina", "Gebruiker", "9722AA")
    number = _issue(client, holder)
    browser = _page_login(runtime)
    page = browser.get("/admin/web/letters")
    assert page.status_code == 200
    assert "Activeringsbrieven" in page.text
    assert 'href="/admin/web/letters"' in page.text  # in the navigation
    csrf = CSRF.search(page.text)
    assert csrf is not None
    refused = browser.post(
        "/admin/web/letters",
        data={"csrf": csrf.group(1), "kind": "district", "district": "WK999999"},
    )
    assert refused.status_code == 422
    assert "district_unknown" in refused.text
    started = browser.post(
        "/admin/web/letters",
        data={"csrf": csrf.group(1), "kind": "passes", "pass_numbers": f"{number}\n"},
        follow_redirects=False,
    )
    assert started.status_code == 303, started.text
    job_page = started.headers["location"]
    for _ in range(300):
        shown = browser.get(job_page)
        if 'id="letters-done"' in shown.text:
            break
        assert 'http-equiv="refresh"' in shown.text
        time.sleep(0.1)
    link = re.search(r'href="(/admin/web/letters/[^"]+\.pdf)"', shown.text)
    assert link is not None
    pdf = browser.get(link.group(1))
    assert pdf.status_code == 200
    assert pdf.headers["content-type"] == "application/pdf"
    assert number in _pages(pdf.content)[0]
    gone = browser.get(link.group(1))
    assert gone.status_code == 404
    assert "al gedownload" in gone.text

    postcodes = browser.get("/admin/web/postcodes")
    assert postcodes.status_code == 200
    assert "Postcodes en wijken" in postcodes.text
    csrf = CSRF.search(postcodes.text)
    assert csrf is not None
    bad = browser.post(
        "/admin/web/postcodes",
        data={"csrf": csrf.group(1)},
        files={"file": ("pc6.csv", b"pc6;wijkcode;wijknaam\n9711AA;XX;Centrum\n")},
    )
    assert bad.status_code == 422
    assert "must be WK and 6 digits" in bad.text
    assert 'id="line-errors"' in bad.text


def test_cli_letters_use_the_services_key(
    client: TestClient, runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder = _enrol(runtime, "Opdracht", "Regel", "9723BC")
    number = _issue(client, holder)
    monkeypatch.setenv("STADJERSPAS_DATABASE_URL", runtime.settings.sqlalchemy_url)
    out, csv_path = tmp_path / "letters.pdf", tmp_path / "letters.csv"
    runner = CliRunner()
    done = runner.invoke(
        cli_app,
        ["letters", "--passes", number, "--out", str(out), "--csv", str(csv_path)],
    )
    assert done.exit_code == 0, done.output
    assert "1 letters written" in done.output
    assert out.stat().st_mode & 0o777 == 0o600
    assert len(_pages(out.read_bytes())) == 1
    code = next(csv.DictReader(io.StringIO(csv_path.read_text())))["activeringscode"]
    assert _login(client, number, code) == 200  # the CLI and the service share the key

    unknown = runner.invoke(cli_app, ["letters", "--district", "WK999999", "--out", str(out)])
    assert unknown.exit_code == 2
    assert "WK999999" in unknown.output
    both = runner.invoke(
        cli_app, ["letters", "--district", "WK001400", "--not-activated", "--out", str(out)]
    )
    assert both.exit_code == 2

    table = tmp_path / "pc6.csv"
    table.write_bytes(b"pc6;wijkcode;wijknaam\n9711AA;WK0014;Centrum\n")
    refused = runner.invoke(cli_app, ["import", "postcodes", str(table)])
    assert refused.exit_code == 2
    assert "line 2" in refused.output


def test_card_qr_codes_from_the_process_pool_equal_the_ones_made_here() -> None:
    from api.letters import _QR_MASK, QR_POOL_FROM, qr_matrices
    from wallet.qr import qr_matrix

    tokens = [f"stadjerspas:1:{n:04d}" + "Q" * 150 for n in range(QR_POOL_FROM)]
    pooled = qr_matrices(tokens)
    assert len(pooled) == len(tokens)
    for index in (0, 1, len(tokens) // 2, len(tokens) - 1):
        assert pooled[index] == qr_matrix(tokens[index], mask_pattern=_QR_MASK)


def test_holders_enrolled_through_the_api_carry_their_address(client: TestClient) -> None:
    body = {
        "first_name": "Adres",
        "last_name": "Houder",
        "birth_date": "1966-06-06",
        "postcode": "9713 EA",
        "street": "  Zuiderdiep   24 ",
        "town": "Groningen",
    }
    half = client.post("/admin/holders", json={**body, "town": None}, headers=admin(client))
    assert half.status_code == 422
    assert half.json()["code"] == "holder_invalid"
    controls = client.post(
        "/admin/holders", json={**body, "street": "Zuiderdiep\x0724"}, headers=admin(client)
    )
    assert controls.status_code == 422
    assert controls.json()["code"] == "holder_invalid"
    assert "control characters" in controls.json()["detail"]
    enrolled = client.post("/admin/holders", json=body, headers=admin(client))
    assert enrolled.status_code == 201, enrolled.text
    assert (enrolled.json()["street"], enrolled.json()["town"]) == ("Zuiderdiep 24", "Groningen")
    number = _issue(client, enrolled.json()["id"])
    result = _letters(
        client, {"selection": {"kind": "holders", "holder_ids": [enrolled.json()["id"]]}}
    )
    page = _pages(_download(client, result["pdf"]))[0]
    assert "Zuiderdiep 24" in page
    assert number in page
