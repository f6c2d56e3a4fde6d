"""The redemption desk: one way in (:func:`redeem`), one way out (the outcome recorders).

Redemption and idempotency
--------------------------
A merchant sends an ``Idempotency-Key`` with each redemption. Requests with the same key (per
merchant) run one at a time. The first request verifies the token offline and checks it against
the state cache (:func:`_precheck`: what the contract would surely refuse is refused with the
same typed error, and nothing is stored), then atomically stores a *pending* record with the
next dense redemption id and queues it on the merchant's :class:`~ledger.batcher.
RedemptionBatcher`. When the batch is mined, :func:`record_batch` saves every record of the batch
in one transaction (outcome, balance after); a refusal on chain is stored with its key too. A
retry with the same key and body returns the stored outcome; one whose first attempt is still
pending waits for the same batch; after a restart, one whose transaction is in the outbox waits
for the reconciler's outcome, and one that was never sent resubmits the *same* redemption id,
which the contract accepts at most once, so a retry can never redeem twice. The same key with
another body is refused with ``idempotency_key_reused``.

The path
--------
A redemption request goes: allocate (a record with a dense id, ``api.store``) -> batch
(``ledger.batcher``) -> outbox (``ledger.outbox``: the signed transaction is stored before it is
sent, and :func:`mark_sent` marks the records it carries in the same database transaction) ->
mined -> outcome. The way out:

- :func:`record_batch`: a batch mined in the normal course (the batcher's ``on_outcomes``);
- :func:`record_reconciled`: what the reconciler (``ledger.reconciler``) found mined later:
  after a restart of the service or of the node, a replay of the same bytes, or a block the
  node lost and mined again;
- :func:`record_lost`: transactions that will never be mined (their nonce was taken).

The promise: an answer that said "confirmed" is never contradicted silently. When the chain
contradicts one (a confirmed redemption whose replay was refused, or whose transaction was
lost; a refusal whose transaction landed after all), the record takes the chain's outcome,
``promise_broken_at`` is set, an ERROR is logged, and the audit lists it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from eth_utils.crypto import keccak
from hexbytes import HexBytes
from sqlalchemy import Connection, bindparam, update
from starlette.concurrency import run_in_threadpool

from api import cohort_claims
from api.problems import ApiProblem, contract_status
from api.schemas import RedemptionOut
from api.services import balance_at, merchant_address, note_token, verify_token
from api.store import IdempotencyConflict, RedemptionRecord, RedemptionStatus, TokenAlreadyUsed
from ledger import contract_errors as ce
from ledger.batcher import RedemptionAccepted, RedemptionRefused, outcomes_of
from ledger.batcher import RedemptionOutcome as BatchOutcome
from ledger.client import RedemptionRequest, SchemeKind
from ledger.errors import LedgerError
from ledger.events import DecodedEvent
from ledger.outbox import OutboxRow
from ledger.reconciler import Mined, Reconciler, ReconcileRefused
from ledger.relayer import SignedTx
from ledger.rpc import RpcError
from ledger.state_cache import CacheMiss
from wallet import SignedPassToken, WalletError, decode_token_uri

if TYPE_CHECKING:
    from api.runtime import Runtime

__all__ = [
    "CARRIERS",
    "ReconcilerLoop",
    "RedemptionOutcome",
    "failure_values",
    "mark_sent",
    "record_batch",
    "record_lost",
    "record_reconciled",
    "redeem",
    "success_values",
]

log = logging.getLogger(__name__)

#: Outbox labels of the transactions that carry redemptions (their ``refs``).
CARRIERS = frozenset({"redeemBatch", "claimAndRedeem"})

_REDEMPTIONS = RedemptionRecord.__table__  # type: ignore[attr-defined]


def _now() -> datetime:
    return datetime.now(UTC)


# -- the request: check, allocate, submit, wait ------------------------------------------------

_REDEEMED_TOPIC = keccak(
    text="Redeemed(uint256,bytes32,uint256,address,uint64,uint64,uint64,uint64)"
)
#: How often a record moves to a fresh id when its id was used outside this store.
_MAX_ID_ATTEMPTS = 32


@dataclass(frozen=True, slots=True)
class RedemptionOutcome:
    result: RedemptionOut
    replayed: bool


def _request_hash(token: str, scheme_id: int, amount: int) -> str:
    body = json.dumps(
        {"token": token, "scheme_id": scheme_id, "amount": amount},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()


def _result(record: RedemptionRecord) -> RedemptionOut:
    assert record.tx_hash is not None
    assert record.block_number is not None
    return RedemptionOut(
        redemption_id=record.redemption_id,
        merchant_id=record.merchant_id,
        scheme_id=record.scheme_id,
        amount=record.amount,
        debited=record.debited or 0,
        credited=record.credited or 0,
        discount=record.discount or 0,
        balance=record.balance_after or 0,
        tx_hash=record.tx_hash,
        block_number=record.block_number,
    )


def _stored_problem(record: RedemptionRecord) -> ApiProblem:
    return ApiProblem(
        record.problem_status or 422,
        record.problem_code or "redemption_refused",
        record.problem_detail,
        redemption_id=record.redemption_id,
        idempotent_replay=True,
    )


def _succeed(runtime: Runtime, record: RedemptionRecord, event: DecodedEvent) -> RedemptionOut:
    args: dict[str, Any] = event.args
    record.status = RedemptionStatus.SUCCEEDED
    record.tx_hash = HexBytes(event.transaction_hash).to_0x_hex()
    record.block_number = event.block_number
    record.debited = int(args["debited"])
    record.credited = int(args["credited"])
    record.discount = int(args["discount"])
    record.balance_after = balance_at(
        runtime, record.scheme_id, bytes(args["passId"]), event.block_number
    )
    return _result(runtime.store.save_redemption(record))


def _fail(runtime: Runtime, record: RedemptionRecord, exc: ce.ContractRevert) -> ce.ContractRevert:
    _mark_failed(record, exc)
    runtime.store.save_redemption(record)
    return exc


def _redeemed_event(
    runtime: Runtime, record: RedemptionRecord, address: str
) -> DecodedEvent | None:
    """The ``Redeemed`` event of ``record``'s redemption id by this merchant, if any."""
    logs = runtime.w3.eth.get_logs(
        {
            "address": runtime.client.address,
            "fromBlock": runtime.deployment.deployed_block,
            "toBlock": "latest",
            "topics": [
                "0x" + _REDEEMED_TOPIC.hex(),
                "0x" + record.redemption_id.to_bytes(32, "big").hex(),
            ],
        }
    )
    for event in runtime.client.decode_logs([dict(item) for item in logs]):
        if event.name == "Redeemed" and event.args["merchant"] == address:
            return event
    return None


def _set(record: RedemptionRecord, values: Mapping[str, Any]) -> None:
    for name, value in values.items():
        setattr(record, name, value)


def _mark_succeeded(record: RedemptionRecord, outcome: RedemptionAccepted, balance: int) -> None:
    _set(record, success_values(outcome, balance))


def _mark_failed(record: RedemptionRecord, exc: ce.ContractRevert) -> None:
    _set(record, failure_values(exc))


def _collected(
    runtime: Runtime, record: RedemptionRecord, outcome: BatchOutcome
) -> RedemptionOut | None:
    """The result :func:`record_batch` saved for ``record``'s mined outcome (raising its
    refusal), or None if it saved none. Reads nothing: safe on the event loop."""
    saved = runtime.collect(record.redemption_id)
    if saved is None:
        return None
    _set(record, saved)
    if record.status is RedemptionStatus.SUCCEEDED:
        return _result(record)
    if isinstance(outcome, RedemptionRefused) and record.status is RedemptionStatus.FAILED:
        raise outcome.error
    return None


def _settle(
    runtime: Runtime, record: RedemptionRecord, outcome: BatchOutcome, attempt: int = 1
) -> RedemptionOut:
    """The result of ``record``'s mined outcome: the record :func:`record_batch` saved, or (if
    that did not happen) store it now."""
    collected = _collected(runtime, record, outcome)
    if collected is not None:
        return collected
    return _apply(runtime, record, outcome, attempt)


def _apply(
    runtime: Runtime, record: RedemptionRecord, outcome: BatchOutcome, attempt: int = 1
) -> RedemptionOut:
    """Store the batcher's outcome of ``record`` and return it (or raise the refusal)."""
    if isinstance(outcome, RedemptionAccepted):
        balance = balance_at(
            runtime, record.scheme_id, bytes(outcome.pass_id), outcome.block_number
        )
        _mark_succeeded(record, outcome, balance)
        return _result(runtime.store.save_redemption(record))
    error = outcome.error
    if isinstance(error, ce.RedemptionIdUsed):  # an earlier submission of this very record?
        address = runtime.merchant_relayer(record.merchant_id).address
        earlier = _redeemed_event(runtime, record, address)
        if earlier is not None:
            return _succeed(runtime, record, earlier)
        if attempt < _MAX_ID_ATTEMPTS:  # used outside this store (e.g. a database restored
            # from an older backup): move the record to a fresh id past it and send again
            moved = runtime.store.reassign_redemption_id(record)
            return _submit(runtime, moved, decode_token_uri(moved.token_uri), attempt + 1)
    raise _fail(runtime, record, error)


def _receipt_timeout() -> ApiProblem:
    return ApiProblem(
        504,
        "receipt_timeout",
        "the redemption was sent but not yet mined; retry with the same Idempotency-Key",
    )


def _wait(runtime: Runtime, future: Future[BatchOutcome]) -> BatchOutcome:
    try:
        return future.result(timeout=runtime.settings.receipt_timeout_s)
    except FutureTimeout:
        raise _receipt_timeout() from None


async def _wait_async(runtime: Runtime, future: Future[BatchOutcome]) -> BatchOutcome:
    """:func:`_wait` on the event loop. Neither the timeout nor a client that hangs up cancels
    ``future``: the redemption is on its way, and a retry with the same key waits for it."""
    waiting = asyncio.wrap_future(future)
    waiting.add_done_callback(_retrieve)
    try:
        return await asyncio.wait_for(
            asyncio.shield(waiting), timeout=runtime.settings.receipt_timeout_s
        )
    except TimeoutError:
        raise _receipt_timeout() from None


def _retrieve(done: asyncio.Future[Any]) -> None:
    """Mark an abandoned wait's outcome as seen (asyncio would log a never-retrieved error)."""
    if not done.cancelled():
        done.exception()


def _enqueue(
    runtime: Runtime, record: RedemptionRecord, signed: SignedPassToken, *, claim: bool
) -> Future[BatchOutcome]:
    """Send ``record``'s redemption on its way and register the future of its outcome in
    ``runtime.inflight`` (a retry that finds the record pending waits for it). ``claim``: the
    pass may still have an unclaimed cohort share (a ``claimAndRedeem`` of its own, not
    batched; :mod:`api.cohort_claims`, which reads, so not on the event loop)."""
    future = cohort_claims.claim_and_redeem(runtime, record, signed) if claim else None
    if future is None:
        call = RedemptionRequest(
            redemption_id=record.redemption_id,
            scheme_id=record.scheme_id,
            amount=record.amount,
            token=signed,
        )
        future = runtime.merchant_batcher(record.merchant_id).submit(call)
    with runtime.inflight_lock:
        runtime.inflight[(record.merchant_id, record.idempotency_key)] = future
    return future


def _done(runtime: Runtime, record: RedemptionRecord, future: Future[BatchOutcome]) -> None:
    """Forget a finished future (one still running stays for a retry to wait on)."""
    if future.done():
        with runtime.inflight_lock:
            runtime.inflight.pop((record.merchant_id, record.idempotency_key), None)


def _submit(
    runtime: Runtime, record: RedemptionRecord, signed: SignedPassToken, attempt: int = 1
) -> RedemptionOut:
    """Queue ``record``'s redemption (:func:`_enqueue`) and wait for its outcome, bounded by the
    receipt timeout, on a worker thread: concurrent redemptions of a merchant share
    ``redeemBatch`` transactions."""
    future = _enqueue(runtime, record, signed, claim=True)
    try:
        outcome = _wait(runtime, future)
    finally:
        _done(runtime, record, future)
    return _settle(runtime, record, outcome, attempt)


def _resume(runtime: Runtime, record: RedemptionRecord) -> RedemptionOut:
    """Finish a pending record: wait for its queued redemption, or resubmit the same id (which
    the contract accepts at most once)."""
    slot = (record.merchant_id, record.idempotency_key)
    with runtime.inflight_lock:
        future = runtime.inflight.get(slot)
    if future is not None:
        outcome = _wait(runtime, future)
        with runtime.inflight_lock:
            runtime.inflight.pop(slot, None)
        return _settle(runtime, record, outcome)
    relayer = runtime.merchant_relayer(record.merchant_id)
    event = _redeemed_event(runtime, record, relayer.address)
    if event is not None:
        return _succeed(runtime, record, event)
    if record.sent_at is not None:
        # Its transaction is in the outbox (sent before a restart): the reconciler replays it
        # and records the outcome; sending the id again could only race with that replay.
        return _await_reconciled(runtime, record)
    return _submit(runtime, record, decode_token_uri(record.token_uri))


def _await_reconciled(runtime: Runtime, record: RedemptionRecord) -> RedemptionOut:
    """Wait (up to the receipt timeout) until the reconciler has recorded ``record``'s
    outcome, and answer with it; a 504 ``receipt_timeout`` otherwise (retry later)."""
    deadline = time.monotonic() + runtime.settings.receipt_timeout_s
    if runtime.reconciler_loop is not None:
        runtime.reconciler_loop.wake(deep=False)
    while time.monotonic() < deadline:
        current = runtime.store.redemption_by_id(record.redemption_id)
        if current is not None and current.status is RedemptionStatus.SUCCEEDED:
            return _result(current)
        if current is not None and current.status is RedemptionStatus.FAILED:
            raise _stored_problem(current)
        time.sleep(0.1)
    raise _receipt_timeout()


#: What the checks before allocation raise for a request they refuse.
_REFUSALS = (ApiProblem, WalletError, LedgerError)


async def redeem(
    runtime: Runtime,
    *,
    merchant_id: int,
    idempotency_key: str,
    token: str,
    scheme_id: int,
    amount: int,
    sent: str | None = None,
) -> RedemptionOutcome:
    """Redeem ``amount`` of ``scheme_id`` against ``token`` at ``merchant_id``, once per
    ``idempotency_key``: a retry with the same key and body returns the first outcome.
    ``sent`` is what the terminal sent when ``token`` was derived from it (a short code, or a
    card token or pass number with a PIN): the body a retry is compared with.

    Runs on the event loop, without a thread per request: the checks read the state cache
    (a worker thread only on a cache miss), the redemption id comes from the store's group
    commit, and the wait for the batch is a future. A request the checks refuse first looks
    for an earlier request with its key (a retry after the token expired, or after it spent
    the balance itself, gets the stored outcome)."""
    token = token.strip()
    request_hash = _request_hash((sent or token).strip(), scheme_id, amount)
    async with runtime.redemption_keys.hold((merchant_id, idempotency_key)):
        try:
            checked = await _checked(
                runtime, merchant_id=merchant_id, token=token, scheme_id=scheme_id, amount=amount
            )
        except _REFUSALS:
            existing = await run_in_threadpool(
                runtime.store.redemption, merchant_id, idempotency_key
            )
            if existing is None:
                raise
            return await run_in_threadpool(_replay, runtime, existing, request_hash)
        if not checked.signed.token.is_card:
            note_token(runtime, checked.signed.token.pass_id, checked.signed.token.expiry)
        allocation = runtime.store.allocate_redemption(
            merchant_id=merchant_id,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            token_uri=token,
            scheme_id=scheme_id,
            amount=amount,
            single_use=not checked.signed.token.is_card,
        )
        try:
            allocated = await asyncio.wrap_future(allocation)
        except IdempotencyConflict:
            raise _key_reused(idempotency_key) from None
        except TokenAlreadyUsed:
            raise ce.RedemptionTokenUsed(
                {"redemptionId": 0, "passId": checked.signed.token.pass_id}
            ) from None
        if not allocated.created:
            return await run_in_threadpool(_replay, runtime, allocated.record, request_hash)
        result = await _submit_async(runtime, allocated.record, checked)
        return RedemptionOutcome(result, replayed=False)


def _replay(runtime: Runtime, existing: RedemptionRecord, request_hash: str) -> RedemptionOutcome:
    """The outcome of an earlier request with this key: its stored result or refusal, or (still
    pending) the wait for it. Another body with the same key is refused."""
    if existing.request_hash != request_hash:
        raise _key_reused(existing.idempotency_key)
    if existing.status is RedemptionStatus.SUCCEEDED:
        return RedemptionOutcome(_result(existing), replayed=True)
    if existing.status is RedemptionStatus.FAILED:
        raise _stored_problem(existing)
    return RedemptionOutcome(_resume(runtime, existing), replayed=True)


@dataclass(frozen=True, slots=True)
class _Checked:
    """A token that passed the checks, and what its pass has yet to claim in the scheme."""

    signed: SignedPassToken
    unclaimed: int


async def _checked(
    runtime: Runtime, *, merchant_id: int, token: str, scheme_id: int, amount: int
) -> _Checked:
    """Decode and verify ``token`` and refuse what the contract would refuse
    (:func:`_precheck`): from the state cache on the event loop, or on a worker thread when
    the cache has to read the chain."""
    check = partial(
        _check, runtime, merchant_id=merchant_id, token=token, scheme_id=scheme_id, amount=amount
    )
    try:
        return check(cached_only=True)
    except CacheMiss:
        return await run_in_threadpool(check, cached_only=False)


def _check(
    runtime: Runtime,
    *,
    merchant_id: int,
    token: str,
    scheme_id: int,
    amount: int,
    cached_only: bool,
) -> _Checked:
    signed = decode_token_uri(token)
    verify_token(runtime, signed, cached_only=cached_only)
    unclaimed = cohort_claims.unclaimed_amount(
        runtime, signed.token.pass_id, scheme_id, cached_only=cached_only
    )
    try:
        _precheck(
            runtime,
            merchant=merchant_address(runtime, merchant_id),
            signed=signed,
            scheme_id=scheme_id,
            amount=amount,
            unclaimed=unclaimed,
            cached_only=cached_only,
        )
    except ce.RedemptionAmountOverTokenCap:
        if not signed.token.is_card:
            raise
        raise _pin_required(signed.token.amount_cap, amount) from None
    return _Checked(signed, unclaimed)


def _pin_required(cap: int, amount: int) -> ApiProblem:
    return ApiProblem(
        403,
        "card_pin_required",
        f"a printed card alone moves at most {cap} here, and {amount} was asked: ask the holder "
        "for the PIN and send it with the card (nothing was redeemed)",
        amount_cap=cap,
    )


async def _submit_async(
    runtime: Runtime, record: RedemptionRecord, checked: _Checked
) -> RedemptionOut:
    """:func:`_submit` on the event loop for a batched redemption; the first use of a cohort
    share (a ``claimAndRedeem`` of its own) and any outcome that needs the chain or the store
    go to a worker thread."""
    if checked.unclaimed:
        return await run_in_threadpool(_submit, runtime, record, checked.signed)
    future = _enqueue(runtime, record, checked.signed, claim=False)
    try:
        outcome = await _wait_async(runtime, future)
    finally:
        _done(runtime, record, future)
    collected = _collected(runtime, record, outcome)
    if collected is not None:
        return collected
    return await run_in_threadpool(_apply, runtime, record, outcome)


def _precheck(
    runtime: Runtime,
    *,
    merchant: str,
    signed: SignedPassToken,
    scheme_id: int,
    amount: int,
    unclaimed: int,
    cached_only: bool = False,
) -> None:
    """Refuse, before an id is allocated or anything stored, what the contract's
    ``_tryRedeem`` would refuse given the state cache (same checks, same order, same typed
    errors; ``redemptionId`` 0 means none was allocated). The contract still decides: what
    passes here and is refused on chain (the cache was a poll interval behind) is stored as a
    refusal with its key. ``unclaimed``: the pass's cohort share in the scheme, not yet
    claimed (the redemption claims it)."""
    state = runtime.state
    schemes = dict(state.schemes(cached_only=cached_only))
    terms = schemes.get(scheme_id)
    if terms is None:
        raise ce.RedemptionSchemeUnknown({"redemptionId": 0, "schemeId": scheme_id})
    now = int(time.time())
    if now < terms.valid_from:
        raise ce.RedemptionSchemeNotStarted({"redemptionId": 0, "validFrom": terms.valid_from})
    if now > terms.valid_until:
        raise ce.RedemptionSchemeEnded({"redemptionId": 0, "validUntil": terms.valid_until})
    if not terms.open_to_all_merchants and not state.merchant_allowed(
        scheme_id, merchant, cached_only=cached_only
    ):
        raise ce.RedemptionMerchantNotAllowed({"redemptionId": 0, "merchant": merchant})
    token = signed.token
    snapshot = state.pass_snapshot(token.pass_id, cached_only=cached_only)
    if not snapshot.state.registered:
        raise ce.RedemptionPassUnknown({"redemptionId": 0, "passId": token.pass_id})
    if snapshot.state.blocked:
        raise ce.RedemptionPassBlocked({"redemptionId": 0, "passId": token.pass_id})
    if token.serial != 0 and token.serial != snapshot.state.card_serial:
        raise ce.RedemptionCardRevoked({"redemptionId": 0, "serial": token.serial})
    if token.is_card and token.amount_cap == 0:
        raise ce.RedemptionCardUncapped({"redemptionId": 0, "serial": token.serial})
    card_discount = token.is_card and terms.kind is SchemeKind.DISCOUNT
    if token.amount_cap != 0 and amount > token.amount_cap and not card_discount:
        raise ce.RedemptionAmountOverTokenCap({"redemptionId": 0, "amountCap": token.amount_cap})
    if terms.kind is SchemeKind.DISCOUNT:
        return  # a discount debits one use; its reimbursement budget is the contract's to check
    cap = terms.per_redemption_cap
    if cap != 0 and amount > cap:
        raise ce.RedemptionAmountOverSchemeCap({"redemptionId": 0, "perRedemptionCap": cap})
    available = snapshot.balances.get(scheme_id, 0) + unclaimed
    if available < amount:
        raise ce.RedemptionAmountOverBalance({"redemptionId": 0, "available": available})


def _key_reused(key: str) -> ApiProblem:
    return ApiProblem(
        409,
        "idempotency_key_reused",
        f"the Idempotency-Key {key!r} was used before with a different request body; "
        "use a new key for a new redemption",
    )


# -- values ---------------------------------------------------------------------------------


def success_values(outcome: RedemptionAccepted, balance: int) -> dict[str, Any]:
    """What a mined redemption writes into its record."""
    return {
        "status": RedemptionStatus.SUCCEEDED,
        "tx_hash": HexBytes(outcome.transaction_hash).to_0x_hex(),
        "block_number": outcome.block_number,
        "debited": int(outcome.debited),
        "credited": int(outcome.credited),
        "discount": int(outcome.discount),
        "balance_after": balance,
    }


def failure_values(exc: ce.ContractRevert) -> dict[str, Any]:
    """What a refusal on chain writes into its record."""
    return {
        "status": RedemptionStatus.FAILED,
        "problem_code": exc.code,
        "problem_status": contract_status(exc),
        "problem_detail": str(exc),
    }


def _balances_after(
    runtime: Runtime, accepted: Sequence[RedemptionAccepted], *, latest_if_pruned: bool = False
) -> dict[int, int]:
    """Each accepted redemption's balance at the end of its block, in one JSON-RPC batch.

    ``latest_if_pruned``: a node without the state of that block (anvil restarted from its state
    file keeps no history) answers with the balance now instead of an error (the reconciler's
    outcomes, found after a restart)."""
    try:
        return _balances_at_blocks(runtime, accepted)
    except RpcError:
        if not latest_if_pruned:
            raise
        return _balances_at_blocks(runtime, accepted, at_latest=True)


def _balances_at_blocks(
    runtime: Runtime, accepted: Sequence[RedemptionAccepted], *, at_latest: bool = False
) -> dict[int, int]:
    calls = [
        (
            "eth_call",
            [
                {
                    "to": runtime.client.address,
                    "data": "0x"
                    + runtime.client.call_data("balanceOf", o.scheme_id, bytes(o.pass_id)).hex(),
                },
                "latest" if at_latest else hex(o.block_number),
            ],
        )
        for o in accepted
    ]
    replies = runtime.rpc.batch(calls)
    balances: dict[int, int] = {}
    for outcome, reply in zip(accepted, replies, strict=True):
        if isinstance(reply, RpcError):
            raise reply
        balances[outcome.redemption_id] = int(str(reply), 16)
    return balances


# -- sent: in the outbox's transaction --------------------------------------------------------


def mark_sent(conn: Connection, txs: Sequence[SignedTx]) -> None:
    """The outbox's ``on_signed``: inside the transaction that stores ``txs``, the pending
    records they carry get the transaction's hash and ``sent_at``."""
    now = _now()
    rows = [
        {"_rid": rid, "tx_hash": tx.tx_hash, "sent_at": now, "updated_at": now}
        for tx in txs
        if tx.label in CARRIERS
        for rid in tx.refs
    ]
    if rows:
        conn.execute(
            update(_REDEMPTIONS)
            .where(
                _REDEMPTIONS.c.redemption_id == bindparam("_rid"),
                _REDEMPTIONS.c.status == RedemptionStatus.PENDING.value,
            )
            .values(
                tx_hash=bindparam("tx_hash"),
                sent_at=bindparam("sent_at"),
                updated_at=bindparam("updated_at"),
            ),
            rows,
        )


# -- mined in the normal course -----------------------------------------------------------------


def record_batch(runtime: Runtime, outcomes: Sequence[BatchOutcome]) -> None:
    """Save a mined batch in one transaction (the batcher's ``on_outcomes``): accepted items with
    their balance after, refusals with their problem; then hand what was saved to the waiting
    requests. A ``RedemptionIdUsed`` refusal is left to its request, which first looks for an
    earlier submission of the same record."""
    accepted = [o for o in outcomes if isinstance(o, RedemptionAccepted)]
    balances = _balances_after(runtime, accepted)
    updates: dict[int, dict[str, Any]] = {
        o.redemption_id: success_values(o, balances[o.redemption_id]) for o in accepted
    }
    for outcome in outcomes:
        if isinstance(outcome, RedemptionRefused) and not isinstance(
            outcome.error, ce.RedemptionIdUsed
        ):
            updates[outcome.redemption_id] = failure_values(outcome.error)
    runtime.store.complete_redemptions(updates)
    runtime.finish(updates)


# -- found later by the reconciler ----------------------------------------------------------------


def _broken(record: RedemptionRecord, why: str) -> None:
    log.error(
        "BROKEN PROMISE: redemption %d (merchant %d, key %r): %s",
        record.redemption_id,
        record.merchant_id,
        record.idempotency_key,
        why,
    )


def record_reconciled(runtime: Runtime, found: Sequence[Mined]) -> None:
    """Bring the records of the redemptions carried by ``found`` (transactions the reconciler
    saw mined) in line with the chain, in one database transaction."""
    carriers = [m for m in found if m.row.label in CARRIERS and m.row.refs]
    if not carriers:
        return
    records = runtime.store.redemptions_by_ids(rid for m in carriers for rid in m.row.refs)
    outcomes: list[BatchOutcome] = []
    for mined in carriers:
        outcomes += outcomes_of(
            runtime.client,
            mined.row.refs,
            mined.receipt,
            revert=lambda: runtime.client.revert_of(b""),
        )
    accepted = [o for o in outcomes if isinstance(o, RedemptionAccepted)]
    balances = _balances_after(runtime, accepted, latest_if_pruned=True)
    updates: dict[int, dict[str, Any]] = {}
    now = _now()
    for outcome in outcomes:
        record = records.get(outcome.redemption_id)
        if record is None:
            log.error("reconciler: redemption %d on chain has no record", outcome.redemption_id)
            continue
        if isinstance(outcome, RedemptionAccepted):
            values = success_values(outcome, balances[outcome.redemption_id])
            if record.status is RedemptionStatus.FAILED:
                _broken(record, f"it was refused ({record.problem_code}), but it landed on chain")
                values["promise_broken_at"] = now
            updates[outcome.redemption_id] = values
            continue
        if isinstance(outcome.error, ce.RedemptionIdUsed):
            continue  # the id landed through another transaction (its own record says which)
        if record.status is RedemptionStatus.SUCCEEDED:
            values = failure_values(outcome.error)
            values.update(
                problem_code="confirmation_lost",
                problem_status=409,
                problem_detail=(
                    f"this redemption was confirmed in transaction {record.tx_hash}, but the "
                    f"node lost that block and the replay was refused: {outcome.error}"
                ),
                promise_broken_at=now,
            )
            _broken(record, f"confirmed, then its replay was refused: {outcome.error}")
            updates[outcome.redemption_id] = values
        elif record.status is RedemptionStatus.PENDING:
            updates[outcome.redemption_id] = failure_values(outcome.error)
    runtime.store.complete_redemptions(updates)
    runtime.finish(updates)
    runtime.state.clear()  # what the cache applied may have moved or gone


def record_lost(runtime: Runtime, rows: Sequence[OutboxRow]) -> None:
    """The redemptions carried by ``rows`` will never be mined (their nonce was taken by
    another transaction): their records fail with that reason; a confirmed one is a broken
    promise."""
    ids = [rid for row in rows if row.label in CARRIERS for rid in row.refs]
    if not ids:
        return
    records = runtime.store.redemptions_by_ids(ids)
    now = _now()
    updates: dict[int, dict[str, Any]] = {}
    for row in rows:
        for rid in row.refs:
            record = records.get(rid)
            if record is None or record.status is RedemptionStatus.FAILED:
                continue
            values: dict[str, Any] = {
                "status": RedemptionStatus.FAILED,
                "problem_code": "transaction_lost",
                "problem_status": 409,
                "problem_detail": (
                    f"the transaction {row.tx_hash} carrying this redemption was never mined "
                    f"({row.reason}); nothing was redeemed; use a new Idempotency-Key to try "
                    "again"
                ),
            }
            if record.status is RedemptionStatus.SUCCEEDED:
                values["problem_code"] = "confirmation_lost"
                values["promise_broken_at"] = now
                _broken(record, f"confirmed, then its transaction was lost: {row.reason}")
            updates[rid] = values
    runtime.store.complete_redemptions(updates)
    runtime.finish(updates)


# -- the loop -------------------------------------------------------------------------------------


class ReconcilerLoop:
    """Runs the reconciler on a thread of its own: every ``interval_s``, and at once (deep)
    when :meth:`wake` is called (the node restarted or came back)."""

    def __init__(self, reconciler: Reconciler, *, interval_s: float) -> None:
        self.reconciler = reconciler
        self.interval_s = interval_s
        self._wake = threading.Event()
        self._deep = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)
        self._then: list[Callable[[], None]] = []
        self._then_lock = threading.Lock()
        self.errors = 0

    def start(self) -> ReconcilerLoop:
        self._thread.start()
        return self

    def wake(self, *, deep: bool = True, then: Callable[[], None] | None = None) -> None:
        """Reconcile now; ``then`` runs once the next deep pass has ended (replayed and waited
        for, or failed)."""
        if then is not None:
            with self._then_lock:
                self._then.append(then)
        self._deep = self._deep or deep
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            if self._stop.is_set():
                return
            self._wake.clear()
            deep, self._deep = self._deep, False
            with self._then_lock:
                then, self._then = (self._then, []) if deep else ([], self._then)
            try:
                self.reconciler.reconcile(deep=deep, wait_s=10.0 if deep else 0.0)
            except ReconcileRefused:
                pass  # logged once by the reconciler; /health shows it
            except Exception as exc:  # the node or the database is away: next round
                self.errors += 1
                log.warning("reconciler pass failed: %s", exc)
                if deep:
                    self._deep = True
            finally:
                for callback in then:
                    try:
                        callback()
                    except Exception:
                        log.exception("a callback after a reconciler pass failed")
