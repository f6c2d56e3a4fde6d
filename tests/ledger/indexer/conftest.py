"""Helpers for the indexer tests: a scenario with every event kind, row dumps and checksums."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, select
from web3.types import RPCEndpoint

from ledger.client import UNLIMITED, SchemeKind
from ledger.indexer import Indexer, IndexerConfig, RangePolicy, RetryPolicy
from ledger.merkle import CohortLeaf, MerkleTree, cohort_leaf_hash
from ledger.rpc import RpcClient
from ledger.store.index import EVENT_TABLES, IndexBlock, IndexCheckpoint
from tests.ledger.conftest import LedgerEnv

REF = b"SEPA-INDEX-0001".ljust(32, b"\x00")


_CLIENTS: list[RpcClient] = []


def rpc_of(ledger: LedgerEnv) -> RpcClient:
    """A JSON-RPC client of the session's node, closed after the test."""
    client = RpcClient(ledger.w3.provider.endpoint_uri, timeout=10.0)  # type: ignore[attr-defined]
    _CLIENTS.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def make_indexer(store: Any, ledger: LedgerEnv, **config: Any) -> Indexer:
    config.setdefault("ranges", RangePolicy(initial=3, maximum=8))
    config.setdefault("retry", RetryPolicy(initial_s=0.05, max_s=0.5))
    cfg = IndexerConfig(
        contract=ledger.client.address,
        start_block=ledger.deployment.deployed_block,
        **config,
    )
    return Indexer(store, rpc_of(ledger), ledger.client.abi, cfg)


def rpc(ledger: LedgerEnv, method: str, *params: Any) -> Any:
    reply = ledger.w3.provider.make_request(RPCEndpoint(method), list(params))
    assert "error" not in reply, reply
    return reply["result"]


@dataclass
class Scenario:
    budget: int
    uses: int
    discount: int
    short: int
    passes: list[bytes]


def every_event(ledger: LedgerEnv) -> Scenario:
    """Every event kind the index mirrors, on the session's ledger (reverted after the test)."""
    c, issuer, merchant = ledger.client, ledger.issuer, ledger.merchant
    budget = ledger.new_scheme(SchemeKind.BUDGET)
    uses = ledger.new_scheme(SchemeKind.USES)
    discount = ledger.new_scheme(SchemeKind.DISCOUNT, budget_cap=50_000)
    short = ledger.new_scheme(SchemeKind.BUDGET, valid_until=ledger.now() + 60)
    p1 = ledger.new_pass(holder_key=ledger.holder.address, card_serial=3)
    p2, p3, p4 = ledger.new_pass(), ledger.new_pass(), ledger.new_pass()
    c.transact(issuer, "setHolderKey", p4, ledger.outsider.address)
    c.transact(issuer, "replaceCard", p4, 7)
    c.transact(issuer, "blockPass", p3)
    c.transact(issuer, "unblockPass", p3)

    c.transact(issuer, "issue", budget, p1, 5_000)
    c.transact(issuer, "issueBatch", budget, [p2, p3], [3_000, 2_000])
    c.transact(issuer, "issueBatch", uses, [p1, p2], [10, 5])
    c.transact(issuer, "issue", discount, p1, UNLIMITED)
    c.transact(issuer, "issueBatch", discount, [p2, p3], [3, UNLIMITED])
    c.transact(issuer, "issueBatch", short, [p1, p2], [700, 400])

    leaves = [CohortLeaf(0, p3, 1_500), CohortLeaf(1, p4, 2_500)]
    tree = MerkleTree([cohort_leaf_hash(leaf) for leaf in leaves])
    c.transact(issuer, "issueCohort", budget, tree.root, 2, 4_000)

    def claim(i: int) -> tuple[bytes, int, bytes, int, list[bytes]]:
        return (tree.root, leaves[i].index, leaves[i].pass_id, leaves[i].amount, tree.proof(i))

    c.transact(ledger.outsider, "claim", claim(1))
    first = ledger.redemption(p3, scheme_id=budget, amount=1_000, redemption_id=10)
    c.transact(merchant, "claimAndRedeem", claim(0), first.as_tuple())
    c.transact(
        merchant,
        "redeem",
        ledger.redemption(p1, scheme_id=budget, amount=1_250, redemption_id=1).as_tuple(),
    )
    batch = [
        ledger.redemption(p2, scheme_id=budget, amount=500, redemption_id=2),
        ledger.redemption(p2, scheme_id=uses, amount=2, redemption_id=3),
        ledger.redemption(p3, scheme_id=budget, amount=99_999, redemption_id=4),  # rejected
        ledger.redemption(p1, scheme_id=discount, amount=2_000, redemption_id=5),
        ledger.redemption(p2, scheme_id=discount, amount=800, redemption_id=6),
        ledger.redemption(p2, scheme_id=short, amount=100, redemption_id=7),
    ]
    result = c.transact(merchant, "redeemBatch", [r.as_tuple() for r in batch])
    assert len(result.named("RedemptionRejected")) == 1
    receipt, root, proof = c.reversal_proof(result.events, 2)
    c.transact(merchant, "reverse", receipt.as_tuple(), root, proof)
    c.transact(
        ledger.other_merchant,
        "redeem",
        ledger.redemption(p4, scheme_id=budget, amount=300, redemption_id=8).as_tuple(),
    )
    c.transact(ledger.settler, "settle", merchant.address, 1_000, REF)
    rpc(ledger, "evm_increaseTime", 120)
    rpc(ledger, "evm_mine")
    c.transact(issuer, "expire", short, [p1, p2, p3])
    return Scenario(budget, uses, discount, short, [p1, p2, p3, p4])


def redemptions(ledger: LedgerEnv, scheme: int, pid: bytes, ids: range, *, per_tx: int) -> None:
    """Batched redemptions of 1 cent each with ids ``ids`` (``per_tx`` per transaction)."""
    items = [ledger.redemption(pid, scheme_id=scheme, amount=1, redemption_id=i) for i in ids]
    for start in range(0, len(items), per_tx):
        part = items[start : start + per_tx]
        ledger.client.transact(ledger.merchant, "redeemBatch", [r.as_tuple() for r in part])


# -- dumps --------------------------------------------------------------------------------------

_TABLES = [*EVENT_TABLES, IndexBlock]


def dump(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every index row (without surrogate ids), sorted, per table; plus the checkpoint."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for model in _TABLES:
            table = model.__table__  # type: ignore[attr-defined]
            columns = [c for c in table.columns if c.name != "id"]
            rows = conn.execute(select(*columns)).all()
            out[table.name] = sorted(tuple(_plain(v) for v in row) for row in rows)
        cp = IndexCheckpoint.__table__  # type: ignore[attr-defined]
        out[cp.name] = sorted(
            tuple(row)
            for row in conn.execute(
                select(cp.c.chain_id, cp.c.contract, cp.c.block_number, cp.c.block_hash)
            )
        )
    return out


def _plain(value: Any) -> Any:
    return int(value) if isinstance(value, Decimal) else value


def checksum(engine: Engine) -> str:
    blob = json.dumps(dump(engine), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def counts(engine: Engine) -> dict[str, int]:
    return {name: len(rows) for name, rows in dump(engine).items()}
