"""A partner enrolled in a running service (``stadjerspas up``, a real subprocess) redeems at
once, and again after the service and its embedded node are killed (SIGKILL of the process
group) and started again on the same state: its key is reloaded from the keystore, its relayer
recovers its nonce, and the chain credits the partner's own account both times."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.auth import DEV_STAFF
from bench._tokens import demo_pass_ids, dev_pass_signer_key
from bench.faults import ServiceProcess
from ledger.deploy import load_deployment
from wallet import Domain, PassToken, encode_token_uri, sign_pass_token

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PASS_NUMBER = "GR0000007"
BUDGET_SCHEME = 1


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    svc = ServiceProcess(tmp_path, {"STADJERSPAS_DEMO_HOLDERS": "20"})
    try:
        yield svc
    finally:
        svc.stop()


def _bearer(client: httpx.Client, kind: str, username: str, password: str) -> dict[str, str]:
    body = {"kind": kind, "username": username, "password": password}
    response = client.post("/auth/token", json=body)
    assert response.status_code == 200, response.text
    return {"Authorization": "Bearer " + response.json()["access_token"]}


def _token(svc: ServiceProcess, expiry: int) -> str:
    deployment = load_deployment(svc.var_dir / "deployment.json")
    assert deployment is not None
    (pid,) = demo_pass_ids(f"sqlite:///{svc.var_dir / 'stadjerspas.db'}", [PASS_NUMBER])
    domain = Domain(chain_id=deployment.chain_id, verifying_contract=deployment.ledger_address)
    token = PassToken(pass_id=pid, serial=0, expiry=expiry)
    signed = sign_pass_token(token, domain=domain, private_key=dev_pass_signer_key())
    return encode_token_uri(signed)


def _redeem(svc: ServiceProcess, terminal: tuple[str, str], key: str, expiry: int) -> Any:
    with httpx.Client(base_url=svc.base_url, timeout=60) as client:
        headers = _bearer(client, "terminal", *terminal)
        response = client.post(
            "/merchant/redemptions",
            json={"token": _token(svc, expiry), "scheme_id": BUDGET_SCHEME, "amount": 100},
            headers={**headers, "Idempotency-Key": key},
        )
    assert response.status_code == 201, response.text
    return response.json()


def _sender(svc: ServiceProcess, tx_hash: str) -> str:
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_getTransactionByHash", "params": [tx_hash]}
    found = httpx.post(svc.rpc_url, json=body, timeout=10).json()["result"]
    return str(found["from"]).lower()


def test_a_partner_enrolled_at_run_time_survives_a_service_and_node_kill(
    service: ServiceProcess,
) -> None:
    service.start()
    with httpx.Client(base_url=service.base_url, timeout=60) as client:
        admin = _bearer(client, "staff", "admin", DEV_STAFF["admin"][1])
        created = client.post(
            "/admin/merchants",
            json={
                "name": "Hockeyclub Groningen",
                "kvk_number": "41234567",
                "category": "sport",
                "iban": "NL20INGB0001234567",
            },
            headers=admin,
        )
        assert created.status_code == 201, created.text
        partner = created.json()
        issued = client.post("/auth/terminals", json={"merchant_id": partner["id"]}, headers=admin)
        assert issued.status_code == 201, issued.text
        terminal = (issued.json()["terminal_id"], issued.json()["secret"])

    now = int(time.time())
    first = _redeem(service, terminal, "before-kill", now + 100)
    assert _sender(service, first["tx_hash"]) == partner["address"].lower()

    service.kill(group=True)  # the service and its embedded anvil, at once
    service.start()
    second = _redeem(service, terminal, "after-kill", now + 101)
    assert _sender(service, second["tx_hash"]) == partner["address"].lower()
    with httpx.Client(base_url=service.base_url, timeout=60) as client:
        admin = _bearer(client, "staff", "admin", DEV_STAFF["admin"][1])
        listed = client.get("/admin/merchants", headers=admin).json()
    (again,) = [m for m in listed if m["id"] == partner["id"]]
    assert again["address"] == partner["address"]
    assert again["merchant_role"] is True
