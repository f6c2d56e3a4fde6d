"""The indexer: mirrors the ledger contract's events into the index tables of the store.

fetch (:mod:`.fetch`, chunked ``eth_getLogs`` and headers) -> decode (:mod:`.decode`, pure) ->
apply (:mod:`.apply`, idempotent bulk upserts, rows + blocks + checkpoint in one transaction),
driven by :class:`Indexer` (:mod:`.follow`), which follows the head minus a confirmation depth and
rewinds on reorganisations. :func:`index_status` gives the lag for ``GET /health``.
"""

from ledger.indexer.checkpoint import Checkpoint, IndexStatus, index_state, index_status
from ledger.indexer.decode import ChunkDecoder, DecodedChunk
from ledger.indexer.errors import (
    CheckpointMoved,
    IndexerError,
    IndexerStopped,
    LogRangeError,
    ReorgTooDeep,
)
from ledger.indexer.fetch import Chunk, Fetcher, Header, RangePolicy, RetryNotice, RetryPolicy
from ledger.indexer.follow import Indexer, IndexerConfig, Progress, ReorgNotice

__all__ = [
    "Checkpoint",
    "CheckpointMoved",
    "Chunk",
    "ChunkDecoder",
    "DecodedChunk",
    "Fetcher",
    "Header",
    "IndexStatus",
    "Indexer",
    "IndexerConfig",
    "IndexerError",
    "IndexerStopped",
    "LogRangeError",
    "Progress",
    "RangePolicy",
    "ReorgNotice",
    "ReorgTooDeep",
    "RetryNotice",
    "RetryPolicy",
    "index_state",
    "index_status",
]
