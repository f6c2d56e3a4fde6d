"""Fetch: chunked ``eth_getLogs`` and block headers over raw JSON-RPC, with retries.

Only standard methods are used (``eth_blockNumber``, ``eth_chainId``, ``eth_getLogs``,
``eth_getBlockByNumber``), so this runs against anvil and against a Besu network alike.

- :meth:`Fetcher.fetch` returns one :class:`Chunk`: every log of the ledger in a block range and
  the headers the indexer needs (blocks with logs, the first and the last block, and the last
  ``window`` blocks, whose hashes let a later reorganisation be walked back block by block). The
  range adapts to the node: it is halved when the node refuses it ("too many results", "range too
  large", a time-out) and grown again after successes, aiming at ``target_logs`` logs per chunk.
- The last block's hash is read before and after the logs; if the chain moved in between (or a
  log's block hash disagrees with its header) the chunk is fetched again, so a chunk is always
  one consistent view of the chain.
- A node that stops answering (:class:`~ledger.rpc.NodeUnavailable`, a garbled reply) is retried
  with exponential back-off, forever by default; every retry is logged and reported to
  ``on_retry``, and so is the recovery.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from ledger.indexer.errors import IndexerStopped, LogRangeError
from ledger.rpc import NodeUnavailable, RpcClient, RpcError, RpcProtocolError, RpcRequest

__all__ = [
    "Chunk",
    "Fetcher",
    "Header",
    "RangePolicy",
    "RetryNotice",
    "RetryPolicy",
]

log = logging.getLogger("ledger.indexer")

T = TypeVar("T")

#: Messages nodes use to refuse a log range: geth/erigon ("query returned more than 10000
#: results"), Besu ("exceeds maximum RPC range limit"), providers ("block range is too wide",
#: "log response size exceeded", "query timeout exceeded").
_RANGE_ERROR = re.compile(
    r"more than|too many|too large|too wide|too big|exceed|range|limit|response size|timeout",
    re.IGNORECASE,
)
_RANGE_ERROR_CODES = frozenset({-32005})


@dataclass(frozen=True, slots=True)
class Header:
    """The parts of a block header the indexer keeps."""

    number: int
    hash: str
    parent_hash: str
    timestamp: int

    @classmethod
    def from_json(cls, block: Mapping[str, Any]) -> Header:
        return cls(
            number=int(block["number"], 16),
            hash=str(block["hash"]).lower(),
            parent_hash=str(block["parentHash"]).lower(),
            timestamp=int(block["timestamp"], 16),
        )


@dataclass(frozen=True, slots=True)
class Chunk:
    """All ledger logs of blocks ``from_block..to_block`` and the headers that go with them."""

    from_block: int
    to_block: int
    logs: list[dict[str, Any]]
    headers: dict[int, Header]

    @property
    def first(self) -> Header:
        return self.headers[self.from_block]

    @property
    def last(self) -> Header:
        return self.headers[self.to_block]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential back-off while the node does not answer. ``max_attempts=None``: forever."""

    initial_s: float = 0.25
    max_s: float = 15.0
    factor: float = 2.0
    max_attempts: int | None = None

    def delay(self, attempt: int) -> float:
        return float(min(self.max_s, self.initial_s * self.factor ** max(0, attempt - 1)))


@dataclass(frozen=True, slots=True)
class RangePolicy:
    """How many blocks one ``eth_getLogs`` asks for, and how that adapts."""

    initial: int = 2_000
    minimum: int = 1
    maximum: int = 200_000
    target_logs: int = 20_000


@dataclass(frozen=True, slots=True)
class RetryNotice:
    """What ``on_retry`` hears: attempt ``attempt`` failed, the next try is in ``delay_s``.

    ``recovered`` is set (with ``delay_s`` 0) once the node answers again after failures.
    """

    what: str
    attempt: int
    delay_s: float
    error: str
    recovered: bool = False


def _hex(n: int) -> str:
    return hex(n)


class Fetcher:
    """Reads logs and headers of one contract from a JSON-RPC node."""

    def __init__(
        self,
        rpc: RpcClient,
        *,
        address: str,
        topics: Sequence[str],
        ranges: RangePolicy | None = None,
        retry: RetryPolicy | None = None,
        on_retry: Callable[[RetryNotice], None] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.rpc = rpc
        self.address = address.lower()
        self.topics = [t.lower() for t in topics]
        self.ranges = ranges or RangePolicy()
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self.stop = stop or threading.Event()
        self.range = max(self.ranges.minimum, min(self.ranges.initial, self.ranges.maximum))
        self._ceiling = self.ranges.maximum
        self._successes = 0
        self.calls = 0

    # ------------------------------------------------------------------ retries

    def _wait(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise IndexerStopped("the indexer was stopped while waiting for the node")

    def retrying(self, what: str, call: Callable[[], T]) -> T:
        """Run ``call``; while the node is unavailable, back off and try again."""
        attempt = 0
        while True:
            if self.stop.is_set():
                raise IndexerStopped("the indexer was stopped")
            try:
                self.calls += 1
                result = call()
            except (NodeUnavailable, RpcProtocolError) as exc:
                attempt += 1
                if self.retry.max_attempts is not None and attempt >= self.retry.max_attempts:
                    raise
                delay = self.retry.delay(attempt)
                log.warning(
                    "node not answering (%s, attempt %d): %s; retrying in %.2fs",
                    what,
                    attempt,
                    exc,
                    delay,
                )
                if self.on_retry is not None:
                    self.on_retry(RetryNotice(what, attempt, delay, str(exc)))
                self._wait(delay)
                continue
            if attempt:
                log.warning("node answering again (%s) after %d failed attempts", what, attempt)
                if self.on_retry is not None:
                    self.on_retry(RetryNotice(what, attempt, 0.0, "", recovered=True))
            return result

    # ------------------------------------------------------------------ simple reads

    def chain_id(self) -> int:
        return int(self.retrying("eth_chainId", lambda: self.rpc.call("eth_chainId")), 16)

    def head(self) -> int:
        return int(self.retrying("eth_blockNumber", lambda: self.rpc.call("eth_blockNumber")), 16)

    def header(self, number: int) -> Header | None:
        """The header of block ``number``, or ``None`` if the node has no such block (yet)."""
        block = self.retrying(
            "eth_getBlockByNumber",
            lambda: self.rpc.call("eth_getBlockByNumber", _hex(number), False),
        )
        return None if block is None else Header.from_json(block)

    def headers(self, numbers: Iterable[int]) -> dict[int, Header | None]:
        """Headers of ``numbers`` in JSON-RPC batches; ``None`` for blocks the node lacks."""
        wanted = sorted(set(numbers))
        out: dict[int, Header | None] = {}
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            requests = [RpcRequest("eth_getBlockByNumber", (_hex(n), False)) for n in part]
            replies = self.retrying("eth_getBlockByNumber", partial(self.rpc.batch, requests))
            for number, reply in zip(part, replies, strict=True):
                if isinstance(reply, RpcError):
                    raise reply
                out[number] = None if reply is None else Header.from_json(reply)
        return out

    # ------------------------------------------------------------------ logs

    def get_logs(self, from_block: int, to_block: int) -> list[dict[str, Any]]:
        """``eth_getLogs`` of the contract's topics; raises :class:`RpcError` if refused."""
        params = {
            "address": self.address,
            "fromBlock": _hex(from_block),
            "toBlock": _hex(to_block),
            "topics": [self.topics],
        }
        result = self.retrying("eth_getLogs", lambda: self.rpc.call("eth_getLogs", params))
        if not isinstance(result, list):
            raise RpcProtocolError(f"eth_getLogs returned {type(result).__name__}, not a list")
        return result

    def _logs_adaptive(self, from_block: int, to_max: int) -> tuple[int, list[dict[str, Any]]]:
        refused = False
        while True:
            to_block = min(to_max, from_block + self.range - 1)
            try:
                logs = self.get_logs(from_block, to_block)
            except RpcError as exc:
                if exc.code not in _RANGE_ERROR_CODES and not _RANGE_ERROR.search(exc.message):
                    raise
                if to_block == from_block:
                    raise LogRangeError(
                        f"the node refuses eth_getLogs even for the single block {from_block}: "
                        f"{exc.message}"
                    ) from exc
                span = to_block - from_block + 1
                refused = True
                self._ceiling = span - 1
                self._successes = 0
                self.range = max(self.ranges.minimum, span // 2)
                log.info(
                    "node refused %d blocks of logs (%s); trying %d",
                    span,
                    exc.message,
                    self.range,
                )
                continue
            span = to_block - from_block + 1
            self._successes += 1
            if self._successes % 16 == 0:  # the node's limit may have been a busy moment
                self._ceiling = min(self.ranges.maximum, self._ceiling * 2)
            if len(logs) > 2 * self.ranges.target_logs and span > 1:
                self.range = max(self.ranges.minimum, span // 2)
            elif not refused and len(logs) < self.ranges.target_logs // 2 and span >= self.range:
                self.range = max(self.range, min(self._ceiling, self.range * 2))
            return to_block, logs

    def fetch(self, from_block: int, to_max: int, *, window: int = 0) -> Chunk | None:
        """One consistent chunk starting at ``from_block`` and ending at most at ``to_max``.

        Returns ``None`` if the node has no block ``from_block`` or the chain keeps changing under
        the reads (the caller re-checks its checkpoint and tries again).
        """
        attempts = 0
        while attempts < 5:
            to_guess = min(to_max, from_block + self.range - 1)
            pinned = self.header(to_guess)
            if pinned is None:
                return None
            to_block, logs = self._logs_adaptive(from_block, to_guess)
            if to_block != to_guess:
                continue  # the node refused the range: pin the shorter one and read again
            numbers = {from_block, to_block}
            numbers.update(range(max(from_block, to_block - window), to_block + 1))
            numbers.update(int(entry["blockNumber"], 16) for entry in logs)
            fetched = self.headers(numbers)
            headers = {n: h for n, h in fetched.items() if h is not None}
            if (
                len(headers) == len(fetched)
                and headers[to_block].hash == pinned.hash
                and all(
                    headers[int(entry["blockNumber"], 16)].hash == str(entry["blockHash"]).lower()
                    for entry in logs
                )
            ):
                return Chunk(from_block, to_block, logs, headers)
            attempts += 1
            log.info(
                "the chain changed while blocks %d..%d were read; reading again",
                from_block,
                to_block,
            )
            self._wait(0.05 * attempts)
        return None
