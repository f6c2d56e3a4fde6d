"""Merchant routes, for the terminals of one merchant (object-level access by the token's
merchant): scan a pass, redeem, reverse, list own redemptions, statement, offers.

Object-level rule: a terminal sees and reverses only its own merchant's redemptions. Another
merchant's redemption is answered exactly like one that does not exist (404 with the contract's
code ``reversal_unknown_redemption``), so ids cannot be probed.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Path, Query, Response, status
from starlette.concurrency import run_in_threadpool

from api import card_pins, redemptions, services
from api.deps import (
    IdempotencyKey,
    MerchantId,
    ReadingTerminal,
    RedeemingTerminal,
    RuntimeDep,
)
from api.problems import ApiProblem, problem_responses
from api.schemas import (
    OfferOut,
    RedemptionIn,
    RedemptionOut,
    RedemptionPage,
    ReversalOut,
    ScanIn,
    ScanOut,
    StatementOut,
)
from api.store import RedemptionStatus
from ledger.reports.periods import DEFAULT_TZ
from ledger.state_cache import CacheMiss

router = APIRouter(prefix="/merchant", tags=["merchant"])

_UNAUTHORIZED = (401, "unauthorized", "this endpoint needs a bearer token")
_EXPIRED = (401, "auth_token_expired", "the bearer token expired at 1767225600 (unix s)")
_SCOPE = (403, "insufficient_scope", "this endpoint needs the scopes ['merchant:redeem']")
_READ_SCOPE = (403, "insufficient_scope", "this endpoint needs the scopes ['merchant:read']")
_KIND = (403, "wrong_principal_kind", "this endpoint is for terminal logins")
_INVALID = (422, "validation_failed", "body.token: Field required")
_CODE_UNKNOWN = (422, "short_code_unknown", "no live short code K7QX-M4PZ: it was mistyped ...")
_CODE_THROTTLED = (429, "short_code_throttled", "10 wrong short codes from this terminal ...")
RedemptionId = Annotated[int, Path(ge=1, le=2**63 - 1, examples=[7])]


@router.post(
    "/scan",
    summary="Verify a scanned pass token: status and what it may redeem here",
    responses=problem_responses(
        (400, "token_malformed", "not a stadjerspas token URI"),
        _UNAUTHORIZED,
        _EXPIRED,
        _SCOPE,
        _KIND,
        (422, "token_expired", "token expired at 1767225600 (unix s)"),
        (422, "token_signer_not_allowed", "token is signed by an unknown key"),
        _INVALID,
        _CODE_UNKNOWN,
        _CODE_THROTTLED,
    ),
)
async def scan(
    body: ScanIn, merchant_id: MerchantId, terminal: RedeemingTerminal, runtime: RuntimeDep
) -> ScanOut:
    """Verify the token offline (this chain and contract, not expired, signed by the pass signer
    or the pass's holder key), then read the pass on chain: ``active``/``blocked``, and for each
    scheme this merchant may redeem with something left: kind, amount left, validity dates and
    the per-redemption cap. The holder appears by first name only. Scopes: ``merchant:redeem``.

    ``token`` is the scanned token URI or the holder's short code (``K7QX-M4PZ``: any case,
    spaces and dashes ignored), which stands for the token shown beside it until it expires.
    """
    token = await card_pins.counter_token(
        runtime, body.token, pin=body.pin, terminal=terminal.subject
    )
    try:  # from the state cache, on the event loop: no thread hop, no chain read
        out = services.scan(runtime, merchant_id=merchant_id, token=token, cached_only=True)
    except CacheMiss:
        out = await run_in_threadpool(services.scan, runtime, merchant_id=merchant_id, token=token)
    if body.pin is not None:
        out.checkout_token = token
    return out


@router.post(
    "/redemptions",
    status_code=status.HTTP_201_CREATED,
    summary="Redeem against a pass token (idempotent per Idempotency-Key)",
    responses=problem_responses(
        (400, "token_malformed", "not a stadjerspas token URI"),
        (400, "idempotency_key_missing", "send an Idempotency-Key header with each redemption"),
        _UNAUTHORIZED,
        _SCOPE,
        (403, "redemption_merchant_not_allowed", "this merchant may not redeem this scheme"),
        (404, "redemption_scheme_unknown", "no scheme has this id"),
        (409, "redemption_amount_over_balance", "the amount exceeds what is left"),
        (409, "idempotency_key_reused", "the Idempotency-Key was used with another body"),
        (422, "token_expired", "token expired at 1767225600 (unix s)"),
        (422, "token_wrong_chain", "token is for chain id 1, this verifier accepts 31337"),
        (422, "token_signer_not_allowed", "token is signed by an unknown key"),
        (504, "receipt_timeout", "no receipt yet; retry with the same Idempotency-Key"),
        _CODE_UNKNOWN,
        _CODE_THROTTLED,
    ),
)
async def redeem(
    body: RedemptionIn,
    merchant_id: MerchantId,
    terminal: RedeemingTerminal,
    idempotency_key: IdempotencyKey,
    runtime: RuntimeDep,
    response: Response,
) -> RedemptionOut:
    """Verify the token offline, check it against the state cache as the contract would,
    allocate the next redemption id and queue the redemption on this merchant's batcher:
    concurrent redemptions share ``redeemBatch`` transactions. Scopes: ``merchant:redeem``.

    The ``Idempotency-Key`` header is required. Retrying with the same key and body returns the
    first result (header ``Idempotent-Replayed: true``) and never redeems twice; the same key
    with another body is refused with ``idempotency_key_reused``. ``token`` may be the holder's
    short code instead of the token URI, as for the scan.
    """
    outcome = await redemptions.redeem(
        runtime,
        merchant_id=merchant_id,
        idempotency_key=idempotency_key,
        token=await card_pins.counter_token(
            runtime, body.token, pin=body.pin, terminal=terminal.subject
        ),
        scheme_id=body.scheme_id,
        amount=body.amount,
        sent=body.token,
    )
    response.headers["Idempotent-Replayed"] = "true" if outcome.replayed else "false"
    return outcome.result


@router.post(
    "/redemptions/{redemption_id}/reversal",
    status_code=status.HTTP_201_CREATED,
    summary="Reverse one of this merchant's redemptions (within the reversal window)",
    responses=problem_responses(
        _UNAUTHORIZED,
        _SCOPE,
        (404, "reversal_unknown_redemption", "this merchant has no redemption 7"),
        (409, "reversal_already_done", "a redemption can be reversed once"),
        (409, "reversal_window_closed", "the reversal window has closed"),
        (409, "reversal_exceeds_owed", "the merchant was already paid for this redemption"),
        (422, "validation_failed", "path.redemption_id: Input should be a valid integer"),
    ),
)
def reverse(
    redemption_id: RedemptionId, merchant_id: MerchantId, runtime: RuntimeDep
) -> ReversalOut:
    """Build the receipt and its Merkle proof from the ``Redeemed`` events of the transaction
    that redeemed it and call ``reverse``: the entitlement gets back exactly what was debited
    and the merchant is owed that much less. Once only; only by the merchant that redeemed.
    Scopes: ``merchant:redeem``."""
    return services.reverse(runtime, merchant_id=merchant_id, redemption_id=redemption_id)


@router.get(
    "/redemptions",
    summary="This merchant's own redemptions, newest first",
    responses=problem_responses(_UNAUTHORIZED, _READ_SCOPE, _KIND),
)
def list_redemptions(
    terminal: ReadingTerminal,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[
        int | None, Query(ge=1, le=2**63 - 1, description="Cursor: next_before of a page.")
    ] = None,
    status: Annotated[Literal["pending", "succeeded", "failed"] | None, Query()] = None,
) -> RedemptionPage:
    """Own redemption requests (with their outcome and any reversal), ``limit`` per page; follow
    ``next_before``. Scopes: ``merchant:read``."""
    assert terminal.merchant_id is not None
    return services.list_redemptions(
        runtime,
        merchant_id=terminal.merchant_id,
        limit=limit,
        before=before,
        status=RedemptionStatus(status) if status is not None else None,
    )


@router.get(
    "/statement",
    summary="This merchant's statement over a period",
    responses=problem_responses(
        _UNAUTHORIZED,
        _READ_SCOPE,
        (422, "period_invalid", "a period must end after it starts"),
    ),
)
def statement(
    terminal: ReadingTerminal,
    runtime: RuntimeDep,
    from_: Annotated[
        date | None, Query(alias="from", description="First day (default: 1st of this month).")
    ] = None,
    to: Annotated[date | None, Query(description="Last day, included (default: today).")] = None,
) -> StatementOut:
    """Credited redemptions minus reversals (and settlements, from the chain index when the
    indexer runs) over local days ``from`` .. ``to``, and what is owed now (read from the
    chain). Scopes: ``merchant:read``."""
    assert terminal.merchant_id is not None
    today = datetime.now(ZoneInfo(DEFAULT_TZ)).date()
    first = from_ if from_ is not None else today.replace(day=1)
    last = to if to is not None else today
    if last < first or (last - first) > timedelta(days=3660):
        raise ApiProblem(
            422, "period_invalid", "'to' must not be before 'from', and at most ten years later"
        )
    return services.statement(runtime, merchant_id=terminal.merchant_id, first=first, last=last)


@router.get(
    "/offers",
    summary="The discount schemes this merchant may redeem",
    responses=problem_responses(_UNAUTHORIZED, _READ_SCOPE),
)
def offers(terminal: ReadingTerminal, runtime: RuntimeDep) -> list[OfferOut]:
    """Discount schemes open to all merchants or allowed for this one. Scopes:
    ``merchant:read``."""
    assert terminal.merchant_id is not None
    return services.offers(runtime, merchant_id=terminal.merchant_id)
