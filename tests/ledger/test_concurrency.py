"""Concurrent submissions of one redemption id: the contract itself accepts exactly one.

The transactions are signed locally and sent raw, bypassing the client's preflight, so every
duplicate reaches the chain and is refused there (``RedemptionIdUsed``), not by the client.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from hexbytes import HexBytes
from web3 import HTTPProvider, Web3
from web3.types import RPCEndpoint

from ledger import contract_errors as errors
from ledger.client import ROLES, RedemptionRequest
from tests.ledger.conftest import LedgerEnv

THREADS = 20
GAS = 400_000
REDEMPTION_ID = 424_242


@dataclass
class Race:
    scheme: int
    pid: bytes
    request: RedemptionRequest
    data: bytes


def _rpc(ledger: LedgerEnv, method: str, params: list[Any]) -> Any:
    response = ledger.w3.provider.make_request(RPCEndpoint(method), params)
    assert "error" not in response, response
    return response["result"]


@pytest.fixture
def manual_mining(ledger: LedgerEnv) -> Iterator[None]:
    _rpc(ledger, "evm_setAutomine", [False])
    try:
        yield
    finally:
        _rpc(ledger, "evm_setAutomine", [True])


@pytest.fixture
def race(ledger: LedgerEnv) -> Race:
    scheme = ledger.new_scheme()
    pid = ledger.new_pass()
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, 100_000)
    request = ledger.redemption(pid, scheme_id=scheme, amount=1_000, redemption_id=REDEMPTION_ID)
    return Race(scheme, pid, request, ledger.client.redeem_data(request))


@pytest.fixture
def merchants(ledger: LedgerEnv) -> list[LocalAccount]:
    """Twenty funded accounts holding the merchant role (terminals of different partners)."""
    accounts = [Account.from_key(keccak(b"terminal-%d" % i)) for i in range(THREADS)]
    for account in accounts:
        _rpc(ledger, "anvil_setBalance", [account.address, hex(10**20)])
        ledger.client.transact(ledger.admin, "grantRole", ROLES["merchant"], account.address)
    return accounts


def _tx(ledger: LedgerEnv, sender: LocalAccount, data: bytes, nonce: int) -> dict[str, Any]:
    return {
        "from": sender.address,
        "to": ledger.client.address,
        "data": data,
        "nonce": nonce,
        "gas": GAS,
        "gasPrice": int(ledger.w3.eth.gas_price) * 2,
        "chainId": ledger.client.chain_id,
    }


def _send_together(ledger: LedgerEnv, raw_txs: list[bytes]) -> list[bytes]:
    """Send each raw transaction from its own thread and HTTP connection, released at once."""
    url = ledger.w3.provider.endpoint_uri  # type: ignore[attr-defined]
    barrier = threading.Barrier(len(raw_txs))

    def send(raw: bytes) -> bytes:
        w3 = Web3(HTTPProvider(url, cache_allowed_requests=True))
        barrier.wait(timeout=30)
        return bytes(w3.eth.send_raw_transaction(raw))

    with ThreadPoolExecutor(max_workers=len(raw_txs)) as pool:
        return list(pool.map(send, raw_txs))


def _receipts(ledger: LedgerEnv, hashes: list[bytes]) -> list[Any]:
    return [
        ledger.w3.eth.wait_for_transaction_receipt(HexBytes(h), timeout=60, poll_latency=0.02)
        for h in hashes
    ]


def _check_exactly_one(ledger: LedgerEnv, race: Race, receipts: list[Any]) -> Any:
    winners = [r for r in receipts if r["status"] == 1]
    assert len(winners) == 1, [r["status"] for r in receipts]
    (winner,) = winners
    events = ledger.client.decode_logs([dict(log) for log in winner["logs"]])
    assert [e.name for e in events] == ["Redeemed", "ReceiptsRecorded"]
    assert events[0].args["redemptionId"] == REDEMPTION_ID
    for receipt in receipts:
        if receipt is not winner:
            assert receipt["logs"] == []
    assert ledger.client.balance_of(race.scheme, race.pid) == 99_000
    assert ledger.client.is_redemption_used(REDEMPTION_ID)
    return winner


def test_same_id_from_twenty_terminals_in_one_block(
    ledger: LedgerEnv, race: Race, merchants: list[LocalAccount], manual_mining: None
) -> None:
    txs = [
        _tx(ledger, m, race.data, ledger.w3.eth.get_transaction_count(m.address)) for m in merchants
    ]
    raw = [
        bytes(m.sign_transaction(tx).raw_transaction) for m, tx in zip(merchants, txs, strict=True)
    ]

    hashes = _send_together(ledger, raw)
    assert len(set(hashes)) == THREADS
    _rpc(ledger, "evm_mine", [])
    receipts = _receipts(ledger, hashes)

    assert len({r["blockNumber"] for r in receipts}) == 1
    winner = _check_exactly_one(ledger, race, receipts)
    totals = [ledger.client.merchant_totals(m.address).redeemed for m in merchants]
    assert sorted(totals) == [0] * (THREADS - 1) + [1_000]
    assert ledger.client.merchant_totals(winner["from"]).redeemed == 1_000
    for tx, receipt in zip(txs, receipts, strict=True):
        if receipt["status"] == 1:
            continue
        reason = ledger.client.replay_error(tx, int(receipt["blockNumber"]))
        assert isinstance(reason, errors.RedemptionIdUsed), reason
        assert reason.values["redemptionId"] == REDEMPTION_ID


def test_same_id_from_one_account_with_consecutive_nonces(
    ledger: LedgerEnv, race: Race, manual_mining: None
) -> None:
    first = ledger.w3.eth.get_transaction_count(ledger.merchant.address)
    txs = [_tx(ledger, ledger.merchant, race.data, first + i) for i in range(THREADS)]
    raw = [bytes(ledger.merchant.sign_transaction(tx).raw_transaction) for tx in txs]

    hashes = _send_together(ledger, raw)
    _rpc(ledger, "evm_mine", [])
    receipts = _receipts(ledger, hashes)

    winner = _check_exactly_one(ledger, race, receipts)
    assert winner["transactionHash"] == hashes[0]  # nonce order decides within one sender
    assert ledger.client.merchant_totals(ledger.merchant.address).redeemed == 1_000
    for tx, receipt in zip(txs[1:], receipts[1:], strict=True):
        reason = ledger.client.replay_error(tx, int(receipt["blockNumber"]))
        assert isinstance(reason, errors.RedemptionIdUsed), reason


def test_same_id_racing_with_automine(
    ledger: LedgerEnv, race: Race, merchants: list[LocalAccount]
) -> None:
    """Each transaction is mined on arrival, in its own block: the replay shows why it failed."""
    txs = [
        _tx(ledger, m, race.data, ledger.w3.eth.get_transaction_count(m.address)) for m in merchants
    ]
    raw = [
        bytes(m.sign_transaction(tx).raw_transaction) for m, tx in zip(merchants, txs, strict=True)
    ]

    receipts = _receipts(ledger, _send_together(ledger, raw))

    winner = _check_exactly_one(ledger, race, receipts)
    for tx, receipt in zip(txs, receipts, strict=True):
        if receipt is winner:
            continue
        assert receipt["blockNumber"] > winner["blockNumber"]
        reason = ledger.client.replay_error(tx, int(receipt["blockNumber"]))
        assert isinstance(reason, errors.RedemptionIdUsed), reason
        assert reason.values == {"redemptionId": REDEMPTION_ID, "redemptionIdAgain": REDEMPTION_ID}


def test_replay_error_explains_a_loser_within_the_same_block(
    ledger: LedgerEnv, race: Race, merchants: list[LocalAccount], manual_mining: None
) -> None:
    pair = merchants[:2]
    txs = [_tx(ledger, m, race.data, ledger.w3.eth.get_transaction_count(m.address)) for m in pair]
    hashes = [
        bytes(ledger.w3.eth.send_raw_transaction(m.sign_transaction(tx).raw_transaction))
        for m, tx in zip(pair, txs, strict=True)
    ]
    _rpc(ledger, "evm_mine", [])
    receipts = _receipts(ledger, hashes)
    _check_exactly_one(ledger, race, receipts)
    loser_tx, loser = next((t, r) for t, r in zip(txs, receipts, strict=True) if r["status"] == 0)

    reason = ledger.client.replay_error(loser_tx, int(loser["blockNumber"]))

    assert isinstance(reason, errors.RedemptionIdUsed), reason
