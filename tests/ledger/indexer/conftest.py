"""Helpers for the indexer tests: a scenario with every event kind, row dumps and checksums."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, select
from web3.types import RPCEndpoint

from ledger.indexer import Indexer, IndexerConfig, RangePolicy, RetryPolicy
from ledger.store.index import EVENT_TABLES, IndexBlock, IndexCheckpoint
from tests.ledger.conftest import EveryEvent, LedgerEnv, rpc_of
from tests.ledger.conftest import every_event as shared_every_event

REF = b"SEPA-INDEX-0001".ljust(32, b"\x00")


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


def every_event(ledger: LedgerEnv) -> EveryEvent:
    """Every event kind the index mirrors (:func:`tests.ledger.conftest.every_event`)."""
    return shared_every_event(ledger, reference=REF)


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
