"""Batch redemptions of one merchant into ``redeemBatch`` transactions.

Counter terminals redeem one pass at a time, but one transaction per redemption caps throughput
at what a node mines one by one. :class:`RedemptionBatcher` collects the redemptions submitted
within a short linger window (or until ``max_items``), sends them as one ``redeemBatch`` through
the merchant's :class:`~ledger.relayer.Relayer`, and resolves each caller's future from the
transaction's events:

- ``Redeemed`` -> :class:`RedemptionAccepted` (with its receipt root and position, which a
  reversal needs);
- ``RedemptionRejected`` -> :class:`RedemptionRefused` carrying the typed contract error, exactly
  as a single ``redeem`` would have raised it; the other items of the batch are unaffected;
- a transaction that reverts as a whole (paused, role revoked) refuses every item with the
  decoded error; a relayer failure fails every item's future with that exception.

Several batches may be in flight at once (the relayer pipelines nonces). The contract's redemption
id bitmap makes a repeated id harmless: at most one of them is ever accepted.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ledger.client import LedgerClient, RedemptionRequest
from ledger.contract_errors import ContractRevert, UnknownRevert
from ledger.errors import RelayerError
from ledger.events import DecodedEvent
from ledger.relayer import Relayer, TxHandle, TxReceipt, TxRequest

__all__ = [
    "BatcherClosed",
    "RedemptionAccepted",
    "RedemptionBatcher",
    "RedemptionOutcome",
    "RedemptionRefused",
    "outcomes_of",
]


class BatcherClosed(RelayerError):
    """The batcher was closed before the redemption was sent."""


@dataclass(frozen=True, slots=True)
class RedemptionAccepted:
    redemption_id: int
    pass_id: bytes
    scheme_id: int
    merchant: str
    amount: int
    debited: int
    discount: int
    credited: int
    transaction_hash: bytes
    block_number: int
    receipt_root: bytes | None
    receipt_position: int


@dataclass(frozen=True, slots=True)
class RedemptionRefused:
    redemption_id: int
    error: ContractRevert
    transaction_hash: bytes | None


RedemptionOutcome = RedemptionAccepted | RedemptionRefused

log = logging.getLogger(__name__)

_BASE_GAS = 120_000
_GAS_PER_ITEM = 80_000


@dataclass(slots=True)
class _Pending:
    request: RedemptionRequest
    future: Future[RedemptionOutcome]


class RedemptionBatcher:
    """Collects one merchant's redemptions into ``redeemBatch`` transactions.

    At most ``max_in_flight`` batches are sent and not yet mined at any time; redemptions that
    arrive meanwhile wait for the next batch (up to ``max_items``). ``linger_s`` is how long a
    batch waits for more items when the node is idle. ``on_outcomes`` (optional) is called on
    the relayer's watcher thread with every outcome of a mined batch, in submission order,
    before any caller's future resolves.
    """

    def __init__(
        self,
        *,
        client: LedgerClient,
        relayer: Relayer,
        max_items: int = 100,
        linger_s: float = 0.02,
        max_in_flight: int = 2,
        on_outcomes: Callable[[Sequence[RedemptionOutcome]], None] | None = None,
    ) -> None:
        if not 1 <= max_items <= 500:
            raise ValueError(f"max_items must be between 1 and 500, got {max_items}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self._client = client
        self._relayer = relayer
        self._max_items = max_items
        self._linger_s = linger_s
        self._on_outcomes = on_outcomes
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._max_in_flight = max_in_flight
        # mined batches are resolved while the next ones are mined: room for both
        self._resolver = ThreadPoolExecutor(
            max_workers=2 * max_in_flight, thread_name_prefix="redemption-resolver"
        )
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self.batches_sent = 0
        self.items_sent = 0
        self._thread = threading.Thread(target=self._run, name="redemption-batcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ public

    def submit(self, request: RedemptionRequest) -> Future[RedemptionOutcome]:
        """Queue a redemption; the future resolves when its batch is mined."""
        future: Future[RedemptionOutcome] = Future()
        with self._lock:
            if self._closed:
                raise BatcherClosed("the redemption batcher is closed; nothing was sent")
            self._queue.put(_Pending(request, future))
        return future

    async def redeem(self, request: RedemptionRequest) -> RedemptionOutcome:
        return await asyncio.wrap_future(self.submit(request))

    def close(self, timeout: float = 30.0) -> None:
        """Send what is queued, then stop accepting work."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        self._thread.join(timeout)
        for _ in range(self._max_in_flight):  # wait for the batches still being mined
            if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break
        self._resolver.shutdown(wait=True)

    # ------------------------------------------------------------ worker

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            # While max_in_flight batches are being mined, redemptions queue up behind them, so
            # a batch grows with the load instead of the node mining many small ones.
            self._slots.acquire()
            batch = [first]
            deadline = time.monotonic() + self._linger_s
            while len(batch) < self._max_items:
                remaining = deadline - time.monotonic()
                try:
                    item = (
                        self._queue.get(timeout=max(remaining, 0.0))
                        if remaining > 0
                        else (self._queue.get_nowait())
                    )
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._send(batch)

    def _send(self, batch: list[_Pending]) -> None:
        data = self._client.redeem_batch_data([pending.request for pending in batch])
        request = TxRequest(
            to=self._client.address,
            data=data,
            gas=_BASE_GAS + _GAS_PER_ITEM * len(batch),
            label="redeemBatch",
            refs=tuple(pending.request.redemption_id for pending in batch),
        )
        try:
            handle = self._relayer.submit(request)
        except Exception as exc:  # every caller learns why
            self._slots.release()
            for pending in batch:
                if not pending.future.done():  # a caller may have cancelled its future
                    pending.future.set_exception(exc)
            return
        self.batches_sent += 1
        self.items_sent += len(batch)
        handle.future.add_done_callback(lambda _: self._hand_off(batch, handle))

    def _hand_off(self, batch: Sequence[_Pending], handle: TxHandle) -> None:
        """The batch is mined (or failed): free its in-flight slot at once, so the next batch
        goes out while this one is resolved, and resolve on the batcher's own threads, not the
        relayer's watcher (which would otherwise wait for ``on_outcomes`` before it looks at
        the next receipt)."""
        self._slots.release()
        try:
            self._resolver.submit(self._resolve_batch, batch, handle)
        except RuntimeError:  # shut down: resolve here
            self._resolve_batch(batch, handle)

    def _resolve_batch(self, batch: Sequence[_Pending], handle: TxHandle) -> None:
        try:
            receipt = handle.future.result()
        except Exception as exc:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        try:
            outcomes = self._outcomes(batch, handle, receipt)
        except Exception as exc:  # never leave a caller waiting
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        if self._on_outcomes is not None:  # e.g. record the whole batch in one transaction
            try:
                self._on_outcomes([outcomes[id(pending)] for pending in batch])
            except Exception:  # the callers still get their outcomes
                log.exception("the on_outcomes listener failed for a batch of %d", len(batch))
        for pending in batch:
            if not pending.future.done():  # a cancelled caller must not stop the others
                pending.future.set_result(outcomes[id(pending)])

    def _outcomes(
        self, batch: Sequence[_Pending], handle: TxHandle, receipt: TxReceipt
    ) -> dict[int, RedemptionOutcome]:
        ids = [pending.request.redemption_id for pending in batch]
        by_id = outcomes_of(
            self._client,
            ids,
            receipt,
            revert=lambda: self._client.revert_of(
                bytes(self._relayer.revert_data(handle.request, receipt) or b"")
            ),
        )
        return {id(pending): outcome for pending, outcome in zip(batch, by_id, strict=True)}


def outcomes_of(
    client: LedgerClient,
    redemption_ids: Sequence[int],
    receipt: TxReceipt,
    *,
    revert: Callable[[], ContractRevert],
) -> list[RedemptionOutcome]:
    """Each redemption id's outcome in a mined ``redeemBatch`` (or ``claimAndRedeem``)
    transaction, read from its events; ``revert`` gives the error of a transaction that
    reverted as a whole (every item refused with it). Also used for transactions the
    reconciler replayed. One outcome per id, in order (an id given twice is accepted at most
    once: the contract's id bitmap)."""
    tx_hash = bytes(receipt.tx_hash)
    if not receipt.ok:
        error = revert()
        return [RedemptionRefused(rid, error, tx_hash) for rid in redemption_ids]
    events = client.receipt_events(receipt)
    root = next((e.args["root"] for e in events if e.name == "ReceiptsRecorded"), None)
    accepted: dict[int, tuple[int, DecodedEvent]] = {}
    refused: dict[int, DecodedEvent] = {}
    position = 0
    for event in events:
        if event.name == "Redeemed":
            accepted.setdefault(event.args["redemptionId"], (position, event))
            position += 1
        elif event.name == "RedemptionRejected":
            refused.setdefault(event.args["redemptionId"], event)
    outcomes: list[RedemptionOutcome] = []
    for rid in redemption_ids:
        if rid in accepted:
            position_of, event = accepted.pop(rid)
            args = event.args
            outcomes.append(
                RedemptionAccepted(
                    redemption_id=rid,
                    pass_id=args["passId"],
                    scheme_id=args["schemeId"],
                    merchant=args["merchant"],
                    amount=args["amount"],
                    debited=args["debited"],
                    discount=args["discount"],
                    credited=args["credited"],
                    transaction_hash=tx_hash,
                    block_number=receipt.block_number,
                    receipt_root=root,
                    receipt_position=position_of,
                )
            )
        elif rid in refused:
            event = refused.pop(rid)
            reason = bytes(event.args["reason"])
            revert_data = reason + rid.to_bytes(32, "big") + bytes(event.args["detail"])
            outcomes.append(RedemptionRefused(rid, client.revert_of(revert_data), tx_hash))
        else:
            outcomes.append(RedemptionRefused(rid, UnknownRevert({"redemptionId": rid}), tx_hash))
    return outcomes
