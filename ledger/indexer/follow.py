"""The indexer loop: fetch -> decode -> apply, checkpoint by checkpoint; reorgs; following the head.

:class:`Indexer` applies the chain from ``start_block`` (the deployment block) up to the node's
head minus ``confirmations``, one chunk per database transaction:

1. fetch a chunk after the checkpoint (:class:`~ledger.indexer.fetch.Fetcher`);
2. check the chunk's first block's ``parentHash`` against the checkpoint's hash; on a mismatch
   (or when the checkpoint's block is gone or changed while idle) walk back to the common ancestor
   by comparing stored block hashes with the node's, delete the rows above it and rewind the
   checkpoint in one transaction (:class:`~ledger.indexer.errors.ReorgTooDeep` if that is more
   than ``max_reorg_depth`` blocks);
3. decode the logs (:class:`~ledger.indexer.decode.ChunkDecoder`, pure);
4. apply rows, blocks and the new checkpoint in one transaction
   (:class:`~ledger.indexer.apply.IndexWriter`).

Killed at any point, the last committed transaction is a whole chunk, and the next run starts
after its checkpoint; rows are keyed by ``(chain_id, block_hash, log_index)`` so nothing is
doubled. :meth:`Indexer.sync` backfills and returns; :meth:`Indexer.follow` keeps going until
``stop`` is set, retrying (with back-off, logged and reported) whatever is transient: a node that
stops answering, a database that is briefly unavailable.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from ledger.indexer.apply import IndexWriter
from ledger.indexer.checkpoint import Checkpoint, HasEngine, engine_of
from ledger.indexer.decode import ChunkDecoder
from ledger.indexer.errors import CheckpointMoved, IndexerStopped, ReorgTooDeep
from ledger.indexer.fetch import Chunk, Fetcher, RangePolicy, RetryNotice, RetryPolicy
from ledger.rpc import RpcClient, RpcError

__all__ = ["Indexer", "IndexerConfig", "Progress", "ReorgNotice"]

log = logging.getLogger("ledger.indexer")


@dataclass(frozen=True, slots=True)
class IndexerConfig:
    """What to index and how. ``contract`` is the ledger address, ``start_block`` its deployment."""

    contract: str
    start_block: int = 0
    confirmations: int = 0
    max_reorg_depth: int = 64
    poll_interval_s: float = 1.0
    ranges: RangePolicy = field(default_factory=RangePolicy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True, slots=True)
class Progress:
    """Reported after every applied chunk."""

    checkpoint: int
    target: int
    start_block: int
    chunk_events: int
    events: int
    elapsed_s: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass(frozen=True, slots=True)
class ReorgNotice:
    """A reorganisation was handled: the index went back from ``old`` to ``ancestor``."""

    old: Checkpoint
    ancestor: Checkpoint | None
    depth: int


class Indexer:
    """Mirrors one ledger contract's events into the index tables."""

    def __init__(
        self,
        store: Engine | HasEngine,
        rpc: RpcClient,
        abi: Sequence[Mapping[str, Any]],
        config: IndexerConfig,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        on_retry: Callable[[RetryNotice], None] | None = None,
        on_reorg: Callable[[ReorgNotice], None] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.engine = engine_of(store)
        self.config = config
        self.abi = [dict(item) for item in abi]
        self.stop = stop or threading.Event()
        self.on_progress = on_progress
        self.on_reorg = on_reorg
        self.on_retry = on_retry
        self._probe = ChunkDecoder(self.abi, chain_id=0)
        self.fetcher = Fetcher(
            rpc,
            address=config.contract,
            topics=self._probe.topics,
            ranges=config.ranges,
            retry=config.retry,
            on_retry=on_retry,
            stop=self.stop,
        )
        self._chain_id: int | None = None
        self._writer: IndexWriter | None = None
        self._decoder: ChunkDecoder | None = None
        self._checkpoint: Checkpoint | None = None
        self.events = 0
        self._started = time.perf_counter()

    # ------------------------------------------------------------------ state

    def _ready(self) -> IndexWriter:
        if self._writer is None:
            self._chain_id = self.fetcher.chain_id()
            self._decoder = ChunkDecoder(self.abi, chain_id=self._chain_id)
            self._writer = IndexWriter(
                self.engine,
                chain_id=self._chain_id,
                contract=self.config.contract,
                keep_blocks=self.config.max_reorg_depth,
            )
            self._checkpoint = self._writer.checkpoint()
        return self._writer

    @property
    def chain_id(self) -> int:
        self._ready()
        assert self._chain_id is not None
        return self._chain_id

    @property
    def checkpoint(self) -> Checkpoint | None:
        self._ready()
        return self._checkpoint

    @property
    def elapsed_s(self) -> float:
        """Seconds since this indexer was created."""
        return time.perf_counter() - self._started

    def target(self) -> int:
        """The highest block to index now: the head minus the confirmation depth."""
        return self.fetcher.head() - self.config.confirmations

    def lag(self) -> int:
        cp = self.checkpoint
        done = cp.number if cp is not None else self.config.start_block - 1
        return max(0, self.fetcher.head() - done)

    # ------------------------------------------------------------------ one step

    def step(self, target: int | None = None) -> int:
        """Apply at most one chunk up to ``target`` (default: head minus confirmations).

        Returns the number of logs applied, ``0`` for an empty chunk, ``-1`` if there was nothing
        new to apply (or a reorganisation was handled instead).
        """
        writer = self._ready()
        decoder = self._decoder
        assert decoder is not None
        if target is None:
            target = self.target()
        cp = self._checkpoint
        next_block = cp.number + 1 if cp is not None else self.config.start_block
        if target < next_block:
            if cp is not None:
                header = self.fetcher.header(cp.number)
                if header is None or header.hash != cp.hash:
                    self._handle_reorg(cp)
            return -1
        chunk = self.fetcher.fetch(next_block, target, window=self.config.max_reorg_depth)
        if chunk is None:
            # the node lacks our next block (the chain got shorter) or kept changing: re-check
            if cp is not None:
                header = self.fetcher.header(cp.number)
                if header is None or header.hash != cp.hash:
                    self._handle_reorg(cp)
            return -1
        if cp is not None and chunk.first.parent_hash != cp.hash:
            self._handle_reorg(cp)
            return -1
        return self._apply(writer, decoder, chunk, cp, target)

    def _apply(
        self,
        writer: IndexWriter,
        decoder: ChunkDecoder,
        chunk: Chunk,
        cp: Checkpoint | None,
        target: int,
    ) -> int:
        decoded = decoder.decode(chunk.logs, chunk.headers)
        try:
            writer.apply(
                decoded, chunk.headers, from_block=chunk.from_block, new=chunk.last, expected=cp
            )
        except CheckpointMoved:
            self._checkpoint = writer.checkpoint()
            raise
        self._checkpoint = Checkpoint(chunk.last.number, chunk.last.hash)
        self.events += decoded.log_count
        if self.on_progress is not None:
            self.on_progress(
                Progress(
                    checkpoint=chunk.to_block,
                    target=target,
                    start_block=self.config.start_block,
                    chunk_events=decoded.log_count,
                    events=self.events,
                    elapsed_s=time.perf_counter() - self._started,
                )
            )
        return decoded.log_count

    # ------------------------------------------------------------------ reorganisations

    def _handle_reorg(self, cp: Checkpoint) -> None:
        writer = self._ready()
        max_depth = self.config.max_reorg_depth
        lowest = max(self.config.start_block, cp.number - max_depth)
        stored = writer.stored_blocks(lowest)
        node = self.fetcher.headers(n for n, _ in stored)
        ancestor: Checkpoint | None = None
        for number, stored_hash in stored:
            header = node.get(number)
            if header is not None and header.hash == stored_hash:
                ancestor = Checkpoint(number, stored_hash)
                break
        if ancestor is None and lowest > self.config.start_block:
            mismatched = [n for n, _ in stored]
            depth = cp.number - (min(mismatched) if mismatched else lowest) + 1
            raise ReorgTooDeep(
                checkpoint=cp.number, depth=max(depth, max_depth + 1), max_depth=max_depth
            )
        depth = cp.number - (ancestor.number if ancestor else self.config.start_block - 1)
        if depth > max_depth:
            raise ReorgTooDeep(checkpoint=cp.number, depth=depth, max_depth=max_depth)
        log.warning(
            "chain reorganisation: block %d (%s) is no longer canonical; rewinding %d blocks to %s",
            cp.number,
            cp.hash,
            depth,
            "the start" if ancestor is None else f"block {ancestor.number}",
        )
        writer.rewind(ancestor, expected=cp, floor=self.config.start_block)
        self._checkpoint = ancestor
        if self.on_reorg is not None:
            self.on_reorg(ReorgNotice(old=cp, ancestor=ancestor, depth=depth))

    # ------------------------------------------------------------------ loops

    def sync(self, until: int | None = None) -> int:
        """Backfill up to ``until`` (default: head minus confirmations, read once); return logs."""
        target = self.target() if until is None else until
        total = 0
        while not self.stop.is_set():
            before = self.checkpoint
            applied = self.step(target)
            if applied >= 0:
                total += applied
                continue
            if self._checkpoint != before:
                continue  # a reorganisation was rewound: index the new branch
            done = before.number if before is not None else self.config.start_block - 1
            if done >= target:
                break
            self.stop.wait(min(0.1, self.config.poll_interval_s))
        return total

    def follow(self, *, until: Callable[[], bool] | None = None) -> None:
        """Keep the index at the head until ``stop`` is set (or ``until()`` returns true).

        Transient failures (node unavailable, database briefly unavailable, a moved checkpoint)
        are logged and retried with back-off; :class:`ReorgTooDeep` and other errors propagate.
        """
        failures = 0
        while not self.stop.is_set():
            if until is not None and until():
                return
            try:
                applied = self.step()
            except IndexerStopped:
                return
            except (OperationalError, DBAPIError, CheckpointMoved, RpcError) as exc:
                failures += 1
                delay = self.config.retry.delay(failures)
                log.warning("indexer step failed (%s); retrying in %.2fs", exc, delay)
                if self.on_retry is not None:
                    self.on_retry(RetryNotice("index step", failures, delay, str(exc)))
                if self._writer is not None:
                    with contextlib.suppress(OperationalError, DBAPIError):
                        self._checkpoint = self._writer.checkpoint()
                self.stop.wait(delay)
                continue
            failures = 0
            if applied < 0:
                self.stop.wait(self.config.poll_interval_s)
