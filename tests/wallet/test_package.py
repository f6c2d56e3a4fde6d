"""Package-level rules: import direction, typing marker, public names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import wallet

PACKAGE_DIR = Path(wallet.__file__).resolve().parent


def test_importing_wallet_pulls_in_no_ledger_api_web3_or_database() -> None:
    code = (
        "import sys, wallet, wallet.qr, wallet.keys, wallet.verify, wallet.uri\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules}"
        " & {'ledger', 'api', 'web3', 'sqlmodel', 'sqlalchemy', 'fastapi', 'requests'})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE_DIR.parent,
        timeout=60,
    )
    assert result.stdout.strip() == ""


def test_py_typed_marker_is_shipped() -> None:
    assert (PACKAGE_DIR / "py.typed").is_file()


def test_every_public_name_resolves_and_errors_have_codes() -> None:
    codes = set()
    for name in wallet.__all__:
        value = getattr(wallet, name)
        if isinstance(value, type) and issubclass(value, wallet.WalletError):
            assert value.code not in codes, f"duplicate code {value.code}"
            codes.add(value.code)
    assert {"token_expired", "token_malformed", "token_revoked"} <= codes
