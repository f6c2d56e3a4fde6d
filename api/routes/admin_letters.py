"""Activation letters and the postcode-to-wijk table: the JSON API and the admin pages.

API (bearer token of a staff user):

- ``POST /admin/letters`` (scope ``issue``): body :class:`api.letters.LettersIn`; 202 with the
  job (``GET /admin/jobs/{id}``), whose result names the batch, the letter count, what was
  skipped and the download links ``GET /admin/letters/{batch}.pdf`` and ``.csv`` (each served
  once, then deleted; see :mod:`api.letters`).
- ``POST /admin/postcodes`` (scope ``admin``): a CBS postcode-to-wijk file (multipart ``file``;
  optionally ``municipality``): the table of the file's municipalities is replaced and every
  holder's district derived again (:mod:`ledger.geography`).

Pages: ``/admin/web/letters`` (choose, produce, download) and ``/admin/web/postcodes`` (upload).
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, File, Form, Path, Request, Response, UploadFile, status
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from api import letters as svc
from api.admin_schemas import JobOut
from api.auth import Scope
from api.deps import RuntimeDep, SettingsDep, require_scopes
from api.i18n import pick_language, translate
from api.jobs import JobStatus, jobs_of
from api.problems import ApiProblem, problem_responses
from api.routes.admin_pages import (
    _csrf_refused,
    _page,
    _problem_page,
    _problem_text,
    _staff,
    read_upload_form,
    upload_missing,
    upload_refused,
)
from api.routes.pages import _check_csrf, _redirect
from api.runtime import Runtime
from api.settings import Settings
from ledger import geography
from ledger.registry import CsvImportError
from ledger.store.registry import District

router = APIRouter(tags=["admin"])

_ISSUE = [require_scopes(Scope.ISSUE, kind="staff")]
_ADMIN = [require_scopes(Scope.ADMIN, kind="staff")]
_AUTH = (
    (401, "unauthorized", "this endpoint needs a bearer token"),
    (403, "insufficient_scope", "this endpoint needs the scopes ['issue']"),
)
Batch = Annotated[str, Path(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
_MAX_UPLOAD: Final = geography.MAX_FILE_BYTES


# -- letters: API -------------------------------------------------------------------------------


@router.post(
    "/admin/letters",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=_ISSUE,
    summary="Produce activation letters (PDF and CSV) with new codes (a job)",
    responses=problem_responses(
        *_AUTH,
        (422, "district_unknown", "district 'WK999999' is not in the district table"),
        (422, "selection_unknown", "1 pass number(s) are not issued: GR9999999"),
        (422, "selection_empty", "the selection (district WK001401) yields no letter"),
    ),
)
def produce_letters(body: svc.LettersIn, runtime: RuntimeDep) -> JobOut:
    """The selection is checked now (a refusal changes nothing). The job makes a new activation
    code per pass (every earlier code of those passes stops working), renders one A4 letter
    per pass and the print house's CSV; its result: ``batch``, ``letters``, ``skipped``
    (``holder_id``, ``pass_number``, ``reason``: ``blocked``, ``no_address`` or ``no_pass``),
    ``without_card``, ``pdf`` and ``csv`` (download links, each served once), ``expires_at``."""
    return JobOut.of(svc.start_letters(runtime, body))


def _file(data: bytes, kind: str, batch: str) -> Response:
    media = "application/pdf" if kind == "pdf" else "text/csv; charset=utf-8"
    return Response(
        data,
        media_type=media,
        headers={
            "Content-Disposition": f'attachment; filename="activeringsbrieven-{batch[:8]}.{kind}"',
            "Cache-Control": "no-store",
        },
    )


@router.get(
    "/admin/letters/{batch}.{kind}",
    dependencies=_ISSUE,
    summary="Download a batch of letters (once)",
    responses={
        200: {"content": {"application/pdf": {}, "text/csv": {}}},
        **problem_responses(*_AUTH, (404, "letters_unknown", "no letters batch 'abc' waiting")),
    },
)
def letters_file(batch: Batch, kind: Literal["pdf", "csv"], runtime: RuntimeDep) -> Response:
    """The PDF or the CSV of a batch. It is deleted from the service's memory as it is served
    (a second request is 404 ``letters_unknown``), and after 30 minutes in any case."""
    return _file(svc.download(runtime, batch, kind), kind, batch)


# -- postcodes: API -----------------------------------------------------------------------------


class UnknownPostcodeHolderOut(BaseModel):
    holder_id: int
    postcode: str
    pass_numbers: list[str]


class PostcodeImportOut(BaseModel):
    """What an import did: wijken and postcodes in the file, wijken removed, holders whose
    district was derived again, and the holders whose postcode is not in the table (their
    district is now unknown)."""

    districts: int
    postcodes: int
    districts_removed: int
    holders: int
    holders_changed: int
    unknown_count: int
    unknown: list[UnknownPostcodeHolderOut]


def _import_out(result: geography.PostcodeImport) -> PostcodeImportOut:
    return PostcodeImportOut(
        districts=result.districts,
        postcodes=result.postcodes,
        districts_removed=result.districts_removed,
        holders=result.holders,
        holders_changed=result.holders_changed,
        unknown_count=len(result.unknown),
        unknown=[
            UnknownPostcodeHolderOut(
                holder_id=u.holder_id, postcode=u.postcode, pass_numbers=u.pass_numbers
            )
            for u in result.unknown
        ],
    )


def import_postcodes(
    runtime: Runtime, data: bytes, names: bytes | None, municipality: str | None
) -> PostcodeImportOut:
    """Check the file(s), then replace the table and derive the districts (problems: 413
    ``upload_too_large``, 422 ``csv_lines_invalid`` with ``errors`` by line)."""
    if len(data) > _MAX_UPLOAD or (names is not None and len(names) > _MAX_UPLOAD):
        raise ApiProblem(413, "upload_too_large", f"a file may be at most {_MAX_UPLOAD} bytes")
    try:
        table = geography.read_postcode_table(data, names=names, municipality=municipality)
    except CsvImportError as exc:
        errors = [{"line": e.line, "message": e.message} for e in exc.errors[:1000]]
        raise ApiProblem(422, "csv_lines_invalid", str(exc), errors=errors) from None
    return _import_out(geography.replace_postcode_table(runtime.store.registry, table))


@router.post(
    "/admin/postcodes",
    dependencies=_ADMIN,
    summary="Import the postcode-to-wijk table (CBS) and derive every holder's district",
    responses=problem_responses(
        *_AUTH,
        (413, "upload_too_large", "a file may be at most 67108864 bytes"),
        (422, "csv_lines_invalid", "postcodes CSV rejected, nothing imported: 1 problem: ..."),
    ),
)
def postcodes_import(
    runtime: RuntimeDep,
    file: Annotated[UploadFile, File(description="CSV: pc6;wijkcode;wijknaam[;gemeentenaam]")],
    municipality: Annotated[str | None, Form(max_length=120)] = None,
) -> PostcodeImportOut:
    """Everything is checked first; one problem refuses the file with errors by line and
    changes nothing. Then, in one transaction, the table of every municipality in the file is
    replaced and every holder's district derived again; holders whose postcode is not in the
    table are listed (their district is unknown, never guessed). CBS's two-file form (codes
    only, plus the wijk names) is read by the admin page and ``stadjerspas import postcodes
    --names``."""
    data = file.file.read(_MAX_UPLOAD + 1)
    return import_postcodes(runtime, data, None, municipality or None)


# -- letters: pages -----------------------------------------------------------------------------


def _letters_page(
    request: Request,
    settings: Settings,
    runtime: Runtime,
    principal: Any,
    *,
    status_code: int = 200,
    error: str | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    return _page(
        request,
        settings,
        principal,
        "admin_letters.html",
        section="/admin/web/letters",
        status_code=status_code,
        error=error,
        districts=runtime.store.registry.districts(),
        form=form or {"kind": "not_activated"},
    )


@router.get("/admin/web/letters", include_in_schema=False)
def letters_page(request: Request, settings: SettingsDep, runtime: RuntimeDep) -> Response:
    principal = _staff(request, settings, Scope.ISSUE)
    return _letters_page(request, settings, runtime, principal)


def _body_of(form: dict[str, str]) -> svc.LettersIn:
    kind = form.get("kind", "")
    selection: dict[str, Any] = {"kind": kind}
    if kind == "district":
        selection["district"] = form.get("district", "")
    elif kind == "passes":
        selection["pass_numbers"] = form.get("pass_numbers", "").replace(",", " ").split()
    elif kind == "holders":
        raw = form.get("holder_ids", "").replace(",", " ").split()
        selection["holder_ids"] = raw
    return svc.LettersIn.model_validate(
        {"selection": selection, "with_card_qr": form.get("with_card_qr") == "on"}
    )


@router.post("/admin/web/letters", include_in_schema=False)
async def letters_start(request: Request, settings: SettingsDep, runtime: RuntimeDep) -> Response:
    principal = _staff(request, settings, Scope.ISSUE)
    async with request.form(max_files=0, max_fields=10) as raw:
        form = {k: v for k, v in raw.items() if isinstance(v, str)}
    if not _check_csrf(request, form.get("csrf")):
        return _csrf_refused(request, settings, principal)
    lang = pick_language(request)
    try:
        body = _body_of(form)
        job = await run_in_threadpool(svc.start_letters, runtime, body)
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors()
        )
        return await run_in_threadpool(
            _letters_page,
            request,
            settings,
            runtime,
            principal,
            status_code=422,
            error=translate(lang, "admin.letters.invalid", detail=detail),
            form=form,
        )
    except ApiProblem as problem:
        return await run_in_threadpool(
            _letters_page,
            request,
            settings,
            runtime,
            principal,
            status_code=problem.status,
            error=_problem_text(problem),
            form=form,
        )
    return _redirect(f"/admin/web/letters/jobs/{job.id}")


@router.get("/admin/web/letters/jobs/{job_id}", include_in_schema=False)
def letters_job_page(
    job_id: Annotated[str, Path(max_length=64)],
    request: Request,
    settings: SettingsDep,
    runtime: RuntimeDep,
) -> Response:
    principal = _staff(request, settings, Scope.ISSUE)
    job = jobs_of(runtime).get(job_id)
    if job is None or job.kind != "letters":
        return _problem_page(request, settings, principal, 404, "admin.job.unknown")
    result = job.result or {}
    return _page(
        request,
        settings,
        principal,
        "admin_letters_job.html",
        section="/admin/web/letters",
        job=job,
        running=job.status in (JobStatus.QUEUED, JobStatus.RUNNING),
        result=result,
        batch=result.get("batch"),
        skipped=result.get("skipped") or [],
    )


@router.get("/admin/web/letters/{batch}.{kind}", include_in_schema=False)
def letters_page_file(
    batch: Batch,
    kind: Literal["pdf", "csv"],
    request: Request,
    settings: SettingsDep,
    runtime: RuntimeDep,
) -> Response:
    principal = _staff(request, settings, Scope.ISSUE)
    try:
        data = svc.download(runtime, batch, kind)
    except ApiProblem:
        return _problem_page(request, settings, principal, 404, "admin.letters.gone")
    return _file(data, kind, batch)


# -- postcodes: pages ---------------------------------------------------------------------------


def _postcodes_page(
    request: Request,
    settings: Settings,
    runtime: Runtime,
    principal: Any,
    *,
    status_code: int = 200,
    error: str | None = None,
    line_errors: list[dict[str, Any]] | None = None,
    result: PostcodeImportOut | None = None,
) -> Response:
    registry = runtime.store.registry
    districts: list[District] = registry.districts()
    return _page(
        request,
        settings,
        principal,
        "admin_postcodes.html",
        section="/admin/web/postcodes",
        status_code=status_code,
        error=error,
        line_errors=line_errors or [],
        result=result,
        district_count=len(districts),
        postcode_count=len(registry.postcodes()),
        max_mb=_MAX_UPLOAD // (1024 * 1024),
    )


@router.get("/admin/web/postcodes", include_in_schema=False)
def postcodes_page(request: Request, settings: SettingsDep, runtime: RuntimeDep) -> Response:
    principal = _staff(request, settings, Scope.ADMIN)
    return _postcodes_page(request, settings, runtime, principal)


@router.post("/admin/web/postcodes", include_in_schema=False)
async def postcodes_upload(
    request: Request, settings: SettingsDep, runtime: RuntimeDep
) -> Response:
    principal = _staff(request, settings, Scope.ADMIN)
    form = await read_upload_form(
        request, settings, principal, max_file=_MAX_UPLOAD, files=("file", "names")
    )
    render = functools.partial(_postcodes_page, request, settings, runtime, principal)
    data = form.data(named=True)
    if data is None:
        return await upload_missing(request, render, "admin.postcodes.missing")
    names = form.data("names", named=True)
    place = form.fields.get("municipality", "").strip() or None
    try:
        result = await run_in_threadpool(import_postcodes, runtime, data, names, place)
    except ApiProblem as problem:
        return await upload_refused(render, problem)
    return await run_in_threadpool(render, result=result)
