"""The ``stadjerspas`` command: one-line errors and exit codes on bad input; QR output; the
audit of a real service (its records against the chain), with options and without."""

from __future__ import annotations

import json
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import Engine, delete, insert, select, update
from typer.testing import CliRunner

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from api.cli import app
from api.main import create_app
from api.runtime import Runtime
from api.settings import Settings
from api.store import RedemptionRecord, RedemptionStatus
from ledger.passid import pass_id
from tests.api.conftest import PROJECT_ROOT, dev_settings, merchant, signed_uri
from wallet import Domain, PassToken, encode_token_uri, sign_pass_token

runner = CliRunner()


def _uri() -> str:
    domain = Domain(chain_id=31337, verifying_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3")
    token = PassToken(pass_id=b"\x01" * 32, serial=0, expiry=int(time.time()) + 60)
    return encode_token_uri(sign_pass_token(token, domain=domain, private_key=b"\x07" * 32))


def test_up_in_production_without_keys_exits_with_one_line(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["up", "--var-dir", str(tmp_path)], env={"STADJERSPAS_ENV": "production"}
    )
    assert result.exit_code == 2
    assert "STADJERSPAS_ADMIN_KEYSTORE" in result.output
    assert "Traceback" not in result.output


def test_qr_writes_png_and_svg(tmp_path: Path) -> None:
    uri = _uri()
    for suffix, magic in (("png", b"\x89PNG"), ("svg", b"<?xml")):
        out = tmp_path / f"token.{suffix}"
        result = runner.invoke(app, ["qr", uri, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert out.read_bytes().startswith(magic)
    shown = runner.invoke(app, ["qr", uri])
    assert shown.exit_code == 0
    assert "chain 31337" in shown.output


def test_qr_refuses_garbage() -> None:
    result = runner.invoke(app, ["qr", "not a token"])
    assert result.exit_code == 2
    assert "token_malformed" in result.output


def test_deploy_bad_input(tmp_path: Path) -> None:
    missing = runner.invoke(
        app,
        [
            "deploy",
            "--rpc-url",
            "http://127.0.0.1:1",
            "--keystore",
            str(tmp_path / "none.json"),
            "--out",
            str(tmp_path / "d.json"),
        ],
    )
    assert missing.exit_code == 2
    assert "does not exist" in missing.output
    bad_grant = runner.invoke(
        app,
        [
            "deploy",
            "--rpc-url",
            "http://127.0.0.1:1",
            "--keystore",
            "k.json",
            "--grant",
            "king=0x1",
            "--out",
            str(tmp_path / "d.json"),
        ],
    )
    assert bad_grant.exit_code == 2
    assert "ROLE=0xADDRESS" in bad_grant.output


# -- audit ----------------------------------------------------------------------------------------
# A service of its own (embedded anvil on a free port, SQLite under its var dir or PostgreSQL),
# with two redemptions made through the API; the audit compares its records with the chain.


@dataclass
class Audited:
    runtime: Runtime
    redemption_ids: list[int]

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def engine(self) -> Engine:
        return self.runtime.store.db.engine

    def options(self) -> list[str]:
        """Every option given: nothing is taken from the settings."""
        return [
            "--rpc-url",
            self.runtime.rpc_url,
            "--deployment",
            str(self.settings.deployment_file),
            "--database-url",
            self.settings.sqlalchemy_url,
        ]

    def env(self) -> dict[str, str]:
        """The service's settings as environment variables (what `make run` would use)."""
        env = {
            "STADJERSPAS_VAR_DIR": str(self.settings.var_dir),
            "STADJERSPAS_BUILD_DIR": str(PROJECT_ROOT / "var" / "build"),
            "STADJERSPAS_ANVIL_PORT": str(urlsplit(self.runtime.rpc_url).port),
        }
        if self.settings.database_url is not None:
            env["STADJERSPAS_DATABASE_URL"] = self.settings.database_url
        return env


def _audit(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = runner.invoke(app, ["audit", *args], env={"COLUMNS": "200", **(env or {})})
    return result.exit_code, result.output


def _wait_for_index(runtime: Runtime) -> None:
    deadline = time.monotonic() + 30
    while runtime.index_lag() != 0:
        assert time.monotonic() < deadline, "the index did not catch up"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def audited(
    module_database: str | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Audited]:
    settings = dev_settings(tmp_path_factory.mktemp("audit-var"), database_url=module_database)
    with (
        Runtime.start(settings) as rt,
        TestClient(create_app(rt.settings, rt), raise_server_exceptions=False) as client,
    ):
        found = rt.store.holder("GR0000007")
        assert found is not None
        pid = pass_id(pass_secret=found.pass_secret, pass_number=found.pass_number)
        ids = []
        for amount in (250, 300):
            response = client.post(
                "/merchant/redemptions",
                json={"token": signed_uri(rt, pid), "scheme_id": 1, "amount": amount},
                headers=merchant(client, 1, f"audit-{amount}"),
            )
            assert response.status_code == 201, response.text
            ids.append(int(response.json()["redemption_id"]))
        _wait_for_index(rt)
        yield Audited(rt, ids)


@contextmanager
def _changed_record(audited: Audited, redemption_id: int, **values: object) -> Iterator[None]:
    """Change one record (``values``; none: delete it) for the test; put it back afterwards."""
    table = RedemptionRecord.__table__  # type: ignore[attr-defined]
    where = table.c.redemption_id == redemption_id
    with audited.engine.begin() as conn:
        original = dict(conn.execute(select(table).where(where)).mappings().one())
        if values:
            conn.execute(update(table).where(where).values(**values))
        else:
            conn.execute(delete(table).where(where))
    try:
        yield
    finally:
        with audited.engine.begin() as conn:
            conn.execute(delete(table).where(where))
            conn.execute(insert(table).values(**original))


def test_audit_of_the_service_is_clean(audited: Audited) -> None:
    code, output = _audit(*audited.options())
    assert code == 0, output
    assert "service promises" in output
    assert "outbox" in output
    assert "clean: no differences" in output


def test_a_confirmed_redemption_missing_on_chain_is_listed(audited: Audited) -> None:
    table = RedemptionRecord.__table__  # type: ignore[attr-defined]
    ghost = 900_000_001
    now = datetime.now(UTC)
    with audited.engine.begin() as conn:
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
        code, output = _audit(*audited.options())
        assert code == 1, output
        assert f"redemption {ghost}: confirmed here, missing on chain" in output
        assert "merchant 1, key 'ghost'" in output
        assert "clean" not in output

        code, output = _audit(*audited.options(), "--json")
        assert code == 1
        payload = json.loads(output)
        assert [(d["kind"], d["key"]) for d in payload["differences"]] == [
            ("promise.missing_on_chain", f"redemption={ghost}")
        ]
        assert payload["differences"][0]["detail"].startswith("confirmed here, missing on chain")
    finally:
        with audited.engine.begin() as conn:
            conn.execute(delete(table).where(table.c.redemption_id == ghost))
    assert _audit(*audited.options())[0] == 0


def test_a_redemption_on_chain_without_a_record_is_listed(audited: Audited) -> None:
    rid = audited.redemption_ids[0]
    with _changed_record(audited, rid):
        code, output = _audit(*audited.options())
    assert code == 1, output
    assert f"redemption {rid}: on chain, unknown here" in output


def test_a_record_marked_broken_is_listed(audited: Audited) -> None:
    rid = audited.redemption_ids[1]
    broken = {
        "status": RedemptionStatus.FAILED.value,
        "problem_code": "confirmation_lost",
        "promise_broken_at": datetime(2026, 12, 4, 9, 30, tzinfo=UTC),
    }
    with _changed_record(audited, rid, **broken):
        code, output = _audit(*audited.options())
    assert code == 1, output
    assert f"redemption {rid}: refused here, on chain" in output  # failed now, yet on chain
    assert "marked this promise broken at 2026-12-04 09:30:00 (confirmation_lost)" in output


def test_audit_without_options_uses_the_running_embedded_node(audited: Audited) -> None:
    code, output = _audit(env=audited.env())
    assert code == 0, output
    assert f"auditing the embedded node at {audited.runtime.rpc_url}" in output
    assert "clean: no differences" in output


def test_audit_without_options_starts_the_saved_chain(
    tmp_path: Path, unused_port: int, project_root: Path
) -> None:
    """`make run` stopped: the audit starts a copy of its saved chain, and nothing in var/
    changes."""
    settings = dev_settings(tmp_path / "var")
    with (
        Runtime.start(settings) as rt,
        TestClient(create_app(rt.settings, rt), raise_server_exceptions=False) as client,
    ):
        found = rt.store.holder("GR0000008")
        assert found is not None
        pid = pass_id(pass_secret=found.pass_secret, pass_number=found.pass_number)
        response = client.post(
            "/merchant/redemptions",
            json={"token": signed_uri(rt, pid), "scheme_id": 1, "amount": 100},
            headers=merchant(client, 2, "saved-chain"),
        )
        assert response.status_code == 201, response.text
        _wait_for_index(rt)
    saved = settings.anvil_dir / "anvil-state.json"
    before = saved.read_bytes()
    env = {
        "STADJERSPAS_VAR_DIR": str(settings.var_dir),
        "STADJERSPAS_BUILD_DIR": str(project_root / "var" / "build"),
        "STADJERSPAS_ANVIL_PORT": str(unused_port),
    }
    code, output = _audit(env=env)
    assert code == 0, output
    assert f"auditing a copy of {saved}" in output
    assert "service promises" in output
    assert "clean: no differences" in output
    assert saved.read_bytes() == before
    with socket.socket() as sock:  # the audit's node is gone
        assert sock.connect_ex(("127.0.0.1", unused_port)) != 0


def test_audit_without_a_deployment_record_exits_2(tmp_path: Path) -> None:
    code, output = _audit(env={"STADJERSPAS_VAR_DIR": str(tmp_path)})
    assert code == 2
    assert f"no deployment record at {tmp_path / 'deployment.json'}" in output
    assert len(output.strip().splitlines()) == 1
    # every option given: no settings needed (a production environment without keys is fine)
    code, output = _audit(
        "--rpc-url",
        "http://127.0.0.1:9",
        "--deployment",
        str(tmp_path / "none.json"),
        "--no-database",
        env={"STADJERSPAS_ENV": "production"},
    )
    assert code == 2
    assert f"no deployment record at {tmp_path / 'none.json'}" in output


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
