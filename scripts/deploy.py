"""Deploy the ledger on the active brownie network and seed it with demo schemes.

    brownie run scripts/deploy.py                       # development network (anvil)
    brownie run scripts/deploy.py --network <name>      # any other configured network

It calls the same ``ledger`` code as ``stadjerspas deploy`` and ``make run``: one way to deploy.
The deployment record is written to ``var/deployment-<chain id>.json``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from brownie import accounts, network, web3
from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger.client import LedgerClient, SchemeKind, SchemeTerms
from ledger.compiler import compile_contracts
from ledger.deploy import RoleGrant, deploy_ledger, save_deployment

PROJECT_ROOT = Path(__file__).resolve().parent.parent


DEV_MNEMONIC = "test test test test test test test test test test test junk"


def _admin() -> LocalAccount:
    """The dev mnemonic's first account on a development network; elsewhere a brownie keystore."""
    if network.show_active() == "development":
        Account.enable_unaudited_hdwallet_features()
        return Account.from_mnemonic(DEV_MNEMONIC, account_path="m/44'/60'/0'/0/0")
    name = os.environ.get("STADJERSPAS_DEPLOYER_ACCOUNT")
    if not name:
        raise SystemExit(
            "set STADJERSPAS_DEPLOYER_ACCOUNT to the brownie account (keystore) that deploys"
        )
    return Account.from_key(accounts.load(name).private_key)


def main() -> None:
    admin = _admin()
    artifacts = compile_contracts(
        project_root=PROJECT_ROOT, cache_dir=PROJECT_ROOT / "var" / "build"
    )
    deployment = deploy_ledger(
        web3,
        artifacts=artifacts,
        admin=admin,
        grants=[RoleGrant("issuer", admin.address), RoleGrant("pauser", admin.address)],
    )
    path = PROJECT_ROOT / "var" / f"deployment-{deployment.chain_id}.json"
    save_deployment(deployment, path)
    client = LedgerClient(
        web3, address=deployment.ledger_address, abi=artifacts.get("StadjerspasLedger").abi
    )
    now = int(time.time())
    year = 365 * 24 * 3600
    for terms in (
        SchemeTerms(
            kind=SchemeKind.BUDGET,
            valid_from=now,
            valid_until=now + year,
            budget_cap=2_700_000,
            per_redemption_cap=15_000,
            open_to_all_merchants=True,
        ),
        SchemeTerms(
            kind=SchemeKind.USES,
            valid_from=now,
            valid_until=now + year,
            budget_cap=630_000,
            unit_value=350,
            open_to_all_merchants=True,
        ),
        SchemeTerms(
            kind=SchemeKind.DISCOUNT,
            valid_from=now,
            valid_until=now + year,
            budget_cap=500_000,
            discount_bps=2_500,
            reimburse_bps=10_000,
            per_redemption_cap=2_500,
            open_to_all_merchants=True,
        ),
    ):
        client.transact(admin, "createScheme", terms.as_tuple())
    print(
        f"{network.show_active()}: ledger at {deployment.ledger_address}, "
        f"{client.scheme_count()} schemes, record in {path}"
    )
