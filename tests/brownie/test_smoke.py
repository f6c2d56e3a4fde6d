"""Smoke test under eth-brownie: deploy StadjerspasLedger with accounts[0] as admin.

Run with `make test-brownie` (brownie test tests/brownie in .venv-brownie).
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.brownie

ONE_DAY = 24 * 60 * 60


def _constructor_args(container: Any, admin: Any) -> list[Any]:
    """Arguments for the constructor: the admin for the first address, one day for a uint."""
    inputs = next((i["inputs"] for i in container.abi if i["type"] == "constructor"), [])
    args: list[Any] = []
    admin_given = False
    for item in inputs:
        if item["type"] == "address" and not admin_given:
            args.append(admin)
            admin_given = True
        elif item["type"].startswith("uint"):
            args.append(ONE_DAY)
        elif item["type"] == "address":
            args.append(admin)
        else:
            raise NotImplementedError(f"constructor input {item} needs a value in this test")
    return args


def test_deploy_sets_admin(StadjerspasLedger: Any, accounts: Any) -> None:
    admin = accounts[0]
    ledger = StadjerspasLedger.deploy(*_constructor_args(StadjerspasLedger, admin), {"from": admin})
    default_admin_role = ledger.DEFAULT_ADMIN_ROLE()
    assert ledger.hasRole(default_admin_role, admin)
    assert not ledger.hasRole(default_admin_role, accounts[1])


def test_chain_is_prague_anvil_with_zero_base_fee(chain: Any, web3: Any) -> None:
    assert chain.id == 31337
    assert web3.client_version.lower().startswith("anvil")
    assert chain[-1].baseFeePerGas == 0
