"""Admin registry API on a real anvil: holders (enrol, duplicates, erasure), passes (issue,
block, unblock), printed cards (replace revokes the old serial on chain, printable PNG),
schemes, CSV issuance and cohorts as jobs, scopes and refusals (nothing changed on refusal).

The module runs its own runtime (its own anvil and database), so the schemes, holders and
blocks it creates never meet the demo data the other API tests count on.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium  # type: ignore[import-untyped]
import pytest
from eth_account import Account
from PIL import Image
from pydantic import ValidationError
from pypdf import PdfReader
from reportlab.pdfbase.pdfmetrics import stringWidth

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from api import admin_services
from api.main import create_app
from api.runtime import Runtime
from api.settings import Settings
from tests.api.conftest import assert_problem as _problem
from tests.api.conftest import dev_settings, logins, merchant
from tests.api.conftest import holder_pass_id as _pid
from wallet import decode_token_uri, verify_pass_token
from wallet.qr import render_png

CENTRUM = ("9711AA", "WK001400")


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    rt = Runtime.start(dev_settings(tmp_path_factory.mktemp("admin-var")))
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture(scope="module")
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime.settings, runtime), raise_server_exceptions=False) as tc:
        yield tc


def _admin(client: TestClient) -> dict[str, str]:
    return logins(client).staff("admin")


def _issuer(client: TestClient) -> dict[str, str]:
    return logins(client).staff("issuer")


_counter = iter(range(1, 10_000))


def _enrol(
    client: TestClient, first_name: str = "Anna", *, postcode: str = CENTRUM[0], **extra: Any
) -> dict[str, Any]:
    body = {
        "first_name": first_name,
        "last_name": f"Test{next(_counter)}",
        "birth_date": "1980-05-17",
        "postcode": postcode,
        **extra,
    }
    response = client.post("/admin/holders", json=body, headers=_admin(client))
    assert response.status_code == 201, response.text
    out: dict[str, Any] = response.json()
    return out


def _new_pass(client: TestClient, first_name: str = "Anna", **extra: Any) -> tuple[int, str, str]:
    holder = _enrol(client, first_name, **extra)
    response = client.post(f"/admin/holders/{holder['id']}/passes", headers=_issuer(client))
    assert response.status_code == 201, response.text
    body = response.json()
    return holder["id"], body["pass_number"], body["activation_code"]


def _wait_job(client: TestClient, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/admin/jobs/{job_id}", headers=_issuer(client))
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        assert 0 <= job["done"] <= job["total"] or job["total"] == 0
        if job["status"] in {"done", "failed"}:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def _csv(client: TestClient, scheme_id: int, text: str) -> Any:
    return client.post(
        "/admin/entitlements/csv",
        data={"scheme_id": str(scheme_id)},
        files={"file": ("entitlements.csv", text.encode(), "text/csv")},
        headers=_issuer(client),
    )


def _fund(client: TestClient, pass_number: str, amount: int = 5_000) -> None:
    response = _csv(client, 1, f"pass_number,amount\n{pass_number},{amount}\n")
    assert response.status_code == 202, response.text
    assert _wait_job(client, response.json()["id"])["status"] == "done"


def _redeem(client: TestClient, token: str, amount: int, key: str) -> Any:
    return client.post(
        "/merchant/redemptions",
        json={"token": token, "scheme_id": 1, "amount": amount},
        headers=merchant(client, 1, key),
    )


# -- scopes -----------------------------------------------------------------------------------


def test_scopes_are_checked(client: TestClient) -> None:
    staff = logins(client).staff
    _problem(client.post("/admin/holders", json={}), 401, "unauthorized")
    _problem(
        client.post("/admin/holders", json={}, headers=staff("issuer")), 403, "insufficient_scope"
    )
    _problem(client.get("/admin/holders/1", headers=staff("finance")), 403, "insufficient_scope")
    _problem(client.delete("/admin/holders/1", headers=staff("auditor")), 403, "insufficient_scope")
    for path in (
        "/admin/holders/1/passes",
        "/admin/passes/GR0000001/block",
        "/admin/passes/GR0000001/unblock",
        "/admin/passes/GR0000001/cards",
        "/admin/schemes",
        "/admin/cohorts",
        "/admin/entitlements/csv",
    ):
        _problem(client.post(path, headers=staff("auditor")), 403, "insufficient_scope")
    for path in ("/admin/schemes", "/admin/jobs/x", "/admin/passes/GR0000001/card.png"):
        _problem(client.get(path, headers=staff("finance")), 403, "insufficient_scope")
    _problem(client.get("/admin/schemes", headers=merchant(client, 1)), 403, "wrong_principal_kind")
    assert client.get("/admin/passes/GR0000001/block").status_code == 405


# -- holders ----------------------------------------------------------------------------------


def test_enrol_flags_duplicate_and_sets_district(client: TestClient, runtime: Runtime) -> None:
    body = {"first_name": "Bram", "last_name": "Dubbel", "birth_date": "1990-01-02"}
    first = client.post(
        "/admin/holders", json={**body, "postcode": "9711 aa"}, headers=_admin(client)
    )
    assert first.status_code == 201, first.text
    assert first.json()["district_code"] == CENTRUM[1]
    assert first.json()["possible_duplicate"] is False
    second = client.post(
        "/admin/holders", json={**body, "postcode": "9711AA"}, headers=_admin(client)
    )
    assert second.status_code == 201, second.text
    assert second.json()["possible_duplicate"] is True
    assert second.json()["possible_duplicate_of"] == first.json()["id"]

    got = client.get(f"/admin/holders/{first.json()['id']}", headers=_admin(client))
    assert got.status_code == 200
    assert got.json()["last_name"] == "Dubbel"
    assert got.json()["passes"] == []


def test_enrol_refusals_change_nothing(client: TestClient, runtime: Runtime) -> None:
    before = runtime.store.registry.holder_count()
    good = {"first_name": "C", "last_name": "D", "birth_date": "1990-01-02", "postcode": "9711AA"}
    cases = [
        ({**good, "postcode": "12"}, "postcode_invalid"),
        ({**good, "postcode": "1011AB"}, "postcode_unknown"),
        ({**good, "birth_date": "2999-01-01"}, "holder_invalid"),
        ({**good, "birth_date": "not a date"}, "validation_failed"),
        ({**good, "first_name": ""}, "validation_failed"),
        ({**good, "extra": 1}, "validation_failed"),
        ({k: v for k, v in good.items() if k != "postcode"}, "validation_failed"),
        ({**good, "household_role": "boss"}, "validation_failed"),
    ]
    for body, code in cases:
        _problem(client.post("/admin/holders", json=body, headers=_admin(client)), 422, code)
    _problem(
        client.post("/admin/holders", content=b"{", headers=_admin(client)),
        422,
        "validation_failed",
    )
    assert runtime.store.registry.holder_count() == before


def test_unknown_ids(client: TestClient) -> None:
    _problem(client.get("/admin/holders/999999", headers=_admin(client)), 404, "holder_unknown")
    _problem(client.delete("/admin/holders/999999", headers=_admin(client)), 404, "holder_unknown")
    _problem(client.get("/admin/holders/abc", headers=_admin(client)), 422, "validation_failed")
    _problem(
        client.post("/admin/holders/999999/passes", headers=_issuer(client)), 404, "holder_unknown"
    )
    for action in ("block", "unblock", "cards"):
        _problem(
            client.post(f"/admin/passes/GR9999999/{action}", headers=_issuer(client)),
            404,
            "pass_number_unknown",
        )
    _problem(
        client.get("/admin/passes/GR9999999/card.png", headers=_issuer(client)),
        404,
        "pass_number_unknown",
    )
    _problem(client.get("/admin/jobs/nope", headers=_issuer(client)), 404, "job_unknown")


# -- households -------------------------------------------------------------------------------


def _household(client: TestClient, household_id: int) -> dict[str, Any]:
    response = client.get(f"/admin/households/{household_id}", headers=_admin(client))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_households_create_link_unlink_and_delete(client: TestClient, runtime: Runtime) -> None:
    created = client.post(
        "/admin/households", json={"reference": "  HH-API-1 "}, headers=_admin(client)
    )
    assert created.status_code == 201, created.text
    household = created.json()
    assert household["reference"] == "HH-API-1"
    assert household["members"] == []
    hid = household["id"]
    _problem(
        client.post("/admin/households", json={"reference": "HH-API-1"}, headers=_admin(client)),
        409,
        "household_reference_taken",
    )

    parent_id, parent_number, _ = _new_pass(client, "Petra")
    child = _enrol(client, "Kim", birth_date="2016-02-03")
    linked = client.put(
        f"/admin/households/{hid}/members/{parent_id}",
        json={"role": "parent"},
        headers=_admin(client),
    )
    assert linked.status_code == 200, linked.text
    linked = client.put(
        f"/admin/households/{hid}/members/{child['id']}",
        json={"role": "child"},
        headers=_admin(client),
    )
    assert linked.status_code == 200, linked.text
    members = {m["holder_id"]: m for m in linked.json()["members"]}
    assert members == {
        parent_id: {
            "holder_id": parent_id,
            "first_name": "Petra",
            "role": "parent",
            "pass_numbers": [parent_number],
        },
        child["id"]: {
            "holder_id": child["id"],
            "first_name": "Kim",
            "role": "child",
            "pass_numbers": [],
        },
    }
    text = linked.text
    assert "last_name" not in text
    assert "birth_date" not in text  # first names only
    holder = client.get(f"/admin/holders/{child['id']}", headers=_admin(client)).json()
    assert (holder["household_id"], holder["household_reference"], holder["household_role"]) == (
        hid,
        "HH-API-1",
        "child",
    )

    # changing the role is the same call (idempotent)
    again = client.put(
        f"/admin/households/{hid}/members/{child['id']}",
        json={"role": "other"},
        headers=_admin(client),
    )
    assert again.status_code == 200
    assert {m["holder_id"]: m["role"] for m in again.json()["members"]}[child["id"]] == "other"

    # a holder is in one household at a time
    other = client.post("/admin/households", json={"reference": "HH-API-2"}, headers=_admin(client))
    other_id = other.json()["id"]
    _problem(
        client.put(
            f"/admin/households/{other_id}/members/{parent_id}",
            json={"role": "parent"},
            headers=_admin(client),
        ),
        409,
        "holder_in_other_household",
    )
    assert _household(client, other_id)["members"] == []

    # the listing pages through all households with their members
    listed = client.get("/admin/households?limit=1000", headers=_admin(client))
    assert listed.status_code == 200, listed.text
    page = listed.json()
    assert page["total"] == runtime.store.registry.household_count()
    assert {h["id"]: len(h["members"]) for h in page["households"]}[hid] == 2
    one = client.get(
        f"/admin/households?limit=1&offset={page['total'] - 1}", headers=_admin(client)
    )
    assert [h["id"] for h in one.json()["households"]] == [page["households"][-1]["id"]]

    # a household with members is not deleted; unlink, then delete
    _problem(
        client.delete(f"/admin/households/{hid}", headers=_admin(client)),
        409,
        "household_not_empty",
    )
    assert len(_household(client, hid)["members"]) == 2
    _problem(
        client.delete(f"/admin/households/{other_id}/members/{parent_id}", headers=_admin(client)),
        404,
        "household_member_unknown",
    )
    for holder_id in (parent_id, child["id"]):
        out = client.delete(f"/admin/households/{hid}/members/{holder_id}", headers=_admin(client))
        assert out.status_code == 200, out.text
    assert _household(client, hid)["members"] == []
    unlinked = client.get(f"/admin/holders/{parent_id}", headers=_admin(client)).json()
    assert (unlinked["household_id"], unlinked["household_role"]) == (None, "other")
    assert client.delete(f"/admin/households/{hid}", headers=_admin(client)).status_code == 204
    _problem(
        client.get(f"/admin/households/{hid}", headers=_admin(client)), 404, "household_unknown"
    )


def test_household_refusals_change_nothing(client: TestClient, runtime: Runtime) -> None:
    household = client.post(
        "/admin/households", json={"reference": "HH-API-R"}, headers=_admin(client)
    ).json()
    hid = household["id"]
    holder = _enrol(client, "Rik")
    before = runtime.store.registry.household_count()
    for body in ({}, {"reference": ""}, {"reference": "x" * 65}, {"reference": "a", "extra": 1}):
        _problem(
            client.post("/admin/households", json=body, headers=_admin(client)),
            422,
            "validation_failed",
        )
    _problem(
        client.post("/admin/households", json={"reference": "   "}, headers=_admin(client)),
        422,
        "validation_failed",
    )
    member = f"/admin/households/{hid}/members/{holder['id']}"
    bodies: list[dict[str, Any]] = [{}, {"role": "boss"}, {"role": "child", "x": 1}, {"role": 3}]
    for body in bodies:
        _problem(client.put(member, json=body, headers=_admin(client)), 422, "validation_failed")
    _problem(
        client.put(
            f"/admin/households/999999/members/{holder['id']}",
            json={"role": "child"},
            headers=_admin(client),
        ),
        404,
        "household_unknown",
    )
    _problem(
        client.put(
            f"/admin/households/{hid}/members/999999",
            json={"role": "child"},
            headers=_admin(client),
        ),
        404,
        "holder_unknown",
    )
    _problem(
        client.delete(f"/admin/households/{hid}/members/999999", headers=_admin(client)),
        404,
        "holder_unknown",
    )
    _problem(
        client.delete(f"/admin/households/999999/members/{holder['id']}", headers=_admin(client)),
        404,
        "household_unknown",
    )
    _problem(
        client.delete("/admin/households/999999", headers=_admin(client)), 404, "household_unknown"
    )
    for query in ("limit=0", "limit=1001", "offset=-1", "limit=x"):
        _problem(
            client.get(f"/admin/households?{query}", headers=_admin(client)),
            422,
            "validation_failed",
        )
    assert runtime.store.registry.household_count() == before
    assert _household(client, hid)["members"] == []
    assert runtime.store.registry.holder(holder["id"]).household_id is None


# -- passes, blocking, cards ------------------------------------------------------------------


def test_issue_pass_registers_on_chain_and_activation_code_logs_in(
    client: TestClient, runtime: Runtime
) -> None:
    holder_id, number, code = _new_pass(client, "Daan")
    assert code
    assert runtime.client.pass_of(_pid(runtime, number)).registered
    got = client.get(f"/admin/holders/{holder_id}", headers=_admin(client)).json()
    assert [p["pass_number"] for p in got["passes"]] == [number]
    assert code not in client.get(f"/admin/holders/{holder_id}", headers=_admin(client)).text
    login = client.post(
        "/auth/token", json={"kind": "holder", "username": number, "password": code}
    )
    assert login.status_code == 200, login.text
    bad = client.post(
        f"/admin/holders/{holder_id}/passes",
        json={"holder_key": "0x123"},
        headers=_issuer(client),
    )
    _problem(bad, 422, "validation_failed")
    assert len(runtime.store.registry.passes_of(holder_id)) == 1


def test_block_refuses_redemption_and_unblock_restores(
    client: TestClient, runtime: Runtime
) -> None:
    _, number, _ = _new_pass(client, "Eva")
    _fund(client, number)
    card = client.post(f"/admin/passes/{number}/cards", headers=_issuer(client))
    assert card.status_code == 201, card.text
    token = card.json()["token_uri"]
    assert _redeem(client, token, 100, f"blk-{number}-1").status_code == 201

    blocked = client.post(f"/admin/passes/{number}/block", headers=_issuer(client))
    assert blocked.status_code == 200, blocked.text
    assert blocked.json()["blocked_on_chain"] is True
    assert blocked.json()["tx_hash"] is not None
    again = client.post(f"/admin/passes/{number}/block", headers=_issuer(client))
    assert again.status_code == 200
    assert again.json()["tx_hash"] is None
    scan = client.post("/merchant/scan", json={"token": token}, headers=merchant(client, 1))
    assert scan.status_code == 200
    assert scan.json()["status"] == "blocked"
    refused = _redeem(client, token, 100, f"blk-{number}-2")
    assert refused.status_code in {403, 409, 422}, refused.text
    assert refused.json()["code"] == "redemption_pass_blocked"
    _problem(
        client.post(f"/admin/passes/{number}/cards", headers=_issuer(client)), 409, "pass_blocked"
    )

    unblocked = client.post(f"/admin/passes/{number}/unblock", headers=_issuer(client))
    assert unblocked.status_code == 200
    assert unblocked.json()["blocked_on_chain"] is False
    assert _redeem(client, token, 100, f"blk-{number}-3").status_code == 201
    assert runtime.client.balance_of(1, _pid(runtime, number)) == 5_000 - 200


def test_replacing_a_card_revokes_the_old_serial(client: TestClient, runtime: Runtime) -> None:
    _, number, _ = _new_pass(client, "Femke")
    _fund(client, number)
    _problem(
        client.get(f"/admin/passes/{number}/card.png", headers=_issuer(client)),
        404,
        "card_unknown",
    )
    first = client.post(f"/admin/passes/{number}/cards", headers=_issuer(client)).json()
    old = decode_token_uri(first["token_uri"])
    assert old.token.serial == first["serial"] != 0
    assert old.token.expiry > time.time() + 4 * 365 * 86400
    assert runtime.client.pass_of(_pid(runtime, number)).card_serial == first["serial"]

    second = client.post(f"/admin/passes/{number}/cards", headers=_issuer(client))
    assert second.status_code == 201, second.text
    assert second.json()["serial"] != first["serial"]
    assert runtime.client.pass_of(_pid(runtime, number)).card_serial == second.json()["serial"]
    refused = _redeem(client, first["token_uri"], 100, f"card-{number}-1")
    assert refused.status_code in {409, 422}, refused.text
    assert refused.json()["code"] == "redemption_card_revoked"
    assert _redeem(client, second.json()["token_uri"], 100, f"card-{number}-2").status_code == 201

    # printing the card again re-issues it: a new serial, the card printed before is revoked
    png = client.get(f"/admin/passes/{number}/card.png", headers=_issuer(client))
    assert png.status_code == 200, png.text
    assert png.headers["content-type"] == "image/png"
    printed = runtime.client.pass_of(_pid(runtime, number)).card_serial
    assert printed not in {0, first["serial"], second.json()["serial"]}
    third = client.post(f"/admin/passes/{number}/cards", headers=_issuer(client)).json()
    assert runtime.client.pass_of(_pid(runtime, number)).card_serial == third["serial"]
    refused = _redeem(client, second.json()["token_uri"], 100, f"card-{number}-3")
    assert refused.json()["code"] == "redemption_card_revoked"
    card = Image.open(io.BytesIO(png.content)).convert("L")
    qr_side = Image.open(io.BytesIO(render_png(third["token_uri"]))).width
    assert card.width == qr_side
    assert card.height > qr_side
    text_area = card.crop((0, qr_side, card.width, card.height))
    assert text_area.getextrema()[0] == 0  # pass number and name are printed under it


def _zbar_png(path: Path) -> str:
    zbarimg = shutil.which("zbarimg")
    if zbarimg is None:
        pytest.skip("zbarimg not installed (apt-get install zbar-tools): cannot decode the QR")
    out = subprocess.run(
        [zbarimg, "--raw", "-q", "--nodbus", str(path)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_printable_card_pdf_decodes_to_the_card_token(
    client: TestClient, runtime: Runtime, tmp_path: Path
) -> None:
    holder_id, number, _ = _new_pass(client, "Zoë")
    _problem(
        client.get(f"/admin/passes/{number}/card.pdf", headers=_issuer(client)),
        404,
        "card_unknown",
    )
    _problem(
        client.get("/admin/passes/GR9999999/card.pdf", headers=_issuer(client)),
        404,
        "pass_number_unknown",
    )
    card = client.post(f"/admin/passes/{number}/cards", headers=_issuer(client))
    assert card.status_code == 201, card.text
    assert card.json()["card_pdf"] == f"/admin/passes/{number}/card.pdf"
    response = client.get(card.json()["card_pdf"], headers=_issuer(client))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/pdf"
    assert response.headers["cache-control"] == "no-store"
    assert response.content.startswith(b"%PDF-")

    # a valid PDF of one ID-1 page (85.6 x 54 mm) with the pass number and first name only
    reader = PdfReader(io.BytesIO(response.content))
    assert len(reader.pages) == 1
    page = reader.pages[0]
    width_mm = float(page.mediabox.width) * 25.4 / 72
    height_mm = float(page.mediabox.height) * 25.4 / 72
    assert (round(width_mm, 1), round(height_mm, 1)) == (85.6, 54.0)
    text = page.extract_text()
    assert number in text
    assert "Zoë" in text
    holder = runtime.store.registry.holder(holder_id)
    assert holder.last_name not in text
    assert "1980" not in text  # no birth date
    assert holder.postcode not in text

    # rendered at 300 dpi, an ordinary decoder reads the card's static token from it
    document = pdfium.PdfDocument(response.content)
    try:
        rendered = document[0].render(scale=300 / 72).to_pil().convert("L")
    finally:
        document.close()
    shot = tmp_path / "card.png"
    rendered.save(shot)
    decoded = _zbar_png(shot)
    signed = decode_token_uri(decoded)
    # printing re-issued the card: the printed serial is the pass's current one on chain
    current = runtime.client.pass_of(_pid(runtime, number)).card_serial
    assert current != card.json()["serial"]
    verified = verify_pass_token(
        signed,
        expected_domain=runtime.domain,
        now=int(time.time()),
        allowed_signers={runtime.keys.pass_signer.address},
        is_serial_revoked=lambda _pid, serial: serial != current,
    )
    assert verified.token.serial == current
    assert verified.token.amount_cap == runtime.settings.card_pin_limit
    assert verified.token.pass_id == _pid(runtime, number)

    # the code itself (the QR's dark modules, left of the text) is square and >= 30 mm wide:
    # a phone camera reads it from 30 cm
    px_per_mm = 300 / 25.4
    qr_area = rendered.crop((0, 0, int(49 * px_per_mm), rendered.height))
    dark = qr_area.point(lambda v: 255 if v < 128 else 0).getbbox()
    assert dark is not None
    left, top, right, bottom = dark
    assert (right - left) / px_per_mm >= 30
    assert abs((right - left) - (bottom - top)) <= 2
    assert left / px_per_mm >= 3 + 4 * 0.6  # a margin plus the white quiet zone


def test_card_text_always_fits_the_card() -> None:
    regular, _ = admin_services._card_fonts()
    for name, shortened in (("Zoë", False), ("Maximiliaan-Alexander", False), ("A" * 120, True)):
        text, size = admin_services._fit(name, regular, 11, 88)
        assert stringWidth(text, regular, size) <= 88
        assert size >= 6
        assert (text != name) is shortened
        assert text.endswith("…") is shortened


# -- erasure ----------------------------------------------------------------------------------


def test_erasure_makes_the_pass_number_unknown(client: TestClient, runtime: Runtime) -> None:
    holder_id, number, code = _new_pass(client, "Gijs")
    erased = client.delete(f"/admin/holders/{holder_id}", headers=_admin(client))
    assert erased.status_code == 200, erased.text
    assert erased.json()["passes"] == 1
    assert runtime.store.holder(number) is None
    _problem(
        client.get(f"/admin/holders/{holder_id}", headers=_admin(client)), 404, "holder_unknown"
    )
    _problem(
        client.post(f"/admin/passes/{number}/block", headers=_issuer(client)),
        404,
        "pass_number_unknown",
    )
    _problem(_csv(client, 1, f"pass_number,amount\n{number},100\n"), 422, "csv_lines_invalid")
    login = client.post(
        "/auth/token", json={"kind": "holder", "username": number, "password": code}
    )
    assert login.status_code == 401


# -- schemes ----------------------------------------------------------------------------------


def _scheme_body(runtime: Runtime, **overrides: Any) -> dict[str, Any]:
    now = int(runtime.w3.eth.get_block("latest")["timestamp"])
    body: dict[str, Any] = {
        "name": "Test budget",
        "kind": "budget",
        "valid_from": now - 60,
        "valid_until": now + 86_400,
        "budget_cap": 1_000_000,
        "open_to_all_merchants": True,
    }
    body.update(overrides)
    return body


def test_schemes_create_list_and_terms_refused(client: TestClient, runtime: Runtime) -> None:
    count = runtime.client.scheme_count()
    invalid: list[dict[str, Any]] = [
        {"kind": "uses"},
        {"kind": "budget", "unit_value": 5},
        {"kind": "discount"},
        {"kind": "discount", "discount_bps": 100, "discount_fixed": 50},
        {"kind": "budget", "discount_bps": 100},
        {"budget_cap": 0},
        {"valid_until": 1, "valid_from": 2},
        {"discount_bps": 10_001, "kind": "discount"},
        {"kind": "discount", "discount_bps": 2_500, "per_redemption_cap": 0},
    ]
    for overrides in invalid:
        response = client.post(
            "/admin/schemes", json=_scheme_body(runtime, **overrides), headers=_issuer(client)
        )
        _problem(response, 422, "scheme_terms_invalid")
    malformed: list[dict[str, Any]] = [
        {"kind": "gift"},
        {"budget_cap": -1},
        {"name": ""},
        {"valid_from": "x"},
    ]
    for overrides in malformed:
        response = client.post(
            "/admin/schemes", json=_scheme_body(runtime, **overrides), headers=_issuer(client)
        )
        _problem(response, 422, "validation_failed")
    _problem(
        client.post(
            "/admin/schemes",
            json=_scheme_body(runtime, allowed_merchants=[99]),
            headers=_issuer(client),
        ),
        404,
        "merchant_unknown",
    )
    assert runtime.client.scheme_count() == count

    created = client.post(
        "/admin/schemes",
        json=_scheme_body(
            runtime, name="Zwemmen", kind="uses", unit_value=350, allowed_merchants=[2]
        ),
        headers=_issuer(client),
    )
    assert created.status_code == 201, created.text
    scheme_id = created.json()["scheme_id"]
    assert scheme_id == count + 1
    assert created.json()["kind"] == "uses"
    assert created.json()["unit_value"] == 350
    assert runtime.client.contract.functions.isMerchantAllowed(
        scheme_id, runtime.keys.merchants[1].address
    ).call()
    listed = client.get("/admin/schemes", headers=_issuer(client))
    assert listed.status_code == 200
    assert {s["scheme_id"]: s["name"] for s in listed.json()}[scheme_id] == "Zwemmen"


# -- CSV issuance -----------------------------------------------------------------------------


def test_csv_with_bad_lines_issues_nothing(client: TestClient, runtime: Runtime) -> None:
    _, number, _ = _new_pass(client, "Hanna")
    pid = _pid(runtime, number)
    committed = runtime.client.scheme_of(1).committed
    text = (
        "pass_number,amount\n"
        f"{number},100\n"
        "GR9999999,100\n"
        f"{number.lower()},5\n"
        "GR0000001,-3\n"
        "GR0000002,abc\n"
        "GR0000003,0\n"
        "GR0000004\n"
    )
    body = _problem(_csv(client, 1, text), 422, "csv_lines_invalid")
    lines = {(e["line"], e["message"].split()[0]) for e in body["errors"]}
    assert {line for line, _ in lines} == {3, 4, 5, 6, 7, 8}
    assert runtime.client.balance_of(1, pid) == 0
    assert runtime.client.scheme_of(1).committed == committed

    _problem(_csv(client, 1, "number,amount\nGR0000001,1\n"), 422, "csv_invalid")
    _problem(_csv(client, 1, "pass_number,amount\n"), 422, "csv_empty")
    response = client.post(
        "/admin/entitlements/csv",
        data={"scheme_id": "1"},
        files={"file": ("x.csv", b"\xff\xfe\x00", "text/csv")},
        headers=_issuer(client),
    )
    _problem(response, 422, "csv_invalid")
    _problem(_csv(client, 999, f"pass_number,amount\n{number},1\n"), 404, "scheme_unknown")
    cap = runtime.client.scheme_of(1).terms.budget_cap
    _problem(
        _csv(client, 1, f"pass_number,amount\n{number},{cap}\n"), 409, "scheme_budget_exceeded"
    )
    missing = client.post(
        "/admin/entitlements/csv", data={"scheme_id": "1"}, headers=_issuer(client)
    )
    _problem(missing, 422, "validation_failed")
    assert runtime.client.balance_of(1, pid) == 0


def test_csv_job_issues_in_chunks_with_progress(
    client: TestClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin_services, "BATCH_SIZE", 20)
    numbers = [f"GR{i:07d}" for i in range(1, 51)]
    before = {n: runtime.client.balance_of(1, _pid(runtime, n)) for n in numbers}
    text = "pass_number,amount\r\n" + "".join(f"{n},{i + 1}\r\n" for i, n in enumerate(numbers))
    response = _csv(client, 1, text)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] in {"queued", "running", "done"}
    assert job["total"] == 50
    done = _wait_job(client, job["id"])
    assert done["status"] == "done", done
    assert done["done"] == done["total"] == 50
    assert done["problem"] is None
    assert len(done["result"]["transactions"]) == 3
    for i, n in enumerate(numbers):
        assert runtime.client.balance_of(1, _pid(runtime, n)) == before[n] + i + 1


# -- cohorts ----------------------------------------------------------------------------------


def test_cohort_by_age_and_district_is_claimable(client: TestClient, runtime: Runtime) -> None:
    scheme = client.post(
        "/admin/schemes", json=_scheme_body(runtime, name="Cohort"), headers=_issuer(client)
    ).json()
    scheme_id = scheme["scheme_id"]
    young = [
        _new_pass(client, "Kid", postcode="9711CE", birth_date="2015-06-01")[1] for _ in range(3)
    ]
    criteria = {
        "scheme_id": scheme_id,
        "amount": 2_500,
        "min_age": 4,
        "max_age": 17,
        "age_at": "2026-01-01",
        "district_codes": [CENTRUM[1]],
    }
    response = client.post("/admin/cohorts", json=criteria, headers=_issuer(client))
    assert response.status_code == 202, response.text
    job = _wait_job(client, response.json()["id"])
    assert job["status"] == "done", job
    result = job["result"]
    assert result["holder_count"] >= 3
    assert result["total_amount"] == 2_500 * result["holder_count"]
    assert runtime.client.scheme_of(scheme_id).committed == result["total_amount"]

    root = bytes.fromhex(result["root"][2:])
    stored = admin_services.load_cohort(runtime, root)
    assert stored is not None
    assert stored["holder_count"] == result["holder_count"]
    leaves = {leaf["pass_id"]: leaf for leaf in stored["leaves"]}
    pid = _pid(runtime, young[0])
    leaf = leaves["0x" + pid.hex()]
    claim = (
        root,
        leaf["index"],
        pid,
        leaf["amount"],
        [bytes.fromhex(p[2:]) for p in leaf["proof"]],
    )
    runtime.transact(runtime.admin(), "claim", claim)
    assert runtime.client.balance_of(scheme_id, pid) == 2_500

    # the same cohort again is refused on chain inside the job: the job fails with a problem
    again = client.post("/admin/cohorts", json=criteria, headers=_issuer(client))
    assert again.status_code == 202
    failed = _wait_job(client, again.json()["id"])
    assert failed["status"] == "failed"
    assert failed["problem"]["code"] == "cohort_exists"


def test_cohort_refusals(client: TestClient, runtime: Runtime) -> None:
    base = {"scheme_id": 1, "amount": 100}
    _problem(
        client.post("/admin/cohorts", json=base, headers=_issuer(client)),
        422,
        "cohort_criteria_missing",
    )
    _problem(
        client.post(
            "/admin/cohorts", json={**base, "min_age": 50, "max_age": 10}, headers=_issuer(client)
        ),
        422,
        "cohort_criteria_invalid",
    )
    _problem(
        client.post(
            "/admin/cohorts", json={**base, "district_codes": ["XX99"]}, headers=_issuer(client)
        ),
        422,
        "district_unknown",
    )
    _problem(
        client.post("/admin/cohorts", json={**base, "min_age": 149}, headers=_issuer(client)),
        422,
        "cohort_empty",
    )
    _problem(
        client.post(
            "/admin/cohorts", json={**base, "scheme_id": 999, "min_age": 0}, headers=_issuer(client)
        ),
        404,
        "scheme_unknown",
    )
    _problem(
        client.post("/admin/cohorts", json={**base, "amount": 0}, headers=_issuer(client)),
        422,
        "validation_failed",
    )


# -- merchants and audit ----------------------------------------------------------------------


def test_register_merchant_validates_and_grants_the_role(
    client: TestClient, runtime: Runtime
) -> None:
    body = {
        "name": "Sportclub Be Quick",
        "kvk_number": "01012345",
        "category": "sport",
        "iban": "NL91 ABNA 0417 1643 00",
    }
    count = len(runtime.store.registry.merchants())
    keys = len(runtime.keystore.load())
    for overrides, status, code in (
        ({"iban": "NL00 ABNA 0417 1643 00"}, 422, "iban_invalid"),
        ({"kvk_number": "12"}, 422, "kvk_invalid"),
        # the partner supplies no address: the service creates its key
        ({"address": Account.create().address}, 422, "validation_failed"),
    ):
        response = client.post(
            "/admin/merchants", json={**body, **overrides}, headers=_admin(client)
        )
        _problem(response, status, code)
    _problem(
        client.post("/admin/merchants", json=body, headers=_issuer(client)),
        403,
        "insufficient_scope",
    )
    assert len(runtime.store.registry.merchants()) == count
    assert len(runtime.keystore.load()) == keys  # a refused enrolment keeps no key

    created = client.post("/admin/merchants", json=body, headers=_admin(client))
    assert created.status_code == 201, created.text
    assert created.json()["iban"] == "NL91ABNA0417164300"
    assert created.json()["merchant_role"] is True
    address = created.json()["address"]
    assert runtime.client.has_role("merchant", address)
    assert address in runtime.keystore.load()
    listed = client.get("/admin/merchants", headers=_admin(client)).json()
    assert created.json()["id"] in {m["id"] for m in listed}


def test_merchant_location_set_listed_and_cleared(client: TestClient, runtime: Runtime) -> None:
    location = {
        "street": "Kraneweg  90",
        "postcode": "9718jn",
        "town": "Groningen",
        "website": "https://noorderbad.example",
        "opening_hours": "ma-vr 7:00-21:00\nza-zo 9:00-17:00",
    }
    body = {"name": "Zwembad De Parrel", "kvk_number": "01012346"}
    body |= {"category": "sport"}
    count = len(runtime.store.registry.merchants())
    # a bad location refuses the whole registration: no merchant, no role
    for bad, status, code in (
        ({"postcode": "97 18"}, 422, "postcode_invalid"),
        ({"website": "javascript:alert(1)"}, 422, "location_invalid"),
        ({"street": " "}, 422, "validation_failed"),
        ({"town": None}, 422, "validation_failed"),
        ({"country": "NL"}, 422, "validation_failed"),
    ):
        response = client.post(
            "/admin/merchants",
            json={**body, "location": {**location, **bad}},
            headers=_admin(client),
        )
        _problem(response, status, code)
    assert len(runtime.store.registry.merchants()) == count

    created = client.post(
        "/admin/merchants", json={**body, "location": location}, headers=_admin(client)
    )
    assert created.status_code == 201, created.text
    merchant_id = created.json()["id"]
    expected = location | {"street": "Kraneweg 90", "postcode": "9718 JN"}
    assert created.json()["location"] == expected

    path = f"/admin/merchants/{merchant_id}/location"
    new = {"street": "Helperzoom 3", "postcode": "9722 BZ", "town": "Groningen"}
    refusals: tuple[tuple[dict[str, object], int, str], ...] = (
        ({"postcode": "0718 JN"}, 422, "postcode_invalid"),
        ({"postcode": "9718"}, 422, "postcode_invalid"),
        ({"postcode": 9718}, 422, "validation_failed"),
        ({"website": "https://a b"}, 422, "location_invalid"),
        ({"opening_hours": "\n".join(["ma"] * 11)}, 422, "location_invalid"),
        ({"opening_hours": "x" * 501}, 422, "validation_failed"),
        ({"street": "Straat\u00071"}, 422, "location_invalid"),
        ({"town": "t" * 101}, 422, "validation_failed"),
    )
    for change, status, code in refusals:
        _problem(client.put(path, json={**new, **change}, headers=_admin(client)), status, code)
    _problem(client.put(path, json=[new], headers=_admin(client)), 422, "validation_failed")
    _problem(client.put(path, content=b"{", headers=_admin(client)), 422, "validation_failed")
    _problem(client.put(path, json=new, headers=_issuer(client)), 403, "insufficient_scope")
    _problem(client.delete(path, headers=_issuer(client)), 403, "insufficient_scope")
    _problem(
        client.put("/admin/merchants/999999/location", json=new, headers=_admin(client)),
        404,
        "merchant_unknown",
    )
    listed = {m["id"]: m for m in client.get("/admin/merchants", headers=_admin(client)).json()}
    assert listed[merchant_id]["location"] == expected  # nothing changed by the refusals

    updated = client.put(path, json=new, headers=_admin(client))
    assert updated.status_code == 200, updated.text
    assert updated.json()["location"] == new | {"website": None, "opening_hours": None}
    row = runtime.store.registry.merchant(merchant_id)
    assert (row.street, row.postcode, row.town, row.website) == (
        "Helperzoom 3",
        "9722BZ",
        "Groningen",
        None,
    )
    cleared = client.delete(path, headers=_admin(client))
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["location"] is None
    listed = {m["id"]: m for m in client.get("/admin/merchants", headers=_admin(client)).json()}
    assert listed[merchant_id]["location"] is None
    assert runtime.store.registry.merchant(merchant_id).street is None


def test_audit_returns_differences(client: TestClient, runtime: Runtime) -> None:
    auditor = logins(client).staff("auditor")
    _problem(client.post("/admin/audit", headers=_issuer(client)), 403, "insufficient_scope")
    _problem(
        client.post("/admin/audit", json={"to_block": 10**9}, headers=auditor),
        422,
        "block_out_of_range",
    )
    response = client.post("/admin/audit", json={"compare_reports": False}, headers=auditor)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["contract"].lower() == runtime.client.address.lower()
    assert body["events"] > 0
    assert isinstance(body["differences"], list)
    assert body["ok"] is (not body["differences"])


# -- payouts ----------------------------------------------------------------------------------


def test_payout_run_pain001_and_confirm(client: TestClient, runtime: Runtime) -> None:
    finance = logins(client).staff("finance")
    _, number, _ = _new_pass(client, "Iris")
    _fund(client, number)
    card = client.post(f"/admin/passes/{number}/cards", headers=_issuer(client)).json()
    assert _redeem(client, card["token_uri"], 700, f"pay-{number}").status_code == 201
    deadline = time.monotonic() + 20
    while runtime.index_lag() != 0:
        assert time.monotonic() < deadline, "the index did not catch up"
        time.sleep(0.1)
    time.sleep(0.3)  # the indexer commits the block it has reached

    _problem(
        client.post("/admin/payouts", json={"period": "2026-13"}, headers=finance),
        422,
        "period_invalid",
    )
    _problem(
        client.post(
            "/admin/payouts",
            json={"period": "2020-01", "debtor": {"name": "x", "iban": "NL00XXXX"}},
            headers=finance,
        ),
        422,
        "debtor_invalid",
    )
    _problem(
        client.post("/admin/payouts", json={"period": "2026-11"}, headers=_issuer(client)),
        403,
        "insufficient_scope",
    )
    today = datetime.now(UTC).date()
    period = f"{today - timedelta(days=1)}..{today + timedelta(days=1)}"
    created = client.post("/admin/payouts", json={"period": period}, headers=finance)
    assert created.status_code == 201, created.text
    run = created.json()
    assert run["status"] == "pending"
    merchant_one = runtime.keys.merchants[0].address
    included = {line["merchant"].lower(): line for line in run["lines"]}
    assert included[merchant_one.lower()]["amount"] >= 700
    assert run["total"] == sum(ln["amount"] for ln in run["lines"] if ln["status"] == "included")

    xml = client.get(run["pain001"], headers=finance)
    assert xml.status_code == 200, xml.text
    assert xml.headers["content-type"].startswith("application/xml")
    assert b"CstmrCdtTrfInitn" in xml.content
    debtor_iban = runtime.settings.payout_debtor.iban.encode()
    assert re.search(rb"<DbtrAcct>\s*<Id>\s*<IBAN>" + debtor_iban + rb"</IBAN>", xml.content)
    _problem(
        client.get("/admin/payouts/NOPE-1/pain001.xml", headers=finance),
        404,
        "payout_run_unknown",
    )
    _problem(
        client.post("/admin/payouts/NOPE-1/confirm", headers=finance), 404, "payout_run_unknown"
    )

    confirmed = client.post(f"/admin/payouts/{run['reference']}/confirm", headers=finance)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["complete"] is True
    assert {ln["merchant"].lower() for ln in confirmed.json()["settled"]} >= {merchant_one.lower()}
    assert runtime.client.merchant_totals(merchant_one).owed == 0
    again = client.post(f"/admin/payouts/{run['reference']}/confirm", headers=finance)
    assert again.status_code == 200
    assert again.json()["settled"] == []
    _problem(
        client.post("/admin/payouts", json={"period": period}, headers=finance),
        409,
        "payout_period_settled",
    )


def test_payout_debtor_comes_from_the_settings(tmp_path: Path) -> None:
    dev = dev_settings(tmp_path)
    assert dev.payout_debtor.iban == "NL91ABNA0417164300"  # development default only
    configured = dev_settings(
        tmp_path,
        payout_debtor_name="Gemeente Groningen",
        payout_debtor_iban="NL02 ABNA 0123 4567 89",
        payout_debtor_bic="ABNANL2A",
    )
    assert configured.payout_debtor.validated().iban == "NL02ABNA0123456789"
    with pytest.raises(ValidationError, match="STADJERSPAS_PAYOUT_DEBTOR_IBAN"):
        dev_settings(tmp_path, payout_debtor_name="G", payout_debtor_iban="NL91ABNA0417164301")
    with pytest.raises(ValidationError, match="set both STADJERSPAS_PAYOUT_DEBTOR_NAME"):
        dev_settings(tmp_path, payout_debtor_iban="NL91ABNA0417164300")
    with pytest.raises(ValidationError) as info:
        Settings(env="production")
    for name in ("STADJERSPAS_PAYOUT_DEBTOR_NAME", "STADJERSPAS_PAYOUT_DEBTOR_IBAN"):
        assert name in str(info.value)  # never defaulted outside development
