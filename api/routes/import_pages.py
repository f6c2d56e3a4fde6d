"""The admin page for going live: upload the old system's holders and opening balances.

``GET /admin/web/imports`` shows both upload forms (Dutch by default, like every admin page);
a POST checks the whole file (:mod:`api.imports`), shows the problems by line and column when
there are any (nothing imported), else starts the job and redirects to the job page with its
progress (``/admin/web/jobs/{id}``). Holders need the ``admin`` scope, balances ``issue``.
"""

from __future__ import annotations

import functools
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api import admin_services as svc
from api import imports as import_svc
from api.auth import Principal, Scope
from api.deps import RuntimeDep, SettingsDep
from api.problems import ApiProblem
from api.routes.admin_pages import (
    _page,
    _problem_page,
    _staff,
    read_upload_form,
    upload_missing,
    upload_refused,
)
from api.routes.pages import _redirect
from api.runtime import Runtime
from api.settings import Settings

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

SECTION: Final = "/admin/web/imports"
HOLDERS_SAMPLE: Final = (
    "external_reference;first_name;last_name;birth_date;postcode;household_reference;"
    "household_role;pass_number;card_serial\n"
    "OUD-000123;Anna;de Vries;1980-02-03;9712AB;HH-77;parent;GR1234567;8123456701\n"
    "OUD-000124;Bram;de Vries;2012-05-06;9712AB;HH-77;child;GR1234568;\n"
)
BALANCES_SAMPLE: Final = "external_reference;amount\nOUD-000123;2500\nOUD-000124;1250\n"


def _imports_page(
    request: Request,
    settings: Settings,
    runtime: Runtime,
    principal: Principal,
    *,
    status_code: int = 200,
    error: str | None = None,
    line_errors: list[dict[str, Any]] | None = None,
    scheme_id: int | None = None,
) -> Response:
    return _page(
        request,
        settings,
        principal,
        "admin_imports.html",
        section=SECTION,
        status_code=status_code,
        schemes=svc.list_schemes(runtime) if Scope.ISSUE in principal.scopes else [],
        may_import_holders=Scope.ADMIN in principal.scopes,
        error=error,
        line_errors=line_errors or [],
        scheme_id=scheme_id,
        max_mb=settings.import_max_bytes // (1024 * 1024),
        holders_sample=HOLDERS_SAMPLE,
        balances_sample=BALANCES_SAMPLE,
    )


@router.get(SECTION)
def imports_page(request: Request, settings: SettingsDep, runtime: RuntimeDep) -> Response:
    principal = _staff(request, settings, Scope.ISSUE)
    return _imports_page(request, settings, runtime, principal)


async def _upload(request: Request, settings: Settings, runtime: Runtime, *, kind: str) -> Response:
    principal = _staff(request, settings, Scope.ADMIN if kind == "holders" else Scope.ISSUE)
    limit = settings.import_max_bytes
    form = await read_upload_form(
        request, settings, principal, max_file=limit, too_large="admin.imports.too_large"
    )
    scheme_id, data = form.number("scheme_id"), form.data()
    if data is not None and len(data) > limit:
        return _problem_page(request, settings, principal, 413, "admin.imports.too_large")
    render = functools.partial(_imports_page, request, settings, runtime, principal)
    if not data or (kind == "balances" and scheme_id is None):
        return await upload_missing(request, render, "admin.imports.missing", scheme_id=scheme_id)
    try:
        if kind == "holders":
            job = await run_in_threadpool(import_svc.start_holders_import, runtime, data)
        else:
            job = await run_in_threadpool(
                import_svc.start_balances_import, runtime, data, scheme_id=scheme_id
            )
    except ApiProblem as problem:
        return await upload_refused(render, problem, scheme_id=scheme_id)
    return _redirect(f"/admin/web/jobs/{job.id}")


@router.post(SECTION + "/holders")
async def holders_upload(request: Request, settings: SettingsDep, runtime: RuntimeDep) -> Response:
    """Import holders (``POST /admin/imports/holders``) and show the job's progress."""
    return await _upload(request, settings, runtime, kind="holders")


@router.post(SECTION + "/balances")
async def balances_upload(request: Request, settings: SettingsDep, runtime: RuntimeDep) -> Response:
    """Import opening balances (``POST /admin/imports/balances``) and show the job's progress."""
    return await _upload(request, settings, runtime, kind="balances")
