"""RedemptionBatcher with one batch in flight, and its ``on_outcomes`` listener, on a real anvil."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from ledger import contract_errors as errors
from ledger.batcher import (
    RedemptionAccepted,
    RedemptionBatcher,
    RedemptionOutcome,
    RedemptionRefused,
)
from ledger.node import AnvilNode
from ledger.relayer import Relayer
from ledger.rpc import RpcClient
from tests.ledger.conftest import LedgerEnv

PASSES = 10
REDEMPTIONS = 200
AMOUNT = 100

Listener = Callable[[Sequence[RedemptionOutcome]], None]


@pytest.fixture
def make_batcher(
    ledger: LedgerEnv, anvil_node: AnvilNode
) -> Iterator[Callable[..., RedemptionBatcher]]:
    """A batcher on the merchant's relayer (``**options`` as RedemptionBatcher takes them)."""
    with (
        RpcClient(anvil_node.rpc_url) as rpc,
        Relayer(rpc, account=ledger.merchant, chain_id=ledger.client.chain_id) as relayer,
    ):
        made: list[RedemptionBatcher] = []

        def make(**options: object) -> RedemptionBatcher:
            batcher = RedemptionBatcher(client=ledger.client, relayer=relayer, **options)  # type: ignore[arg-type]
            made.append(batcher)
            return batcher

        yield make
        for batcher in made:
            batcher.close()


def _funded_passes(ledger: LedgerEnv, count: int, amount: int = 10_000) -> tuple[int, list[bytes]]:
    scheme = ledger.new_scheme()
    passes = [ledger.new_pass() for _ in range(count)]
    ledger.client.transact(ledger.issuer, "issueBatch", scheme, passes, [amount] * count)
    return scheme, passes


def test_one_batch_in_flight_makes_few_large_batches(
    ledger: LedgerEnv, make_batcher: Callable[..., RedemptionBatcher]
) -> None:
    scheme, passes = _funded_passes(ledger, PASSES)
    batcher = make_batcher(max_items=100, max_in_flight=1)
    requests = [
        ledger.redemption(passes[i % PASSES], scheme_id=scheme, amount=AMOUNT, redemption_id=i)
        for i in range(1, REDEMPTIONS + 1)
    ]

    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = list(pool.map(batcher.submit, requests))
    outcomes = [future.result(60) for future in futures]

    assert all(future.done() for future in futures)
    assert all(isinstance(o, RedemptionAccepted) for o in outcomes)
    assert [o.redemption_id for o in outcomes] == [r.redemption_id for r in requests]
    assert batcher.items_sent == REDEMPTIONS
    assert batcher.batches_sent <= REDEMPTIONS // 10
    accepted = sum(o.amount for o in outcomes if isinstance(o, RedemptionAccepted))
    assert accepted == REDEMPTIONS * AMOUNT
    assert ledger.client.merchant_totals(ledger.merchant.address).redeemed == accepted
    per_pass = REDEMPTIONS // PASSES * AMOUNT
    assert all(ledger.client.balance_of(scheme, p) == 10_000 - per_pass for p in passes)
    assert all(ledger.client.is_redemption_used(r.redemption_id) for r in requests)


def test_on_outcomes_sees_every_batch_in_submission_order_before_the_futures(
    ledger: LedgerEnv, make_batcher: Callable[..., RedemptionBatcher]
) -> None:
    scheme, passes = _funded_passes(ledger, 4, amount=2_000)
    futures: dict[int, Future[RedemptionOutcome]] = {}
    submitted = threading.Event()
    calls: list[list[RedemptionOutcome]] = []
    undone_at_call: list[bool] = []

    def listener(outcomes: Sequence[RedemptionOutcome]) -> None:
        assert submitted.wait(30)  # every future is in `futures` before we look at them
        calls.append(list(outcomes))
        undone_at_call.append(all(not futures[o.redemption_id].done() for o in outcomes))

    batcher = make_batcher(max_items=7, max_in_flight=1, on_outcomes=listener)
    ids = list(range(100, 160))
    requests = [
        ledger.redemption(passes[i % 4], scheme_id=scheme, amount=AMOUNT, redemption_id=rid)
        for i, rid in enumerate(ids)
    ]
    # one item the contract refuses (over the balance): the listener gets refusals too
    requests[30] = ledger.redemption(
        passes[2], scheme_id=scheme, amount=1_000_000, redemption_id=ids[30]
    )
    for request in requests:
        futures[request.redemption_id] = batcher.submit(request)
    submitted.set()
    results = [futures[rid].result(60) for rid in ids]

    assert len(calls) == batcher.batches_sent
    assert all(0 < len(call) <= 7 for call in calls)
    assert all(undone_at_call)
    assert [o.redemption_id for call in calls for o in call] == ids  # submission order
    # each call is one mined batch: one transaction, each in a later block than the last
    tx_hashes = [{o.transaction_hash for o in call} for call in calls]
    assert all(len(hashes) == 1 for hashes in tx_hashes)
    assert len({next(iter(h)) for h in tx_hashes}) == len(calls)
    blocks = [c[0].block_number for c in calls if isinstance(c[0], RedemptionAccepted)]
    assert blocks == sorted(set(blocks))
    # the listener saw exactly the outcomes the callers got
    assert [o for call in calls for o in call] == results
    refused = results[30]
    assert isinstance(refused, RedemptionRefused)
    assert isinstance(refused.error, errors.RedemptionAmountOverBalance)
    accepted = [o for o in results if isinstance(o, RedemptionAccepted)]
    assert len(accepted) == len(ids) - 1
    totals = ledger.client.merchant_totals(ledger.merchant.address)
    assert totals.redeemed == sum(o.amount for o in accepted)


def test_a_failing_on_outcomes_listener_does_not_stop_the_futures(
    ledger: LedgerEnv,
    make_batcher: Callable[..., RedemptionBatcher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    scheme, passes = _funded_passes(ledger, 2, amount=1_000)
    calls: list[int] = []

    def failing(outcomes: Sequence[RedemptionOutcome]) -> None:
        calls.append(len(outcomes))
        raise RuntimeError("the record store is down")

    batcher = make_batcher(max_items=5, max_in_flight=1, on_outcomes=failing)
    requests = [
        ledger.redemption(passes[i % 2], scheme_id=scheme, amount=AMOUNT, redemption_id=500 + i)
        for i in range(12)
    ]
    with caplog.at_level(logging.ERROR, logger="ledger.batcher"):
        futures = [batcher.submit(r) for r in requests]
        outcomes = [f.result(60) for f in futures]

    assert all(isinstance(o, RedemptionAccepted) for o in outcomes)
    assert [o.redemption_id for o in outcomes] == [r.redemption_id for r in requests]
    assert sum(calls) == len(requests)
    assert len(calls) == batcher.batches_sent
    failures = [r for r in caplog.records if "on_outcomes listener failed" in r.getMessage()]
    assert len(failures) == len(calls)
    assert all(r.exc_info is not None and r.exc_info[0] is RuntimeError for r in failures)
    assert all(ledger.client.balance_of(scheme, p) == 1_000 - 6 * AMOUNT for p in passes)


def test_a_cancelled_future_does_not_stop_the_rest_of_its_batch(
    ledger: LedgerEnv, make_batcher: Callable[..., RedemptionBatcher]
) -> None:
    scheme, passes = _funded_passes(ledger, 1, amount=1_000)
    batcher = make_batcher(max_items=10, max_in_flight=1, linger_s=0.5)
    requests = [
        ledger.redemption(passes[0], scheme_id=scheme, amount=10, redemption_id=900 + i)
        for i in range(3)
    ]
    futures = [batcher.submit(request) for request in requests]
    assert futures[0].cancel()  # the caller gave up before the batch was mined

    later = [future.result(30) for future in futures[1:]]

    assert all(isinstance(outcome, RedemptionAccepted) for outcome in later)
    assert batcher.batches_sent == 1
    # the chain applied all three, the cancelled one included (cancelling cannot unsend)
    assert ledger.client.balance_of(scheme, passes[0]) == 1_000 - 3 * 10


def test_a_mined_batch_frees_its_slot_before_its_outcomes_are_recorded(
    ledger: LedgerEnv, make_batcher: Callable[..., RedemptionBatcher]
) -> None:
    """``max_in_flight`` counts batches sent and not yet mined: while a slow ``on_outcomes``
    still records the first batch, the second is sent and mined."""
    scheme, passes = _funded_passes(ledger, 2)
    release = threading.Event()
    recorded: list[list[int]] = []

    def slow_listener(outcomes: Sequence[RedemptionOutcome]) -> None:
        recorded.append([o.redemption_id for o in outcomes])
        if len(recorded) == 1:
            assert release.wait(30)

    batcher = make_batcher(max_items=1, max_in_flight=1, on_outcomes=slow_listener)
    first = batcher.submit(
        ledger.redemption(passes[0], scheme_id=scheme, amount=1, redemption_id=901)
    )
    second = batcher.submit(
        ledger.redemption(passes[1], scheme_id=scheme, amount=1, redemption_id=902)
    )
    deadline = time.monotonic() + 30
    while len(recorded) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert recorded == [[901], [902]]  # the second batch was mined and recorded meanwhile
    assert not first.done()
    assert isinstance(second.result(30), RedemptionAccepted)
    release.set()
    assert isinstance(first.result(30), RedemptionAccepted)
    assert batcher.batches_sent == 2
