"""The ``stadjerspas`` command: one-line errors and exit codes on bad input; QR output."""

from __future__ import annotations

import time
from pathlib import Path

from typer.testing import CliRunner

from api.cli import app
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
