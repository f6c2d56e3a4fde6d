"""Shared fixtures: one local anvil node per test session, web3 and the dev accounts.

Tests that change chain state must not depend on order: take ``chain_snapshot`` to have the
chain reverted (``evm_snapshot``/``evm_revert``, anvil-only, allowed in tests) after the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import HTTPProvider, Web3

from ledger.node import DEV_MNEMONIC, AnvilConfig, AnvilNode

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHAIN_ID = 31337
DEV_ACCOUNT_COUNT = 10


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def anvil_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnvilNode]:
    """A session-wide anvil on a free port: chain 31337, 10 funded accounts of the test mnemonic."""
    config = AnvilConfig(
        state_dir=tmp_path_factory.mktemp("anvil"),
        chain_id=CHAIN_ID,
        accounts=DEV_ACCOUNT_COUNT,
        mnemonic=DEV_MNEMONIC,
        project_root=PROJECT_ROOT,
    )
    with AnvilNode(config) as node:
        yield node


@pytest.fixture(scope="session")
def w3(anvil_node: AnvilNode) -> Web3:
    return Web3(HTTPProvider(anvil_node.rpc_url, cache_allowed_requests=True))


@pytest.fixture(scope="session")
def dev_accounts() -> list[LocalAccount]:
    """The node's funded accounts as local signers (m/44'/60'/0'/0/i of the test mnemonic)."""
    Account.enable_unaudited_hdwallet_features()
    return [
        Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}")
        for i in range(DEV_ACCOUNT_COUNT)
    ]


@pytest.fixture
def chain_snapshot(anvil_node: AnvilNode) -> Iterator[str]:
    """Revert every change the test makes to the shared node (yields the snapshot id)."""
    snapshot_id: str = anvil_node.rpc("evm_snapshot")
    try:
        yield snapshot_id
    finally:
        if not anvil_node.rpc("evm_revert", [snapshot_id]):
            raise RuntimeError(f"evm_revert({snapshot_id}) failed")
