"""ledger.node.AnvilNode: start, answer, stop, persisted state, bounded disk use, clear errors,
supervision (restart after a crash, write-safe state)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3

from ledger.errors import LedgerError, NodeError
from ledger.node import AnvilConfig, AnvilNode, find_anvil_binary, state_inconsistency

CHAIN_ID = hex(31337)


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


# -- supervision -------------------------------------------------------------------------------


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _supervisors(port: int) -> list[threading.Thread]:
    """The supervisor threads of the node on ``port`` (other nodes of the test session, e.g.
    an API runtime's embedded node, have supervisors of their own)."""
    return [t for t in threading.enumerate() if t.name == f"anvil-supervisor-{port}"]


def _backup_height(node: AnvilNode) -> int | None:
    try:
        return int(json.loads(node.backup_file.read_bytes())["block"]["number"], 16)
    except (OSError, ValueError):
        return None


def test_state_interval_defaults_to_one_second(node: AnvilNode) -> None:
    assert node.config.state_interval_s == 1
    command = node.command(8545)
    assert command[command.index("--state-interval") + 1] == "1"
    zero = AnvilNode(AnvilConfig(state_dir=node.state_dir, state_interval_s=0, binary=Path("x")))
    with pytest.raises(NodeError, match="at least 1"):
        zero.command(8545)


def test_supervisor_restarts_a_killed_node(
    node: AnvilNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ledger.node")
    node.start()
    url = node.rpc_url
    answers: list[str] = []

    def broken() -> None:
        raise RuntimeError("a broken callback")

    node.on_restart(broken)  # logged; neither the restart nor the next callback suffers
    node.on_restart(lambda: answers.append(node.rpc("eth_chainId")))
    node.supervise(check_interval_s=0.2)
    assert node.restarts == 0
    assert node.last_restart_at is None

    sender, receiver = node.rpc("eth_accounts")[:2]
    tx_hash = node.rpc(
        "eth_sendTransaction",
        [{"from": sender, "to": receiver, "value": hex(777), "gasPrice": "0x0"}],
    )
    assert _receipt(node, tx_hash)["status"] == "0x1"
    node.rpc("anvil_mine", ["0x4"])
    height = node.rpc("eth_blockNumber")
    time.sleep(2.5)  # > state interval (1 s) + a supervisor check: dumped and backed up

    first_pid = node.pid
    assert first_pid is not None
    before = time.monotonic()
    os.kill(first_pid, signal.SIGKILL)
    # restarts is counted before the callbacks run (on the supervisor thread)
    _wait_for(lambda: len(answers) == 1, "the supervisor's restart and its callbacks")
    assert node.restarts == 1

    assert node.rpc_url == url  # the same port
    assert node.pid not in (None, first_pid)
    assert node.is_healthy()
    assert answers == [CHAIN_ID]  # the callback ran once, after the node answered again
    assert node.last_restart_at is not None
    assert before < node.last_restart_at < time.monotonic()
    assert node.rpc("eth_blockNumber") == height  # not back to 0: the state was reloaded
    assert _receipt(node, tx_hash, timeout_s=0)["status"] == "0x1"
    assert f"exited with code {-signal.SIGKILL}" in caplog.text
    assert "a broken callback" in caplog.text

    # the thread survived the broken callback and heals the node again
    os.kill(node.pid, signal.SIGKILL)  # type: ignore[arg-type]
    _wait_for(lambda: len(answers) == 2, "a second restart")
    assert node.restarts == 2
    assert answers == [CHAIN_ID, CHAIN_ID]
    assert node.rpc("eth_blockNumber") == height


def test_stop_and_restart_while_supervised(node: AnvilNode) -> None:
    node.start()
    port = node.port
    restarted: list[int] = []
    node.on_restart(lambda: restarted.append(node.restarts))
    node.supervise(check_interval_s=0.05)
    node.supervise(check_interval_s=0.05)  # idempotent: one thread
    assert len(_supervisors(port)) == 1

    node.restart()  # a deliberate restart is not the supervisor's business
    assert node.port == port
    time.sleep(0.3)
    assert node.is_healthy()
    assert node.restarts == 0
    assert restarted == []
    assert len(_supervisors(port)) == 1  # still supervised

    node.stop()
    assert _supervisors(port) == []  # stop() ends supervision first
    time.sleep(0.3)
    assert not node.is_running()
    assert node.restarts == 0
    assert restarted == []


def _port_is_closed(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_stop_racing_a_supervised_restart(node: AnvilNode) -> None:
    """stop() right after a crash, before, during or after the supervisor's restart: nothing is
    left running, nothing is restarted afterwards."""
    for delay in (0.0, 0.03, 0.06, 0.1, 0.15):
        node.start()
        port = node.port
        node.supervise(check_interval_s=0.01)
        pid = node.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        time.sleep(delay)
        node.stop()
        restarts = node.restarts
        assert _supervisors(port) == []
        assert not node.is_running()
        assert _port_is_closed(port)
        time.sleep(0.05)
        assert node.restarts == restarts
        assert _port_is_closed(port)


def test_supervised_restart_falls_back_to_the_backup(
    node: AnvilNode, caplog: pytest.LogCaptureFixture
) -> None:
    node.start()
    node.supervise(check_interval_s=0.1, unresponsive_s=None)
    node.rpc("anvil_mine", ["0x5"])
    _wait_for(lambda: _backup_height(node) == 5, "a backup with block 5")

    # anvil killed while dumping: freeze it (no more dumps), leave half a dump, then kill it
    pid = node.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    half = node.state_file.read_bytes()[: node.state_file.stat().st_size // 2] or b"{"
    node.state_file.write_bytes(half)
    os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: node.restarts == 1, "the supervisor's restart")

    assert node.rpc("eth_blockNumber") == hex(5)
    aside = node.state_dir / "anvil-state.json.corrupt-1"
    assert aside.read_bytes() == half  # kept for a post-mortem
    assert "restored the backup" in caplog.text


def test_start_recovers_from_a_corrupt_state_file(
    node: AnvilNode, caplog: pytest.LogCaptureFixture
) -> None:
    node.start()
    node.rpc("anvil_mine", ["0x2"])
    node.stop()  # a complete dump
    node.backup_file.write_bytes(node.state_file.read_bytes())  # as the supervisor would
    node.state_file.write_bytes(b'{"block":{"number":"0x')

    node.start()  # anvil refuses the file (exit code 2); the backup is loaded instead
    assert node.rpc("eth_blockNumber") == hex(2)
    assert (node.state_dir / "anvil-state.json.corrupt-1").read_bytes() == b'{"block":{"number":"0x'
    node.stop()

    # without a backup: the corrupt file is kept aside and the chain starts from genesis
    node.backup_file.unlink()
    node.state_file.write_bytes(b"")
    node.start()
    assert node.rpc("eth_blockNumber") == "0x0"
    assert (node.state_dir / "anvil-state.json.corrupt-2").read_bytes() == b""
    assert "no usable backup" in caplog.text


def _send(node: AnvilNode, count: int) -> None:
    sender, receiver = node.rpc("eth_accounts")[:2]
    for _ in range(count):
        node.rpc(
            "eth_sendTransaction",
            [{"from": sender, "to": receiver, "value": hex(1), "gasPrice": "0x0"}],
        )


def _ahead_of_its_blocks(dump: dict[str, Any], sender: str) -> dict[str, Any]:
    """The dump with ``sender``'s account nonce past its dumped transactions (the state of a
    later moment than the blocks), as anvil can write it while it mines."""
    accounts = {
        address: account | {"nonce": int(account["nonce"]) + 1}
        if address.lower() == sender.lower()
        else account
        for address, account in dump["accounts"].items()
    }
    return dump | {"accounts": accounts}


def test_a_state_ahead_of_its_blocks_is_told() -> None:
    consistent = {
        "accounts": {
            "0xAa": {"nonce": 2, "code": "0x"},
            "0xbb": {"nonce": 0, "code": "0x"},
            "0xcc": {"nonce": 1, "code": "0x6080"},  # a contract: its nonce counts creations
        },
        "transactions": [
            {"info": {"from": "0xaa", "nonce": 0}},
            {"info": {"from": "0xaa", "nonce": 1}},
        ],
    }
    assert state_inconsistency(consistent) is None
    ahead = consistent | {"transactions": consistent["transactions"][:1]}
    reason = state_inconsistency(ahead)
    assert reason is not None
    assert "0xAa has nonce 2" in reason
    assert state_inconsistency([]) == "not a JSON object"
    assert state_inconsistency({"accounts": {}}) == "no accounts or transactions"


def test_a_state_ahead_of_its_blocks_is_set_aside_for_the_backup(
    node: AnvilNode, caplog: pytest.LogCaptureFixture
) -> None:
    node.start()
    sender = node.rpc("eth_accounts")[0]
    node.rpc("anvil_mine", ["0x2"])  # blocks without transactions: a consistent dump
    node.stop()
    assert state_inconsistency(json.loads(node.state_file.read_bytes())) is None
    node.backup_file.write_bytes(node.state_file.read_bytes())  # as the supervisor would
    node.start()
    _send(node, 1)
    node.stop()
    dump = json.loads(node.state_file.read_bytes())
    node.state_file.write_text(json.dumps(_ahead_of_its_blocks(dump, sender)))

    node.start()  # the backup is loaded: the chain the outbox can replay onto
    assert node.rpc("eth_blockNumber") == hex(2)
    assert node.rpc("eth_getTransactionCount", [sender, "latest"]) == "0x0"
    assert (node.state_dir / "anvil-state.json.corrupt-1").is_file()
    assert "restored the backup" in caplog.text
    node.stop()

    # without a backup the file is loaded all the same (better than starting from genesis)
    node.backup_file.unlink()
    node.start()
    _send(node, 1)
    node.stop()
    dump = json.loads(node.state_file.read_bytes())
    node.state_file.write_text(json.dumps(_ahead_of_its_blocks(dump, sender)))
    node.start()
    # not genesis (how many of its blocks anvil's stop dump holds varies under load)
    assert int(node.rpc("eth_blockNumber"), 16) >= 2
    assert not (node.state_dir / "anvil-state.json.corrupt-2").exists()
    assert "loading it anyway" in caplog.text


def test_supervisor_backs_off_while_restarts_fail(
    node: AnvilNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ledger.node")
    node.start()
    port = node.port
    node.supervise(check_interval_s=0.05)
    busy = socket.socket()
    try:
        with node._lock:  # keep the supervisor out until the port is taken
            pid = node.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            _wait_for(lambda: not node.is_running(), "anvil to die")
            busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            busy.bind(("127.0.0.1", port))
            busy.listen()
        _wait_for(lambda: "retry in 0.8 s" in caplog.text, "three failed restarts", 5.0)
        assert node.restarts == 0
    finally:
        busy.close()
    _wait_for(lambda: node.restarts == 1, "the restart once the port is free")
    assert node.port == port
    assert node.is_healthy()
    assert "retry in 0.2 s" in caplog.text
    assert "retry in 0.4 s" in caplog.text


def test_supervisor_restarts_a_hung_node(node: AnvilNode) -> None:
    node.start()
    node.rpc("anvil_mine", ["0x3"])
    node.supervise(check_interval_s=0.1, unresponsive_s=0.5)
    _wait_for(lambda: _backup_height(node) == 3, "a dump with block 3")
    pid = node.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # alive, but answers nothing
    _wait_for(lambda: node.restarts == 1, "the restart of the hung node")
    assert node.pid != pid
    assert node.rpc("eth_blockNumber") == hex(3)
