"""``stadjerspas import holders|balances|partners`` (api/import_cli.py) without a service: the
one-line failures and exit codes of a missing file, a missing login and a service that cannot
be reached (the commands with a service: tests/api/test_partners.py, test_imports_service.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.cli import app

#: Nothing listens on port 1.
UNREACHABLE = "http://127.0.0.1:1"
PARTNERS = "name,kvk_number,category,iban\nClub,71234567,sport,NL20INGB0001234567\n"
COMMANDS = (["holders"], ["balances", "--scheme", "1"], ["partners"])


def _invoke(args: list[str], **env: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(app, ["import", *args], env=env)
    return result.exit_code, result.output.strip().splitlines()


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    path = tmp_path / "file.csv"
    path.write_text(PARTNERS, encoding="utf-8")
    return path


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unreachable_service_is_one_line(command: list[str], csv: Path) -> None:
    code, lines = _invoke(
        [*command, str(csv), "--url", UNREACHABLE, "--username", "admin"],
        STADJERSPAS_IMPORT_PASSWORD="x",
    )
    assert code == 1
    assert len(lines) == 1
    assert lines[0].startswith(f"error: cannot reach the service at {UNREACHABLE}: ")


@pytest.mark.parametrize("command", COMMANDS)
def test_no_login_is_bad_input(command: list[str], csv: Path) -> None:
    code, lines = _invoke(
        [*command, str(csv), "--url", UNREACHABLE],
        STADJERSPAS_IMPORT_USERNAME="",
        STADJERSPAS_IMPORT_PASSWORD="x",
    )
    assert (code, lines) == (
        2,
        ["error: no staff login: pass --username or set STADJERSPAS_IMPORT_USERNAME"],
    )
    code, lines = _invoke(
        [*command, str(csv), "--url", UNREACHABLE, "--username", "admin"],
        STADJERSPAS_IMPORT_PASSWORD="",
    )
    assert (code, lines) == (2, ["error: no password: set STADJERSPAS_IMPORT_PASSWORD"])


@pytest.mark.parametrize("command", COMMANDS[:2])
def test_a_missing_file_is_bad_input(command: list[str], tmp_path: Path) -> None:
    code, lines = _invoke([*command, str(tmp_path / "none.csv"), "--url", UNREACHABLE])
    assert (code, lines) == (2, [f"error: no such file: {tmp_path / 'none.csv'}"])
