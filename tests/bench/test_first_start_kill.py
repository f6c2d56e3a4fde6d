"""A first start killed the moment it answers: ``stadjerspas up`` (a real subprocess) deploys
the ledger and seeds the demo data, ``/health`` says ok, and the service and its embedded node
are SIGKILLed together at once (as a newcomer's Ctrl-\\ or a power cut would). The next start on
the same state must come up on the same deployment with every demo pass registered and funded:
the deployment is waited for until the node's state file holds it, and the seed is replayed
from the outbox if the node lost it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.auth import dev_terminal_id, dev_terminal_secret
from bench._tokens import demo_pass_ids, dev_pass_signer_key
from bench.faults import ServiceProcess
from ledger.deploy import load_deployment
from wallet import Domain, PassToken, encode_token_uri, sign_pass_token

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

HOLDERS = 20


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    svc = ServiceProcess(tmp_path, {"STADJERSPAS_DEMO_HOLDERS": str(HOLDERS)})
    try:
        yield svc
    finally:
        svc.stop()


def _token(svc: ServiceProcess, number: str) -> str:
    deployment = load_deployment(svc.var_dir / "deployment.json")
    assert deployment is not None
    (pid,) = demo_pass_ids(f"sqlite:///{svc.var_dir / 'stadjerspas.db'}", [number])
    domain = Domain(chain_id=deployment.chain_id, verifying_contract=deployment.ledger_address)
    token = PassToken(pass_id=pid, serial=0, expiry=int(time.time()) + 100)
    return encode_token_uri(
        sign_pass_token(token, domain=domain, private_key=dev_pass_signer_key())
    )


def test_a_first_start_killed_as_it_answers_starts_again_with_its_demo_data(
    service: ServiceProcess,
) -> None:
    service.start()
    deployment = load_deployment(service.var_dir / "deployment.json")
    service.kill(group=True)  # service and node at once, the moment the start answered

    service.start()
    assert load_deployment(service.var_dir / "deployment.json") == deployment
    with httpx.Client(base_url=service.base_url, timeout=60) as client:
        body = {
            "kind": "terminal",
            "username": dev_terminal_id(1),
            "password": dev_terminal_secret(1),
        }
        login = client.post("/auth/token", json=body)
        assert login.status_code == 200, login.text
        bearer = {"Authorization": "Bearer " + login.json()["access_token"]}
        for number in (f"GR{1:07d}", f"GR{HOLDERS:07d}"):  # the first and the last seeded
            scan = client.post(
                "/merchant/scan", json={"token": _token(service, number)}, headers=bearer
            )
            assert scan.status_code == 200, scan.text
            budgets = [i for i in scan.json()["redeemable"] if i["kind"] == "budget"]
            assert budgets, scan.json()
            assert budgets[0]["balance"] > 0, scan.json()
