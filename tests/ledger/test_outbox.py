"""The durable outbox (ledger.outbox) and the reconciler (ledger.reconciler), on real anvil nodes
and real databases (SQLite and PostgreSQL): every transaction is stored before any node sees
it, nothing is sent while the store refuses, and after a node lost blocks AND the process that
sent them died, a new reconciler replays the same bytes so that each transaction lands exactly
once; a nonce taken by another transaction fails its row; another chain is refused."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_hash.auto import keccak

from ledger.node import AnvilConfig, AnvilNode
from ledger.outbox import OutboxRow, SqlOutbox
from ledger.reconciler import Mined, Reconciler, ReconcileRefused
from ledger.relayer import Relayer, SignedTx, TxRequest, sign_transaction
from ledger.rpc import RpcClient
from ledger.store.db import Store
from ledger.store.outbox import OutboxState

CHAIN_ID = 31337


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _balance(rpc: RpcClient, address: str) -> int:
    return int(str(rpc.call("eth_getBalance", address, "latest")), 16)


def _nonce(rpc: RpcClient, address: str) -> int:
    return int(str(rpc.call("eth_getTransactionCount", address, "latest")), 16)


@pytest.fixture
def node(tmp_path: Path, project_root: Path, request: pytest.FixtureRequest) -> Iterator[AnvilNode]:
    """A node of the test's own (a restart keeps the URL); it dumps its state every
    ``request.param`` seconds (default: never before the test kills it)."""
    node = AnvilNode(
        AnvilConfig(
            state_dir=tmp_path / "anvil",
            port=_free_port(),
            state_interval_s=getattr(request, "param", 3600),
            project_root=project_root,
        )
    )
    node.start()
    try:
        yield node
    finally:
        node.stop()


def _kill(node: AnvilNode) -> None:
    """SIGKILL: no state dump; the node restarts from its last periodic dump (here: genesis)."""
    proc = node._process
    assert proc is not None
    proc.kill()
    proc.wait(10)
    node._process = None
    node._close_log()


class _Watching(SqlOutbox):
    """The real outbox, which also asks the node, at the moment a transaction is stored,
    whether it has seen that transaction (it must not have)."""

    def __init__(self, db: Store, rpc: RpcClient) -> None:
        super().__init__(db)
        self.rpc = rpc
        self.seen_before_stored: list[str] = []
        self.refuse = 0

    def signed(self, txs: Sequence[SignedTx]) -> None:
        if self.refuse:
            self.refuse -= 1
            raise OSError("database unavailable (test)")
        for tx in txs:
            if self.rpc.call("eth_getTransactionByHash", tx.tx_hash) is not None:
                self.seen_before_stored.append(tx.tx_hash)
        super().signed(txs)


def test_every_transaction_is_stored_before_it_is_sent(
    node: AnvilNode, migrated_store: Store, dev_accounts: list[LocalAccount]
) -> None:
    to = Account.create().address
    with RpcClient(node.rpc_url) as rpc:
        outbox = _Watching(migrated_store, rpc)
        outbox.refuse = 3  # the store is away for the first attempts: nothing may be sent
        with Relayer(
            rpc, account=dev_accounts[0], chain_id=CHAIN_ID, journal=outbox, retry_delay=0.05
        ) as relayer:
            handles = relayer.submit_many(
                TxRequest(to=to, gas=21_000, value=i, label="transfer", refs=(i,))
                for i in range(1, 41)
            )
            receipts = [h.result(30) for h in handles]
            assert relayer.metrics().journal_errors == 3
        outbox.close()
        assert outbox.seen_before_stored == []
        rows = {r.tx_hash: r for r in outbox.all_rows()}
        assert len(rows) == 40
        for receipt in receipts:
            row = rows[receipt.tx_hash.to_0x_hex()]
            assert row.state is OutboxState.MINED
            assert row.block_number == receipt.block_number
            assert row.block_hash == receipt.block_hash.to_0x_hex()
            assert keccak(row.raw) == bytes(receipt.tx_hash)
            assert row.label == "transfer"
        assert sorted(r.refs for r in rows.values()) == [(i,) for i in range(1, 41)]
        assert _balance(rpc, to) == sum(range(1, 41))


def test_replay_after_the_node_lost_blocks_and_the_sender_died(
    node: AnvilNode, migrated_store: Store, dev_accounts: list[LocalAccount]
) -> None:
    """The node is killed before it ever dumped its state, so it comes back at genesis; the
    relayer that sent the transactions is gone too. A new reconciler replays every one of them
    from the outbox, in nonce order, exactly once; their rows are mined again and handed to
    ``on_mined`` as outcomes to be read again."""
    account = dev_accounts[2]
    to = Account.create().address
    seen: list[Mined] = []
    with RpcClient(node.rpc_url) as rpc:
        outbox = SqlOutbox(migrated_store)
        relayer = Relayer(rpc, account=account, chain_id=CHAIN_ID, journal=outbox)
        with relayer:
            handles = relayer.submit_many(
                TxRequest(to=to, gas=21_000, value=i) for i in range(1, 31)
            )
            for handle in handles:
                handle.result(30)
        outbox.flush()
        assert _balance(rpc, to) == sum(range(1, 31))
        _kill(node)
        node.start()
        assert _nonce(rpc, account.address) == 0
        assert _balance(rpc, to) == 0
        reconciler = Reconciler(rpc, outbox, chain_id=CHAIN_ID, on_mined=seen.extend)
        report = reconciler.reconcile(deep=True, wait_s=20)
        assert report.replayed == 30
        assert report.waiting == 0
        assert report.failed == 0
        assert _nonce(rpc, account.address) == 30
        assert _balance(rpc, to) == sum(range(1, 31))  # each value exactly once
        assert len(seen) == 30
        assert all(m.again for m in seen)
        # a second pass finds nothing to do, and sending the bytes again changes nothing
        assert reconciler.reconcile(deep=True, wait_s=5).replayed == 0
        assert _balance(rpc, to) == sum(range(1, 31))
        assert {r.state for r in outbox.all_rows()} == {OutboxState.MINED}
        reconciler.final_after_s = reconciler.settle_after_s = 0
        assert reconciler.reconcile().finalized == 30
        outbox.close()


def test_a_nonce_taken_by_another_transaction_fails_its_row(
    node: AnvilNode, migrated_store: Store
) -> None:
    account: LocalAccount = Account.create()
    failed: list[OutboxRow] = []
    with RpcClient(node.rpc_url) as rpc:
        node.rpc("anvil_setBalance", [account.address, hex(10**20)])
        outbox = SqlOutbox(migrated_store)
        # ours: signed and stored, but (the process died) never sent
        raw, tx_hash = sign_transaction(
            bytes(account.key),
            chain_id=CHAIN_ID,
            nonce=0,
            to=account.address,
            gas=21_000,
            gas_price=10**9,
        )
        outbox.signed(
            [
                SignedTx(
                    tx_hash="0x" + tx_hash.hex(),
                    sender=account.address,
                    nonce=0,
                    raw=raw,
                    label="redeemBatch",
                    refs=(7, 8),
                )
            ]
        )
        # someone else's use of the key takes nonce 0
        other, _ = sign_transaction(
            bytes(account.key),
            chain_id=CHAIN_ID,
            nonce=0,
            to=Account.create().address,
            gas=21_000,
            value=1,
            gas_price=10**9,
        )
        rpc.call("eth_sendRawTransaction", "0x" + other.hex())
        deadline = time.monotonic() + 10
        while _nonce(rpc, account.address) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        report = Reconciler(rpc, outbox, chain_id=CHAIN_ID, on_failed=failed.extend).reconcile(
            deep=True
        )
        assert report.failed == 1
        assert report.replayed == 0
        (row,) = outbox.all_rows()
        assert row.state is OutboxState.FAILED
        assert row.reason is not None
        assert "taken by another transaction" in row.reason
        assert [r.refs for r in failed] == [(7, 8)]
        outbox.close()


def test_a_node_of_another_chain_is_refused(node: AnvilNode, migrated_store: Store) -> None:
    with RpcClient(node.rpc_url) as rpc:
        outbox = SqlOutbox(migrated_store)
        with pytest.raises(ReconcileRefused, match="chain id 31337, not 5"):
            Reconciler(rpc, outbox, chain_id=5).reconcile()
        contract = "0x" + "11" * 20
        reconciler = Reconciler(
            rpc, outbox, chain_id=CHAIN_ID, contract=contract, code_hash=keccak(b"\x60\x00")
        )
        with pytest.raises(ReconcileRefused, match="no code at the ledger address"):
            reconciler.reconcile()
        assert reconciler.refused is not None
        outbox.close()


def test_replays_keep_the_order_in_which_several_senders_signed(
    node: AnvilNode, migrated_store: Store, dev_accounts: list[LocalAccount]
) -> None:
    """Transactions of two senders, signed alternately, come back after the node lost them in
    that same order across both senders (not one sender's batch after the other's), so items
    that compete for one balance meet it as they did the first time."""
    to = Account.create().address
    with RpcClient(node.rpc_url) as rpc:
        outbox = SqlOutbox(migrated_store)
        first = Relayer(rpc, account=dev_accounts[3], chain_id=CHAIN_ID, journal=outbox)
        second = Relayer(rpc, account=dev_accounts[4], chain_id=CHAIN_ID, journal=outbox)
        signed: list[str] = []
        with first, second:
            for i in range(12):
                relayer = (first, second)[i % 2]
                receipt = relayer.submit(TxRequest(to=to, gas=21_000, value=i + 1)).result(30)
                signed.append(receipt.tx_hash.to_0x_hex())
        outbox.flush()
        _kill(node)
        node.start()
        report = Reconciler(rpc, outbox, chain_id=CHAIN_ID).reconcile(deep=True, wait_s=20)
        assert report.replayed == 12
        mined = []
        for tx_hash in signed:
            receipt = rpc.call("eth_getTransactionReceipt", tx_hash)
            assert isinstance(receipt, dict)
            mined.append((int(receipt["blockNumber"], 16), int(receipt["transactionIndex"], 16)))
        assert mined == sorted(mined)
        outbox.close()


def test_a_relayer_adopts_what_the_outbox_holds_unmined(
    node: AnvilNode, migrated_store: Store
) -> None:
    """Transactions stored in the outbox that the node never mined (an earlier process died
    after storing them, or a node sat on a replay): a new relayer of the account takes them
    over, sends them with their original bytes, and signs nothing new for their nonces."""
    account: LocalAccount = Account.create()
    to = Account.create().address
    with RpcClient(node.rpc_url) as rpc:
        node.rpc("anvil_setBalance", [account.address, hex(10**20)])
        outbox = SqlOutbox(migrated_store)
        stored = []
        for nonce in range(3):
            raw, tx_hash = sign_transaction(
                bytes(account.key),
                chain_id=CHAIN_ID,
                nonce=nonce,
                to=to,
                gas=21_000,
                value=nonce + 1,
                gas_price=10**9,
            )
            stored.append("0x" + tx_hash.hex())
            outbox.signed(
                [
                    SignedTx(
                        tx_hash="0x" + tx_hash.hex(),
                        sender=account.address,
                        nonce=nonce,
                        raw=raw,
                        label="call",
                        refs=(),
                    )
                ]
            )
        relayer = Relayer(
            rpc, account=account, chain_id=CHAIN_ID, journal=outbox, reprice_after=1.0
        )
        with relayer:
            assert relayer.adopt(outbox.unmined_of(account.address, 0)) == 3
            own = relayer.submit(TxRequest(to=to, gas=21_000, value=100)).result(30)
            assert own.nonce == 3
        for tx_hash in stored:
            receipt = rpc.call("eth_getTransactionReceipt", tx_hash)
            assert isinstance(receipt, dict)
            assert receipt["status"] == "0x1"
        assert _balance(rpc, to) == 1 + 2 + 3 + 100
        outbox.close()
