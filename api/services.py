"""What the routes do: issue, sign a pass token, read balances, redeem (idempotently).

Functions here are synchronous (the routes run them in FastAPI's thread pool): they read the
chain, wait for relayer receipts and use the store. They raise :class:`api.problems.ApiProblem`,
:class:`wallet.WalletError` or :class:`ledger.contract_errors.ContractRevert`; the problem
handlers turn those into RFC 9457 responses.

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
pending waits for the same batch, or (after a restart) resubmits the *same* redemption id, which
the contract accepts at most once, so a retry can never redeem twice. The same key with another
body is refused with ``idempotency_key_reused``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import partial
from typing import Any, Literal

from eth_utils.crypto import keccak
from hexbytes import HexBytes
from starlette.concurrency import run_in_threadpool

from api import cohort_claims
from api.problems import ApiProblem
from api.redemptions import failure_values as _failure_values
from api.redemptions import success_values as _success_values
from api.runtime import Runtime
from api.schemas import (
    Balance,
    BalancesOut,
    EntitlementOut,
    OfferOut,
    PassTokenOut,
    Redeemable,
    RedemptionItem,
    RedemptionOut,
    RedemptionPage,
    ReversalOut,
    ScanOut,
    StatementLineOut,
    StatementOut,
)
from api.settings import Settings
from api.store import IdempotencyConflict, PassHolder, RedemptionRecord, RedemptionStatus
from ledger import contract_errors as ce
from ledger.batcher import RedemptionAccepted, RedemptionRefused
from ledger.batcher import RedemptionOutcome as BatchOutcome
from ledger.client import UNLIMITED, RedemptionRequest, SchemeKind, SchemeTerms
from ledger.errors import LedgerError
from ledger.events import DecodedEvent
from ledger.passid import pass_id
from ledger.relayer import Relayer, TxReceipt, TxRequest
from ledger.reports.periods import Period, PeriodError
from ledger.rpc import RpcError
from ledger.settlement.statements import statement as ledger_statement
from ledger.state_cache import CacheMiss
from ledger.store.index import IndexCheckpoint
from wallet import (
    PassToken,
    SignedPassToken,
    WalletError,
    decode_token_uri,
    encode_token_uri,
    sign_pass_token,
    verify_pass_token,
)

__all__ = [
    "RedemptionOutcome",
    "balances",
    "issue_entitlement",
    "list_redemptions",
    "make_pass_token",
    "offers",
    "redeem",
    "reverse",
    "scan",
    "statement",
]

_ZERO_ADDRESS = "0x" + "00" * 20
_REDEEMED_TOPIC = keccak(
    text="Redeemed(uint256,bytes32,uint256,address,uint64,uint64,uint64,uint64)"
)
KIND_NAMES: dict[SchemeKind, Literal["budget", "uses", "discount"]] = {
    SchemeKind.BUDGET: "budget",
    SchemeKind.USES: "uses",
    SchemeKind.DISCOUNT: "discount",
}


_MAX_ID_ATTEMPTS = 32


def _gas(estimate: int) -> int:
    return estimate + estimate // 4 + 20_000


def _holder(runtime: Runtime, pass_number: str) -> PassHolder:
    holder = runtime.store.holder(pass_number)
    if holder is None:
        raise ApiProblem(404, "pass_number_unknown", f"no holder has pass number {pass_number!r}")
    return holder


def _pass_id(holder: PassHolder) -> bytes:
    return pass_id(pass_secret=holder.pass_secret, pass_number=holder.pass_number)


def _eth_call(runtime: Runtime, data: bytes, *, sender: str | None = None, block: str) -> bytes:
    """One raw ``eth_call`` to the ledger (far cheaper than a web3 contract call); a revert
    raises the contract's typed error."""
    call = {"to": runtime.client.address, "data": "0x" + data.hex()}
    if sender is not None:
        call["from"] = sender
    try:
        result = runtime.rpc.call("eth_call", call, block)
    except RpcError as exc:
        if isinstance(exc.data, str) and exc.data.startswith("0x"):
            raise runtime.client.revert_of(bytes.fromhex(exc.data[2:])) from None
        raise
    return bytes.fromhex(str(result).removeprefix("0x"))


def _balance_at(runtime: Runtime, scheme_id: int, pid: bytes, block: int) -> int:
    data = runtime.client.call_data("balanceOf", scheme_id, pid)
    return int.from_bytes(_eth_call(runtime, data, block=hex(block)), "big")


def _receipt_events(runtime: Runtime, receipt: TxReceipt) -> list[DecodedEvent]:
    logs = [
        {
            "address": item.address,
            "topics": list(item.topics),
            "data": item.data,
            "blockNumber": item.block_number,
            "blockHash": receipt.block_hash,
            "transactionHash": item.tx_hash,
            "logIndex": item.log_index,
        }
        for item in receipt.logs
    ]
    return runtime.client.decode_logs(logs)


def _send(runtime: Runtime, relayer: Relayer, request: TxRequest) -> TxReceipt:
    """Submit through ``relayer``, wait, and raise the contract's typed error on a revert."""
    receipt = relayer.submit(request).result(timeout=runtime.settings.receipt_timeout_s)
    if not receipt.ok:
        data = relayer.revert_data(request, receipt)
        raise runtime.client.revert_of(bytes(data or b""))
    return receipt


# -- admin ------------------------------------------------------------------------------------


def issue_entitlement(
    runtime: Runtime, *, pass_number: str, scheme_id: int, amount: int
) -> EntitlementOut:
    holder = _holder(runtime, pass_number)
    pid = _pass_id(holder)
    relayer = runtime.issuer()
    data = runtime.client.call_data("issue", scheme_id, pid, amount)
    estimate = runtime.client.preflight(sender=relayer.address, data=data)
    receipt = _send(
        runtime, relayer, TxRequest(to=runtime.client.address, data=data, gas=_gas(estimate))
    )
    return EntitlementOut(
        pass_number=holder.pass_number,
        scheme_id=scheme_id,
        amount=amount,
        balance=_balance_at(runtime, scheme_id, pid, receipt.block_number),
        tx_hash=receipt.tx_hash.to_0x_hex(),
        block_number=receipt.block_number,
    )


# -- holder -----------------------------------------------------------------------------------


def make_pass_token(runtime: Runtime, settings: Settings, pass_number: str) -> PassTokenOut:
    """A short-lived (serial 0) pass token signed by the pass-signer key."""
    holder = _holder(runtime, pass_number)
    expiry = int(time.time()) + settings.token_lifetime_s
    signed = sign_pass_token(
        PassToken(pass_id=_pass_id(holder), serial=0, expiry=expiry),
        domain=runtime.domain,
        private_key=runtime.keys.pass_signer.key,
    )
    return PassTokenOut(
        token_uri=encode_token_uri(signed), expires_at=expiry, pass_number=holder.pass_number
    )


@dataclass(frozen=True, slots=True)
class SchemeBalance:
    """What a pass holds in one scheme, as the counter and the holder see it: ``balance``
    includes an unclaimed cohort share (``unclaimed``)."""

    scheme_id: int
    terms: SchemeTerms
    name: str
    balance: int
    unclaimed: int

    @property
    def kind(self) -> Literal["budget", "uses", "discount"]:
        return KIND_NAMES[self.terms.kind]

    @property
    def unit(self) -> Literal["cents", "uses"]:
        return "cents" if self.terms.kind is SchemeKind.BUDGET else "uses"

    @property
    def unlimited(self) -> bool:
        return self.balance == UNLIMITED

    def valid_at(self, now: int) -> bool:
        return self.terms.valid_from <= now <= self.terms.valid_until

    def fields(self) -> dict[str, Any]:
        """The fields every balance view shows (``Balance``, the holder's and the counter's)."""
        return {
            "scheme_id": self.scheme_id,
            "name": self.name,
            "kind": self.kind,
            "unit": self.unit,
            "balance": self.balance,
            "unlimited": self.unlimited,
            "unclaimed": self.unclaimed,
        }

    def validity(self, now: int) -> dict[str, Any]:
        """When the scheme may be used, and whether it may be now (unix seconds)."""
        return {
            "valid_from": self.terms.valid_from,
            "valid_until": self.terms.valid_until,
            "valid_now": self.valid_at(now),
        }


def scheme_balances(
    runtime: Runtime,
    pass_id: bytes,
    *,
    balances: Mapping[int, int],
    schemes: Iterable[tuple[int, SchemeTerms]],
    cached_only: bool = False,
) -> list[SchemeBalance]:
    """``pass_id``'s balance in each of ``schemes`` (from a state-cache snapshot's
    ``balances``), with its unclaimed cohort share and the scheme's name. ``cached_only``:
    raise :class:`ledger.state_cache.CacheMiss` rather than read the cohort files or chain."""
    labels = runtime.store.scheme_labels()
    out: list[SchemeBalance] = []
    for scheme_id, terms in schemes:
        balance, unclaimed = cohort_claims.balance_with_share(
            runtime, pass_id, scheme_id, balances.get(scheme_id, 0), cached_only=cached_only
        )
        name = labels.get(scheme_id, f"Scheme {scheme_id}")
        out.append(SchemeBalance(scheme_id, terms, name, balance, unclaimed))
    return out


def balances(runtime: Runtime, pass_number: str) -> BalancesOut:
    holder = _holder(runtime, pass_number)
    pid = _pass_id(holder)
    snapshot = runtime.state.pass_snapshot(pid)
    state = snapshot.state
    held = scheme_balances(
        runtime, pid, balances=snapshot.balances, schemes=runtime.state.schemes()
    )
    out = [Balance(**b.fields()) for b in held]
    return BalancesOut(
        pass_number=holder.pass_number,
        first_name=holder.first_name,
        registered=state.registered,
        blocked=state.blocked,
        balances=out,
    )


# -- merchant ---------------------------------------------------------------------------------


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


def _verify(runtime: Runtime, signed: SignedPassToken, *, cached_only: bool = False) -> None:
    """Offline checks: this chain and contract, not expired, signed by the pass signer or the
    pass's own holder key (read from the chain)."""
    allowed = {runtime.keys.pass_signer.address}
    holder_key = runtime.state.pass_state(signed.token.pass_id, cached_only=cached_only).holder_key
    if holder_key != _ZERO_ADDRESS:
        allowed.add(holder_key)
    verify_pass_token(
        signed, expected_domain=runtime.domain, now=int(time.time()), allowed_signers=allowed
    )


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
    record.balance_after = _balance_at(
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
    _set(record, _success_values(outcome, balance))


def _mark_failed(record: RedemptionRecord, exc: ce.ContractRevert) -> None:
    _set(record, _failure_values(exc))


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
        balance = _balance_at(
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


def _submit(
    runtime: Runtime, record: RedemptionRecord, signed: SignedPassToken, attempt: int = 1
) -> RedemptionOut:
    """Queue ``record``'s redemption on the merchant's batcher and wait for its outcome (bounded
    by the receipt timeout); concurrent redemptions of a merchant share ``redeemBatch`` txs.
    The first use of an unclaimed cohort share is one ``claimAndRedeem`` instead, not batched
    (:mod:`api.cohort_claims`); so is its resubmission after a restart."""
    call = RedemptionRequest(
        redemption_id=record.redemption_id,
        scheme_id=record.scheme_id,
        amount=record.amount,
        token=signed,
    )
    claim = cohort_claims.claim_and_redeem(runtime, record, signed)
    future = claim or runtime.merchant_batcher(record.merchant_id).submit(call)
    slot = (record.merchant_id, record.idempotency_key)
    with runtime.inflight_lock:
        runtime.inflight[slot] = future
    try:
        outcome = _wait(runtime, future)
    finally:
        if future.done():
            with runtime.inflight_lock:
                runtime.inflight.pop(slot, None)
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
) -> RedemptionOutcome:
    """Redeem ``amount`` of ``scheme_id`` against ``token`` at ``merchant_id``, once per
    ``idempotency_key``: a retry with the same key and body returns the first outcome.

    Runs on the event loop, without a thread per request: the checks read the state cache
    (a worker thread only on a cache miss), the redemption id comes from the store's group
    commit, and the wait for the batch is a future. A request the checks refuse first looks
    for an earlier request with its key (a retry after the token expired, or after it spent
    the balance itself, gets the stored outcome)."""
    token = token.strip()
    request_hash = _request_hash(token, scheme_id, amount)
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
        allocation = runtime.store.allocate_redemption(
            merchant_id=merchant_id,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            token_uri=token,
            scheme_id=scheme_id,
            amount=amount,
        )
        try:
            allocated = await asyncio.wrap_future(allocation)
        except IdempotencyConflict:
            raise _key_reused(idempotency_key) from None
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
    _verify(runtime, signed, cached_only=cached_only)
    unclaimed = cohort_claims.unclaimed_amount(
        runtime, signed.token.pass_id, scheme_id, cached_only=cached_only
    )
    _precheck(
        runtime,
        merchant=_merchant_address(runtime, merchant_id),
        signed=signed,
        scheme_id=scheme_id,
        amount=amount,
        unclaimed=unclaimed,
        cached_only=cached_only,
    )
    return _Checked(signed, unclaimed)


async def _submit_async(
    runtime: Runtime, record: RedemptionRecord, checked: _Checked
) -> RedemptionOut:
    """:func:`_submit` on the event loop for a batched redemption; the first use of a cohort
    share (a ``claimAndRedeem`` of its own) and any outcome that needs the chain or the store
    go to a worker thread."""
    signed = checked.signed
    if checked.unclaimed:
        return await run_in_threadpool(_submit, runtime, record, signed)
    call = RedemptionRequest(
        redemption_id=record.redemption_id,
        scheme_id=record.scheme_id,
        amount=record.amount,
        token=signed,
    )
    future = runtime.merchant_batcher(record.merchant_id).submit(call)
    slot = (record.merchant_id, record.idempotency_key)
    with runtime.inflight_lock:
        runtime.inflight[slot] = future
    try:
        outcome = await _wait_async(runtime, future)
    finally:
        if future.done():
            with runtime.inflight_lock:
                runtime.inflight.pop(slot, None)
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
    if token.amount_cap != 0 and amount > token.amount_cap:
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


# -- merchant: scan, offers, list, reverse, statement -----------------------------------------


def _merchant_address(runtime: Runtime, merchant_id: int) -> str:
    relayer = runtime.merchant_relayers.get(merchant_id)
    if relayer is None:
        raise ApiProblem(403, "merchant_unknown", f"merchant {merchant_id} has no signing key")
    return relayer.address


def _allowed_schemes(
    runtime: Runtime, merchant_id: int, *, cached_only: bool = False
) -> list[tuple[int, SchemeTerms]]:
    """The schemes ``merchant_id`` may redeem: open to all merchants, or allowed for it."""
    address = _merchant_address(runtime, merchant_id)
    state = runtime.state
    return [
        (scheme_id, terms)
        for scheme_id, terms in state.schemes(cached_only=cached_only)
        if terms.open_to_all_merchants
        or state.merchant_allowed(scheme_id, address, cached_only=cached_only)
    ]


def scan(runtime: Runtime, *, merchant_id: int, token: str, cached_only: bool = False) -> ScanOut:
    """Verify a scanned token offline, then read the pass's state and balances at this merchant.

    Returns the holder's first name and nothing else personal (no pass number, no last name).
    ``cached_only``: raise :class:`ledger.state_cache.CacheMiss` rather than read the chain (the
    route first tries this on its event loop, and only on a miss moves to a worker thread)."""
    signed = decode_token_uri(token.strip())
    _verify(runtime, signed, cached_only=cached_only)
    pid = signed.token.pass_id
    snapshot = runtime.state.pass_snapshot(pid, cached_only=cached_only)
    state = snapshot.state
    if signed.token.serial != 0 and signed.token.serial != state.card_serial:
        raise ApiProblem(422, "token_revoked", "this card was replaced; its serial is revoked")
    view = runtime.store.scan_view(pid)
    first_name, registry_blocked = view if view is not None else (None, False)
    if not state.registered:
        status: Literal["active", "blocked", "unregistered"] = "unregistered"
    elif state.blocked or registry_blocked:
        status = "blocked"
    else:
        status = "active"
    now = int(time.time())
    redeemable: list[Redeemable] = []
    if status == "active":
        allowed = _allowed_schemes(runtime, merchant_id, cached_only=cached_only)
        redeemable = [
            Redeemable(
                **b.fields(),
                **b.validity(now),
                per_redemption_cap=b.terms.per_redemption_cap or None,
                discount_bps=b.terms.discount_bps,
            )
            for b in scheme_balances(
                runtime, pid, balances=snapshot.balances, schemes=allowed, cached_only=cached_only
            )
            if b.balance != 0
        ]
    return ScanOut(
        status=status,
        first_name=first_name,
        token_expires_at=signed.token.expiry,
        token_kind="card" if signed.token.serial != 0 else "app",
        amount_cap=signed.token.amount_cap or None,
        redeemable=redeemable,
    )


def offers(runtime: Runtime, *, merchant_id: int) -> list[OfferOut]:
    """The discount schemes this merchant may redeem (what it offers pass holders)."""
    labels = runtime.store.scheme_labels()
    now = int(time.time())
    return [
        OfferOut(
            scheme_id=scheme_id,
            name=labels.get(scheme_id, f"Scheme {scheme_id}"),
            kind=KIND_NAMES[terms.kind],
            valid_from=terms.valid_from,
            valid_until=terms.valid_until,
            valid_now=terms.valid_from <= now <= terms.valid_until,
            discount_bps=terms.discount_bps,
            discount_fixed=terms.discount_fixed,
            per_redemption_cap=terms.per_redemption_cap or None,
            unit_value=terms.unit_value,
            open_to_all_merchants=terms.open_to_all_merchants,
        )
        for scheme_id, terms in _allowed_schemes(runtime, merchant_id)
        if terms.kind is SchemeKind.DISCOUNT
    ]


def _item(record: RedemptionRecord) -> RedemptionItem:
    return RedemptionItem(
        redemption_id=record.redemption_id,
        scheme_id=record.scheme_id,
        amount=record.amount,
        status=record.status.value,
        debited=record.debited,
        credited=record.credited,
        discount=record.discount,
        tx_hash=record.tx_hash,
        block_number=record.block_number,
        problem_code=record.problem_code,
        created_at=record.created_at,
        reversed=record.reversal_tx_hash is not None,
        reversal_tx_hash=record.reversal_tx_hash,
        reversed_at=record.reversed_at,
    )


def list_redemptions(
    runtime: Runtime,
    *,
    merchant_id: int,
    limit: int,
    before: int | None,
    status: RedemptionStatus | None,
) -> RedemptionPage:
    """``merchant_id``'s own redemption requests, newest first, ``limit`` per page."""
    rows = runtime.store.merchant_redemptions(
        merchant_id, limit=limit + 1, before=before, status=status
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return RedemptionPage(
        items=[_item(r) for r in rows],
        next_before=rows[-1].redemption_id if more and rows else None,
    )


def _unknown_redemption(redemption_id: int) -> ApiProblem:
    # the contract's code; another merchant's redemption is answered exactly like an unknown one
    return ApiProblem(
        404,
        ce.ReversalUnknownRedemption.code,
        f"this merchant has no redemption {redemption_id}",
        redemption_id=redemption_id,
    )


def reverse(runtime: Runtime, *, merchant_id: int, redemption_id: int) -> ReversalOut:
    """Reverse ``merchant_id``'s own redemption within the window: the receipt and its proof
    come from the ``Redeemed`` events of the transaction that redeemed it."""
    with runtime.key_locks.hold(("reversal", redemption_id)):
        record = runtime.store.redemption_by_id(redemption_id)
        if (
            record is None
            or record.merchant_id != merchant_id
            or record.status is not RedemptionStatus.SUCCEEDED
            or record.tx_hash is None
        ):
            raise _unknown_redemption(redemption_id)
        if record.reversal_tx_hash is not None:
            raise ApiProblem(
                409,
                ce.ReversalAlreadyDone.code,
                f"redemption {redemption_id} was reversed before "
                f"(transaction {record.reversal_tx_hash})",
                redemption_id=redemption_id,
                reversal_tx_hash=record.reversal_tx_hash,
            )
        receipt = runtime.w3.eth.get_transaction_receipt(HexBytes(record.tx_hash))
        events = runtime.client.decode_logs([dict(item) for item in receipt["logs"]])
        try:
            leaf, root, proof = runtime.client.reversal_proof(events, redemption_id)
        except LookupError:
            raise _unknown_redemption(redemption_id) from None
        relayer = runtime.merchant_relayer(merchant_id)
        data = runtime.client.call_data("reverse", leaf.as_tuple(), root, proof)
        estimate = runtime.client.preflight(sender=relayer.address, data=data)  # typed refusals
        mined = _send(
            runtime, relayer, TxRequest(to=runtime.client.address, data=data, gas=_gas(estimate))
        )
        record.reversal_tx_hash = mined.tx_hash.to_0x_hex()
        record.reversal_block_number = mined.block_number
        record.reversed_at = datetime.now(UTC)
        runtime.store.save_redemption(record)
        return ReversalOut(
            redemption_id=redemption_id,
            scheme_id=leaf.scheme_id,
            restored=leaf.debited,
            credited_reversed=leaf.credited,
            balance=_balance_at(runtime, leaf.scheme_id, leaf.pass_id, mined.block_number),
            tx_hash=mined.tx_hash.to_0x_hex(),
            block_number=mined.block_number,
        )


def _index_is_live(runtime: Runtime) -> bool:
    with runtime.store.session() as session:
        row = session.get(
            IndexCheckpoint, (runtime.client.chain_id, runtime.client.address)
        ) or session.get(IndexCheckpoint, (runtime.client.chain_id, runtime.client.address.lower()))
        return row is not None


def statement(runtime: Runtime, *, merchant_id: int, first: date, last: date) -> StatementOut:
    """``merchant_id``'s statement over the local days ``first`` .. ``last`` (both included):
    from the chain index when the indexer runs, else from this service's own records."""
    try:
        period = Period.of_dates(first, last)
    except PeriodError as exc:
        raise ApiProblem(422, "period_invalid", str(exc)) from None
    merchant = runtime.store.merchant(merchant_id)
    name = merchant.name if merchant is not None else f"Merchant {merchant_id}"
    address = _merchant_address(runtime, merchant_id)
    owed_now = runtime.client.merchant_totals(address).owed
    if _index_is_live(runtime):
        found = ledger_statement(runtime.store.db.engine, address, period)
        return StatementOut(
            merchant_id=merchant_id,
            name=name,
            period_start=period.start,
            period_end=period.end,
            source="index",
            opening=found.opening,
            redeemed=found.redeemed,
            reversed=found.reversed,
            settled=found.settled,
            lines=[
                StatementLineOut(
                    kind=line.kind,
                    at=line.block_time,
                    reference=line.reference,
                    scheme_id=line.scheme_id,
                    amount=line.amount,
                    tx_hash=line.transaction_hash,
                )
                for line in found.lines
            ],
            owed_now=owed_now,
        )
    start = datetime.fromtimestamp(period.start, UTC)
    end = datetime.fromtimestamp(period.end, UTC)
    lines: list[StatementLineOut] = []
    redeemed = reversed_ = 0
    for record in runtime.store.merchant_records_between(merchant_id, start, end):
        created = _utc(record.created_at)
        credited = record.credited or 0
        if start <= created < end:
            redeemed += credited
            lines.append(
                StatementLineOut(
                    kind="redemption",
                    at=int(created.timestamp()),
                    reference=str(record.redemption_id),
                    scheme_id=record.scheme_id,
                    amount=credited,
                    tx_hash=record.tx_hash,
                )
            )
        if record.reversed_at is not None and start <= _utc(record.reversed_at) < end:
            reversed_ += credited
            lines.append(
                StatementLineOut(
                    kind="reversal",
                    at=int(_utc(record.reversed_at).timestamp()),
                    reference=str(record.redemption_id),
                    scheme_id=record.scheme_id,
                    amount=-credited,
                    tx_hash=record.reversal_tx_hash,
                )
            )
    lines.sort(key=lambda line: (line.at, line.reference))
    return StatementOut(
        merchant_id=merchant_id,
        name=name,
        period_start=period.start,
        period_end=period.end,
        source="api_records",
        opening=None,
        redeemed=redeemed,
        reversed=reversed_,
        settled=None,
        lines=lines,
        owed_now=owed_now,
    )


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
