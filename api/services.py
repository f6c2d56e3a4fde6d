"""What the routes do: issue, sign a pass token, read balances, redeem (idempotently).

Functions here are synchronous (the routes run them in FastAPI's thread pool): they read the
chain, wait for relayer receipts and use the store. They raise :class:`api.problems.ApiProblem`,
:class:`wallet.WalletError` or :class:`ledger.contract_errors.ContractRevert`; the problem
handlers turn those into RFC 9457 responses.

Redemption and idempotency
--------------------------
A merchant sends an ``Idempotency-Key`` with each redemption. Requests with the same key (per
merchant) run one at a time. The first request verifies the token offline, preflights the call,
then atomically stores a *pending* record with the next dense redemption id and submits
``redeem`` through the merchant's relayer; the record is completed with the receipt (or the
contract's refusal). A retry with the same key and body returns the stored outcome; one whose
first attempt is still pending waits for the same transaction, or (after a restart) resubmits
the *same* redemption id, which the contract accepts at most once, so a retry can never redeem
twice. The same key with another body is refused with ``idempotency_key_reused``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Literal

from eth_utils.crypto import keccak
from hexbytes import HexBytes

from api.problems import ApiProblem, contract_status
from api.runtime import Runtime
from api.schemas import Balance, BalancesOut, EntitlementOut, PassTokenOut, RedemptionOut
from api.settings import Settings
from api.store import IdempotencyConflict, PassHolder, RedemptionRecord, RedemptionStatus
from ledger import contract_errors as ce
from ledger.client import UNLIMITED, RedemptionRequest, SchemeKind
from ledger.events import DecodedEvent
from ledger.passid import pass_id
from ledger.relayer import Relayer, TxReceipt, TxRequest
from wallet import (
    PassToken,
    SignedPassToken,
    decode_token_uri,
    encode_token_uri,
    sign_pass_token,
    verify_pass_token,
)

__all__ = [
    "RedemptionOutcome",
    "balances",
    "issue_entitlement",
    "make_pass_token",
    "redeem",
]

_ZERO_ADDRESS = "0x" + "00" * 20
_REDEEMED_TOPIC = keccak(
    text="Redeemed(uint256,bytes32,uint256,address,uint64,uint64,uint64,uint64)"
)
_KIND_NAMES: dict[SchemeKind, Literal["budget", "uses", "discount"]] = {
    SchemeKind.BUDGET: "budget",
    SchemeKind.USES: "uses",
    SchemeKind.DISCOUNT: "discount",
}


def _gas(estimate: int) -> int:
    return estimate + estimate // 4 + 20_000


def _holder(runtime: Runtime, pass_number: str) -> PassHolder:
    holder = runtime.store.holder(pass_number)
    if holder is None:
        raise ApiProblem(404, "pass_number_unknown", f"no holder has pass number {pass_number!r}")
    return holder


def _pass_id(holder: PassHolder) -> bytes:
    return pass_id(pass_secret=holder.pass_secret, pass_number=holder.pass_number)


def _balance_at(runtime: Runtime, scheme_id: int, pid: bytes, block: int) -> int:
    fn = runtime.client.contract.functions.balanceOf(scheme_id, pid)
    return int(fn.call(block_identifier=block))


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


def balances(runtime: Runtime, pass_number: str) -> BalancesOut:
    holder = _holder(runtime, pass_number)
    pid = _pass_id(holder)
    client = runtime.client
    state = client.pass_of(pid)
    labels = runtime.store.scheme_labels()
    out: list[Balance] = []
    for scheme_id in range(1, client.scheme_count() + 1):
        kind = client.scheme_of(scheme_id).terms.kind
        balance = client.balance_of(scheme_id, pid)
        out.append(
            Balance(
                scheme_id=scheme_id,
                name=labels.get(scheme_id, f"Scheme {scheme_id}"),
                kind=_KIND_NAMES[kind],
                unit="cents" if kind is SchemeKind.BUDGET else "uses",
                balance=balance,
                unlimited=balance == UNLIMITED,
            )
        )
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


def _verify(runtime: Runtime, signed: SignedPassToken) -> None:
    """Offline checks: this chain and contract, not expired, signed by the pass signer or the
    pass's own holder key (read from the chain)."""
    allowed = {runtime.keys.pass_signer.address}
    holder_key = runtime.client.pass_of(signed.token.pass_id).holder_key
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
    record.status = RedemptionStatus.FAILED
    record.problem_code = exc.code
    record.problem_status = contract_status(exc)
    record.problem_detail = str(exc)
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


def _complete(
    runtime: Runtime,
    record: RedemptionRecord,
    relayer: Relayer,
    request: TxRequest,
    receipt: TxReceipt,
) -> RedemptionOut:
    if receipt.ok:
        for event in _receipt_events(runtime, receipt):
            if event.name == "Redeemed" and event.args["redemptionId"] == record.redemption_id:
                return _succeed(runtime, record, event)
        raise ApiProblem(502, "chain_error", "the redemption was mined without a Redeemed event")
    error = runtime.client.revert_of(bytes(relayer.revert_data(request, receipt) or b""))
    if isinstance(error, ce.RedemptionIdUsed):  # an earlier submission of this very record?
        earlier = _redeemed_event(runtime, record, relayer.address)
        if earlier is not None:
            return _succeed(runtime, record, earlier)
    raise _fail(runtime, record, error)


def _submit(runtime: Runtime, record: RedemptionRecord, signed: SignedPassToken) -> RedemptionOut:
    """Send ``record``'s redemption and wait for its outcome (bounded by the receipt timeout)."""
    relayer = runtime.merchant_relayer(record.merchant_id)
    call = RedemptionRequest(
        redemption_id=record.redemption_id,
        scheme_id=record.scheme_id,
        amount=record.amount,
        token=signed,
    )
    data = runtime.client.redeem_data(call)
    try:
        estimate = runtime.client.preflight(sender=relayer.address, data=data)
    except ce.RedemptionIdUsed:
        event = _redeemed_event(runtime, record, relayer.address)
        if event is not None:
            return _succeed(runtime, record, event)
        raise
    except ce.ContractRevert as exc:
        raise _fail(runtime, record, exc) from None
    request = TxRequest(to=runtime.client.address, data=data, gas=_gas(estimate))
    handle = relayer.submit(request)
    slot = (record.merchant_id, record.idempotency_key)
    with runtime.inflight_lock:
        runtime.inflight[slot] = handle
    receipt = handle.result(timeout=runtime.settings.receipt_timeout_s)  # ReceiptTimeout -> 504
    with runtime.inflight_lock:
        runtime.inflight.pop(slot, None)
    return _complete(runtime, record, relayer, request, receipt)


def _resume(runtime: Runtime, record: RedemptionRecord) -> RedemptionOut:
    """Finish a pending record: wait for its in-flight transaction, or resubmit the same id."""
    slot = (record.merchant_id, record.idempotency_key)
    with runtime.inflight_lock:
        handle = runtime.inflight.get(slot)
    if handle is not None:
        receipt = handle.result(timeout=runtime.settings.receipt_timeout_s)
        with runtime.inflight_lock:
            runtime.inflight.pop(slot, None)
        relayer = runtime.merchant_relayer(record.merchant_id)
        return _complete(runtime, record, relayer, handle.request, receipt)
    return _submit(runtime, record, decode_token_uri(record.token_uri))


def redeem(
    runtime: Runtime,
    *,
    merchant_id: int,
    idempotency_key: str,
    token: str,
    scheme_id: int,
    amount: int,
) -> RedemptionOutcome:
    token = token.strip()
    request_hash = _request_hash(token, scheme_id, amount)
    with runtime.key_locks.hold((merchant_id, idempotency_key)):
        existing = runtime.store.redemption(merchant_id, idempotency_key)
        if existing is not None:
            if existing.request_hash != request_hash:
                raise _key_reused(idempotency_key)
            if existing.status is RedemptionStatus.SUCCEEDED:
                return RedemptionOutcome(_result(existing), replayed=True)
            if existing.status is RedemptionStatus.FAILED:
                raise _stored_problem(existing)
            return RedemptionOutcome(_resume(runtime, existing), replayed=True)

        signed = decode_token_uri(token)
        _verify(runtime, signed)
        relayer = runtime.merchant_relayer(merchant_id)
        # Preflight before allocating, so a refused request uses up no id and stores nothing.
        for _ in range(32):
            candidate = runtime.store.peek_redemption_id()
            call = RedemptionRequest(
                redemption_id=candidate, scheme_id=scheme_id, amount=amount, token=signed
            )
            try:
                runtime.client.preflight(
                    sender=relayer.address, data=runtime.client.redeem_data(call)
                )
                break
            except ce.RedemptionIdUsed:  # used outside this store (e.g. a reset database)
                runtime.store.skip_redemption_ids(candidate)
        try:
            allocated = runtime.store.allocate_redemption(
                merchant_id=merchant_id,
                idempotency_key=idempotency_key,
                request_hash=request_hash,
                token_uri=token,
                scheme_id=scheme_id,
                amount=amount,
            )
        except IdempotencyConflict:
            raise _key_reused(idempotency_key) from None
        return RedemptionOutcome(_submit(runtime, allocated.record, signed), replayed=False)


def _key_reused(key: str) -> ApiProblem:
    return ApiProblem(
        409,
        "idempotency_key_reused",
        f"the Idempotency-Key {key!r} was used before with a different request body; "
        "use a new key for a new redemption",
    )
