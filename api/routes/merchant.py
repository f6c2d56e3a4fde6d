"""Merchant routes (the slice: redeem against a scanned pass token)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from api import services
from api.deps import IdempotencyKey, MerchantId, RuntimeDep
from api.problems import problem_responses
from api.schemas import RedemptionIn, RedemptionOut

router = APIRouter(prefix="/merchant", tags=["merchant"])


@router.post(
    "/redemptions",
    status_code=status.HTTP_201_CREATED,
    summary="Redeem against a pass token (idempotent per Idempotency-Key)",
    responses=problem_responses(
        (400, "token_malformed", "not a stadjerspas token URI"),
        (400, "idempotency_key_missing", "send an Idempotency-Key header with each redemption"),
        (401, "unauthorized", "this endpoint needs the merchant bearer token"),
        (403, "redemption_merchant_not_allowed", "this merchant may not redeem this scheme"),
        (404, "redemption_scheme_unknown", "no scheme has this id"),
        (409, "redemption_amount_over_balance", "the amount exceeds what is left"),
        (409, "idempotency_key_reused", "the Idempotency-Key was used with another body"),
        (422, "token_expired", "token expired at 1767225600 (unix s)"),
        (422, "token_wrong_chain", "token is for chain id 1, this verifier accepts 31337"),
        (422, "token_signer_not_allowed", "token is signed by an unknown key"),
        (504, "receipt_timeout", "no receipt yet; retry with the same Idempotency-Key"),
    ),
)
def redeem(
    body: RedemptionIn,
    merchant_id: MerchantId,
    idempotency_key: IdempotencyKey,
    runtime: RuntimeDep,
    response: Response,
) -> RedemptionOut:
    """Verify the token offline (this chain and contract, not expired, signed by the pass signer
    or the pass's holder key), allocate the next redemption id and redeem on chain.

    Retrying with the same ``Idempotency-Key`` and body returns the first result (header
    ``Idempotent-Replayed: true``) and never redeems twice; the same key with another body is
    refused with ``idempotency_key_reused``.
    """
    outcome = services.redeem(
        runtime,
        merchant_id=merchant_id,
        idempotency_key=idempotency_key,
        token=body.token,
        scheme_id=body.scheme_id,
        amount=body.amount,
    )
    response.headers["Idempotent-Replayed"] = "true" if outcome.replayed else "false"
    return outcome.result
