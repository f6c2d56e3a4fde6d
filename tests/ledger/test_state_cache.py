"""LedgerStateCache on a real anvil: read-through, invalidated by receipts and by followed logs.

The follower thread is started with a poll interval far longer than any test, so every log the
cache follows is applied by an explicit :meth:`LedgerStateCache.poll` (deterministic).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from ledger.client import SchemeKind
from ledger.node import AnvilNode
from ledger.relayer import Relayer, TxRequest
from ledger.rpc import RpcClient, RpcRequest
from ledger.state_cache import CacheMiss, LedgerStateCache
from tests.ledger.conftest import LedgerEnv

#: Never fires during a test: the follower only runs when a test calls poll().
NEVER_S = 3600.0


class CountingRpc(RpcClient):
    """A real RpcClient that counts what it sends and can run a hook after a batch returns."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.calls: list[str] = []
        self.batches = 0
        self.after_batch: Callable[[], None] | None = None

    def call(self, method: str, *params: Any) -> Any:
        self.calls.append(method)
        return super().call(method, *params)

    def batch(self, requests: Sequence[RpcRequest | tuple[str, Sequence[Any]]]) -> list[Any]:
        self.batches += 1
        replies = super().batch(requests)
        hook, self.after_batch = self.after_batch, None
        if hook is not None:
            hook()
        return replies


@pytest.fixture
def rpc(anvil_node: AnvilNode) -> Iterator[CountingRpc]:
    with CountingRpc(anvil_node.rpc_url) as client:
        yield client


@pytest.fixture
def make_cache(ledger: LedgerEnv, rpc: CountingRpc) -> Iterator[Callable[[], LedgerStateCache]]:
    """Start a cache (following from the current head) when the test's setup is mined."""
    caches: list[LedgerStateCache] = []

    def make() -> LedgerStateCache:
        cache = LedgerStateCache(ledger.client, rpc, poll_interval_s=NEVER_S).start()
        caches.append(cache)
        return cache

    yield make
    for cache in caches:
        cache.close()


def _funded_pass(ledger: LedgerEnv, amount: int = 1_000) -> tuple[int, bytes]:
    scheme = ledger.new_scheme()
    pid = ledger.new_pass()
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, amount)
    return scheme, pid


def _head(ledger: LedgerEnv) -> int:
    return int(ledger.w3.eth.block_number)


def test_a_pass_is_read_once_then_served_from_the_cache(
    ledger: LedgerEnv, rpc: CountingRpc, make_cache: Callable[[], LedgerStateCache]
) -> None:
    scheme, pid = _funded_pass(ledger)
    cache = make_cache()

    first = cache.pass_snapshot(pid)
    assert (cache.stats.pass_misses, cache.stats.pass_hits) == (1, 0)
    assert rpc.batches == 1  # passOf and every balanceOf in one JSON-RPC batch
    assert first.block == _head(ledger)
    assert first.state == ledger.client.pass_of(pid)
    assert first.state.registered
    assert not first.state.blocked
    assert first.balances[scheme] == 1_000 == ledger.client.balance_of(scheme, pid)

    again = [cache.pass_snapshot(pid) for _ in range(5)]
    assert all(snapshot is first for snapshot in again)
    assert cache.pass_state(pid) == first.state
    assert (cache.stats.pass_misses, cache.stats.pass_hits) == (1, 5)
    assert rpc.batches == 1


def test_cached_only_raises_cache_miss_and_reads_nothing(
    ledger: LedgerEnv, rpc: CountingRpc, make_cache: Callable[[], LedgerStateCache]
) -> None:
    scheme, pid = _funded_pass(ledger)
    cache = make_cache()
    sent = (list(rpc.calls), rpc.batches)

    with pytest.raises(CacheMiss):
        cache.schemes(cached_only=True)
    with pytest.raises(CacheMiss):
        cache.pass_snapshot(pid, cached_only=True)
    with pytest.raises(CacheMiss):
        cache.pass_state(pid, cached_only=True)
    with pytest.raises(CacheMiss):
        cache.merchant_allowed(scheme, ledger.merchant.address, cached_only=True)
    assert (rpc.calls, rpc.batches) == sent
    assert (cache.stats.pass_misses, cache.stats.pass_hits) == (0, 0)

    cache.schemes()  # with the scheme list cached, a pass miss is still a miss
    sent = (list(rpc.calls), rpc.batches)
    with pytest.raises(CacheMiss):
        cache.pass_snapshot(pid, cached_only=True)
    assert (rpc.calls, rpc.batches) == sent
    assert cache.stats.pass_misses == 0

    read = cache.pass_snapshot(pid)
    assert cache.pass_snapshot(pid, cached_only=True) is read
    assert cache.pass_state(pid, cached_only=True) == read.state
    allowed = cache.merchant_allowed(scheme, ledger.merchant.address)
    assert cache.merchant_allowed(scheme, ledger.merchant.address, cached_only=True) is allowed


def test_an_issuance_by_another_account_is_visible_after_poll(
    ledger: LedgerEnv, make_cache: Callable[[], LedgerStateCache]
) -> None:
    scheme, pid = _funded_pass(ledger)
    cache = make_cache()
    assert cache.pass_snapshot(pid).balances[scheme] == 1_000

    # the issuer's own transaction: no relayer, no on_receipt, nothing observed
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, 500)
    assert cache.pass_snapshot(pid).balances[scheme] == 1_000  # stale until the follower polls
    assert cache.stats.pass_misses == 1

    assert cache.poll() == _head(ledger)
    assert cache.stats.last_block == _head(ledger)
    assert cache.stats.invalidations == 1
    fresh = cache.pass_snapshot(pid)
    assert cache.stats.pass_misses == 2
    assert fresh.block == _head(ledger)
    assert fresh.balances[scheme] == 1_500 == ledger.client.balance_of(scheme, pid)

    assert cache.poll() == _head(ledger)  # nothing new: nothing forgotten
    assert cache.pass_snapshot(pid) is fresh


def test_an_observed_redemption_is_debited_exactly_once(
    ledger: LedgerEnv,
    anvil_node: AnvilNode,
    rpc: CountingRpc,
    make_cache: Callable[[], LedgerStateCache],
) -> None:
    scheme, pid = _funded_pass(ledger)
    cache = make_cache()
    before = cache.pass_snapshot(pid)
    assert before.balances[scheme] == 1_000
    request = ledger.redemption(pid, scheme_id=scheme, amount=300, redemption_id=41)
    tx = TxRequest(to=ledger.client.address, data=ledger.client.redeem_data(request), gas=400_000)

    with (
        RpcClient(anvil_node.rpc_url) as relayer_rpc,
        Relayer(
            relayer_rpc,
            account=ledger.merchant,
            chain_id=ledger.client.chain_id,
            on_receipt=cache.observe_receipt,
        ) as relayer,
    ):
        receipt = relayer.submit(tx).result(60)
    assert receipt.ok
    assert receipt.block_number > before.block
    chain_balance = ledger.client.balance_of(scheme, pid)
    assert chain_balance == 700

    # on_receipt ran before the future resolved: the snapshot is debited, not read again
    batches = rpc.batches
    debited = cache.pass_snapshot(pid)
    assert cache.stats.debits == 1
    assert debited.balances[scheme] == chain_balance
    assert debited.block == before.block
    assert len(debited.applied) == 1
    assert cache.stats.pass_misses == 1
    assert rpc.batches == batches

    cache.observe_receipt(receipt)  # the same receipt again
    cache.observe(ledger.client.receipt_events(receipt))  # and its events once more
    assert cache.pass_snapshot(pid).balances[scheme] == chain_balance

    assert cache.poll() >= receipt.block_number  # the follower sees the Redeemed log too,
    assert cache.stats.logs_skipped == len(receipt.logs) > 0  # knows it from the receipt
    assert cache.stats.debits == 1
    after_poll = cache.pass_snapshot(pid)
    assert after_poll.balances[scheme] == chain_balance == ledger.client.balance_of(scheme, pid)
    assert cache.stats.pass_misses == 1
    assert rpc.batches == batches


def test_a_redemption_followed_before_a_read_is_not_debited_again(
    ledger: LedgerEnv, anvil_node: AnvilNode, make_cache: Callable[[], LedgerStateCache]
) -> None:
    scheme, pid = _funded_pass(ledger)
    cache = make_cache()
    request = ledger.redemption(pid, scheme_id=scheme, amount=250, redemption_id=42)
    result = ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())
    cache.poll()  # the Redeemed log is followed while nothing is cached
    snapshot = cache.pass_snapshot(pid)  # read at the head: it already includes the debit
    assert snapshot.block >= result.block_number

    cache.observe(result.events)  # the receipt arriving late changes nothing
    assert cache.stats.debits == 0
    assert cache.pass_snapshot(pid).balances[scheme] == 750 == ledger.client.balance_of(scheme, pid)


def test_block_and_unblock_invalidate_the_pass_state(
    ledger: LedgerEnv, make_cache: Callable[[], LedgerStateCache]
) -> None:
    scheme, pid = _funded_pass(ledger)
    cache = make_cache()
    assert not cache.pass_state(pid).blocked
    cache.pass_snapshot(pid)
    misses = cache.stats.pass_misses

    ledger.client.transact(ledger.issuer, "blockPass", pid)
    assert not cache.pass_state(pid).blocked  # not followed yet
    cache.poll()
    assert cache.stats.invalidations == 1
    with pytest.raises(CacheMiss):
        cache.pass_state(pid, cached_only=True)
    assert cache.pass_state(pid).blocked
    assert cache.pass_snapshot(pid).state.blocked
    assert cache.stats.pass_misses == misses + 1

    # observed at once from the transaction's own events (as a relayer's on_receipt would)
    result = ledger.client.transact(ledger.issuer, "unblockPass", pid)
    assert [e.name for e in result.events] == ["PassBlockStatusChanged"]
    cache.observe(result.events)
    with pytest.raises(CacheMiss):
        cache.pass_snapshot(pid, cached_only=True)
    state = cache.pass_state(pid)
    assert not state.blocked
    assert state == ledger.client.pass_of(pid)
    assert cache.pass_snapshot(pid).balances[scheme] == 1_000


def test_scheme_created_invalidates_the_scheme_list(
    ledger: LedgerEnv, make_cache: Callable[[], LedgerStateCache]
) -> None:
    scheme, pid = _funded_pass(ledger)
    cache = make_cache()
    listed = cache.schemes()
    assert [sid for sid, _ in listed] == list(range(1, ledger.client.scheme_count() + 1))
    assert cache.schemes(cached_only=True) is listed
    old = cache.pass_snapshot(pid)

    new = ledger.new_scheme(SchemeKind.USES)
    assert cache.schemes() is listed  # not followed yet
    cache.poll()
    with pytest.raises(CacheMiss):
        cache.schemes(cached_only=True)
    relisted = cache.schemes()
    assert relisted[-1][0] == new
    assert relisted[-1][1].kind is SchemeKind.USES
    assert relisted[:-1] == listed

    # a snapshot without the new scheme's balance is read again
    with pytest.raises(CacheMiss):
        cache.pass_snapshot(pid, cached_only=True)
    fresh = cache.pass_snapshot(pid)
    assert fresh is not old
    assert fresh.balances[new] == 0
    assert fresh.balances[scheme] == 1_000


def test_merchant_allowance_changed_invalidates_that_allowance(
    ledger: LedgerEnv, make_cache: Callable[[], LedgerStateCache]
) -> None:
    scheme = ledger.new_scheme(open_to_all_merchants=False)
    cache = make_cache()
    merchant, other = ledger.merchant.address, ledger.other_merchant.address
    assert cache.merchant_allowed(scheme, merchant) is False
    assert cache.merchant_allowed(scheme, other) is False

    ledger.client.transact(ledger.issuer, "setMerchantAllowed", scheme, merchant, True)
    assert cache.merchant_allowed(scheme, merchant, cached_only=True) is False  # not followed
    cache.poll()
    with pytest.raises(CacheMiss):
        cache.merchant_allowed(scheme, merchant, cached_only=True)
    assert cache.merchant_allowed(scheme, other, cached_only=True) is False  # untouched
    assert cache.merchant_allowed(scheme, merchant.lower()) is True
    assert cache.merchant_allowed(scheme, merchant, cached_only=True) is True

    result = ledger.client.transact(ledger.issuer, "setMerchantAllowed", scheme, merchant, False)
    cache.observe(result.events)
    assert cache.merchant_allowed(scheme, merchant) is False


def test_a_read_that_raced_an_event_is_not_stored(
    ledger: LedgerEnv, rpc: CountingRpc, make_cache: Callable[[], LedgerStateCache]
) -> None:
    scheme, pid = _funded_pass(ledger)
    cache = make_cache()
    cache.schemes()
    observed: list[int] = []

    def block_the_pass_while_the_read_is_in_flight() -> None:
        result = ledger.client.transact(ledger.issuer, "blockPass", pid)
        observed.append(result.block_number)
        cache.observe(result.events)  # as the issuer relayer's on_receipt would

    rpc.after_batch = block_the_pass_while_the_read_is_in_flight
    raced = cache.pass_snapshot(pid)  # read before the block: returned, but not stored
    assert observed
    assert raced.block < observed[0]
    assert not raced.state.blocked
    with pytest.raises(CacheMiss):
        cache.pass_snapshot(pid, cached_only=True)
    with pytest.raises(CacheMiss):
        cache.pass_state(pid, cached_only=True)

    fresh = cache.pass_snapshot(pid)  # read again, at the observed block
    assert fresh.block >= observed[0]
    assert fresh.state.blocked
    assert cache.pass_snapshot(pid, cached_only=True) is fresh
    assert fresh.balances[scheme] == 1_000


def test_a_read_that_raced_a_redemption_is_not_stored(
    ledger: LedgerEnv, rpc: CountingRpc, make_cache: Callable[[], LedgerStateCache]
) -> None:
    scheme, pid = _funded_pass(ledger)
    cache = make_cache()
    cache.schemes()
    request = ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=43)

    def redeem_while_the_read_is_in_flight() -> None:
        result = ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())
        cache.observe(result.events)

    rpc.after_batch = redeem_while_the_read_is_in_flight
    raced = cache.pass_snapshot(pid)
    assert raced.balances[scheme] == 1_000  # the state before the redemption ...
    with pytest.raises(CacheMiss):  # ... is not kept, and no debit was applied to it
        cache.pass_snapshot(pid, cached_only=True)
    assert cache.stats.debits == 0
    assert cache.pass_snapshot(pid).balances[scheme] == 900 == ledger.client.balance_of(scheme, pid)
