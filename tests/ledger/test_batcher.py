"""RedemptionBatcher on a real anvil: many concurrent redemptions become few redeemBatch txs."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from ledger import contract_errors as errors
from ledger.batcher import RedemptionAccepted, RedemptionBatcher, RedemptionRefused
from ledger.node import AnvilNode
from ledger.relayer import Relayer
from ledger.rpc import RpcClient
from tests.ledger.conftest import LedgerEnv

PASSES = 20
REDEMPTIONS = 200


@pytest.fixture
def batcher(ledger: LedgerEnv, anvil_node: AnvilNode) -> Iterator[RedemptionBatcher]:
    with (
        RpcClient(anvil_node.rpc_url) as rpc,
        Relayer(rpc, account=ledger.merchant, chain_id=ledger.client.chain_id) as relayer,
    ):
        batcher = RedemptionBatcher(client=ledger.client, relayer=relayer, max_items=50)
        yield batcher
        batcher.close()


def test_concurrent_redemptions_are_batched_and_all_applied_once(
    ledger: LedgerEnv, batcher: RedemptionBatcher
) -> None:
    scheme = ledger.new_scheme()
    passes = [ledger.new_pass() for _ in range(PASSES)]
    ledger.client.transact(ledger.issuer, "issueBatch", scheme, passes, [10_000] * PASSES)
    requests = [
        ledger.redemption(passes[i % PASSES], scheme_id=scheme, amount=100, redemption_id=i)
        for i in range(REDEMPTIONS)
    ]

    with ThreadPoolExecutor(max_workers=32) as pool:
        outcomes = list(pool.map(lambda r: batcher.submit(r).result(60), requests))

    assert all(isinstance(o, RedemptionAccepted) for o in outcomes)
    assert sorted(o.redemption_id for o in outcomes) == list(range(REDEMPTIONS))
    assert batcher.batches_sent < REDEMPTIONS // 4
    per_pass = REDEMPTIONS // PASSES * 100
    assert all(ledger.client.balance_of(scheme, p) == 10_000 - per_pass for p in passes)
    totals = ledger.client.merchant_totals(ledger.merchant.address)
    assert totals.redeemed == REDEMPTIONS * 100
    # each accepted outcome carries what a reversal needs
    first = outcomes[0]
    assert isinstance(first, RedemptionAccepted)
    assert first.receipt_root is not None


def test_bad_items_are_refused_with_typed_errors_and_do_not_affect_others(
    ledger: LedgerEnv, batcher: RedemptionBatcher
) -> None:
    scheme = ledger.new_scheme()
    pid = ledger.new_pass()
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, 1_000)
    good = ledger.redemption(pid, scheme_id=scheme, amount=300, redemption_id=7)
    duplicate = ledger.redemption(pid, scheme_id=scheme, amount=300, redemption_id=7)
    too_much = ledger.redemption(pid, scheme_id=scheme, amount=5_000, redemption_id=8)
    by_outsider = ledger.redemption(
        pid, scheme_id=scheme, amount=10, redemption_id=9, signer=ledger.outsider
    )

    futures = [batcher.submit(r) for r in (good, duplicate, too_much, by_outsider)]
    outcomes = [f.result(60) for f in futures]

    assert isinstance(outcomes[0], RedemptionAccepted)
    refused = outcomes[1:]
    assert all(isinstance(o, RedemptionRefused) for o in refused)
    kinds = [type(o.error) for o in refused if isinstance(o, RedemptionRefused)]
    assert kinds == [
        errors.RedemptionIdUsed,
        errors.RedemptionAmountOverBalance,
        errors.RedemptionSignerNotAllowed,
    ]
    assert ledger.client.balance_of(scheme, pid) == 700


def test_a_paused_ledger_refuses_the_whole_batch(
    ledger: LedgerEnv, batcher: RedemptionBatcher
) -> None:
    scheme = ledger.new_scheme()
    pid = ledger.new_pass()
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, 1_000)
    ledger.client.transact(ledger.pauser, "pause")

    outcome = batcher.submit(
        ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=1)
    ).result(60)

    assert isinstance(outcome, RedemptionRefused)
    assert isinstance(outcome.error, errors.EnforcedPause)
    assert ledger.client.balance_of(scheme, pid) == 1_000
