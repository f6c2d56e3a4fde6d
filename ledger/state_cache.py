"""A read-through cache of the ledger state a counter scan needs, kept true by the chain's logs.

A scan must answer in a few milliseconds, but the facts it shows live on chain: the scheme
terms, which merchants a scheme allows, and a pass's state and balances. Reading them per
request costs one ``eth_call`` each. :class:`LedgerStateCache` keeps them in memory:

- a pass's state (registration, block flag, holder key, card serial) is kept apart from its
  balances, since every redemption changes a balance but hardly any changes the state;
- a miss reads everything about a pass (``passOf`` and ``balanceOf`` for every scheme) in one
  JSON-RPC batch at the highest block the cache knows (from the follower or a receipt), and the
  snapshot is stamped with that block;
- a *follower* thread polls ``eth_getLogs`` for the ledger's logs since the last block it saw
  (every ``poll_interval_s``) and forgets what each event changed: the passes an event names
  (``passId`` / ``passIds``), the scheme list on ``SchemeCreated``, one allowance on
  ``MerchantAllowanceChanged``;
- :meth:`observe` does the same at once for the receipts of the service's own transactions
  (the relayers' ``on_receipt``), so a pass redeemed here is never shown stale here;
- a snapshot read at block ``b`` is not stored when the follower has already seen an event for
  that pass after ``b`` (the read raced the event), so a stored entry is never older than an
  event that was observed.

What another party changes is therefore visible within one poll interval; what this service
changes is visible as soon as its receipt arrives. The contract enforces every rule whatever
the cache shows: a stale balance can make a scan optimistic, never a redemption wrong.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from eth_abi import decode
from eth_utils import to_checksum_address

from ledger.client import LedgerClient, PassState, SchemeTerms
from ledger.errors import ChainError
from ledger.events import DecodedEvent
from ledger.relayer import TxReceipt
from ledger.rpc import RpcClient, RpcError

__all__ = ["CacheMiss", "CacheStats", "LedgerStateCache", "PassSnapshot"]

log = logging.getLogger(__name__)

#: Redeemed events applied to one snapshot before it is read again instead.
_MAX_APPLIED = 256
#: Transactions observed from receipts whose logs the follower skips (a few seconds' worth).
_OBSERVED_KEPT = 4096
#: Events that change a pass's state (not only its balances).
_PASS_STATE_EVENTS = frozenset(
    {"PassRegistered", "HolderKeyChanged", "CardReplaced", "PassBlockStatusChanged"}
)


class CacheMiss(LookupError):
    """A ``cached_only`` read found nothing cached (nothing was read from the chain)."""


@dataclass(frozen=True, slots=True)
class PassSnapshot:
    """A pass's on-chain state and its balance in every scheme: as read at ``block``, plus the
    ``Redeemed`` events after it that were applied since (``applied``: block and log index)."""

    state: PassState
    balances: Mapping[int, int]
    block: int
    applied: frozenset[tuple[int, int]] = frozenset()


@dataclass(slots=True)
class CacheStats:
    pass_hits: int = 0
    pass_misses: int = 0
    invalidations: int = 0
    debits: int = 0
    polls: int = 0
    follower_errors: int = 0
    logs_skipped: int = 0  # followed logs of receipts already observed (not decoded again)
    last_block: int = -1


def _hex(value: int) -> str:
    return hex(value)


def _log_key(log: Mapping[str, Any]) -> tuple[str, str]:
    """(transaction hash, block hash) of an ``eth_getLogs`` entry, as lower-case 0x-hex."""
    return str(log.get("transactionHash", "")).lower(), str(log.get("blockHash", "")).lower()


class LedgerStateCache:
    """Scheme terms, merchant allowances and pass snapshots, invalidated by the ledger's logs."""

    def __init__(
        self,
        client: LedgerClient,
        rpc: RpcClient,
        *,
        poll_interval_s: float = 0.05,
        max_passes: int = 200_000,
    ) -> None:
        if poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s must be > 0, got {poll_interval_s}")
        if max_passes < 1:
            raise ValueError(f"max_passes must be >= 1, got {max_passes}")
        self._client = client
        self._rpc = rpc
        self._poll_interval_s = poll_interval_s
        self._max_passes = max_passes
        self._lock = threading.Lock()
        self._schemes: tuple[tuple[int, SchemeTerms], ...] | None = None
        self._schemes_touched = -1  # block of the last SchemeCreated seen
        self._allowed: dict[tuple[int, str], bool] = {}
        self._allowed_touched: dict[tuple[int, str], int] = {}
        self._passes: OrderedDict[bytes, PassSnapshot] = OrderedDict()
        self._touched: dict[bytes, int] = {}  # pass id -> block of the last event naming it
        self._states: OrderedDict[bytes, PassState] = OrderedDict()
        self._state_touched: dict[bytes, int] = {}  # ... of the last pass-state event
        self._watermark = -1  # the follower has applied every log up to this block
        self._known_head = 0  # the highest block seen (follower or receipts): reads are at it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[Sequence[DecodedEvent]], None]] = []
        self._observed: OrderedDict[tuple[str, str], None] = OrderedDict()  # (tx, block)
        self.stats = CacheStats()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start following the chain from its current head (the cache starts empty)."""
        head = int(str(self._rpc.call("eth_blockNumber")), 16)
        with self._lock:
            self._watermark = head
            self._known_head = max(self._known_head, head)
        self._thread = threading.Thread(target=self._follow, name="state-cache", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reads ----------------------------------------------------------------------------------

    def schemes(self, *, cached_only: bool = False) -> tuple[tuple[int, SchemeTerms], ...]:
        """Every scheme's id and terms, in id order. ``cached_only``: raise :class:`CacheMiss`
        instead of reading the chain (for callers that must not block, e.g. an event loop)."""
        with self._lock:
            cached = self._schemes
        if cached is not None:
            return cached
        if cached_only:
            raise CacheMiss("schemes")
        head = self._head()
        schemes = tuple(self._client.schemes())
        with self._lock:
            if self._schemes_touched <= head:
                self._schemes = schemes
        return schemes

    def merchant_allowed(self, scheme_id: int, merchant: str, *, cached_only: bool = False) -> bool:
        """Whether ``merchant`` is on ``scheme_id``'s allow-list (open schemes aside)."""
        key = (scheme_id, merchant.lower())
        with self._lock:
            cached = self._allowed.get(key)
        if cached is not None:
            return cached
        if cached_only:
            raise CacheMiss(f"allowance of scheme {scheme_id}")
        head = self._head()
        function = self._client.contract.functions.isMerchantAllowed
        allowed = bool(function(scheme_id, to_checksum_address(merchant)).call())
        with self._lock:
            if self._allowed_touched.get(key, -1) <= head:
                self._allowed[key] = allowed
        return allowed

    def pass_snapshot(self, pass_id: bytes, *, cached_only: bool = False) -> PassSnapshot:
        """``pass_id``'s state and balances in every scheme (one JSON-RPC batch on a miss)."""
        schemes = self.schemes(cached_only=cached_only)
        with self._lock:
            cached = self._passes.get(pass_id)
            if cached is not None and all(sid in cached.balances for sid, _ in schemes):
                self._passes.move_to_end(pass_id)
                self.stats.pass_hits += 1
                return cached
            if cached_only:
                raise CacheMiss(f"pass 0x{pass_id.hex()}")
            self.stats.pass_misses += 1
        snapshot = self._read_pass(pass_id, [sid for sid, _ in schemes])
        with self._lock:
            if self._touched.get(pass_id, -1) <= snapshot.block:
                self._passes[pass_id] = snapshot
                self._passes.move_to_end(pass_id)
                while len(self._passes) > self._max_passes:
                    self._passes.popitem(last=False)
            if self._state_touched.get(pass_id, -1) <= snapshot.block:
                self._states[pass_id] = snapshot.state
                self._states.move_to_end(pass_id)
                while len(self._states) > self._max_passes:
                    self._states.popitem(last=False)
        return snapshot

    def pass_state(self, pass_id: bytes, *, cached_only: bool = False) -> PassState:
        """``pass_id``'s registration, block flag, holder key and card serial. Kept apart from
        the balances: it changes rarely, while every redemption changes a balance."""
        with self._lock:
            cached = self._states.get(pass_id)
            if cached is not None:
                self._states.move_to_end(pass_id)
                return cached
        snapshot = self.pass_snapshot(pass_id, cached_only=cached_only)
        return snapshot.state

    def _head(self) -> int:
        return int(str(self._rpc.call("eth_blockNumber")), 16)

    def _read_pass(self, pass_id: bytes, scheme_ids: Sequence[int]) -> PassSnapshot:
        client = self._client
        to = client.address
        datas = [client.call_data("passOf", pass_id)]
        datas += [client.call_data("balanceOf", scheme_id, pass_id) for scheme_id in scheme_ids]
        with self._lock:
            block = self._known_head
        at = hex(block)
        calls: list[tuple[str, Sequence[Any]]] = [
            ("eth_call", [{"to": to, "data": "0x" + data.hex()}, at]) for data in datas
        ]
        replies = self._rpc.batch(calls)
        for reply in replies:
            if isinstance(reply, RpcError):
                raise reply
        registered, blocked, holder_key, serial = decode(
            ["bool", "bool", "address", "uint64"], bytes.fromhex(str(replies[0])[2:])
        )
        balances = {
            scheme_id: int(decode(["uint256"], bytes.fromhex(str(reply)[2:]))[0])
            for scheme_id, reply in zip(scheme_ids, replies[1:], strict=True)
        }
        state = PassState(
            bool(registered), bool(blocked), to_checksum_address(holder_key), int(serial)
        )
        return PassSnapshot(state=state, balances=balances, block=block)

    # -- invalidation ---------------------------------------------------------------------------

    def observe_receipt(self, receipt: TxReceipt) -> None:
        """Forget what a transaction of this service changed (a relayer's ``on_receipt``)."""
        if receipt.ok and receipt.logs:
            self.observe(self._client.receipt_events(receipt))
            with self._lock:  # the follower need not decode these logs again
                key = ("0x" + bytes(receipt.tx_hash).hex(), "0x" + bytes(receipt.block_hash).hex())
                self._observed[key] = None
                while len(self._observed) > _OBSERVED_KEPT:
                    self._observed.popitem(last=False)

    def observe(self, events: Iterable[DecodedEvent]) -> None:
        """Forget every entry the ``events`` may have changed."""
        events = list(events)
        with self._lock:
            for event in events:
                self._forget(event)
        self._tell(events)

    def add_listener(self, listener: Callable[[Sequence[DecodedEvent]], None]) -> None:
        """Hand ``listener`` every event this cache applies (followed logs and observed
        receipts), after the cache forgot what they changed; it runs outside the cache's lock on
        the caller's thread, so it must be quick. An error it raises is logged, never raised."""
        with self._lock:
            self._listeners.append(listener)

    def _tell(self, events: Sequence[DecodedEvent]) -> None:
        if not events:
            return
        with self._lock:
            listeners = tuple(self._listeners)
        for listener in listeners:
            try:
                listener(events)
            except Exception:
                log.exception("state cache: a listener failed on %d events", len(events))

    def _forget(self, event: DecodedEvent) -> None:  # holds self._lock
        args = event.args
        block = event.block_number
        pass_ids: list[bytes] = []
        if "passId" in args:
            pass_ids.append(bytes(args["passId"]))
        if "passIds" in args:
            pass_ids.extend(bytes(pid) for pid in args["passIds"])
        self._known_head = max(self._known_head, block)
        if event.name == "Redeemed" and self._debit(event):
            return
        for pid in pass_ids:
            self._touched[pid] = max(self._touched.get(pid, -1), block)
            if self._passes.pop(pid, None) is not None:
                self.stats.invalidations += 1
            if event.name in _PASS_STATE_EVENTS:
                self._state_touched[pid] = max(self._state_touched.get(pid, -1), block)
                self._states.pop(pid, None)
        if event.name == "SchemeCreated":
            self._schemes_touched = max(self._schemes_touched, block)
            self._schemes = None
        elif event.name == "MerchantAllowanceChanged":
            key = (int(args["schemeId"]), str(args["merchant"]).lower())
            self._allowed_touched[key] = max(self._allowed_touched.get(key, -1), block)
            self._allowed.pop(key, None)

    def _debit(self, event: DecodedEvent) -> bool:  # holds self._lock
        """Apply a ``Redeemed`` event to a cached snapshot (the contract takes exactly
        ``debited`` from the balance), once; False if there is no snapshot to apply it to."""
        args = event.args
        pid = bytes(args["passId"])
        # a read still in flight from before this event must not be stored over the snapshot
        self._touched[pid] = max(self._touched.get(pid, -1), event.block_number)
        cached = self._passes.get(pid)
        if cached is None:
            return True
        where = (event.block_number, event.log_index)
        if event.block_number <= cached.block or where in cached.applied:
            return True  # already in the snapshot
        scheme_id = int(args["schemeId"])
        if scheme_id not in cached.balances or len(cached.applied) >= _MAX_APPLIED:
            return False
        balances = dict(cached.balances)
        balances[scheme_id] -= int(args["debited"])
        if balances[scheme_id] < 0:  # cannot happen on a true snapshot: read it again
            return False
        self._passes[pid] = PassSnapshot(
            state=cached.state,
            balances=balances,
            block=cached.block,
            applied=cached.applied | {where},
        )
        self.stats.debits += 1
        return True

    # -- follower -------------------------------------------------------------------------------

    def _follow(self) -> None:
        while not self._stop.wait(self._poll_interval_s):
            try:
                self.poll()
            except Exception as exc:  # e.g. NodeUnavailable while the node restarts: the
                # follower must outlive any outage, or the cache would never move again
                self.stats.follower_errors += 1
                log.warning("state cache: cannot read the chain (%s); retrying", exc)

    def poll(self) -> int:
        """Apply the ledger's logs up to the head; return the block reached."""
        self.stats.polls += 1
        head = self._head()
        with self._lock:
            since = self._watermark
        if head < since:  # the chain went back (a development node was reset): start over
            self._clear(head)
            return head
        if head == since:
            return head
        raw = self._rpc.call(
            "eth_getLogs",
            {"address": self._client.address, "fromBlock": _hex(since + 1), "toBlock": _hex(head)},
        )
        logs = (
            [dict(item) for item in raw if isinstance(item, dict)] if isinstance(raw, list) else []
        )
        with self._lock:  # receipts observed from this service's relayers were applied already
            fresh = [log for log in logs if _log_key(log) not in self._observed]
            self.stats.logs_skipped += len(logs) - len(fresh)
        events = self._client.decode_logs(fresh)
        with self._lock:
            for event in events:
                self._forget(event)
            self._watermark = head
            self._known_head = max(self._known_head, head)
            self.stats.last_block = head
            self._prune(head)
        self._tell(events)
        return head

    def _prune(self, head: int) -> None:  # holds self._lock
        """Keep the touched maps small: an entry only matters to reads still in flight."""
        if len(self._touched) > 4 * self._max_passes:
            horizon = head - 64
            self._touched = {pid: b for pid, b in self._touched.items() if b > horizon}
            self._state_touched = {pid: b for pid, b in self._state_touched.items() if b > horizon}

    def _clear(self, head: int) -> None:
        with self._lock:
            self._schemes = None
            self._allowed.clear()
            self._passes.clear()
            self._touched.clear()
            self._states.clear()
            self._state_touched.clear()
            self._allowed_touched.clear()
            self._watermark = head
            self._known_head = head

    def clear(self) -> None:
        """Forget everything (e.g. after restoring a node snapshot in development)."""
        with contextlib.suppress(ChainError):
            self._clear(self._head())
