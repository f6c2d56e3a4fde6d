"""Report routes for municipal staff with the ``audit`` scope (auditors, finance, admins).

Thin: each route parses its query, runs the report in ``ledger.reports`` over the index and
registry, and answers JSON or CSV. District figures come with small-cell suppression.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from api.admin_schemas import PERIOD_PATTERN
from api.auth import Scope
from api.deps import RuntimeDep, require_scopes
from api.problems import ApiProblem, problem_responses
from ledger.reports import (
    DEFAULT_K,
    Granularity,
    Period,
    PeriodError,
    district_report,
    governance_log,
    merchant_report,
    scheme_report,
)
from ledger.reports.writers import as_dict, to_csv
from ledger.store.index import GOVERNANCE_KINDS

router = APIRouter(
    prefix="/admin/reports",
    tags=["reports"],
    dependencies=[require_scopes(Scope.AUDIT, kind="staff")],
)

PeriodQuery = Annotated[
    str | None,
    Query(
        description="A month (2026-11), a day (2026-11-28) or a range (2026-01-01..2026-06-30); "
        "default: everything indexed",
        examples=["2026-11"],
        max_length=40,
        json_schema_extra={"pattern": PERIOD_PATTERN},
    ),
]
FormatQuery = Annotated[Literal["json", "csv"], Query(alias="format")]
_ERRORS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The report as JSON, or as CSV with `?format=csv`.",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/csv": {"schema": {"type": "string"}},
        },
    },
    **problem_responses(
        (401, "unauthorized", "this endpoint needs a bearer token"),
        (403, "insufficient_scope", "this endpoint needs the scope 'audit'"),
        (422, "period_invalid", "period '2026-13' is not a month, a day or a range"),
    ),
}


def _period(text: str | None) -> Period | None:
    if text is None:
        return None
    try:
        return Period.parse(text)
    except PeriodError as exc:
        raise ApiProblem(422, "period_invalid", str(exc)) from None


def _answer(report: Any, fmt: str, name: str) -> Response:
    if fmt == "csv":
        return Response(
            to_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
        )
    return JSONResponse(as_dict(report))


@router.get(
    "/schemes",
    summary="Issued, redeemed, reversed, remaining and uptake per scheme",
    responses=_ERRORS,
)
def schemes(
    runtime: RuntimeDep,
    period: PeriodQuery = None,
    by: Granularity = Granularity.MONTH,
    fmt: FormatQuery = "json",
) -> Response:
    report = scheme_report(runtime.store.db.engine, period=_period(period), granularity=by)
    return _answer(report, fmt, "schemes")


@router.get(
    "/merchants", summary="Redemptions, reversals, owed and settled per merchant", responses=_ERRORS
)
def merchants(
    runtime: RuntimeDep, period: PeriodQuery = None, fmt: FormatQuery = "json"
) -> Response:
    report = merchant_report(runtime.store.db.engine, period=_period(period))
    return _answer(report, fmt, "merchants")


@router.get(
    "/districts",
    summary="The scheme figures per district (wijk), small cells suppressed",
    responses=_ERRORS,
)
def districts(
    runtime: RuntimeDep,
    period: PeriodQuery = None,
    k: Annotated[
        int, Query(ge=2, le=1000, description="minimum distinct holders per cell")
    ] = DEFAULT_K,
    fmt: FormatQuery = "json",
) -> Response:
    report = district_report(runtime.store.db.engine, period=_period(period), k=k)
    return _answer(report, fmt, "districts")


@router.get(
    "/governance",
    summary="Role grants and revocations, pauses, merchant allowances, the reversal window",
    responses=_ERRORS,
)
def governance(
    runtime: RuntimeDep,
    period: PeriodQuery = None,
    kind: Annotated[
        Literal[tuple(sorted(GOVERNANCE_KINDS.values()))] | None,  # type: ignore[valid-type]
        Query(description="Only this kind of event."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Newest events first.")] = 1_000,
    fmt: FormatQuery = "json",
) -> Response:
    """The chain's governance events as the index mirrors them, newest first: who was given or
    lost which role (by name), pauses, merchant allowances per scheme, the reversal window.
    Scopes: ``audit``."""
    report = governance_log(runtime.store.db.engine, period=_period(period), kind=kind, limit=limit)
    return _answer(report, fmt, "governance")
