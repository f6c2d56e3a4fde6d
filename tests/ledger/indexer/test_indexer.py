"""The indexer on the session's anvil and both databases: backfill, idempotency, reorgs, status."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import delete, select

from ledger.client import UNLIMITED
from ledger.events import EventDecoder
from ledger.indexer import (
    Indexer,
    IndexerConfig,
    RangePolicy,
    ReorgNotice,
    ReorgTooDeep,
    index_state,
    index_status,
)
from ledger.rpc import RpcClient, RpcError
from ledger.store.db import Store
from ledger.store.index import (
    EVENT_TABLES,
    IndexBlock,
    IndexCheckpoint,
    IndexedCohortClaim,
    IndexedEntitlement,
    IndexedExpiry,
    IndexedGovernance,
    IndexedRedemption,
    IndexedRejection,
    IndexedScheme,
)
from tests.ledger.conftest import LedgerEnv
from tests.ledger.indexer.conftest import (
    checksum,
    counts,
    dump,
    every_event,
    make_indexer,
    redemptions,
    rpc,
    rpc_of,
)


def chain_events(ledger: LedgerEnv) -> list[Any]:
    logs = rpc_of(ledger).call(
        "eth_getLogs",
        {
            "address": ledger.client.address,
            "fromBlock": hex(ledger.deployment.deployed_block),
            "toBlock": "latest",
        },
    )
    decoder = EventDecoder(ledger.client.abi)
    return [e for e in (decoder.decode_log(log) for log in logs) if e is not None]


def rows(store: Store, model: type) -> list[Any]:
    table = model.__table__  # type: ignore[attr-defined]
    with store.engine.connect() as conn:
        return list(conn.execute(select(table).order_by(table.c.block_number, table.c.log_index)))


def test_backfill_mirrors_every_event(ledger: LedgerEnv, migrated_store: Store) -> None:
    scenario = every_event(ledger)
    indexer = make_indexer(migrated_store, ledger)
    applied = indexer.sync()
    events = chain_events(ledger)
    by_name: dict[str, list[Any]] = {}
    for event in events:
        by_name.setdefault(event.name, []).append(event)
    assert applied == len(events)  # every event of the contract is mirrored
    assert indexer.checkpoint is not None
    assert indexer.checkpoint.number == ledger.w3.eth.block_number
    n = counts(migrated_store.engine)
    assert n["index_pass"] == len(by_name["PassRegistered"]) == 4
    assert n["index_pass_change"] == 3
    assert n["index_card_change"] == 1
    assert n["index_scheme"] == 4
    issued = sum(len(e.args["passIds"]) for e in by_name["EntitlementsIssued"])
    assert n["index_entitlement"] == len(by_name["EntitlementIssued"]) + issued + 2
    assert n["index_cohort"] == 1
    assert n["index_cohort_claim"] == 2
    assert n["index_redemption"] == len(by_name["Redeemed"]) == 8
    assert n["index_rejection"] == 1
    assert n["index_reversal"] == 1
    assert n["index_settlement"] == 1
    assert n["index_expiry"] == len(by_name["EntitlementExpired"])
    governance = ("RoleGranted", "MerchantAllowanceChanged", "ReversalWindowChanged")
    assert n["index_governance"] == sum(len(by_name.get(name, [])) for name in governance) > 0
    grants = [r for r in rows(migrated_store, IndexedGovernance) if r.kind == "role_granted"]
    assert [(r.role, r.account) for r in grants] == [
        ("0x" + e.args["role"].hex(), e.args["account"]) for e in by_name["RoleGranted"]
    ]

    # values: redemptions against the decoded chain, with their receipt roots and positions
    redeemed = rows(migrated_store, IndexedRedemption)
    roots = {e.transaction_hash: "0x" + e.args["root"].hex() for e in by_name["ReceiptsRecorded"]}
    for row, event in zip(redeemed, by_name["Redeemed"], strict=True):
        assert row.redemption_id == str(event.args["redemptionId"])
        assert row.pass_id == "0x" + event.args["passId"].hex()
        assert (row.scheme_id, row.merchant) == (event.args["schemeId"], event.args["merchant"])
        assert (row.amount, row.debited, row.discount, row.credited) == (
            event.args["amount"],
            event.args["debited"],
            event.args["discount"],
            event.args["credited"],
        )
        assert row.block_hash == "0x" + event.block_hash.hex()
        assert row.log_index == event.log_index
        assert row.receipt_root == roots[event.transaction_hash]
    batch_rows = [r for r in redeemed if r.redemption_id in {"2", "3", "5", "6", "7"}]
    assert [r.receipt_position for r in batch_rows] == [0, 1, 2, 3, 4]
    assert len({r.receipt_root for r in batch_rows}) == 1
    # the reversal proof of redemption 3 can be rebuilt from the index alone
    assert rows(migrated_store, IndexedRejection)[0].reason == "RedemptionAmountOverBalance"

    entitlements = rows(migrated_store, IndexedEntitlement)
    unlimited = [r for r in entitlements if r.unlimited]
    assert len(unlimited) == 2
    assert all(r.amount == 0 for r in unlimited)
    claims = [r for r in entitlements if r.source == "claim"]
    assert {r.scheme_id for r in claims} == {scenario.budget}
    assert sorted(r.amount for r in claims) == [1_500, 2_500]
    assert {r.leaf_index for r in rows(migrated_store, IndexedCohortClaim)} == {0, 1}
    schemes = rows(migrated_store, IndexedScheme)
    assert [s.kind for s in schemes] == ["budget", "uses", "discount", "budget"]
    assert int(schemes[2].budget_cap) == 50_000
    expiries = rows(migrated_store, IndexedExpiry)
    assert {r.scheme_id for r in expiries} == {scenario.short}
    assert UNLIMITED not in {r.amount for r in entitlements}


def test_applying_the_same_range_twice_changes_nothing(
    ledger: LedgerEnv, migrated_store: Store
) -> None:
    every_event(ledger)
    make_indexer(migrated_store, ledger).sync()
    before = checksum(migrated_store.engine)
    # forget the checkpoint (as if the rows had been written by a run that never checkpointed)
    with migrated_store.engine.begin() as conn:
        conn.execute(delete(IndexCheckpoint.__table__))  # type: ignore[attr-defined]
    again = make_indexer(migrated_store, ledger, ranges=RangePolicy(initial=5, maximum=50))
    again.sync()
    assert checksum(migrated_store.engine) == before
    again.sync()
    assert checksum(migrated_store.engine) == before


def test_chunking_does_not_change_the_rows(ledger: LedgerEnv, migrated_store: Store) -> None:
    every_event(ledger)
    make_indexer(migrated_store, ledger, ranges=RangePolicy(initial=1, maximum=1)).sync()
    small = dump(migrated_store.engine)
    assert _fresh_dump(ledger, migrated_store, ranges=RangePolicy(initial=10_000)) == small


def _fresh_dump(ledger: LedgerEnv, store: Store, **config: Any) -> dict[str, Any]:
    """Index the current chain from scratch into ``store`` (emptied first) and dump it."""
    with store.engine.begin() as conn:
        for model in [*EVENT_TABLES, IndexBlock, IndexCheckpoint]:
            conn.execute(delete(model.__table__))  # type: ignore[attr-defined]
    make_indexer(store, ledger, **config).sync()
    return dump(store.engine)


def test_reorg_rewinds_to_the_common_ancestor(ledger: LedgerEnv, migrated_store: Store) -> None:
    s = every_event(ledger)
    p1, p2 = s.passes[0], s.passes[1]
    fork = rpc(ledger, "evm_snapshot")
    redemptions(ledger, s.budget, p1, range(100, 112), per_tx=3)  # 4 blocks, old branch
    notices: list[ReorgNotice] = []
    indexer = make_indexer(migrated_store, ledger)
    indexer.on_reorg = notices.append
    indexer.sync()
    old_head = ledger.w3.eth.block_number
    assert counts(migrated_store.engine)["index_redemption"] == 8 + 12

    assert rpc(ledger, "evm_revert", fork)
    redemptions(ledger, s.budget, p2, range(200, 210), per_tx=2)  # 5 other blocks
    ledger.client.transact(ledger.issuer, "blockPass", p1)
    indexer.sync()
    assert notices
    assert notices[0].old.number == old_head
    assert notices[0].ancestor is not None
    assert notices[0].ancestor.number == old_head - 4
    assert notices[0].depth == 4
    reorged = dump(migrated_store.engine)
    assert len(reorged["index_redemption"]) == 8 + 10
    assert {r[6] for r in reorged["index_redemption"]} >= {"200", "209"}
    assert _fresh_dump(ledger, migrated_store) == reorged


def test_status_tells_an_index_ahead_of_a_node_that_lost_blocks(
    ledger: LedgerEnv, migrated_store: Store
) -> None:
    s = every_event(ledger)
    fork = rpc(ledger, "evm_snapshot")
    redemptions(ledger, s.budget, s.passes[0], range(100, 106), per_tx=2)  # 3 blocks
    indexer = make_indexer(migrated_store, ledger)
    indexer.sync()
    address = ledger.client.address
    assert not index_state(migrated_store, rpc_of(ledger), contract=address).diverged
    assert not index_state(migrated_store, ledger.w3, contract=address).diverged

    assert rpc(ledger, "evm_revert", fork)  # the node restarted from older state
    behind = index_state(migrated_store, rpc_of(ledger), contract=address)
    assert behind.diverged
    assert behind.checkpoint is not None
    assert behind.checkpoint > behind.head
    # the same height again, other blocks: the hash tells
    redemptions(ledger, s.budget, s.passes[1], range(300, 306), per_tx=2)
    same_height = index_state(migrated_store, ledger.w3, contract=address)
    assert same_height.head == same_height.checkpoint
    assert same_height.diverged
    indexer.sync()
    assert not index_state(migrated_store, rpc_of(ledger), contract=address).diverged


def test_reorg_to_a_shorter_chain_is_seen_while_idle(
    ledger: LedgerEnv, migrated_store: Store
) -> None:
    s = every_event(ledger)
    fork = rpc(ledger, "evm_snapshot")
    redemptions(ledger, s.budget, s.passes[0], range(100, 106), per_tx=2)
    indexer = make_indexer(migrated_store, ledger)
    indexer.sync()
    assert rpc(ledger, "evm_revert", fork)
    redemptions(ledger, s.budget, s.passes[1], range(300, 302), per_tx=2)  # 1 block < 3
    indexer.sync()
    assert indexer.checkpoint is not None
    assert indexer.checkpoint.number == ledger.w3.eth.block_number
    reorged = dump(migrated_store.engine)
    assert {r[6] for r in reorged["index_redemption"]} & {"100", "105"} == set()
    assert _fresh_dump(ledger, migrated_store) == reorged


def test_a_reorg_deeper_than_allowed_is_refused(ledger: LedgerEnv, migrated_store: Store) -> None:
    s = every_event(ledger)
    fork = rpc(ledger, "evm_snapshot")
    redemptions(ledger, s.budget, s.passes[0], range(100, 105), per_tx=1)  # 5 blocks
    indexer = make_indexer(migrated_store, ledger, max_reorg_depth=3)
    indexer.sync()
    before = dump(migrated_store.engine)
    assert rpc(ledger, "evm_revert", fork)
    redemptions(ledger, s.budget, s.passes[1], range(400, 406), per_tx=1)
    with pytest.raises(ReorgTooDeep) as caught:
        indexer.sync()
    assert caught.value.max_depth == 3
    assert caught.value.depth > 3
    assert dump(migrated_store.engine) == before


def test_confirmations_hold_back_the_newest_blocks(
    ledger: LedgerEnv, migrated_store: Store
) -> None:
    every_event(ledger)
    indexer = make_indexer(migrated_store, ledger, confirmations=3)
    indexer.sync()
    head = ledger.w3.eth.block_number
    assert indexer.checkpoint is not None
    assert indexer.checkpoint.number == head - 3
    state = index_state(migrated_store, rpc_of(ledger), contract=ledger.client.address)
    assert (state.head, state.checkpoint, state.lag) == (head, head - 3, 3)
    assert index_status(migrated_store, ledger.w3) == 3


def test_status_without_checkpoint_counts_from_the_start(
    ledger: LedgerEnv, migrated_store: Store
) -> None:
    start = ledger.deployment.deployed_block
    head = ledger.w3.eth.block_number
    lag = index_status(
        migrated_store, rpc_of(ledger), contract=ledger.client.address, start_block=start
    )
    assert lag == head - start + 1


class RefusingRpc(RpcClient):
    """Refuses ``eth_getLogs`` over more than ``limit`` blocks, as geth/Besu do."""

    def __init__(self, url: str, limit: int) -> None:
        super().__init__(url)
        self.limit = limit
        self.refused = 0

    def call(self, method: str, *params: Any) -> Any:
        if method == "eth_getLogs":
            span = int(params[0]["toBlock"], 16) - int(params[0]["fromBlock"], 16) + 1
            if span > self.limit:
                self.refused += 1
                raise RpcError(-32005, "query returned more than 10000 results", method=method)
        return super().call(method, *params)


def test_the_log_range_adapts_to_the_node(ledger: LedgerEnv, migrated_store: Store) -> None:
    every_event(ledger)
    expected = _fresh_dump(ledger, migrated_store)
    with migrated_store.engine.begin() as conn:
        for model in [IndexCheckpoint]:
            conn.execute(delete(model.__table__))  # type: ignore[attr-defined]
    refusing = RefusingRpc(ledger.w3.provider.endpoint_uri, limit=3)  # type: ignore[attr-defined]
    cfg = IndexerConfig(
        contract=ledger.client.address,
        start_block=ledger.deployment.deployed_block,
        ranges=RangePolicy(initial=64),
    )
    indexer = Indexer(migrated_store, refusing, ledger.client.abi, cfg)
    try:
        indexer.sync()
    finally:
        refusing.close()
    assert refusing.refused >= 1
    assert indexer.fetcher.range <= 6
    assert dump(migrated_store.engine) == expected
