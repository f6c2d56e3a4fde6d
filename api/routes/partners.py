"""Partners imported from a CSV (scope ``admin``): ``POST /admin/imports/partners``.

Every line is checked first (name, KvK number, category, IBAN with mod-97, location); any
problem rejects the whole file with its errors by line and enrols nothing. Each new partner is
enrolled end to end (:func:`api.partners.enrol_partner`: key, registry, merchant role, relayer);
a KvK number already registered is skipped, so importing the same file again enrols nothing
twice.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, UploadFile, status
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from api.admin_services import MAX_CSV_BYTES, registry_errors
from api.auth import Scope
from api.deps import RuntimeDep, require_scopes
from api.partners import PartnerImport, import_partners
from api.problems import ApiProblem, problem_responses
from api.runtime import Runtime
from ledger.registry import CsvImportError

__all__ = ["PartnerImportOut", "check_and_import", "router"]

router = APIRouter(prefix="/admin", tags=["admin"])


class PartnerImportOut(BaseModel):
    """The merchant ids enrolled now, and the KvK numbers skipped (already registered)."""

    enrolled: list[int]
    skipped: list[str]


def _lines_problem(exc: CsvImportError) -> ApiProblem:
    return ApiProblem(
        422,
        "csv_lines_invalid",
        f"{len(exc.errors)} problem(s) in the CSV; no partner was enrolled",
        errors=[{"line": e.line, "message": e.message} for e in exc.errors[:1000]],
    )


def check_and_import(runtime: Runtime, data: bytes) -> PartnerImport:
    if len(data) > MAX_CSV_BYTES:
        raise ApiProblem(413, "upload_too_large", f"the CSV is over {MAX_CSV_BYTES} bytes")
    with registry_errors():
        try:
            return import_partners(runtime, data)
        except CsvImportError as exc:
            raise _lines_problem(exc) from None


@router.post(
    "/imports/partners",
    status_code=status.HTTP_200_OK,
    dependencies=[require_scopes(Scope.ADMIN, kind="staff")],
    summary="Enrol partners from a CSV",
    responses=problem_responses(
        (401, "unauthorized", "this endpoint needs a bearer token"),
        (403, "insufficient_scope", "this endpoint needs the scopes ['admin']"),
        (413, "upload_too_large", "the CSV is over 5242880 bytes"),
        (422, "csv_lines_invalid", "2 problem(s) in the CSV; no partner was enrolled"),
    ),
)
async def import_partners_csv(
    runtime: RuntimeDep,
    file: Annotated[
        UploadFile,
        File(
            description="CSV with header name,kvk_number,category,iban and optionally "
            "street,postcode,town,website"
        ),
    ],
) -> PartnerImportOut:
    """Each partner is enrolled end to end: a signing key the service creates and keeps in
    its encrypted keystore, the merchant role on chain, a relayer: its terminals redeem at
    once. A KvK number already registered is skipped (importing again enrols nothing twice)."""
    data = await file.read(MAX_CSV_BYTES + 1)
    result = await run_in_threadpool(check_and_import, runtime, data)
    return PartnerImportOut(enrolled=result.enrolled, skipped=result.skipped)
