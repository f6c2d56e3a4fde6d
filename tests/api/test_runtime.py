"""Runtime lifecycle: restart from the same var dir keeps everything; production needs its keys."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlmodel import func, select

from api.main import create_app
from api.runtime import Runtime, StartupError
from api.settings import Settings
from ledger.passid import pass_id
from ledger.store.index import IndexedPass
from tests.api.conftest import TestClient, dev_settings, holder, merchant  # type: ignore[attr-defined]


def _balances(client: TestClient, pass_number: str) -> dict[int, int]:
    body = client.get(
        f"/holder/passes/{pass_number}/balances", headers=holder(client, pass_number)
    ).json()
    return {b["scheme_id"]: b["balance"] for b in body["balances"]}


def test_restart_keeps_contract_balances_and_redemptions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative var dir, as `make run` uses
    settings = dev_settings(Path("var"))
    assert settings.var_dir == tmp_path / "var"
    with Runtime.start(settings) as first:
        assert first.deployed_now
        assert first.demo_seeded_now
        address = first.deployment.ledger_address
        secret = first.store.holder("GR0000001")
        assert secret is not None
        with TestClient(create_app(settings, first)) as client:
            token = client.get(
                "/holder/passes/GR0000001/token", headers=holder(client, "GR0000001")
            ).json()
            body = {"token": token["token_uri"], "scheme_id": 1, "amount": 700}
            redeemed = client.post(
                "/merchant/redemptions", json=body, headers=merchant(client, 2, "r1")
            )
            assert redeemed.status_code == 201, redeemed.text
            balances = _balances(client, "GR0000001")
    assert balances[1] == 15_000 - 700
    assert not (settings.anvil_dir / "anvil.log").read_text().count("panicked")

    with Runtime.start(settings) as second:
        assert not second.deployed_now
        assert not second.demo_seeded_now
        assert second.deployment.ledger_address == address
        assert len(second.store.holders()) == 50
        again = second.store.holder("GR0000001")
        assert again is not None
        assert again.pass_secret == secret.pass_secret
        pid = pass_id(pass_secret=again.pass_secret, pass_number="GR0000001")
        assert second.client.balance_of(1, pid) == 15_000 - 700
        assert second.client.scheme_count() == 3  # schemes not created twice
        with TestClient(create_app(settings, second)) as client:
            assert _balances(client, "GR0000001") == balances
            retry = client.post(
                "/merchant/redemptions", json=body, headers=merchant(client, 2, "r1")
            )
            assert retry.status_code == 201
            assert retry.json() == redeemed.json()
            assert retry.headers["Idempotent-Replayed"] == "true"
            assert _balances(client, "GR0000001")[1] == 15_000 - 700


def test_deployment_record_for_another_chain_is_refused(tmp_path: Path) -> None:
    settings = dev_settings(tmp_path / "var")
    with Runtime.start(settings, report=lambda _: None):
        pass
    text = settings.deployment_file.read_text().replace('"chain_id": 31337', '"chain_id": 99')
    settings.deployment_file.write_text(text)
    with pytest.raises(StartupError, match="deployed on chain 99"):
        Runtime.start(settings)


def test_production_without_keys_fails_clearly() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(env="production")
    message = str(info.value)
    assert "secrets are never defaulted outside development" in message
    for name in (
        "STADJERSPAS_RPC_URL",
        "STADJERSPAS_ADMIN_KEYSTORE",
        "STADJERSPAS_ADMIN_KEYSTORE_PASSWORD",
        "STADJERSPAS_PASS_SIGNER_KEYSTORE",
        "STADJERSPAS_KEYSTORE_PASSWORD",
        "STADJERSPAS_AUTH_SECRET",
    ):
        assert name in message
    # partners get keys from the partner keystore: no merchant keystore is required
    assert "STADJERSPAS_MERCHANT_KEYSTORES" not in message


def test_production_reads_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STADJERSPAS_ENV", "production")
    monkeypatch.setenv("STADJERSPAS_RPC_URL", "http://127.0.0.1:1")
    for role in ("ADMIN", "ISSUER", "PASS_SIGNER"):
        monkeypatch.setenv(f"STADJERSPAS_{role}_KEYSTORE", str(tmp_path / f"{role}.json"))
        monkeypatch.setenv(f"STADJERSPAS_{role}_KEYSTORE_PASSWORD", "pw")
    monkeypatch.setenv("STADJERSPAS_MERCHANT_KEYSTORES", f'["{tmp_path / "m1.json"}"]')
    monkeypatch.setenv("STADJERSPAS_MERCHANT_KEYSTORE_PASSWORD", "pw")
    monkeypatch.setenv("STADJERSPAS_PAYOUT_DEBTOR_NAME", "Gemeente Groningen")
    monkeypatch.setenv("STADJERSPAS_PAYOUT_DEBTOR_IBAN", "NL91ABNA0417164300")
    with pytest.raises(ValidationError, match="STADJERSPAS_KEYSTORE_PASSWORD"):
        Settings()
    monkeypatch.setenv("STADJERSPAS_KEYSTORE_PASSWORD", "short")
    with pytest.raises(ValidationError, match="KEYSTORE_PASSWORD must be a secret of at least 12"):
        Settings(auth_secret="x" * 40)
    monkeypatch.setenv("STADJERSPAS_KEYSTORE_PASSWORD", "a long keystore secret")
    with pytest.raises(ValidationError, match="STADJERSPAS_AUTH_SECRET"):
        Settings()
    monkeypatch.setenv("STADJERSPAS_AUTH_SECRET", "too-short")
    with pytest.raises(ValidationError, match="at least 32 bytes"):
        Settings()
    monkeypatch.setenv("STADJERSPAS_AUTH_SECRET", "x" * 40)
    monkeypatch.setenv("STADJERSPAS_ADMIN_TOKEN", "a")  # the slice's static tokens: dev only
    with pytest.raises(ValidationError, match="development-only; unset STADJERSPAS_ADMIN_TOKEN"):
        Settings()
    monkeypatch.delenv("STADJERSPAS_ADMIN_TOKEN")
    settings = Settings()
    assert settings.auth_secret is not None
    assert settings.admin_token is None
    assert not settings.merchant_tokens
    assert not settings.seeds_demo
    assert not settings.deploys_automatically
    # the keystore files do not exist: startup says which one
    with pytest.raises(StartupError, match=r"keystore .* does not exist"):
        Runtime.start(settings)


def test_development_defaults_are_development_only() -> None:
    dev = Settings()
    assert dev.env == "development"
    assert dev.admin_token is not None
    assert dev.admin_token.get_secret_value().startswith("development-only")
    assert sorted(dev.merchant_tokens) == [1, 2, 3]


def test_the_embedded_indexer_mirrors_the_chain_and_health_reports_its_lag(
    tmp_path: Path,
) -> None:
    settings = dev_settings(tmp_path / "var")
    with Runtime.start(settings, report=lambda _: None) as runtime:
        assert runtime.indexer is not None
        deadline = time.monotonic() + 30
        lag = runtime.index_lag()
        while (lag is None or lag > 0) and time.monotonic() < deadline:
            time.sleep(0.2)
            lag = runtime.index_lag()
        assert lag == 0
        with runtime.store.db.session() as session:
            passes = session.exec(select(func.count()).select_from(IndexedPass)).one()
        assert passes >= 50  # the demo's passes, registered on chain and mirrored
        health = TestClient(create_app(settings, runtime)).get("/health").json()
        assert health["index_lag_blocks"] == 0


@pytest.mark.parametrize("demo", [True, False])
def test_merchants_get_a_demo_location_only_with_demo_data(tmp_path: Path, demo: bool) -> None:
    settings = dev_settings(tmp_path / "var", demo_seed=demo, run_indexer=False)
    with Runtime.start(settings) as runtime:
        merchants = runtime.store.merchants()
    assert len(merchants) == len(runtime.keys.merchants)
    if demo:
        assert all(m.street and m.postcode and m.town == "Groningen" for m in merchants)
    else:
        assert all(m.street is None and m.postcode is None for m in merchants)
