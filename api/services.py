"""What the routes do: issue, sign a pass token, read balances, scan, reverse, statements.

Functions here are synchronous (the routes run them in FastAPI's thread pool): they read the
chain, wait for relayer receipts and use the store. They raise :class:`api.problems.ApiProblem`,
:class:`wallet.WalletError` or :class:`ledger.contract_errors.ContractRevert`; the problem
handlers turn those into RFC 9457 responses.

The redemption itself (check, allocate, batch, outcome) is :mod:`api.redemptions`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

from hexbytes import HexBytes

from api import cohort_claims
from api.problems import ApiProblem
from api.runtime import Runtime
from api.schemas import (
    Balance,
    BalancesOut,
    EntitlementOut,
    OfferOut,
    PassTokenOut,
    Redeemable,
    RedemptionItem,
    RedemptionPage,
    ReversalOut,
    ScanOut,
    StatementLineOut,
    StatementOut,
)
from api.settings import Settings
from api.store import PassHolder, RedemptionRecord, RedemptionStatus
from ledger import contract_errors as ce
from ledger.client import UNLIMITED, SchemeKind, SchemeTerms
from ledger.events import DecodedEvent
from ledger.passid import pass_id
from ledger.relayer import TxReceipt
from ledger.reports.periods import Period, PeriodError
from ledger.rpc import RpcError
from ledger.settlement.statements import statement as ledger_statement
from ledger.store.index import IndexCheckpoint
from wallet import (
    PassToken,
    SignedPassToken,
    decode_token_uri,
    encode_token_uri,
    sign_pass_token,
    verify_pass_token,
)

__all__ = [
    "balance_at",
    "balances",
    "issue_entitlement",
    "list_redemptions",
    "make_pass_token",
    "merchant_address",
    "offers",
    "reverse",
    "scan",
    "statement",
    "verify_token",
]

_ZERO_ADDRESS = "0x" + "00" * 20
KIND_NAMES: dict[SchemeKind, Literal["budget", "uses", "discount"]] = {
    SchemeKind.BUDGET: "budget",
    SchemeKind.USES: "uses",
    SchemeKind.DISCOUNT: "discount",
}


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


def balance_at(runtime: Runtime, scheme_id: int, pid: bytes, block: int) -> int:
    """The balance at the end of ``block``; the balance now if the node no longer has that
    block's state (anvil restarted from its state file keeps no history)."""
    data = runtime.client.call_data("balanceOf", scheme_id, pid)
    try:
        return int.from_bytes(_eth_call(runtime, data, block=hex(block)), "big")
    except RpcError:
        return int.from_bytes(_eth_call(runtime, data, block="latest"), "big")


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


# -- admin ------------------------------------------------------------------------------------


def issue_entitlement(
    runtime: Runtime, *, pass_number: str, scheme_id: int, amount: int
) -> EntitlementOut:
    holder = _holder(runtime, pass_number)
    pid = _pass_id(holder)
    receipt = runtime.transact(runtime.issuer(), "issue", scheme_id, pid, amount)
    return EntitlementOut(
        pass_number=holder.pass_number,
        scheme_id=scheme_id,
        amount=amount,
        balance=balance_at(runtime, scheme_id, pid, receipt.block_number),
        tx_hash=receipt.tx_hash.to_0x_hex(),
        block_number=receipt.block_number,
    )


# -- holder -----------------------------------------------------------------------------------


#: a new token may expire up to this share of its lifetime sooner, to stay newer than the last
_EXPIRY_SLACK = 0.2


def fresh_expiry(runtime: Runtime, pass_id: bytes, lifetime_s: int) -> int:
    """The expiry of a new short-lived token for ``pass_id``: about ``lifetime_s`` from now, and
    later than every token of the pass this process signed or saw redeemed (:func:`note_token`:
    a holder app's token too), so each is a new checkout's (the contract refuses a token no
    newer than one already redeemed). Refused with 429 when a pass asks for tokens faster than
    one a second for a while."""
    now = int(time.time())
    with runtime.token_expiries_lock:
        last = runtime.token_expiries.get(pass_id, 0)
        expiry = max(now + lifetime_s - int(lifetime_s * _EXPIRY_SLACK), last + 1)
        if expiry > now + lifetime_s:
            raise ApiProblem(
                429,
                "token_too_soon",
                "a new pass code is made at most about once a second; try again in a second",
                headers={"Retry-After": "1"},
            )
        runtime.token_expiries[pass_id] = expiry
        if len(runtime.token_expiries) > 100_000:  # forget expired ones
            for key in [k for k, v in runtime.token_expiries.items() if v < now]:
                del runtime.token_expiries[key]
    return expiry


def note_token(runtime: Runtime, pass_id: bytes, expiry: int) -> None:
    """A short-lived token of ``pass_id`` that expires at ``expiry`` is being redeemed: every
    token this process signs for the pass from now on expires later."""
    with runtime.token_expiries_lock:
        if runtime.token_expiries.get(pass_id, 0) < expiry:
            runtime.token_expiries[pass_id] = expiry


def make_pass_token(runtime: Runtime, settings: Settings, pass_number: str) -> PassTokenOut:
    """A short-lived (serial 0) pass token signed by the pass-signer key, newer than the last
    one of the pass (:func:`fresh_expiry`)."""
    holder = _holder(runtime, pass_number)
    expiry = fresh_expiry(runtime, _pass_id(holder), settings.token_lifetime_s)
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


def verify_token(runtime: Runtime, signed: SignedPassToken, *, cached_only: bool = False) -> None:
    """Offline checks: this chain and contract, not expired, signed by the pass signer or the
    pass's own holder key (read from the chain)."""
    allowed = {runtime.keys.pass_signer.address}
    holder_key = runtime.state.pass_state(signed.token.pass_id, cached_only=cached_only).holder_key
    if holder_key != _ZERO_ADDRESS:
        allowed.add(holder_key)
    verify_pass_token(
        signed,
        expected_domain=runtime.domain,
        now=int(time.time()),
        allowed_signers=allowed,
        # a short-lived token lives at most the token lifetime (plus the verifier's clock skew)
        max_lifetime_s=runtime.settings.token_lifetime_s,
    )


# -- merchant: scan, offers, list, reverse, statement -----------------------------------------


def merchant_address(runtime: Runtime, merchant_id: int) -> str:
    relayer = runtime.merchant_relayers.get(merchant_id)
    if relayer is None:
        raise ApiProblem(403, "merchant_unknown", f"merchant {merchant_id} has no signing key")
    return relayer.address


def _allowed_schemes(
    runtime: Runtime, merchant_id: int, *, cached_only: bool = False
) -> list[tuple[int, SchemeTerms]]:
    """The schemes ``merchant_id`` may redeem: open to all merchants, or allowed for it."""
    address = merchant_address(runtime, merchant_id)
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
    verify_token(runtime, signed, cached_only=cached_only)
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
        problem_detail=record.problem_detail,
        promise_broken=record.promise_broken_at is not None,
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
        # preflight first: a refusal raises the contract's typed error and sends nothing
        mined = runtime.transact(relayer, "reverse", leaf.as_tuple(), root, proof)
        record.reversal_tx_hash = mined.tx_hash.to_0x_hex()
        record.reversal_block_number = mined.block_number
        record.reversed_at = datetime.now(UTC)
        runtime.store.save_redemption(record)
        return ReversalOut(
            redemption_id=redemption_id,
            scheme_id=leaf.scheme_id,
            restored=leaf.debited,
            credited_reversed=leaf.credited,
            balance=balance_at(runtime, leaf.scheme_id, leaf.pass_id, mined.block_number),
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
    address = merchant_address(runtime, merchant_id)
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
