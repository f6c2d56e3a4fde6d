"""Municipality routes (the slice: issue an entitlement to one pass)."""

from __future__ import annotations

from fastapi import APIRouter, status

from api import services
from api.deps import AdminAuth, RuntimeDep
from api.problems import problem_responses
from api.schemas import EntitlementIn, EntitlementOut

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminAuth])


@router.post(
    "/entitlements",
    status_code=status.HTTP_201_CREATED,
    summary="Issue an entitlement to a pass",
    responses=problem_responses(
        (401, "unauthorized", "this endpoint needs the admin bearer token"),
        (404, "pass_number_unknown", "no holder has pass number 'GR9999999'"),
        (404, "scheme_unknown", "SchemeUnknown(schemeId=9): no scheme has this id"),
        (409, "scheme_budget_exceeded", "issued value may never exceed the scheme's budget cap"),
        (422, "validation_failed", "body.amount: Input should be greater than or equal to 1"),
    ),
)
def issue_entitlement(body: EntitlementIn, runtime: RuntimeDep) -> EntitlementOut:
    """Look the pass up, compute its pass id and issue ``amount`` (cents or uses) on chain.

    Returns the transaction hash and the pass's new balance of the scheme.
    """
    return services.issue_entitlement(
        runtime, pass_number=body.pass_number, scheme_id=body.scheme_id, amount=body.amount
    )
