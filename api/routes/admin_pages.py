"""Server-rendered admin pages for municipal staff (Dutch and English).

Staff log in at ``/admin/login`` (the same :meth:`api.auth.Auth.login` as ``POST /auth/token``;
the bearer token stays in the ``sp_session`` cookie, see :mod:`api.routes.pages`). Every page
checks the same scope as the API route it mirrors, and shows a 403 page otherwise:

- schemes, CSV issuance and its job: ``issue``;
- holders (registry look-up): ``admin``; block, unblock, replace card, card PNG: ``issue``;
- merchants and their locations: ``admin``; payout runs: ``finance``; reports and audit: ``audit``.

Handlers are thin: they call :mod:`api.admin_services` and :mod:`ledger.reports` (as the API
routes do) and render the result. Every POST carries the CSRF token (double submit). Pages live
under ``/admin`` (dashboard, login, logout) and ``/admin/web/`` (everything else), so they never
collide with the JSON API under ``/admin/``. The job page polls ``/admin/web/jobs/{id}/status``
from ``/static/js/admin-job.js`` (no inline scripts).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import threading
import warnings
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlencode

import matplotlib.pyplot as plt
from eth_typing import HexStr
from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api import admin_services as svc
from api import services
from api.admin_schemas import (
    AuditIn,
    CohortIn,
    MerchantLocationIn,
    MerchantLocationOut,
    PayoutIn,
    SchemeIn,
)
from api.auth import Principal, Scope
from api.deps import RuntimeDep, SettingsDep
from api.i18n import pick_language, translate
from api.jobs import Job, JobStatus, jobs_of
from api.problems import ApiProblem
from api.routes.pages import (
    SESSION_COOKIE,
    _check_csrf,
    _form,
    _login,
    _money,
    _principal,
    _redirect,
    _render,
    _secure,
)
from api.runtime import Runtime
from api.settings import Settings
from ledger.audit import PROMISE_KINDS
from ledger.indexer.checkpoint import index_state
from ledger.reports import (
    DEFAULT_K,
    DistrictReport,
    Granularity,
    MerchantReport,
    Period,
    PeriodError,
    SchemeReport,
    district_report,
    merchant_report,
    scheme_report,
)
from ledger.reports.charts import district_chart, merchant_chart, scheme_chart
from ledger.reports.writers import as_dict, to_csv
from ledger.store.payouts import PayoutRun
from ledger.store.registry import Merchant

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)

#: The sections of the admin pages: (i18n key, path, scope needed).
SECTIONS: Final = (
    ("admin.nav.schemes", "/admin/web/schemes", Scope.ISSUE),
    ("admin.nav.issuance", "/admin/web/issuance", Scope.ISSUE),
    ("admin.nav.imports", "/admin/web/imports", Scope.ISSUE),
    ("admin.nav.holders", "/admin/web/holders", Scope.ADMIN),
    ("admin.nav.letters", "/admin/web/letters", Scope.ISSUE),
    ("admin.nav.postcodes", "/admin/web/postcodes", Scope.ADMIN),
    ("admin.nav.merchants", "/admin/web/merchants", Scope.ADMIN),
    ("admin.nav.reports", "/admin/web/reports", Scope.AUDIT),
    ("admin.nav.payouts", "/admin/web/payouts", Scope.FINANCE),
    ("admin.nav.audit", "/admin/web/audit", Scope.AUDIT),
)
#: What an upload form may be over its files' limits (the other fields, the multipart framing).
UPLOAD_FORM_EXTRA: Final = 64 * 1024
#: Poll interval of the job page's script.
POLL_MS: Final = 500
SCHEME_METRICS: Final = ("issued", "redeemed", "remaining", "reversed", "expired")
MERCHANT_METRICS: Final = ("owed", "credited", "settled", "redemptions")
_NOTICES: Final = frozenset(
    {
        "blocked",
        "unblocked",
        "card",
        "scheme_created",
        "payout_created",
        "payout_confirmed",
        "location_saved",
        "location_cleared",
        "partner_enrolled",
    }
)
_CHART_LOCK = threading.Lock()

PassNumber = Annotated[str, PathParam(max_length=32)]
RunReference = Annotated[str, PathParam(max_length=35)]
MerchantId = Annotated[int, PathParam(ge=1, le=2**62)]
#: The location form's fields (as ``MerchantLocationIn``).
LOCATION_FIELDS: Final = ("street", "postcode", "town", "website", "opening_hours")
ChartFormat = Literal["png", "svg", "csv", "json"]


# -- sessions, scopes, rendering --------------------------------------------------------------


def _page(
    request: Request,
    settings: Settings,
    principal: Principal | None,
    template: str,
    *,
    section: str = "",
    status_code: int = 200,
    **context: Any,
) -> Response:
    """Render an admin page with the navigation this principal may use."""
    scopes = principal.scopes if principal is not None else frozenset()
    nav = [
        {"key": key, "href": href, "current": href == section}
        for key, href, scope in SECTIONS
        if scope in scopes
    ]
    context.setdefault("error", None)
    context.setdefault("notice", None)
    return _render(
        request,
        settings,
        template,
        status_code=status_code,
        nav=nav,
        principal=principal,
        **context,
    )


def _problem_page(
    request: Request,
    settings: Settings,
    principal: Principal | None,
    status_code: int,
    message: str,
    detail: str | None = None,
) -> Response:
    return _page(
        request,
        settings,
        principal,
        "admin_error.html",
        status_code=status_code,
        message=message,
        detail=detail,
    )


class PageHalt(Exception):
    """Stop a page handler and answer with ``response`` (a login redirect or an error page);
    ``api.main`` installs the handler that sends it."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _staff(request: Request, settings: Settings, scope: Scope) -> Principal:
    """The staff principal of the session with ``scope``; else :class:`PageHalt` with the login
    redirect or a 403 page."""
    principal = _principal(request, "staff")
    if principal is None:
        raise PageHalt(_redirect("/admin/login"))
    if scope not in principal.scopes:
        raise PageHalt(_problem_page(request, settings, principal, 403, "admin.forbidden"))
    return principal


def _csrf_refused(request: Request, settings: Settings, principal: Principal) -> Response:
    return _problem_page(request, settings, principal, 403, "csrf.failed")


def _notice(request: Request) -> str | None:
    done = request.query_params.get("done", "")
    return f"admin.notice.{done}" if done in _NOTICES else None


def _problem_text(problem: ApiProblem) -> str:
    return f"{problem.detail} ({problem.code})"


def _cents(text: str, *, required: bool = True) -> int | None:
    """Euro text (``12,50``, ``1.234,56``, ``12.50``, ``€ 12``) as cents; None if empty."""
    value = text.strip().replace("€", "").replace(" ", "")
    if not value:
        if required:
            raise ValueError("empty")
        return None
    if "," in value:
        value = value.replace(".", "").replace(",", ".")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError(text) from None
    cents = amount * 100
    if not amount.is_finite() or amount < 0 or cents != cents.to_integral_value():
        raise ValueError(text)
    return int(cents)


def _day(text: str) -> date:
    return date.fromisoformat(text.strip())


def _unix(day: date, *, end: bool = False) -> int:
    moment = datetime.combine(day + timedelta(days=1) if end else day, time(), UTC)
    return int(moment.timestamp()) - (1 if end else 0)


# -- CSV upload forms ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class UploadForm:
    """A posted upload form: its text fields, and the first bytes of each file field that holds
    a file, with the file's name (``""`` when the browser's file input was left empty)."""

    fields: dict[str, str]
    files: dict[str, tuple[str, bytes]]

    def data(self, name: str = "file", *, named: bool = False) -> bytes | None:
        """The bytes of file field ``name``; None if it holds no file (with ``named``, also
        when the file has no name)."""
        upload = self.files.get(name)
        if upload is None or (named and not upload[0]):
            return None
        return upload[1]

    def number(self, name: str) -> int | None:
        """Field ``name`` as a whole number (a select's id); None if absent or not digits."""
        raw = self.fields.get(name, "")
        return int(raw) if raw.isdecimal() and len(raw) < 19 else None


#: The most a small admin form (no files) may be: larger is refused before it is read.
SMALL_FORM_BYTES: Final = 16 * 1024


async def read_small_form(
    request: Request, settings: Settings, principal: Principal, *, max_fields: int = 20
) -> dict[str, str]:
    """The text fields of a small form without files: 413 ``body_too_large`` over
    :data:`SMALL_FORM_BYTES`; :class:`PageHalt` with the 403 page when the CSRF token does not
    match."""
    if int(request.headers.get("content-length") or 0) > SMALL_FORM_BYTES:
        raise ApiProblem(413, "body_too_large", "the form is too large")
    async with request.form(max_files=0, max_fields=max_fields) as raw:
        posted = {k: v for k, v in raw.items() if isinstance(v, str)}
    if not _check_csrf(request, posted.get("csrf")):
        raise PageHalt(_csrf_refused(request, settings, principal))
    return posted


async def read_upload_form(
    request: Request,
    settings: Settings,
    principal: Principal,
    *,
    max_file: int = svc.MAX_CSV_BYTES,
    too_large: str = "admin.issuance.too_large",
    files: tuple[str, ...] = ("file",),
    max_fields: int = 10,
) -> UploadForm:
    """Read a multipart upload form: each file in ``files`` up to ``max_file`` bytes plus one
    (the caller or its service refuses a longer one). Else :class:`PageHalt` with the 413 page
    ``too_large`` when the request says it is larger than the files may be together (plus
    :data:`UPLOAD_FORM_EXTRA`), or with the 403 page when the CSRF token does not match."""
    if int(request.headers.get("content-length") or 0) > len(files) * max_file + UPLOAD_FORM_EXTRA:
        raise PageHalt(_problem_page(request, settings, principal, 413, too_large))
    async with request.form(max_files=len(files), max_fields=max_fields) as form:
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        uploads: dict[str, tuple[str, bytes]] = {}
        for name in files:  # read inside the block, which closes the uploads' files
            upload = form.get(name)
            if isinstance(upload, UploadFile):
                uploads[name] = (upload.filename or "", await upload.read(max_file + 1))
    if not _check_csrf(request, fields.get("csrf")):
        raise PageHalt(_csrf_refused(request, settings, principal))
    return UploadForm(fields, uploads)


async def upload_missing(
    request: Request, render: Callable[..., Response], message: str, **context: Any
) -> Response:
    """The upload's page again (``render``: its renderer, all but the keywords bound), 422 with
    ``message`` (an i18n key): the file or a field is missing."""
    error = translate(pick_language(request), message)
    return await run_in_threadpool(render, status_code=422, error=error, **context)


async def upload_refused(
    render: Callable[..., Response], problem: ApiProblem, **context: Any
) -> Response:
    """The upload's page again (``render`` as for :func:`upload_missing`) with the service's
    refusal: its status, its text and its errors by line (``line_errors``), if it has them."""
    errors = problem.extensions.get("errors")
    return await run_in_threadpool(
        render,
        status_code=problem.status,
        error=_problem_text(problem),
        line_errors=errors if isinstance(errors, list) else None,
        **context,
    )


# -- dashboard, login, logout -----------------------------------------------------------------


@router.get("/admin")
def admin_page(request: Request, settings: SettingsDep) -> Response:
    """The admin start page: the sections this staff member may use."""
    principal = _principal(request, "staff")
    if principal is None:
        return _redirect("/admin/login")
    return _page(request, settings, principal, "admin.html")


@router.get("/admin/login")
def admin_login_page(request: Request, settings: SettingsDep) -> Response:
    if _principal(request, "staff") is not None:
        return _redirect("/admin")
    return _render(request, settings, "admin_login.html", error=None, username="")


@router.post("/admin/login")
async def admin_login(request: Request, settings: SettingsDep) -> Response:
    return await _login(request, settings, "staff", "admin_login.html", "/admin")


@router.post("/admin/logout")
async def admin_logout(request: Request, settings: SettingsDep) -> Response:
    form = await _form(request)
    if not _check_csrf(request, form.get("csrf")):
        return _problem_page(request, settings, _principal(request, "staff"), 403, "csrf.failed")
    response = _redirect("/admin/login")
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(settings)
    )
    return response


# -- schemes ----------------------------------------------------------------------------------


def _schemes_page(
    request: Request,
    settings: Settings,
    runtime: Runtime,
    principal: Principal,
    *,
    status_code: int = 200,
    error: str | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    schemes = svc.list_schemes(runtime)
    merchants = runtime.store.registry.merchants()
    today = datetime.now(UTC).date()
    values = {
        "name": "",
        "kind": "budget",
        "valid_from": today.isoformat(),
        "valid_until": date(today.year, 12, 31).isoformat(),
        "budget_cap": "",
        "per_redemption_cap": "",
        "unit_value": "",
        "discount_pct": "",
        "reimburse_pct": "",
        "open_to_all_merchants": "",
    }
    values.update(form or {})
    return _page(
        request,
        settings,
        principal,
        "admin_schemes.html",
        section="/admin/web/schemes",
        status_code=status_code,
        schemes=schemes,
        merchants=merchants,
        form=values,
        error=error,
        notice=_notice(request),
    )


@router.get("/admin/web/schemes")
def schemes_page(request: Request, settings: SettingsDep, runtime: RuntimeDep) -> Response:
    principal = _staff(request, settings, Scope.ISSUE)
    return _schemes_page(request, settings, runtime, principal)


def _scheme_in(form: dict[str, str], merchants: list[int]) -> SchemeIn:
    """The form as the API's :class:`SchemeIn` (euros to cents, dates to unix seconds)."""
    kind = form.get("kind", "")
    pct = form.get("discount_pct", "").strip().replace(",", ".")
    reimburse = form.get("reimburse_pct", "").strip().replace(",", ".")
    return SchemeIn.model_validate(
        {
            "name": form.get("name", "").strip(),
            "kind": kind,
            "valid_from": _unix(_day(form.get("valid_from", ""))),
            "valid_until": _unix(_day(form.get("valid_until", "")), end=True),
            "budget_cap": _cents(form.get("budget_cap", "")),
            "per_redemption_cap": _cents(form.get("per_redemption_cap", ""), required=False) or 0,
            "unit_value": _cents(form.get("unit_value", ""), required=False) or 0,
            "discount_bps": round(Decimal(pct) * 100) if pct else 0,
            "reimburse_bps": round(Decimal(reimburse) * 100) if reimburse else 0,
            "open_to_all_merchants": form.get("open_to_all_merchants") == "on",
            "allowed_merchants": merchants,
        }
    )


@router.post("/admin/web/schemes")
async def create_scheme(request: Request, settings: SettingsDep, runtime: RuntimeDep) -> Response:
    principal = _staff(request, settings, Scope.ISSUE)
    if int(request.headers.get("content-length") or 0) > SMALL_FORM_BYTES:
        raise ApiProblem(413, "body_too_large", "the form is too large")
    async with request.form(max_files=0, max_fields=200) as raw:
        form = {k: v for k, v in raw.items() if isinstance(v, str)}
        merchants = [
            int(v)
            for v in raw.getlist("allowed_merchants")
            if isinstance(v, str) and v.isdecimal() and len(v) < 19
        ]
    if not _check_csrf(request, form.get("csrf")):
        return _csrf_refused(request, settings, principal)
    try:
        body = _scheme_in(form, merchants)
    except (ValueError, InvalidOperation, ValidationError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else ""
        return await run_in_threadpool(
            _schemes_page,
            request,
            settings,
            runtime,
            principal,
            status_code=422,
            error=translate(pick_language(request), "admin.schemes.invalid", detail=detail),
            form=form,
        )
    try:
        await run_in_threadpool(svc.create_scheme, runtime, body)
    except ApiProblem as problem:
        return await run_in_threadpool(
            _schemes_page,
            request,
            settings,
            runtime,
            principal,
            status_code=problem.status,
            error=_problem_text(problem),
            form=form,
        )
    return _redirect("/admin/web/schemes?done=scheme_created")


# -- CSV issuance and jobs --------------------------------------------------------------------


def _issuance_page(
    request: Request,
    settings: Settings,
    runtime: Runtime,
    principal: Principal,
    *,
    status_code: int = 200,
    error: str | None = None,
    line_errors: list[dict[str, Any]] | None = None,
    scheme_id: int | None = None,
    cohort: dict[str, Any] | None = None,
) -> Response:
    return _page(
        request,
        settings,
        principal,
        "admin_issuance.html",
        section="/admin/web/issuance",
        status_code=status_code,
        schemes=svc.list_schemes(runtime),
        error=error,
        line_errors=line_errors or [],
        scheme_id=scheme_id,
        max_mb=svc.MAX_CSV_BYTES // (1024 * 1024),
        districts=runtime.store.registry.districts(),
        cohort=cohort or {"amount": "", "min_age": "", "max_age": "", "districts": []},
    )


@router.get("/admin/web/issuance")
def issuance_page(request: Request, settings: SettingsDep, runtime: RuntimeDep) -> Response:
    principal = _staff(request, settings, Scope.ISSUE)
    return _issuance_page(request, settings, runtime, principal)


@router.post("/admin/web/issuance")
async def issuance_upload(request: Request, settings: SettingsDep, runtime: RuntimeDep) -> Response:
    """Start the CSV issuance job (``POST /admin/entitlements/csv``) and show its progress."""
    principal = _staff(request, settings, Scope.ISSUE)
    form = await read_upload_form(request, settings, principal)
    render = functools.partial(_issuance_page, request, settings, runtime, principal)
    scheme_id, data = form.number("scheme_id"), form.data()
    if scheme_id is None or data is None:
        return await upload_missing(request, render, "admin.issuance.missing", scheme_id=scheme_id)
    try:
        job = await run_in_threadpool(
            svc.start_csv_issuance, runtime, scheme_id=scheme_id, data=data
        )
    except ApiProblem as problem:
        return await upload_refused(render, problem, scheme_id=scheme_id)
    return _redirect(f"/admin/web/jobs/{job.id}")


def _optional_int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text else None


@router.post("/admin/web/cohorts")
async def cohort_issue(request: Request, settings: SettingsDep, runtime: RuntimeDep) -> Response:
    """Issue to a cohort by criteria (``POST /admin/cohorts``, a job) and show its progress."""
    principal = _staff(request, settings, Scope.ISSUE)
    if int(request.headers.get("content-length") or 0) > SMALL_FORM_BYTES:
        raise ApiProblem(413, "body_too_large", "the form is too large")
    async with request.form(max_files=0, max_fields=300) as raw:
        form = {k: v for k, v in raw.items() if isinstance(v, str)}
        districts = [v for v in raw.getlist("district_codes") if isinstance(v, str)]
    if not _check_csrf(request, form.get("csrf")):
        return _csrf_refused(request, settings, principal)
    cohort = {
        "amount": form.get("amount", ""),
        "min_age": form.get("min_age", ""),
        "max_age": form.get("max_age", ""),
        "districts": districts,
    }
    raw_scheme = form.get("scheme_id", "")
    scheme_id = int(raw_scheme) if raw_scheme.isdecimal() and len(raw_scheme) < 12 else None
    try:
        body = CohortIn.model_validate(
            {
                "scheme_id": scheme_id,
                "amount": form.get("amount", "").strip(),
                "min_age": _optional_int(form.get("min_age", "")),
                "max_age": _optional_int(form.get("max_age", "")),
                "district_codes": districts or None,
            }
        )
        job = await run_in_threadpool(svc.start_cohort, runtime, body)
    except (ValueError, ValidationError) as exc:
        error = translate(
            pick_language(request), "admin.schemes.invalid", detail=str(exc).splitlines()[0]
        )
        status = 422
    except ApiProblem as problem:
        error, status = _problem_text(problem), problem.status
    else:
        return _redirect(f"/admin/web/jobs/{job.id}")
    return await run_in_threadpool(
        _issuance_page,
        request,
        settings,
        runtime,
        principal,
        status_code=status,
        error=error,
        scheme_id=scheme_id,
        cohort=cohort,
    )


def _job_of(runtime: Runtime, job_id: str) -> Job:
    job = jobs_of(runtime).get(job_id)
    if job is None:
        raise ApiProblem(404, "job_unknown", f"no job has id {job_id!r}")
    return job


def _indexed(runtime: Runtime, job: Job) -> bool:
    """Whether the index (and so the reports) already holds the job's last transaction."""
    if job.status is not JobStatus.DONE or job.result is None:
        return False
    transactions = job.result.get("transactions") or []
    tx_hash = job.result.get("tx_hash") or (transactions[-1] if transactions else None)
    if not isinstance(tx_hash, str):
        return True
    try:
        block = int(runtime.w3.eth.get_transaction_receipt(HexStr(tx_hash))["blockNumber"])
        state = index_state(
            runtime.store.db,
            runtime.w3,
            contract=runtime.deployment.ledger_address,
            start_block=runtime.deployment.deployed_block,
        )
    except Exception:  # node or index unreachable: the page keeps polling and says "updating"
        log.warning("cannot tell whether job %s is indexed", job.id, exc_info=True)
        return False
    return state.checkpoint is not None and state.checkpoint >= block


def _job_json(runtime: Runtime, job: Job) -> dict[str, Any]:
    scheme_id = (job.result or {}).get("scheme_id")
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status.value,
        "done": job.done,
        "total": job.total,
        "result": job.result,
        "problem": job.problem,
        "indexed": _indexed(runtime, job),
        "report": f"/admin/web/reports?scheme={scheme_id}" if scheme_id else "/admin/web/reports",
    }


@router.get("/admin/web/jobs/{job_id}")
def job_page(
    job_id: Annotated[str, PathParam(max_length=64)],
    request: Request,
    settings: SettingsDep,
    runtime: RuntimeDep,
) -> Response:
    principal = _staff(request, settings, Scope.ISSUE)
    job = jobs_of(runtime).get(job_id)
    if job is None:
        return _problem_page(request, settings, principal, 404, "admin.job.unknown")
    return _page(
        request,
        settings,
        principal,
        "admin_job.html",
        section="/admin/web/issuance",
        job=job,
        poll_ms=POLL_MS,
    )


@router.get("/admin/web/jobs/{job_id}/status")
def job_status(
    job_id: Annotated[str, PathParam(max_length=64)],
    request: Request,
    runtime: RuntimeDep,
) -> JSONResponse:
    """The job page's poll (session cookie; scope ``issue``), as ``GET /admin/jobs/{id}``."""
    principal = _principal(request, "staff")
    if principal is None:
        raise ApiProblem(401, "unauthorized", "log in at /admin/login")
    if Scope.ISSUE not in principal.scopes:
        raise ApiProblem(403, "insufficient_scope", "this needs the scope 'issue'")
    job = _job_of(runtime, job_id)
    return JSONResponse(_job_json(runtime, job), headers={"Cache-Control": "no-store"})


# -- holders and cards ------------------------------------------------------------------------


def _find_holders(runtime: Runtime, query: str, *, by_name: bool = True) -> list[int]:
    """Holder ids for a pass number, a holder id or (with ``by_name``) part of a name (at most
    50)."""
    registry = runtime.store.registry
    text = query.strip()
    if not text:
        return []
    pairs = registry.pass_holders(text.upper())
    if pairs:
        return [holder.id for _, holder in pairs if holder.id is not None]
    if not by_name:
        return []
    if text.isdecimal() and len(text) < 19:
        found = [h.id for h in registry.holders() if h.id == int(text)]
        return [i for i in found if i is not None]
    needle = text.lower()
    ids: list[int] = []
    for holder in registry.holders():
        name = f"{holder.first_name} {holder.last_name}".lower()
        if needle in name and holder.id is not None:
            ids.append(holder.id)
            if len(ids) >= 50:
                break
    return ids


def _balances(runtime: Runtime, lang: str, pass_number: str) -> list[tuple[str, str]]:
    """The pass's non-zero balances as (scheme name, amount text), from the holder service."""
    try:
        data = services.balances(runtime, pass_number)
    except ApiProblem:
        return []
    rows: list[tuple[str, str]] = []
    for balance in data.balances:
        if balance.balance == 0:
            continue
        if balance.unlimited:
            text = translate(lang, "unit.unlimited")
        elif balance.unit == "cents":
            text = _money(lang, balance.balance)
        else:
            text = translate(lang, "unit.uses", n=balance.balance)
        rows.append((balance.name, text))
    return rows


#: Longest holder search (the form's ``maxlength``).
MAX_HOLDER_QUERY: Final = 120


@router.get("/admin/web/holders")
def holders_page(
    request: Request,
    settings: SettingsDep,
    runtime: RuntimeDep,
    q: Annotated[str, Query(max_length=MAX_HOLDER_QUERY)] = "",
) -> Response:
    """The search form; ``?q=`` finds a pass number only (the link after a pass action). A name
    is searched by POST, so it never appears in a URL (browser history, proxy logs)."""
    principal = _staff(request, settings, Scope.ADMIN)
    return _holders_result(request, settings, runtime, principal, q, by_name=False)


@router.post("/admin/web/holders")
async def holders_search(request: Request, settings: SettingsDep, runtime: RuntimeDep) -> Response:
    """Search by pass number, holder id or part of a name: the query is in the form body."""
    principal = _staff(request, settings, Scope.ADMIN)
    form = await _form(request)
    if not _check_csrf(request, form.get("csrf")):
        return _csrf_refused(request, settings, principal)
    query = form.get("q", "")[:MAX_HOLDER_QUERY]
    return await run_in_threadpool(
        _holders_result, request, settings, runtime, principal, query, by_name=True
    )


def _holders_result(
    request: Request,
    settings: Settings,
    runtime: Runtime,
    principal: Principal,
    q: str,
    *,
    by_name: bool,
) -> Response:
    found = _find_holders(runtime, q, by_name=by_name)
    holders = [svc.get_holder(runtime, holder_id) for holder_id in found]
    lang = pick_language(request)
    balances = {
        p.pass_number: _balances(runtime, lang, p.pass_number) for h in holders for p in h.passes
    }
    return _page(
        request,
        settings,
        principal,
        "admin_holders.html",
        section="/admin/web/holders",
        q=q,
        holders=holders,
        balances=balances,
        searched=bool(q.strip()),
        can_issue=Scope.ISSUE in principal.scopes,
        notice=_notice(request),
    )


_PASS_ACTIONS: Final[dict[str, tuple[str, Callable[[Runtime, str], object]]]] = {
    "block": ("blocked", lambda rt, pn: svc.block_pass(rt, pn, blocked=True)),
    "unblock": ("unblocked", lambda rt, pn: svc.block_pass(rt, pn, blocked=False)),
    "card": ("card", svc.issue_card),
}


@router.post("/admin/web/passes/{pass_number}/{action}")
async def pass_action(
    pass_number: PassNumber,
    action: Annotated[str, PathParam(max_length=16)],
    request: Request,
    settings: SettingsDep,
    runtime: RuntimeDep,
) -> Response:
    """Block, unblock or replace the card of a pass (as the API's pass routes; scope issue)."""
    principal = _staff(request, settings, Scope.ISSUE)
    form = await _form(request)
    if not _check_csrf(request, form.get("csrf")):
        return _csrf_refused(request, settings, principal)
    if action not in _PASS_ACTIONS:
        return _problem_page(request, settings, principal, 404, "admin.not_found")
    done, work = _PASS_ACTIONS[action]
    try:
        await run_in_threadpool(work, runtime, pass_number)
    except ApiProblem as problem:
        return _problem_page(
            request,
            settings,
            principal,
            problem.status,
            "admin.action_failed",
            _problem_text(problem),
        )
    # back to the pass (a pass number finds it by GET; a name search never goes in a URL)
    query = urlencode({"q": pass_number, "done": done})
    return _redirect(f"/admin/web/holders?{query}#pass-{pass_number}")


@router.get("/admin/web/passes/{pass_number}/card.png")
def card_png(
    pass_number: PassNumber, request: Request, settings: SettingsDep, runtime: RuntimeDep
) -> Response:
    _staff(request, settings, Scope.ISSUE)
    return Response(
        svc.card_png(runtime, pass_number),
        media_type="image/png",
        headers={"Cache-Control": "no-store"},
    )


@router.get("/admin/web/passes/{pass_number}/card.pdf")
def card_pdf(
    pass_number: PassNumber, request: Request, settings: SettingsDep, runtime: RuntimeDep
) -> Response:
    _staff(request, settings, Scope.ISSUE)
    return Response(
        svc.card_pdf(runtime, pass_number),
        media_type="application/pdf",
        headers={
            "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="{pass_number}.pdf"',
        },
    )


# -- merchants --------------------------------------------------------------------------------


@router.get("/admin/web/merchants")
def merchants_page(request: Request, settings: SettingsDep, runtime: RuntimeDep) -> Response:
    principal = _staff(request, settings, Scope.ADMIN)
    return _page(
        request,
        settings,
        principal,
        "admin_merchants.html",
        section="/admin/web/merchants",
        merchants=svc.list_merchants(runtime),
        notice=_notice(request),
    )


def _location_page(
    request: Request,
    settings: Settings,
    principal: Principal,
    merchant: Merchant,
    form: dict[str, str],
    *,
    status_code: int = 200,
    error: str | None = None,
) -> Response:
    return _page(
        request,
        settings,
        principal,
        "admin_merchant_location.html",
        section="/admin/web/merchants",
        status_code=status_code,
        merchant=merchant,
        form=form,
        error=error,
    )


@router.get("/admin/web/merchants/{merchant_id}/location")
def merchant_location_page(
    merchant_id: MerchantId, request: Request, settings: SettingsDep, runtime: RuntimeDep
) -> Response:
    """The form to set, change or remove a merchant's public location (as
    ``PUT``/``DELETE /admin/merchants/{id}/location``)."""
    principal = _staff(request, settings, Scope.ADMIN)
    merchant = runtime.store.registry.find_merchant(merchant_id)
    if merchant is None:
        return _problem_page(request, settings, principal, 404, "admin.merchants.unknown")
    location = MerchantLocationOut.of(merchant)
    form = dict.fromkeys(LOCATION_FIELDS, "")
    if location is not None:
        form.update(
            {
                key: value or ""
                for key, value in location.model_dump().items()
                if key in LOCATION_FIELDS
            }
        )
    return _location_page(request, settings, principal, merchant, form)


def _validation_detail(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
    )


@router.post("/admin/web/merchants/{merchant_id}/location")
async def merchant_location_save(
    merchant_id: MerchantId, request: Request, settings: SettingsDep, runtime: RuntimeDep
) -> Response:
    """Save the location (street, postcode and town together; website and opening hours
    optional); every field empty removes it. A refusal shows the form again, nothing saved."""
    principal = _staff(request, settings, Scope.ADMIN)
    posted = await read_small_form(request, settings, principal)
    merchant = await run_in_threadpool(runtime.store.registry.find_merchant, merchant_id)
    if merchant is None:
        return _problem_page(request, settings, principal, 404, "admin.merchants.unknown")
    form = {name: posted.get(name, "") for name in LOCATION_FIELDS}
    body: MerchantLocationIn | None = None
    if any(value.strip() for value in form.values()):
        try:
            body = MerchantLocationIn.model_validate(
                {
                    "street": form["street"],
                    "postcode": form["postcode"],
                    "town": form["town"],
                    "website": form["website"] or None,
                    "opening_hours": form["opening_hours"] or None,
                }
            )
        except ValidationError as exc:
            error = translate(
                pick_language(request), "admin.schemes.invalid", detail=_validation_detail(exc)
            )
            return _location_page(
                request, settings, principal, merchant, form, status_code=422, error=error
            )
    try:
        await run_in_threadpool(svc.set_merchant_location, runtime, merchant_id, body)
    except ApiProblem as problem:
        return _location_page(
            request,
            settings,
            principal,
            merchant,
            form,
            status_code=problem.status,
            error=_problem_text(problem),
        )
    done = "location_saved" if body is not None else "location_cleared"
    return _redirect(f"/admin/web/merchants?done={done}#merchant-{merchant_id}")


# -- reports ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _ReportQuery:
    period: Period | None
    period_text: str
    by: Granularity
    scheme: int | None
    scheme_metric: str
    merchant_metric: str
    district_metric: str

    def query(self, **extra: object) -> str:
        values: dict[str, object] = {"by": self.by.value}
        if self.period_text:
            values["period"] = self.period_text
        if self.scheme is not None:
            values["scheme"] = self.scheme
        values.update(extra)
        return urlencode(values)


def _report_query(request: Request) -> _ReportQuery:
    params = request.query_params
    text = params.get("period", "").strip()[:40]
    try:
        period = Period.parse(text) if text else None
    except PeriodError as exc:
        raise ApiProblem(422, "period_invalid", str(exc)) from None
    try:
        by = Granularity(params.get("by", "month"))
    except ValueError:
        by = Granularity.MONTH
    raw_scheme = params.get("scheme", "")
    scheme = int(raw_scheme) if raw_scheme.isdecimal() and len(raw_scheme) < 12 else None

    def metric(name: str, allowed: tuple[str, ...]) -> str:
        value = params.get(name, allowed[0])
        return value if value in allowed else allowed[0]

    return _ReportQuery(
        period=period,
        period_text=text,
        by=by,
        scheme=scheme,
        scheme_metric=metric("metric", SCHEME_METRICS),
        merchant_metric=metric("mmetric", MERCHANT_METRICS),
        district_metric=metric("dmetric", SCHEME_METRICS),
    )


def _scheme_report(runtime: Runtime, rq: _ReportQuery) -> SchemeReport:
    return scheme_report(
        runtime.store.db.engine,
        period=rq.period,
        granularity=rq.by,
        scheme_ids=[rq.scheme] if rq.scheme is not None else None,
    )


def _district_report(runtime: Runtime, rq: _ReportQuery) -> DistrictReport:
    return district_report(runtime.store.db.engine, period=rq.period, k=DEFAULT_K)


def _scheme_totals(report: SchemeReport, labels: dict[int, str]) -> list[dict[str, Any]]:
    """Per scheme over the period: the flows summed, the stocks at the last bucket."""
    totals: dict[int, dict[str, Any]] = {}
    for row in report.rows:
        entry = totals.setdefault(
            row.scheme_id,
            {
                "scheme_id": row.scheme_id,
                "name": labels.get(row.scheme_id, f"Scheme {row.scheme_id}"),
                "kind": row.kind,
                "issued": 0,
                "redeemed": 0,
                "reversed": 0,
                "expired": 0,
                "remaining": 0,
                "holders_entitled": 0,
                "holders_used": report.holders_used_in_period.get(row.scheme_id, 0),
            },
        )
        for name in ("issued", "redeemed", "reversed", "expired"):
            entry[name] += getattr(row, name)
        entry["remaining"] = row.remaining
        entry["holders_entitled"] = row.holders_entitled
    return [totals[key] for key in sorted(totals)]


def _district_rows(report: DistrictReport, scheme_id: int | None) -> list[dict[str, Any]]:
    rows = []
    for cell in report.cells:
        if cell.district is None or cell.scheme_id != scheme_id:
            continue
        rows.append(
            {
                "district": cell.district,
                "name": cell.district_name or cell.district,
                "figures": {
                    name: (None if fig.suppressed else fig.value)
                    for name, fig in cell.figures.items()
                },
            }
        )
    return rows


@router.get("/admin/web/reports")
def reports_page(request: Request, settings: SettingsDep, runtime: RuntimeDep) -> Response:
    principal = _staff(request, settings, Scope.AUDIT)
    try:
        rq = _report_query(request)
    except ApiProblem as problem:
        return _problem_page(
            request, settings, principal, 422, "admin.reports.period_invalid", problem.detail
        )
    labels = runtime.store.scheme_labels()
    schemes = _scheme_report(runtime, rq)
    merchants = merchant_report(runtime.store.db.engine, period=rq.period)
    districts = _district_report(runtime, rq)
    district_schemes = sorted(
        {c.scheme_id for c in districts.cells if c.scheme_id is not None and c.district}
    )
    district_scheme = (
        rq.scheme
        if rq.scheme in district_schemes
        else (district_schemes[0] if district_schemes else None)
    )
    buckets = sorted({row.bucket for row in schemes.rows})
    kinds = {row.scheme_id: row.kind for row in schemes.rows}
    series: dict[int, dict[str, int]] = {}
    for row in schemes.rows:
        series.setdefault(row.scheme_id, {})[row.bucket] = int(getattr(row, rq.scheme_metric))
    return _page(
        request,
        settings,
        principal,
        "admin_reports.html",
        section="/admin/web/reports",
        rq=rq,
        labels=labels,
        scheme_totals=_scheme_totals(schemes, labels),
        buckets=buckets,
        series=series,
        merchant_rows=merchants.rows,
        district_rows=_district_rows(districts, district_scheme),
        district_scheme=district_scheme,
        district_kind=kinds.get(district_scheme, "") if district_scheme is not None else "",
        district_schemes=district_schemes,
        k=districts.k,
        scheme_metrics=SCHEME_METRICS,
        merchant_metrics=MERCHANT_METRICS,
        all_schemes=sorted(labels.items()),
        granularities=[g.value for g in Granularity],
    )


def _chart(build: Callable[[], Any], fmt: str) -> bytes:
    """Render a matplotlib figure (pyplot is not thread-safe: one at a time)."""
    with _CHART_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        figure = build()
        out = io.BytesIO()
        try:
            figure.savefig(out, format=fmt, facecolor="white")
        finally:
            plt.close(figure)
    return out.getvalue()


def _first_scheme(report: DistrictReport) -> int | None:
    ids = sorted({c.scheme_id for c in report.cells if c.scheme_id is not None and c.district})
    return ids[0] if ids else None


def _localise(
    figure: Any,
    *,
    title: str,
    ylabel: str | None = None,
    names: dict[str, str] | None = None,
    texts: dict[str, str] | None = None,
) -> Any:
    """Put the page's language on a chart of :mod:`ledger.reports.charts` (titles, legend)."""
    axes = figure.axes[0]
    axes.set_title(title)
    if ylabel is not None:
        axes.set_ylabel(ylabel)
    if names:
        for line in axes.get_lines():
            label = str(line.get_label())
            if label in names:
                line.set_label(names[label])
        if axes.get_legend() is not None:
            axes.legend(loc="best")
    for text in axes.texts:
        if texts and text.get_text() in texts:
            text.set_text(texts[text.get_text()])
    return figure


def _report_file(
    report: SchemeReport | MerchantReport | DistrictReport, fmt: str, name: str
) -> Response:
    if fmt == "csv":
        return Response(
            to_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
        )
    return JSONResponse(as_dict(report))


@router.get("/admin/web/reports/{kind}.{fmt}")
def report_file(
    kind: Literal["schemes", "merchants", "districts"],
    fmt: ChartFormat,
    request: Request,
    settings: SettingsDep,
    runtime: RuntimeDep,
) -> Response:
    """A report's chart (PNG or SVG) or its data (CSV or JSON), for the session (scope audit)."""
    _staff(request, settings, Scope.AUDIT)
    rq = _report_query(request)
    lang = pick_language(request)
    labels = runtime.store.scheme_labels()

    def t(key: str, **values: object) -> str:
        return translate(lang, key, **values)

    report: SchemeReport | MerchantReport | DistrictReport
    build: Callable[[], Any]
    if kind == "schemes":
        scheme_rep = _scheme_report(runtime, rq)
        report = scheme_rep
        names = {f"scheme {sid}": f"{sid} · {name}" for sid, name in labels.items()}

        def build() -> Any:
            return _localise(
                scheme_chart(scheme_rep, metric=rq.scheme_metric),
                title=t(
                    "admin.chart.schemes",
                    metric=t(f"admin.metric.{rq.scheme_metric}"),
                    by=t(f"admin.reports.by.{rq.by.value}"),
                ),
                ylabel=t("admin.chart.unit"),
                names=names,
            )

    elif kind == "merchants":
        merchant_rep = merchant_report(runtime.store.db.engine, period=rq.period)
        report = merchant_rep

        def build() -> Any:
            return _localise(
                merchant_chart(merchant_rep, metric=rq.merchant_metric),
                title=t("admin.chart.merchants", metric=t(f"admin.metric.{rq.merchant_metric}")),
            )

    else:
        district_rep = _district_report(runtime, rq)
        report = district_rep

        def build() -> Any:
            figure = district_chart(district_rep, metric=rq.district_metric, scheme_id=rq.scheme)
            shown = rq.scheme if rq.scheme is not None else _first_scheme(district_rep)
            return _localise(
                figure,
                title=t(
                    "admin.chart.districts",
                    metric=t(f"admin.metric.{rq.district_metric}"),
                    scheme=labels.get(shown, str(shown)) if shown is not None else "",
                    k=district_rep.k,
                ),
                texts={"suppressed": t("admin.reports.suppressed")},
            )

    if fmt in ("csv", "json"):
        return _report_file(report, fmt, kind)
    media = "image/png" if fmt == "png" else "image/svg+xml"
    return Response(_chart(build, fmt), media_type=media, headers={"Cache-Control": "no-store"})


# -- payouts ----------------------------------------------------------------------------------


def _runs(runtime: Runtime) -> list[PayoutRun]:
    with Session(runtime.store.db.engine) as session:
        statement = select(PayoutRun).order_by(col(PayoutRun.id).desc()).limit(100)
        return list(session.exec(statement).all())


def _payouts_page(
    request: Request,
    settings: Settings,
    runtime: Runtime,
    principal: Principal,
    *,
    status_code: int = 200,
    error: str | None = None,
    period: str = "",
) -> Response:
    return _page(
        request,
        settings,
        principal,
        "admin_payouts.html",
        section="/admin/web/payouts",
        status_code=status_code,
        runs=_runs(runtime),
        error=error,
        period=period or datetime.now(UTC).strftime("%Y-%m"),
    )


@router.get("/admin/web/payouts")
def payouts_page(request: Request, settings: SettingsDep, runtime: RuntimeDep) -> Response:
    principal = _staff(request, settings, Scope.FINANCE)
    return _payouts_page(request, settings, runtime, principal)


@router.post("/admin/web/payouts")
async def payouts_create(request: Request, settings: SettingsDep, runtime: RuntimeDep) -> Response:
    principal = _staff(request, settings, Scope.FINANCE)
    form = await _form(request)
    if not _check_csrf(request, form.get("csrf")):
        return _csrf_refused(request, settings, principal)
    period = form.get("period", "").strip()
    try:
        body = PayoutIn.model_validate({"period": period})
        run = await run_in_threadpool(svc.create_payout, runtime, body)
    except ValidationError as exc:
        error = str(exc).splitlines()[0]
        status = 422
    except ApiProblem as problem:
        error = _problem_text(problem)
        status = problem.status
    else:
        return _redirect(f"/admin/web/payouts/{run.reference}?done=payout_created")
    return await run_in_threadpool(
        _payouts_page,
        request,
        settings,
        runtime,
        principal,
        status_code=status,
        error=error,
        period=period,
    )


@router.get("/admin/web/payouts/{reference}")
def payout_page(
    reference: RunReference, request: Request, settings: SettingsDep, runtime: RuntimeDep
) -> Response:
    principal = _staff(request, settings, Scope.FINANCE)
    try:
        run = svc.get_payout(runtime, reference)
    except ApiProblem as problem:
        return _problem_page(
            request, settings, principal, problem.status, "admin.not_found", problem.detail
        )
    return _page(
        request,
        settings,
        principal,
        "admin_payout.html",
        section="/admin/web/payouts",
        run=run,
        confirmed=None,
        notice=_notice(request),
    )


@router.get("/admin/web/payouts/{reference}/pain001.xml")
def payout_document(
    reference: RunReference, request: Request, settings: SettingsDep, runtime: RuntimeDep
) -> Response:
    _staff(request, settings, Scope.FINANCE)
    return Response(
        svc.payout_document(runtime, reference),
        media_type="application/xml",
        headers={"Content-Disposition": f'attachment; filename="{reference}.xml"'},
    )


@router.post("/admin/web/payouts/{reference}/confirm")
async def payout_confirm(
    reference: RunReference, request: Request, settings: SettingsDep, runtime: RuntimeDep
) -> Response:
    principal = _staff(request, settings, Scope.FINANCE)
    form = await _form(request)
    if not _check_csrf(request, form.get("csrf")):
        return _csrf_refused(request, settings, principal)
    try:
        confirmed = await run_in_threadpool(svc.confirm_payout, runtime, reference)
        run = await run_in_threadpool(svc.get_payout, runtime, reference)
    except ApiProblem as problem:
        return _problem_page(
            request,
            settings,
            principal,
            problem.status,
            "admin.action_failed",
            _problem_text(problem),
        )
    return _page(
        request,
        settings,
        principal,
        "admin_payout.html",
        section="/admin/web/payouts",
        run=run,
        confirmed=confirmed,
        notice="admin.notice.payout_confirmed",
    )


# -- audit ------------------------------------------------------------------------------------


@router.get("/admin/web/audit")
def audit_page(request: Request, settings: SettingsDep) -> Response:
    principal = _staff(request, settings, Scope.AUDIT)
    return _page(
        request, settings, principal, "admin_audit.html", section="/admin/web/audit", result=None
    )


@router.post("/admin/web/audit")
async def audit_run(request: Request, settings: SettingsDep, runtime: RuntimeDep) -> Response:
    """Run the ledger audit (``POST /admin/audit``) and show every difference."""
    principal = _staff(request, settings, Scope.AUDIT)
    form = await _form(request)
    if not _check_csrf(request, form.get("csrf")):
        return _csrf_refused(request, settings, principal)
    body = AuditIn(compare_reports=form.get("compare_reports") == "on")
    try:
        result = await run_in_threadpool(svc.run_audit, runtime, body)
    except ApiProblem as problem:
        return _page(
            request,
            settings,
            principal,
            "admin_audit.html",
            section="/admin/web/audit",
            status_code=problem.status,
            result=None,
            error=_problem_text(problem),
        )
    return _page(
        request,
        settings,
        principal,
        "admin_audit.html",
        section="/admin/web/audit",
        result=result,
        # "Service promises vs chain": the records and the outbox against the chain's logs
        promises_checked="service promises" in result.checked,
        promise_differences=[d for d in result.differences if d.kind in PROMISE_KINDS],
        other_differences=[d for d in result.differences if d.kind not in PROMISE_KINDS],
    )
