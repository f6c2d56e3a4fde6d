"""Admin pages for partners (scope ``admin``): enrol one, import a CSV, create a terminal.

The forms live on the merchants page (``/admin/web/merchants``); each does what its API twin
does (``POST /admin/merchants``, ``POST /admin/imports/partners``, ``POST /auth/terminals``).
A refusal shows the page again with the reason (and the errors by line), nothing changed.
"""

from __future__ import annotations

import functools
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api import admin_services as svc
from api.admin_schemas import MerchantIn
from api.auth import Auth, Principal, Scope
from api.deps import AuthDep, RuntimeDep, SettingsDep
from api.i18n import pick_language, translate
from api.problems import ApiProblem
from api.routes.admin_pages import (
    MerchantId,
    _csrf_refused,
    _page,
    _problem_page,
    _problem_text,
    _staff,
    _validation_detail,
    read_small_form,
    read_upload_form,
    upload_missing,
    upload_refused,
)
from api.routes.pages import _check_csrf, _redirect
from api.routes.partners import check_and_import
from api.runtime import Runtime
from api.settings import Settings

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

#: The enrolment form's fields (as ``MerchantIn`` plus an optional location).
ENROL_FIELDS: Final = ("name", "kvk_number", "category", "iban", "street", "postcode", "town")


def _merchants_page(
    request: Request,
    settings: Settings,
    runtime: Runtime,
    principal: Principal,
    *,
    status_code: int = 200,
    **context: Any,
) -> Response:
    return _page(
        request,
        settings,
        principal,
        "admin_merchants.html",
        section="/admin/web/merchants",
        status_code=status_code,
        merchants=svc.list_merchants(runtime),
        **context,
    )


def _merchant_in(form: dict[str, str]) -> MerchantIn:
    location = {key: form[key] for key in ("street", "postcode", "town")}
    return MerchantIn.model_validate(
        {
            "name": form["name"],
            "kvk_number": form["kvk_number"],
            "category": form["category"],
            "iban": form["iban"] or None,
            "location": location if any(v.strip() for v in location.values()) else None,
        }
    )


@router.post("/admin/web/merchants")
async def enrol_partner_page(
    request: Request, settings: SettingsDep, runtime: RuntimeDep
) -> Response:
    """Enrol a partner end to end (as ``POST /admin/merchants``) and show it in the list."""
    principal = _staff(request, settings, Scope.ADMIN)
    posted = await read_small_form(request, settings, principal)
    form = {name: posted.get(name, "") for name in ENROL_FIELDS}
    render = functools.partial(_merchants_page, request, settings, runtime, principal)
    try:
        body = _merchant_in(form)
    except ValidationError as exc:
        error = translate(
            pick_language(request), "admin.schemes.invalid", detail=_validation_detail(exc)
        )
        return await run_in_threadpool(render, status_code=422, form=form, error=error)
    try:
        created = await run_in_threadpool(svc.register_merchant, runtime, body)
    except ApiProblem as problem:
        error = _problem_text(problem)
        return await run_in_threadpool(render, status_code=problem.status, form=form, error=error)
    return _redirect(f"/admin/web/merchants?done=partner_enrolled#merchant-{created.id}")


@router.post("/admin/web/merchants/import")
async def import_partners_page(
    request: Request, settings: SettingsDep, runtime: RuntimeDep
) -> Response:
    """Import partners from a CSV (as ``POST /admin/imports/partners``)."""
    principal = _staff(request, settings, Scope.ADMIN)
    form = await read_upload_form(request, settings, principal, max_fields=5)
    render = functools.partial(_merchants_page, request, settings, runtime, principal)
    data = form.data()
    if not data:
        return await upload_missing(request, render, "admin.partners.missing")
    try:
        result = await run_in_threadpool(check_and_import, runtime, data)
    except ApiProblem as problem:
        return await upload_refused(render, problem)
    imported = translate(
        pick_language(request),
        "admin.partners.imported",
        enrolled=len(result.enrolled),
        skipped=len(result.skipped),
    )
    return await run_in_threadpool(render, imported=imported)


@router.post("/admin/web/merchants/{merchant_id}/terminals")
async def issue_terminal_page(
    merchant_id: MerchantId,
    request: Request,
    settings: SettingsDep,
    runtime: RuntimeDep,
    auth: AuthDep,
) -> Response:
    """Create a terminal for the partner (as ``POST /auth/terminals``); its secret is shown
    once, on this page."""
    principal = _staff(request, settings, Scope.ADMIN)
    if int(request.headers.get("content-length") or 0) > 4 * 1024:
        raise ApiProblem(413, "body_too_large", "the form is too large")
    async with request.form(max_files=0, max_fields=5) as raw:
        csrf = raw.get("csrf")
    if not _check_csrf(request, csrf if isinstance(csrf, str) else None):
        return _csrf_refused(request, settings, principal)
    merchant = await run_in_threadpool(runtime.store.registry.find_merchant, merchant_id)
    if merchant is None:
        return _problem_page(request, settings, principal, 404, "admin.merchants.unknown")
    issued = await run_in_threadpool(_issue, auth, merchant_id)
    response = _page(
        request,
        settings,
        principal,
        "admin_terminal_issued.html",
        section="/admin/web/merchants",
        status_code=201,
        merchant=merchant,
        terminal_id=issued[0],
        secret=issued[1],
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def _issue(auth: Auth, merchant_id: int) -> tuple[str, str]:
    issued = auth.issue_terminal(merchant_id, "admin page")
    return issued.terminal.terminal_id, issued.secret
