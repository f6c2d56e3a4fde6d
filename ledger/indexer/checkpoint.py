"""The indexer's checkpoint (block number and hash) and the index lag for ``GET /health``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from sqlalchemy import Connection, Engine, select

from ledger.rpc import RpcClient
from ledger.store.index import IndexCheckpoint

if TYPE_CHECKING:  # web3 takes half a second to import; the indexer process does not need it
    from web3 import Web3

__all__ = [
    "Checkpoint",
    "IndexStatus",
    "engine_of",
    "index_state",
    "index_status",
    "load_checkpoint",
]


@runtime_checkable
class HasEngine(Protocol):
    """Anything with a SQLAlchemy ``engine`` (e.g. ``ledger.store.db.Store``)."""

    @property
    def engine(self) -> Engine: ...


def engine_of(store: Engine | HasEngine) -> Engine:
    """The engine of ``store`` (an :class:`~sqlalchemy.Engine` or an object with ``.engine``)."""
    if isinstance(store, Engine):
        return store
    return store.engine


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The last block the index has applied."""

    number: int
    hash: str


_CP = IndexCheckpoint.__table__  # type: ignore[attr-defined]


def load_checkpoint(conn: Connection, *, chain_id: int, contract: str | None) -> Checkpoint | None:
    """The checkpoint of ``contract`` on ``chain_id`` (the highest of any contract if ``None``)."""
    query = select(_CP.c.block_number, _CP.c.block_hash).where(_CP.c.chain_id == chain_id)
    if contract is not None:
        query = query.where(_CP.c.contract == contract.lower())
    row = conn.execute(query.order_by(_CP.c.block_number.desc()).limit(1)).first()
    return None if row is None else Checkpoint(int(row[0]), str(row[1]))


@dataclass(frozen=True, slots=True)
class IndexStatus:
    """How far the index is behind the node's head (``lag`` in blocks).

    ``diverged`` is true when the checkpoint's block is not on the node's chain (beyond its head,
    or another hash there): the node lost or replaced blocks the index still mirrors, and the
    indexer has yet to rewind.
    """

    chain_id: int
    head: int
    checkpoint: int | None
    lag: int
    diverged: bool = False


def index_state(
    store: Engine | HasEngine,
    node: RpcClient | Web3,
    *,
    contract: str | None = None,
    start_block: int = 0,
) -> IndexStatus:
    """The node's head, the indexed block and the lag between them.

    Without a checkpoint the lag counts from ``start_block`` (everything is still to do). The
    checkpoint's hash is compared with the node's block of that number (``diverged``).
    """
    if isinstance(node, RpcClient):
        replies = node.batch([("eth_chainId", ()), ("eth_blockNumber", ())])
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        chain_id, head = int(replies[0], 16), int(replies[1], 16)
    else:
        chain_id, head = int(node.eth.chain_id), int(node.eth.block_number)
    with engine_of(store).connect() as conn:
        checkpoint = load_checkpoint(conn, chain_id=chain_id, contract=contract)
    done = checkpoint.number if checkpoint is not None else start_block - 1
    diverged = False
    if checkpoint is not None:
        diverged = (
            checkpoint.number > head or _block_hash(node, checkpoint.number) != checkpoint.hash
        )
    return IndexStatus(
        chain_id=chain_id,
        head=head,
        checkpoint=None if checkpoint is None else checkpoint.number,
        lag=max(0, head - done),
        diverged=diverged,
    )


def _block_hash(node: RpcClient | Web3, number: int) -> str | None:
    """The node's hash of block ``number`` (lower case), None when it has no such block."""
    if isinstance(node, RpcClient):
        block = node.call("eth_getBlockByNumber", hex(number), False)
        return str(block["hash"]).lower() if isinstance(block, dict) else None
    from web3.exceptions import BlockNotFound

    try:
        found = node.eth.get_block(number)
    except BlockNotFound:
        return None
    value = found.get("hash")
    return None if value is None else "0x" + bytes(value).hex()


def index_status(
    store: Engine | HasEngine,
    node: RpcClient | Web3,
    *,
    contract: str | None = None,
    start_block: int = 0,
) -> int:
    """The index lag in blocks (head minus the indexed block), for ``GET /health``."""
    return index_state(store, node, contract=contract, start_block=start_block).lag
