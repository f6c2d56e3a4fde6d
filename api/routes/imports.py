"""Going live: import holders and opening balances from an old system's CSV exports (jobs).

The CSV is the request body (``Content-Type: text/csv``; any type is read as the file). A body
over ``import_max_bytes`` is refused with 413 before it is read: from its ``Content-Length``,
or, streamed without one, the moment it passes the limit (the middleware, then here). The file
is checked whole first (422 ``csv_lines_invalid`` with ``errors`` by line and column; nothing is
imported), then the chain work runs as a job: ``GET /admin/imports/jobs/{id}``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, status
from starlette.concurrency import run_in_threadpool

from api import imports as svc
from api.admin_schemas import JobOut
from api.auth import Scope
from api.deps import RuntimeDep, require_scopes
from api.jobs import jobs_of
from api.problems import ApiProblem, problem_responses
from api.schemas import JSON_INT_MAX

router = APIRouter(prefix="/admin/imports", tags=["admin"])

_ADMIN = [require_scopes(Scope.ADMIN, kind="staff")]
_ISSUE = [require_scopes(Scope.ISSUE, kind="staff")]
_AUTH = (
    (401, "unauthorized", "this endpoint needs a bearer token"),
    (403, "insufficient_scope", "this endpoint needs the scopes ['admin']"),
)
_FILE_PROBLEMS = (
    (413, "body_too_large", "the request body is larger than 20971520 bytes"),
    (
        422,
        "csv_lines_invalid",
        "2 problem(s) in the CSV; nothing was imported (errors: [{line, column, message}])",
    ),
)
_CSV_BODY = {
    "requestBody": {
        "required": True,
        "content": {"text/csv": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def too_large(limit: int) -> ApiProblem:
    return ApiProblem(
        413,
        "body_too_large",
        f"the request body is larger than {limit} bytes",
        headers={"Connection": "close"},
    )


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused (413) by its declared length or once it passes ``limit``."""
    declared = request.headers.get("content-length", "")
    if declared.isdecimal() and (len(declared) > 18 or int(declared) > limit):
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/holders",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=_ADMIN,
    summary="Import holders, their pass numbers, cards and households from a CSV (a job)",
    openapi_extra=_CSV_BODY,
    responses=problem_responses(
        *_AUTH,
        *_FILE_PROBLEMS,
        (409, "import_conflict", "another import wrote some of the same rows at the same time"),
    ),
)
async def import_holders(request: Request, runtime: RuntimeDep) -> JobOut:
    """Columns ``external_reference,first_name,last_name,birth_date,postcode`` and optionally
    ``household_reference,household_role,pass_number,card_serial``; ``,`` or ``;``; UTF-8 or
    Windows-1252. Lines imported before (same external reference, same data) are skipped. The
    job registers the passes on chain in batches."""
    data = await read_limited(request, runtime.settings.import_max_bytes)
    job = await run_in_threadpool(svc.start_holders_import, runtime, data)
    return JobOut.of(job)


@router.post(
    "/balances",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=_ISSUE,
    summary="Import opening balances from a CSV, marked as migrated (a job)",
    openapi_extra=_CSV_BODY,
    responses=problem_responses(
        *_AUTH,
        *_FILE_PROBLEMS,
        (409, "scheme_budget_exceeded", "issuing this commits 900 cents; 100 are left"),
    ),
)
async def import_balances(
    request: Request,
    runtime: RuntimeDep,
    scheme_id: Annotated[int | None, Query(ge=1, le=JSON_INT_MAX)] = None,
) -> JobOut:
    """Columns ``amount`` (cents) and ``external_reference`` or ``pass_number``, and optionally
    ``scheme`` (else ``scheme_id``). One opening balance per holder and scheme: the same line
    again is skipped, another amount is an error."""
    data = await read_limited(request, runtime.settings.import_max_bytes)
    job = await run_in_threadpool(svc.start_balances_import, runtime, data, scheme_id=scheme_id)
    return JobOut.of(job)


@router.get(
    "/jobs/{job_id}",
    dependencies=_ISSUE,
    summary="An import's progress and result",
    responses=problem_responses(*_AUTH, (404, "import_unknown", "no import has id 'abc'")),
)
def get_import(job_id: Annotated[str, Path(max_length=64)], runtime: RuntimeDep) -> JobOut:
    """Progress (``done``/``total`` passes or balances on chain), then the result or the
    problem. Kept in this API process's memory: after a restart, run the file again (nothing
    is imported twice; what is missing on chain is finished)."""
    job = jobs_of(runtime).get(job_id)
    if job is None or not job.kind.endswith("_import"):
        raise ApiProblem(404, "import_unknown", f"no import has id {job_id!r}")
    return JobOut.of(job)
