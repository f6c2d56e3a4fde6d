"""A node that stops answering: the indexer backs off, says so, and continues when it is back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from eth_account.signers.local import LocalAccount
from web3 import HTTPProvider, Web3

from ledger.client import LedgerClient
from ledger.compiler import Artifacts
from ledger.deploy import RoleGrant, deploy_ledger
from ledger.indexer import Indexer, IndexerConfig, RetryNotice, RetryPolicy
from ledger.node import DEV_MNEMONIC, AnvilConfig, AnvilNode
from ledger.passid import new_pass_secret, pass_id
from ledger.rpc import RpcClient
from ledger.store.db import Store
from tests.ledger.indexer.conftest import counts


def wait_for(condition: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_indexer_retries_while_the_node_is_down(
    migrated_store: Store,
    artifacts: Artifacts,
    dev_accounts: list[LocalAccount],
    tmp_path: Path,
    project_root: Path,
) -> None:
    config = AnvilConfig(
        state_dir=tmp_path / "anvil", mnemonic=DEV_MNEMONIC, project_root=project_root,
        state_interval_s=1,
    )  # fmt: skip
    admin, issuer = dev_accounts[0], dev_accounts[1]
    with AnvilNode(config) as node:
        w3 = Web3(HTTPProvider(node.rpc_url, cache_allowed_requests=True))
        deployment = deploy_ledger(
            w3, artifacts=artifacts, admin=admin, grants=[RoleGrant("issuer", issuer.address)]
        )
        abi = artifacts.get("StadjerspasLedger").abi
        client = LedgerClient(w3, address=deployment.ledger_address, abi=abi)

        def register(n: int) -> None:
            for i in range(n):
                pid = pass_id(pass_secret=new_pass_secret(), pass_number=f"P{i}{time.time_ns()}")
                client.transact(issuer, "registerPass", pid, "0x" + "00" * 20, 0)

        register(3)
        notices: list[RetryNotice] = []
        rpc = RpcClient(node.rpc_url, timeout=2.0, retries=0)
        indexer = Indexer(
            migrated_store,
            rpc,
            abi,
            IndexerConfig(
                contract=deployment.ledger_address,
                start_block=deployment.deployed_block,
                poll_interval_s=0.05,
                retry=RetryPolicy(initial_s=0.05, max_s=0.4),
            ),
            on_retry=notices.append,
        )
        thread = threading.Thread(target=indexer.follow, daemon=True)
        thread.start()
        try:
            wait_for(lambda: counts(migrated_store.engine)["index_pass"] == 3)
            node.stop()  # anvil dumps its state on SIGINT
            wait_for(lambda: len([n for n in notices if not n.recovered]) >= 3)
            assert thread.is_alive()
            failing = [n for n in notices if not n.recovered]
            assert [n.attempt for n in failing[:3]] == [1, 2, 3]
            assert failing[1].delay_s > failing[0].delay_s
            node.restart()
            w3 = Web3(HTTPProvider(node.rpc_url, cache_allowed_requests=True))
            client = LedgerClient(w3, address=deployment.ledger_address, abi=abi)
            register(2)
            wait_for(lambda: counts(migrated_store.engine)["index_pass"] == 5)
            assert any(n.recovered for n in notices)
            assert thread.is_alive()
        finally:
            indexer.stop.set()
            thread.join(timeout=10)
            rpc.close()
        assert not thread.is_alive()
