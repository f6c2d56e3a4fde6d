"""ledger.node.AnvilNode: start, answer, stop, persisted state, bounded disk use, clear errors."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3

from ledger.errors import LedgerError, NodeError
from ledger.node import AnvilConfig, AnvilNode, find_anvil_binary


def _dir_size(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _receipt(node: AnvilNode, tx_hash: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """Poll for a receipt: anvil auto-mines, but not before eth_sendTransaction returns."""
    deadline = time.monotonic() + timeout_s
    while (receipt := node.rpc("eth_getTransactionReceipt", [tx_hash])) is None:
        assert time.monotonic() < deadline, f"no receipt for {tx_hash}"
        time.sleep(0.01)
    return dict(receipt)


@pytest.fixture
def node(project_root: Path, tmp_path: Path) -> Iterator[AnvilNode]:
    node = AnvilNode(AnvilConfig(state_dir=tmp_path / "state", project_root=project_root))
    try:
        yield node
    finally:
        node.stop()


def test_finds_native_binary(project_root: Path) -> None:
    binary = find_anvil_binary(project_root)
    assert binary.name == "anvil"
    assert "@foundry-rs" in binary.parts


def test_start_answer_stop(node: AnvilNode) -> None:
    node.start()
    assert node.is_running()
    assert node.is_healthy()
    assert node.rpc_url == f"http://127.0.0.1:{node.port}"
    assert node.rpc("eth_chainId") == hex(31337)
    assert len(node.rpc("eth_accounts")) == 10
    assert node.log_file.parent == node.state_dir
    node.stop()
    assert not node.is_running()
    assert not node.is_healthy()
    assert node.state_file.is_file()  # dumped on SIGINT
    node.stop()  # idempotent


def test_context_manager_and_web3(project_root: Path, tmp_path: Path) -> None:
    with AnvilNode(
        AnvilConfig(state_dir=tmp_path, project_root=project_root, chain_id=4242)
    ) as node:
        w3 = Web3(Web3.HTTPProvider(node.rpc_url, cache_allowed_requests=True))
        assert w3.eth.chain_id == 4242
        pid = node.pid
    assert pid is not None
    assert not node.is_running()


def test_restart_keeps_transaction_effects(node: AnvilNode) -> None:
    node.start()
    sender, receiver = node.rpc("eth_accounts")[:2]
    before = int(node.rpc("eth_getBalance", [receiver, "latest"]), 16)
    tx_hash = node.rpc(
        "eth_sendTransaction",
        [{"from": sender, "to": receiver, "value": hex(12345), "gasPrice": "0x0"}],
    )
    assert _receipt(node, tx_hash)["status"] == "0x1"
    height = node.rpc("eth_blockNumber")

    node.stop()
    node.start()

    assert node.rpc("eth_blockNumber") == height
    assert int(node.rpc("eth_getBalance", [receiver, "latest"]), 16) == before + 12345
    assert node.rpc("eth_getTransactionCount", [sender, "latest"]) == "0x1"
    assert _receipt(node, tx_hash, timeout_s=0)["status"] == "0x1"


def test_restart_keeps_port(node: AnvilNode) -> None:
    node.start()
    port = node.port
    node.restart()
    assert node.port == port
    assert node.is_healthy()


@pytest.mark.slow
def test_disk_use_stays_bounded(node: AnvilNode) -> None:
    foundry_tmp = Path.home() / ".foundry" / "anvil" / "tmp"
    home_before = _dir_size(foundry_tmp)
    node.start()
    sender, receiver = node.rpc("eth_accounts")[:2]
    for _ in range(300):  # one block per transaction (auto-mining)
        tx_hash = node.rpc(
            "eth_sendTransaction", [{"from": sender, "to": receiver, "value": "0x1"}]
        )
    _receipt(node, tx_hash)
    # auto-mining may put a few pending transactions in one block: top up to 500 blocks
    height = int(node.rpc("eth_blockNumber"), 16)
    assert height >= 100
    node.rpc("anvil_mine", [hex(max(0, 500 - height))])
    assert int(node.rpc("eth_blockNumber"), 16) >= 500
    node.stop()
    bound = 5 * 1024 * 1024
    assert _dir_size(foundry_tmp) - home_before < bound
    assert _dir_size(node.cache_dir) < bound
    assert _dir_size(node.state_dir) < bound


def test_port_in_use_is_a_clear_error(project_root: Path, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        node = AnvilNode(AnvilConfig(state_dir=tmp_path, port=port, project_root=project_root))
        with pytest.raises(NodeError, match=rf"port {port} .*already in use"):
            node.start()
        assert not node.is_running()


def test_failed_start_quotes_log(project_root: Path, tmp_path: Path) -> None:
    node = AnvilNode(
        AnvilConfig(
            state_dir=tmp_path,
            project_root=project_root,
            extra_args=("--no-such-flag",),
            quiet=False,
        )
    )
    with pytest.raises(LedgerError, match=r"(?s)exited with code \d+ while starting.*no-such-flag"):
        node.start()


def test_missing_binary(tmp_path: Path) -> None:
    node = AnvilNode(AnvilConfig(state_dir=tmp_path, binary=tmp_path / "nope"))
    with pytest.raises(NodeError, match="could not execute"):
        node.start()


def test_session_fixtures_agree(
    w3: Web3, dev_accounts: list[LocalAccount], anvil_node: AnvilNode, chain_snapshot: str
) -> None:
    assert w3.eth.chain_id == 31337
    assert [a.address for a in dev_accounts] == list(w3.eth.accounts)
    sender, receiver = dev_accounts[0], dev_accounts[1]
    tx: dict[str, Any] = {
        "to": receiver.address,
        "value": 1,
        "gas": 21_000,
        "gasPrice": 0,
        "nonce": w3.eth.get_transaction_count(sender.address),
        "chainId": 31337,
    }
    tx_hash = w3.eth.send_raw_transaction(sender.sign_transaction(tx).raw_transaction)
    assert w3.eth.wait_for_transaction_receipt(tx_hash)["status"] == 1
    assert anvil_node.is_healthy()
