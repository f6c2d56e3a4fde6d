"""Typed errors of the indexer (a family under :class:`ledger.errors.LedgerError`)."""

from __future__ import annotations

from ledger.errors import LedgerError

__all__ = [
    "CheckpointMoved",
    "IndexerError",
    "IndexerStopped",
    "LogRangeError",
    "ReorgTooDeep",
]


class IndexerError(LedgerError):
    """Root of every error the indexer raises on purpose."""


class ReorgTooDeep(IndexerError):
    """The chain reorganised deeper than the configured maximum; the index was left as it was.

    ``checkpoint`` is the block the index had applied, ``max_depth`` the configured limit and
    ``depth`` how deep the reorganisation is known to be at least.
    """

    def __init__(self, *, checkpoint: int, depth: int, max_depth: int) -> None:
        super().__init__(
            f"the chain reorganised at least {depth} blocks below the indexed block {checkpoint}, "
            f"deeper than the allowed {max_depth}: refusing to rewind (check that the node is on "
            "the right chain, then raise the limit or re-index from scratch)"
        )
        self.checkpoint = checkpoint
        self.depth = depth
        self.max_depth = max_depth


class CheckpointMoved(IndexerError):
    """The stored checkpoint is not the one this indexer expected (another indexer wrote it)."""


class LogRangeError(IndexerError):
    """The node refuses ``eth_getLogs`` even for a single block."""


class IndexerStopped(IndexerError):
    """The indexer was asked to stop while it waited (e.g. for the node to come back)."""
