"""Municipal staff: holders (registry), passes and printed cards, schemes, CSV and cohort
issuance as jobs.

Thin: each route checks its scope and hands the work to :mod:`api.admin_services`. Scopes:
``admin`` for the registry (holders, erasure); ``issue`` for passes, cards, schemes,
entitlements and their jobs. Every refusal is a problem document with a stable code, and
nothing changes on a refusal.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Query, UploadFile, status
from fastapi.responses import Response

from api import admin_services as svc
from api import card_pins
from api.admin_schemas import (
    AuditIn,
    AuditOut,
    CardOut,
    CohortIn,
    ConfirmOut,
    ErasureOut,
    HolderIn,
    HolderOut,
    HouseholdIn,
    HouseholdMemberIn,
    HouseholdOut,
    HouseholdPage,
    IssuedPassOut,
    JobOut,
    MerchantIn,
    MerchantLocationIn,
    MerchantOut,
    PassIn,
    PassOut,
    PayoutIn,
    PayoutRunOut,
    SchemeIn,
    SchemeOut,
)
from api.auth import Scope
from api.deps import RuntimeDep, require_scopes
from api.jobs import jobs_of
from api.problems import ApiProblem, problem_responses
from api.schemas import JSON_INT_MAX

router = APIRouter(prefix="/admin", tags=["admin"])

_ADMIN = [require_scopes(Scope.ADMIN, kind="staff")]
_ISSUE = [require_scopes(Scope.ISSUE, kind="staff")]
_FINANCE = [require_scopes(Scope.FINANCE, kind="staff")]
_AUDIT = [require_scopes(Scope.AUDIT, kind="staff")]

_AUTH = (
    (401, "unauthorized", "this endpoint needs a bearer token"),
    (403, "insufficient_scope", "this endpoint needs the scopes ['issue']"),
)
_PASS_UNKNOWN = (404, "pass_number_unknown", "no pass has number 'GR9999999'")
_HOLDER_UNKNOWN = (404, "holder_unknown", "no holder has id 999")
_INVALID = (422, "validation_failed", "body.birth_date: Input should be a valid date")

PassNumber = Annotated[str, Path(max_length=32, examples=["GR0000001"])]
HolderId = Annotated[int, Path(ge=1, le=2**62)]
HouseholdId = Annotated[int, Path(ge=1, le=2**62)]
MerchantId = Annotated[int, Path(ge=1, le=2**62)]
_MERCHANT_UNKNOWN = (404, "merchant_unknown", "no merchant has id 999")
_HOUSEHOLD_UNKNOWN = (404, "household_unknown", "no household has id 999")


# -- holders (registry; scope admin) ----------------------------------------------------------


@router.post(
    "/holders",
    status_code=status.HTTP_201_CREATED,
    dependencies=_ADMIN,
    summary="Enrol a holder",
    responses=problem_responses(
        *_AUTH,
        _INVALID,
        (422, "postcode_unknown", "postcode 9999ZZ is not in the postcode-to-district table"),
        (422, "postcode_invalid", "'12' is not a Dutch postcode"),
        (422, "holder_invalid", "first_name must not be empty"),
    ),
)
def enrol_holder(body: HolderIn, runtime: RuntimeDep) -> HolderOut:
    """Enrol a holder; the district follows from the postcode. A possible duplicate (same
    name, birth date and postcode) is enrolled and flagged (``possible_duplicate``)."""
    return svc.enrol_holder(runtime, body)


@router.get(
    "/holders/{holder_id}",
    dependencies=_ADMIN,
    summary="A holder with their passes",
    responses=problem_responses(*_AUTH, _HOLDER_UNKNOWN),
)
def get_holder(holder_id: HolderId, runtime: RuntimeDep) -> HolderOut:
    return svc.get_holder(runtime, holder_id)


@router.delete(
    "/holders/{holder_id}",
    dependencies=_ADMIN,
    summary="Erase a holder (GDPR article 17)",
    responses=problem_responses(*_AUTH, _HOLDER_UNKNOWN),
)
def erase_holder(holder_id: HolderId, runtime: RuntimeDep) -> ErasureOut:
    """Delete the holder, their passes (numbers and secrets) and cards from the registry; the
    on-chain history stays but no longer links to a person, and the pass numbers are unknown."""
    return svc.erase_holder(runtime, holder_id)


# -- households (registry; scope admin) -------------------------------------------------------


@router.get(
    "/households",
    dependencies=_ADMIN,
    summary="Households with their members (a page)",
    responses=problem_responses(*_AUTH, _INVALID),
)
def list_households(
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> HouseholdPage:
    """Households by id; members with their roles, first names and pass numbers only."""
    return svc.list_households(runtime, limit=limit, offset=offset)


@router.post(
    "/households",
    status_code=status.HTTP_201_CREATED,
    dependencies=_ADMIN,
    summary="Create a household",
    responses=problem_responses(
        *_AUTH,
        (409, "household_reference_taken", "a household with reference 'HH-1' exists"),
        _INVALID,
    ),
)
def create_household(body: HouseholdIn, runtime: RuntimeDep) -> HouseholdOut:
    return svc.create_household(runtime, body)


@router.get(
    "/households/{household_id}",
    dependencies=_ADMIN,
    summary="A household with its members",
    responses=problem_responses(*_AUTH, _HOUSEHOLD_UNKNOWN),
)
def get_household(household_id: HouseholdId, runtime: RuntimeDep) -> HouseholdOut:
    return svc.get_household(runtime, household_id)


@router.delete(
    "/households/{household_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=_ADMIN,
    summary="Delete an empty household",
    responses=problem_responses(
        *_AUTH,
        _HOUSEHOLD_UNKNOWN,
        (409, "household_not_empty", "household 'HH-1' has 2 member(s); unlink them first"),
    ),
)
def delete_household(household_id: HouseholdId, runtime: RuntimeDep) -> Response:
    svc.delete_household(runtime, household_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put(
    "/households/{household_id}/members/{holder_id}",
    dependencies=_ADMIN,
    summary="Link a holder to a household with a role (or change the role)",
    responses=problem_responses(
        *_AUTH,
        _HOUSEHOLD_UNKNOWN,
        _HOLDER_UNKNOWN,
        (409, "holder_in_other_household", "holder 7 is in household 'HH-2'; unlink them there"),
        _INVALID,
    ),
)
def link_member(
    household_id: HouseholdId, holder_id: HolderId, body: HouseholdMemberIn, runtime: RuntimeDep
) -> HouseholdOut:
    """Idempotent; a holder is in one household at a time (unlink them from another first)."""
    return svc.link_member(runtime, household_id, holder_id, body)


@router.delete(
    "/households/{household_id}/members/{holder_id}",
    dependencies=_ADMIN,
    summary="Unlink a holder from a household",
    responses=problem_responses(
        *_AUTH,
        _HOUSEHOLD_UNKNOWN,
        _HOLDER_UNKNOWN,
        (404, "household_member_unknown", "holder 7 is not a member of household 3"),
    ),
)
def unlink_member(
    household_id: HouseholdId, holder_id: HolderId, runtime: RuntimeDep
) -> HouseholdOut:
    """The holder stays enrolled (role ``other``); the household stays, even when empty."""
    return svc.unlink_member(runtime, household_id, holder_id)


# -- passes and cards (scope issue) -----------------------------------------------------------


@router.post(
    "/holders/{holder_id}/passes",
    status_code=status.HTTP_201_CREATED,
    dependencies=_ISSUE,
    summary="Issue a pass to a holder",
    responses=problem_responses(*_AUTH, _HOLDER_UNKNOWN, _INVALID),
)
def issue_pass(
    holder_id: HolderId, runtime: RuntimeDep, body: PassIn | None = None
) -> IssuedPassOut:
    """A new pass number and secret in the registry, its pass id registered on chain. The
    activation code (for the letter) is in this response only."""
    return svc.issue_pass(runtime, holder_id, body or PassIn())


@router.post(
    "/passes/{pass_number}/block",
    dependencies=_ISSUE,
    summary="Block a pass (registry and chain)",
    responses=problem_responses(*_AUTH, _PASS_UNKNOWN),
)
def block_pass(pass_number: PassNumber, runtime: RuntimeDep) -> PassOut:
    """Idempotent: blocking a blocked pass changes nothing and sends no transaction."""
    return svc.block_pass(runtime, pass_number, blocked=True)


@router.post(
    "/passes/{pass_number}/unblock",
    dependencies=_ISSUE,
    summary="Unblock a pass (registry and chain)",
    responses=problem_responses(*_AUTH, _PASS_UNKNOWN),
)
def unblock_pass(pass_number: PassNumber, runtime: RuntimeDep) -> PassOut:
    return svc.block_pass(runtime, pass_number, blocked=False)


@router.post(
    "/passes/{pass_number}/cards",
    status_code=status.HTTP_201_CREATED,
    dependencies=_ISSUE,
    summary="Issue or replace the printed card",
    responses=problem_responses(
        *_AUTH,
        _PASS_UNKNOWN,
        (409, "pass_blocked", "pass GR0000001 is blocked; unblock it before printing a card"),
    ),
)
def issue_card(pass_number: PassNumber, runtime: RuntimeDep) -> CardOut:
    """A new card serial in the registry and on chain (``replaceCard``): the old card's
    token is refused from now on."""
    return svc.issue_card(runtime, pass_number)


@router.get(
    "/passes/{pass_number}/card.png",
    dependencies=_ISSUE,
    summary="The printable card (PNG)",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "The card: QR, pass number, name"},
        **problem_responses(
            *_AUTH, _PASS_UNKNOWN, (404, "card_unknown", "pass GR0000001 has no printed card")
        ),
    },
)
def card_png(pass_number: PassNumber, runtime: RuntimeDep) -> Response:
    """The card's static token as a QR (level M, white quiet zone) with the pass number and the
    holder's first name printed under it."""
    return Response(
        svc.card_png(runtime, pass_number),
        media_type="image/png",
        headers={"Cache-Control": "no-store"},
    )


@router.get(
    "/passes/{pass_number}/card.pdf",
    dependencies=_ISSUE,
    summary="The printable card (PDF, credit-card size)",
    response_class=Response,
    responses={
        200: {
            "content": {"application/pdf": {}},
            "description": "One 85.6 x 54 mm page: QR, pass number, first name",
        },
        **problem_responses(
            *_AUTH, _PASS_UNKNOWN, (404, "card_unknown", "pass GR0000001 has no printed card")
        ),
    },
)
def card_pdf(pass_number: PassNumber, runtime: RuntimeDep) -> Response:
    """The card's static token as a vector QR (level M, white quiet zone, 46 mm with it) on an
    ID-1 page (85.6 x 54 mm) with the pass number and the holder's first name."""
    return Response(
        svc.card_pdf(runtime, pass_number),
        media_type="application/pdf",
        headers={
            "Cache-Control": "no-store",
            "Content-Disposition": 'inline; filename="stadjerspas-card.pdf"',
        },
    )


# -- schemes and entitlements (scope issue) ---------------------------------------------------


@router.post(
    "/schemes",
    status_code=status.HTTP_201_CREATED,
    dependencies=_ISSUE,
    summary="Create a scheme on chain",
    responses=problem_responses(
        *_AUTH,
        (404, "merchant_unknown", "no merchant has id 9"),
        (422, "scheme_terms_invalid", "a uses scheme needs a unit_value"),
        _INVALID,
    ),
)
def create_scheme(body: SchemeIn, runtime: RuntimeDep) -> SchemeOut:
    """Checks the contract's rules for scheme terms first, then ``createScheme`` (and
    ``setMerchantAllowed`` for each of ``allowed_merchants``)."""
    return svc.create_scheme(runtime, body)


@router.get(
    "/schemes", dependencies=_ISSUE, summary="All schemes", responses=problem_responses(*_AUTH)
)
def list_schemes(runtime: RuntimeDep) -> list[SchemeOut]:
    return svc.list_schemes(runtime)


@router.post(
    "/entitlements/csv",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=_ISSUE,
    summary="Issue entitlements from a CSV (a job)",
    responses=problem_responses(
        *_AUTH,
        (404, "scheme_unknown", "SchemeUnknown(schemeId=9): no scheme has this id"),
        (409, "scheme_budget_exceeded", "issuing this commits 900 cents; 100 are left"),
        (413, "upload_too_large", "the CSV is over 5242880 bytes"),
        (422, "csv_lines_invalid", "2 problem(s) in the CSV; nothing was issued"),
        (422, "csv_invalid", "the first line must be the header 'pass_number,amount'"),
    ),
)
def issue_csv(
    runtime: RuntimeDep,
    scheme_id: Annotated[int, Form(ge=1, le=JSON_INT_MAX)],
    file: Annotated[UploadFile, File(description="CSV with header pass_number,amount")],
) -> JobOut:
    """Every line is checked first (unknown pass numbers, bad amounts, duplicates: reported by
    line, nothing issued); then ``issueBatch`` in chunks of 100 runs as a job to poll."""
    data = file.file.read(svc.MAX_CSV_BYTES + 1)
    return JobOut.of(svc.start_csv_issuance(runtime, scheme_id=scheme_id, data=data))


@router.post(
    "/cohorts",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=_ISSUE,
    summary="Issue to a cohort by Merkle root (a job)",
    responses=problem_responses(
        *_AUTH,
        (404, "scheme_unknown", "SchemeUnknown(schemeId=9): no scheme has this id"),
        (409, "scheme_budget_exceeded", "issuing this commits 900 cents; 100 are left"),
        (422, "cohort_empty", "no active pass meets these criteria"),
        (422, "district_unknown", "unknown district codes: ['XX99']"),
    ),
)
def issue_cohort(body: CohortIn, runtime: RuntimeDep) -> JobOut:
    """Holders with an active pass meeting every criterion (age band at ``age_at``, districts);
    a Merkle root over ``(index, pass_id, amount)`` is issued with ``issueCohort``; each holder's
    share is claimed with its proof on first use."""
    return JobOut.of(svc.start_cohort(runtime, body))


@router.get(
    "/jobs/{job_id}",
    dependencies=_ISSUE,
    summary="A job's status and progress",
    responses=problem_responses(*_AUTH, (404, "job_unknown", "no job has id 'abc'")),
)
def get_job(job_id: Annotated[str, Path(max_length=64)], runtime: RuntimeDep) -> JobOut:
    """``queued``/``running``/``done``/``failed``, ``done`` of ``total``, and the result or a
    problem. Jobs are kept in the database: a job's answer survives a restart (one the restart
    interrupted is ``failed`` with the problem ``job_interrupted``)."""
    job = jobs_of(runtime).get(job_id)
    if job is None:
        raise ApiProblem(404, "job_unknown", f"no job has id {job_id!r}")
    return JobOut.of(job)


# -- merchants (scope admin) ------------------------------------------------------------------


@router.post(
    "/merchants",
    status_code=status.HTTP_201_CREATED,
    dependencies=_ADMIN,
    summary="Enrol a partner (merchant)",
    responses=problem_responses(
        *_AUTH,
        (422, "iban_invalid", "IBAN 'NL00 BANK 0000 0000 00' is invalid"),
        (422, "kvk_invalid", "KvK number '12' must be 8 digits"),
        (422, "postcode_invalid", "postcode '97' is not a Dutch postcode"),
        (422, "location_invalid", "website 'noorderbad' is not a web address"),
        _INVALID,
    ),
)
def register_merchant(body: MerchantIn, runtime: RuntimeDep) -> MerchantOut:
    """The registry checks the KvK number and the IBAN (country format and mod-97); the service
    creates the partner's signing key (sealed in the partner keystore), grants its address the
    merchant role on chain and starts its relayer: a terminal (``POST /auth/terminals``)
    redeems at once."""
    return svc.register_merchant(runtime, body)


@router.get(
    "/merchants",
    dependencies=_ADMIN,
    summary="All merchants",
    responses=problem_responses(*_AUTH),
)
def list_merchants(runtime: RuntimeDep) -> list[MerchantOut]:
    """Every merchant with its location (if set)."""
    return svc.list_merchants(runtime)


@router.put(
    "/merchants/{merchant_id}/location",
    dependencies=_ADMIN,
    summary="Set a merchant's location",
    responses=problem_responses(
        *_AUTH,
        _MERCHANT_UNKNOWN,
        (422, "postcode_invalid", "postcode '97' is not a Dutch postcode"),
        (422, "location_invalid", "town is empty; it must be given with the postcode and town"),
        _INVALID,
    ),
)
def set_merchant_location(
    merchant_id: MerchantId, body: MerchantLocationIn, runtime: RuntimeDep
) -> MerchantOut:
    """Street and house number, postcode (``9718 JN``) and town, optionally a website and
    opening hours; replaces the whole location. Public: holders see it with the offers. A
    refusal changes nothing."""
    return svc.set_merchant_location(runtime, merchant_id, body)


@router.delete(
    "/merchants/{merchant_id}/location",
    dependencies=_ADMIN,
    summary="Remove a merchant's location",
    responses=problem_responses(*_AUTH, _MERCHANT_UNKNOWN),
)
def clear_merchant_location(merchant_id: MerchantId, runtime: RuntimeDep) -> MerchantOut:
    """The merchant no longer shows a location (the holder page lists it by name only)."""
    return svc.set_merchant_location(runtime, merchant_id, None)


# -- audit (scope audit) ----------------------------------------------------------------------


@router.post(
    "/audit",
    dependencies=_AUDIT,
    summary="Run the ledger audit",
    responses=problem_responses(
        *_AUTH,
        (422, "block_out_of_range", "to_block must be within 1..120"),
        (503, "audit_unavailable", "cannot read the node"),
    ),
)
def run_audit(runtime: RuntimeDep, body: AuditIn | None = None) -> AuditOut:
    """Recompute balances, budgets and merchant totals from the chain's events and compare them
    with the contract, the index and the reports; returns every difference (``ok`` if none)."""
    return svc.run_audit(runtime, body or AuditIn())


# -- payouts (scope finance) ------------------------------------------------------------------

RunReference = Annotated[str, Path(max_length=35, examples=["STADJERSPAS-20261201-0001"])]
_RUN_UNKNOWN = (404, "payout_run_unknown", "no payout run 'STADJERSPAS-20261201-0009'")


@router.post(
    "/payouts",
    status_code=status.HTTP_201_CREATED,
    dependencies=_FINANCE,
    summary="Create a payout run for a period",
    responses=problem_responses(
        *_AUTH,
        (409, "payout_nothing_to_pay", "no merchant can be paid for 2026-11"),
        (409, "payout_period_settled", "the period overlaps the settled payout run(s) ..."),
        (422, "period_invalid", "period '2026-13' is not a month, a day or a range"),
        (422, "debtor_invalid", "the debtor account is not valid"),
    ),
)
def create_payout(body: PayoutIn, runtime: RuntimeDep) -> PayoutRunOut:
    """A pending run: what each merchant is owed for the period (from the index), and the SEPA
    pain.001 file to send to the bank. Merchants without a valid IBAN are reported."""
    return svc.create_payout(runtime, body)


@router.get(
    "/payouts/{reference}",
    dependencies=_FINANCE,
    summary="A payout run and its lines",
    responses=problem_responses(*_AUTH, _RUN_UNKNOWN),
)
def get_payout(reference: RunReference, runtime: RuntimeDep) -> PayoutRunOut:
    return svc.get_payout(runtime, reference)


@router.get(
    "/payouts/{reference}/pain001.xml",
    dependencies=_FINANCE,
    summary="The run's pain.001 file",
    response_class=Response,
    responses={
        200: {"content": {"application/xml": {}}, "description": "SEPA credit transfer file"},
        **problem_responses(*_AUTH, _RUN_UNKNOWN),
    },
)
def payout_document(reference: RunReference, runtime: RuntimeDep) -> Response:
    return Response(
        svc.payout_document(runtime, reference),
        media_type="application/xml",
        headers={"Content-Disposition": f'attachment; filename="{reference}.xml"'},
    )


@router.post(
    "/payouts/{reference}/confirm",
    dependencies=_FINANCE,
    summary="Confirm the bank paid the run (settle on chain)",
    responses=problem_responses(
        *_AUTH, _RUN_UNKNOWN, (409, "payout_run_state", "run ... was cancelled")
    ),
)
def confirm_payout(reference: RunReference, runtime: RuntimeDep) -> ConfirmOut:
    """Records ``settle`` per included line on chain; running it again settles nothing twice."""
    return svc.confirm_payout(runtime, reference)


@router.post(
    "/passes/{pass_number}/pin/unlock",
    status_code=204,
    dependencies=_ISSUE,
    summary="Unlock a PIN locked by wrong entries at terminals",
    response_class=Response,
    responses=problem_responses(
        *_AUTH, _PASS_UNKNOWN, (404, "pin_unknown", "pass GR0000001 has no PIN")
    ),
)
def unlock_pin(pass_number: PassNumber, runtime: RuntimeDep) -> Response:
    """After the holder proved who they are at the desk: wrong entries are forgotten and the
    PIN works again (the holder can also set a new PIN on the holder page)."""
    number = card_pins.known_pass(runtime, pass_number)
    if not card_pins.unlock_pin(runtime, pass_number=number):
        raise ApiProblem(404, "pin_unknown", f"pass {number} has no PIN")
    return Response(status_code=204)
