"""Partners enrolled end to end: a partner enrolled through the API (or a CSV) redeems at once
with a key the service created and sealed in its keystore; nothing personal goes on chain."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from api.main import create_app
from api.partner_keystore import PartnerKey
from api.runtime import Runtime, StartupError
from tests.api.conftest import dev_settings, logins, served_app, signed_uri
from tests.api.conftest import holder_pass_id as _pid

BUDGET = 1  # the demo's budget scheme, open to every merchant
PROBLEM = "application/problem+json"


def _terminal(client: TestClient, merchant_id: int) -> dict[str, str]:
    admin = logins(client).staff("admin")
    issued = client.post(
        "/auth/terminals", json={"merchant_id": merchant_id, "label": "Kassa 1"}, headers=admin
    )
    assert issued.status_code == 201, issued.text
    body = issued.json()
    token = client.post(
        "/auth/token",
        json={"kind": "terminal", "username": body["terminal_id"], "password": body["secret"]},
    )
    assert token.status_code == 200, token.text
    return {"Authorization": "Bearer " + token.json()["access_token"]}


def _enrol(client: TestClient, name: str, kvk: str) -> dict[str, Any]:
    created = client.post(
        "/admin/merchants",
        json={"name": name, "kvk_number": kvk, "category": "sport", "iban": "NL91ABNA0417164300"},
        headers=logins(client).staff("admin"),
    )
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


def _redeem(client: TestClient, runtime: Runtime, terminal: dict[str, str], key: str) -> Any:
    token = signed_uri(runtime, _pid(runtime, "GR0000031"))
    return client.post(
        "/merchant/redemptions",
        json={"token": token, "scheme_id": BUDGET, "amount": 125},
        headers={**terminal, "Idempotency-Key": key},
    )


def test_an_enrolled_partner_redeems_at_once_with_a_key_it_never_saw(
    client: TestClient, runtime: Runtime
) -> None:
    partner = _enrol(client, "Judoclub De Valk", "44556677")
    merchant_id, address = partner["id"], partner["address"]
    assert partner["merchant_role"] is True
    assert runtime.w3.eth.get_balance(address) == 0  # gas price 0: no funding needed
    assert merchant_id in runtime.merchant_relayers  # started now, no restart

    terminal = _terminal(client, merchant_id)
    redeemed = _redeem(client, runtime, terminal, "partner-first")
    assert redeemed.status_code == 201, redeemed.text
    tx_hash = redeemed.json()["tx_hash"]
    receipt = runtime.w3.eth.get_transaction_receipt(tx_hash)
    assert receipt["from"] == address  # the partner's own account is msg.sender
    assert runtime.client.merchant_totals(address).redeemed >= 125

    # no personal data on chain: the partner's name and KvK number are not in the calldata
    tx = runtime.w3.eth.get_transaction(tx_hash)
    calldata = bytes(tx["input"])
    for text in ("Judoclub De Valk", "44556677", "NL91ABNA0417164300"):
        assert text.encode() not in calldata
        assert text.encode().hex() not in calldata.hex()


def test_the_keystore_holds_no_plain_key(runtime: Runtime, client: TestClient) -> None:
    partner = _enrol(client, "Schaakclub Het Paard", "55667788")
    account = runtime.keys.merchant(partner["id"])
    assert account is not None
    with runtime.store.db.session() as session:
        row = session.exec(select(PartnerKey).where(PartnerKey.address == partner["address"])).one()
    key = bytes(account.key)
    blob = bytes(row.kdf_salt) + bytes(row.nonce) + bytes(row.sealed_key)
    assert key not in blob
    assert key.hex().encode() not in blob
    assert len(row.sealed_key) == 32 + 16  # AES-GCM: the key sealed, and its tag


def test_a_wrong_keystore_password_refuses_to_start(tmp_path: Path) -> None:
    settings = dev_settings(tmp_path / "var", demo_seed=False, run_indexer=False)
    with Runtime.start(settings) as runtime:
        demo = [a.address for a in runtime.keys.merchants]
    assert len(demo) == 3  # the demo partners come from the enrolment path
    wrong = dev_settings(
        tmp_path / "var", demo_seed=False, run_indexer=False, keystore_password="not the one"
    )
    with pytest.raises(StartupError) as refused:
        Runtime.start(wrong)
    message = str(refused.value)
    assert "\n" not in message
    assert "keystore password does not open" in message
    # the right password opens the same keys again (a restart keeps every partner)
    with Runtime.start(settings) as runtime:
        assert [a.address for a in runtime.keys.merchants] == demo


def test_a_partner_keeps_working_after_a_restart(tmp_path: Path) -> None:
    settings = dev_settings(tmp_path / "var", run_indexer=False)
    with (
        Runtime.start(settings) as runtime,
        TestClient(create_app(settings, runtime), raise_server_exceptions=False) as client,
    ):
        partner = _enrol(client, "Tennisclub Helpman", "66778899")
        terminal = _terminal(client, partner["id"])
        assert _redeem(client, runtime, terminal, "before").status_code == 201
    with (
        Runtime.start(settings) as runtime,
        TestClient(create_app(settings, runtime), raise_server_exceptions=False) as client,
    ):
        assert runtime.keys.merchant(partner["id"]) is not None
        assert runtime.keys.merchant(partner["id"]).address == partner["address"]  # type: ignore[union-attr]
        terminal = _terminal(client, partner["id"])
        after = _redeem(client, runtime, terminal, "after")
        assert after.status_code == 201, after.text
        assert runtime.w3.eth.get_transaction(after.json()["tx_hash"])["from"] == partner["address"]


_GOOD = (
    "name,kvk_number,category,iban,street,postcode,town\n"
    "Voetbalclub GRC,71234567,sport,NL20INGB0001234567,Esserweg 1,9718 JN,Groningen\n"
    "Muziekschool Noord,71234568,culture,NL39 RABO 0300 0652 64,,,\n"
)


def _import(client: TestClient, data: bytes) -> Any:
    return client.post(
        "/admin/imports/partners",
        files={"file": ("partners.csv", data, "text/csv")},
        headers=logins(client).staff("admin"),
    )


def test_a_partner_csv_is_checked_first_and_imported_once(
    tmp_path: Path, module_database: str | None
) -> None:
    overrides: dict[str, object] = {"run_indexer": False, "demo_seed": False}
    if module_database is not None:
        overrides["database_url"] = module_database
    settings = dev_settings(tmp_path / "var", **overrides)
    with (
        Runtime.start(settings) as runtime,
        TestClient(create_app(settings, runtime), raise_server_exceptions=False) as client,
    ):
        before = len(runtime.store.registry.merchants())
        bad = (
            b"name,kvk_number,category,iban,street,postcode,town\n"
            b"Voetbalclub GRC,7123456,sport,NL20INGB0001234567,,,\n"
            b",71234568,culture,NL00RABO0300065264,,,\n"
            b"Zwemclub,71234569,sport,NL20INGB0001234567,Esserweg 1,,\n"
            b"Dubbel,71234569,,NL20INGB0001234567,,,\n"
        )
        refused = _import(client, bad)
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"] == PROBLEM
        body = refused.json()
        assert body["code"] == "csv_lines_invalid"
        lines = {(e["line"], e["message"].split()[0]) for e in body["errors"]}
        assert {line for line, _ in lines} == {2, 3, 4, 5}
        messages = " ".join(e["message"] for e in body["errors"])
        assert "'7123456'" in messages  # the bad value is quoted
        assert "mod-97" in messages
        assert "also on line 4" in messages
        assert len(runtime.store.registry.merchants()) == before  # nothing enrolled

        first = _import(client, _GOOD.encode())
        assert first.status_code == 200, first.text
        enrolled = first.json()["enrolled"]
        assert len(enrolled) == 2
        assert first.json()["skipped"] == []
        for merchant_id in enrolled:
            assert merchant_id in runtime.merchant_relayers
            account = runtime.keys.merchant(merchant_id)
            assert account is not None
            assert runtime.client.has_role("merchant", account.address)
        grc = runtime.store.registry.merchant(enrolled[0])
        assert (grc.name, grc.kvk_number, grc.postcode) == ("Voetbalclub GRC", "71234567", "9718JN")

        again = _import(client, _GOOD.encode())
        assert again.status_code == 200, again.text
        assert again.json() == {"enrolled": [], "skipped": ["71234567", "71234568"]}
        assert len(runtime.store.registry.merchants()) == before + 2

        too_big = _import(client, b"x" * (5 * 1024 * 1024 + 1))
        assert too_big.status_code == 413


@pytest.fixture(scope="module")
def served(runtime: Runtime) -> Iterator[str]:
    """The app of the shared runtime, served by uvicorn in a thread (the CLI's service)."""
    with served_app(runtime, name="partners-cli-uvicorn") as url:
        yield url


def test_the_cli_imports_partners_once_and_refuses_a_bad_file(
    tmp_path: Path, runtime: Runtime, served: str
) -> None:
    from typer.testing import CliRunner

    from api.cli import app

    runner = CliRunner()
    env = {
        "STADJERSPAS_API_URL": served,
        "STADJERSPAS_IMPORT_USERNAME": "admin",
        "STADJERSPAS_IMPORT_PASSWORD": "development-only-admin-password",
    }
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "name,kvk_number,category,iban\nClub,1234,sport,NL20INGB0001234567\n", encoding="utf-8"
    )
    before = len(runtime.store.registry.merchants())
    refused = runner.invoke(app, ["import", "partners", str(bad)], env=env)
    assert refused.exit_code == 2, refused.output
    assert f"{bad}:2: KvK number '1234' must be exactly 8 digits" in refused.output
    assert "no partner enrolled" in refused.output
    assert len(runtime.store.registry.merchants()) == before

    good = tmp_path / "partners.csv"
    good.write_text(_GOOD.replace("7123456", "7323456"), encoding="utf-8")
    first = runner.invoke(app, ["import", "partners", str(good)], env=env)
    assert first.exit_code == 0, first.output
    assert "2 partners enrolled (merchant ids" in first.output
    added = [m for m in runtime.store.registry.merchants() if m.kvk_number.startswith("7323456")]
    assert len(added) == 2
    again = runner.invoke(app, ["import", "partners", str(good)], env=env)
    assert again.exit_code == 0, again.output
    assert "0 partners enrolled, 2 already registered (skipped)" in again.output
    # the running service has each partner's relayer at once, and its key has the role on chain
    for merchant in added:
        assert merchant.id is not None
        assert merchant.id in runtime.merchant_relayers
        account = runtime.keys.merchant(merchant.id)
        assert account is not None
        assert runtime.client.has_role("merchant", account.address)

    wrong = runner.invoke(
        app,
        ["import", "partners", str(good)],
        env={**env, "STADJERSPAS_IMPORT_PASSWORD": "not-the-password"},
    )
    assert wrong.exit_code != 0
    assert len(wrong.output.strip().splitlines()) == 1, wrong.output


def test_enrolment_text_longer_than_declared_is_refused_as_sent(
    client: TestClient, runtime: Runtime
) -> None:
    before = len(runtime.store.registry.merchants())
    body = {"name": "Club", "kvk_number": " 44556678" + " " * 8, "category": "sport"}
    refused = client.post("/admin/merchants", json=body, headers=logins(client).staff("admin"))
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "validation_failed"
    assert "kvk_number is longer than 16 characters" in refused.text
    assert len(runtime.store.registry.merchants()) == before
