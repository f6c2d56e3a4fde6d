"""Server-rendered web pages (Dutch and English): holder pass, merchant scanner.

Session: logging in on a page calls the same :meth:`api.auth.Auth.login` as ``POST
/auth/token`` and keeps the bearer token in the ``sp_session`` cookie (HttpOnly,
SameSite=Strict, Secure outside development); page scripts never see it. Every POST (forms and
the merchant page's JSON calls under ``/merchant/web/``) must carry the CSRF token of
:mod:`api.csrf`: bound to the session (an HMAC of its id) and in the ``__Host-csrf`` cookie,
echoed in the form field ``csrf`` or the ``X-CSRF-Token`` header (signed double submit;
SameSite=Strict already stops cross-site requests carrying cookies).

Pages carry a strict Content-Security-Policy (scripts only from this origin, no inline
scripts); ``/static/`` serves ``api/static/`` (styles, page scripts, the bundled scanner).
"""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from api import card_pins, holder_services, redemptions, services, short_codes
from api import csrf as csrf_tokens
from api.auth import Auth, Kind, Principal, Scope
from api.deps import RuntimeDep, SettingsDep, parse_idempotency_key
from api.i18n import LANG_COOKIE, LANGUAGES, MESSAGES, pick_language, translate
from api.problems import ApiProblem
from api.schemas import RedemptionIn, RedemptionOut, ReversalOut, ScanIn, ScanOut
from api.settings import Settings
from wallet import render_png

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

HERE = Path(__file__).resolve().parents[1]
STATIC_DIR = HERE / "static"
TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=jinja2.select_autoescape(("html",)),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

SESSION_COOKIE = "sp_session"
CSRF_HEADER = csrf_tokens.CSRF_HEADER
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob: mediastream:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "camera=(self), microphone=(), geolocation=()",
    "Cache-Control": "no-store",
}
_MAX_FORM = 4096


# -- helpers ----------------------------------------------------------------------------------


def _auth(request: Request) -> Auth:
    auth: Auth = request.app.state.auth
    return auth


def _secure(settings: Settings) -> bool:
    return not settings.is_development


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _csrf(request: Request) -> tuple[str, bool]:
    """The CSRF token of this browser's session, and whether it is new (so it must be set)."""
    return csrf_tokens.current(request, _settings(request), SESSION_COOKIE)


def _check_csrf(request: Request, sent: str | None) -> bool:
    """Whether ``sent`` is the CSRF cookie's token and signed for this session (api.csrf)."""
    return csrf_tokens.check(request, _settings(request), SESSION_COOKIE, sent)


def _money(lang: str, cents: int) -> str:
    whole, part = divmod(abs(cents), 100)
    sign = "-" if cents < 0 else ""
    if lang == "nl":
        return f"{sign}€ {whole:,}".replace(",", ".") + f",{part:02d}"
    return f"{sign}€{whole:,}.{part:02d}"


def _date(lang: str, unix: int) -> str:
    day = datetime.fromtimestamp(unix, UTC).date()
    return day.strftime("%d-%m-%Y") if lang == "nl" else day.isoformat()


def _lang_links(request: Request) -> list[dict[str, str]]:
    links = []
    for code in LANGUAGES:
        query = dict(request.query_params)
        query["lang"] = code
        links.append({"code": code, "href": f"{request.url.path}?{urlencode(query)}"})
    return links


def _render(
    request: Request,
    settings: Settings,
    template: str,
    *,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    lang = pick_language(request)
    csrf, new_csrf = _csrf(request)

    def t(key: str, **values: object) -> str:
        return translate(lang, key, **values)

    html = TEMPLATES.get_template(template).render(
        t=t,
        lang=lang,
        lang_links=_lang_links(request),
        csrf=csrf,
        money=lambda cents: _money(lang, cents),
        date=lambda unix: _date(lang, unix),
        **context,
    )
    response = HTMLResponse(html, status_code=status_code, headers=_PAGE_HEADERS)
    secure = _secure(settings)
    if new_csrf:
        cookie = csrf_tokens.cookie_for(request, settings)
        response.set_cookie(
            cookie.name, csrf, httponly=True, samesite="strict", secure=cookie.secure, path="/"
        )
    chosen = request.query_params.get("lang", "").lower()
    if chosen in LANGUAGES and request.cookies.get(LANG_COOKIE) != chosen:
        response.set_cookie(
            LANG_COOKIE, chosen, max_age=365 * 86400, samesite="lax", secure=secure, path="/"
        )
    return response


def _principal(request: Request, kind: Kind) -> Principal | None:
    """The session's principal if it is a valid login of ``kind``, else None."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        principal = _auth(request).authenticate(token)
    except ApiProblem:
        return None
    return principal if principal.kind == kind else None


def _session_or_problem(request: Request, kind: Kind) -> Principal:
    """For the page scripts' JSON calls: CSRF header plus a session of ``kind``, else a problem."""
    if not _check_csrf(request, request.headers.get(CSRF_HEADER)):
        raise ApiProblem(403, "csrf_failed", f"send the {CSRF_HEADER} header of the page")
    principal = _auth(request).authenticate(request.cookies.get(SESSION_COOKIE))
    if principal.kind != kind:
        raise ApiProblem(403, "wrong_principal_kind", f"this endpoint is for {kind} logins")
    return principal


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})


async def _form(request: Request) -> dict[str, str]:
    if int(request.headers.get("content-length") or 0) > _MAX_FORM:
        raise ApiProblem(413, "body_too_large", f"a form may be at most {_MAX_FORM} bytes")
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


async def _login(
    request: Request, settings: Settings, kind: Kind, template: str, home: str
) -> Response:
    form = await _form(request)
    username = form.get("username", "").strip()
    if not _check_csrf(request, form.get("csrf")):
        return _render(
            request, settings, template, status_code=400, error="csrf.failed", username=username
        )
    client = request.client.host if request.client is not None else "unknown"
    try:
        issued = await run_in_threadpool(
            _auth(request).login,
            kind=kind,
            username=username,
            password=form.get("password", ""),
            scopes=[],
            client=client,
        )
    except ApiProblem as problem:
        error = "login.locked" if problem.code == "login_locked" else "login.failed"
        status = problem.status if problem.status in (401, 429) else 400
        return _render(
            request, settings, template, status_code=status, error=error, username=username
        )
    response = _redirect(home)
    response.set_cookie(
        SESSION_COOKIE,
        issued.access_token,
        max_age=issued.expires_in,
        httponly=True,
        samesite="strict",
        secure=_secure(settings),
        path="/",
    )
    return response


# -- static files -----------------------------------------------------------------------------


@router.get("/static/{path:path}")
def static(path: str) -> FileResponse:
    """Files under ``api/static/`` (never outside it)."""
    target = (STATIC_DIR / path).resolve()
    if not target.is_relative_to(STATIC_DIR) or not target.is_file():
        raise ApiProblem(404, "not_found", "no such file")
    return FileResponse(
        target, headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    )


# -- common -----------------------------------------------------------------------------------


@router.post("/logout")
async def logout(request: Request, settings: SettingsDep) -> Response:
    form = await _form(request)
    if not _check_csrf(request, form.get("csrf")):
        raise ApiProblem(403, "csrf_failed", "the form's CSRF token does not match")
    target = "/merchant/login" if form.get("next") == "merchant" else "/holder/login"
    response = _redirect(target)
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(settings)
    )
    return response


# -- holder -----------------------------------------------------------------------------------


@router.get("/holder/login")
def holder_login_page(request: Request, settings: SettingsDep) -> Response:
    if _principal(request, "holder") is not None:
        return _redirect("/holder")
    return _render(request, settings, "holder_login.html", error=None, username="")


@router.post("/holder/login")
async def holder_login(request: Request, settings: SettingsDep) -> Response:
    return await _login(request, settings, "holder", "holder_login.html", "/holder")


_HISTORY_RECENT = 10  # on the holder page, with a link to the paged history
_HISTORY_PAGE = 25
_HISTORY_MAX_PAGE = 400
_CATEGORY_PREFIX = "category."
try:
    _LOCAL_TZ: tzinfo = ZoneInfo("Europe/Amsterdam")
except ZoneInfoNotFoundError:  # no tz database: show UTC
    _LOCAL_TZ = UTC


def _holder_session(request: Request) -> str | None:
    principal = _principal(request, "holder")
    return None if principal is None else principal.pass_number


def _when(lang: str, unix: int | None) -> dict[str, str] | None:
    """A moment as ``<time>`` needs it: ISO 8601 and the local (Groningen) date and time."""
    if unix is None:
        return None
    moment = datetime.fromtimestamp(max(0, unix), UTC).astimezone(_LOCAL_TZ)
    day = moment.strftime("%d-%m-%Y" if lang == "nl" else "%Y-%m-%d")
    clock = moment.strftime("%H:%M")
    return {
        "iso": moment.isoformat(timespec="minutes"),
        "text": f"{day} {clock}",
        "day": day,
        "clock": clock,
    }


def _quantity(lang: str, unit: str | None, amount: int, *, unlimited: bool = False) -> str:
    if unlimited:
        return translate(lang, "unit.unlimited")
    if unit == "cents":
        return _money(lang, amount)
    return translate(lang, "unit.uses", n=amount)


def _category(lang: str, category: str) -> str:
    key = _CATEGORY_PREFIX + category.lower()
    return translate(lang, key) if key in MESSAGES[lang] else category


def _history_rows(lang: str, items: list[holder_services.HistoryItem]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for item in items:
        if item.scheme_kind == "discount":
            if item.kind == "redemption":
                money = _money(lang, item.discount)
                amount = translate(lang, "holder.history.discount", amount=money)
            else:
                amount = translate(lang, "holder.history.discount_reversed")
        else:
            amount = _quantity(lang, item.unit, abs(item.amount))
            if item.kind == "reversal":
                amount = translate(lang, "holder.history.returned", amount=amount)
        rows.append(
            {
                "kind": item.kind,
                "what": translate(lang, f"holder.history.kind.{item.kind}"),
                "merchant": item.merchant_name
                or translate(lang, "holder.history.merchant_unknown"),
                "scheme": item.scheme_name,
                "amount": amount.replace("€ ", "€\u00a0"),  # never "€" alone on a line
                "when": _when(lang, item.at),
            }
        )
    return rows


def _offer_rows(
    lang: str, catalogue: holder_services.OfferCatalogueOut
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The offers (what, until when, where) and the same turned around: per partner, where it
    is (if registered: as text, no map, nothing fetched from elsewhere) and what the pass can
    use there."""
    offers: list[dict[str, Any]] = []
    places: dict[int, dict[str, Any]] = {}
    for offer in catalogue.offers:
        if offer.kind == "discount":
            if offer.discount_bps:
                pct = f"{offer.discount_bps / 100:g}"
                pct = pct.replace(".", ",") if lang == "nl" else pct
                what = translate(lang, "holder.offers.discount", pct=pct)
            else:
                what = translate(
                    lang, "holder.offers.discount_fixed", amount=_money(lang, offer.discount_fixed)
                )
            if offer.per_redemption_cap:
                cap = _money(lang, offer.per_redemption_cap)
                what += translate(lang, "holder.offers.discount_cap", amount=cap)
        else:
            left = _quantity(lang, offer.unit, offer.balance, unlimited=offer.unlimited)
            what = translate(lang, "holder.offers.left", left=left)
        where = [
            {
                "name": place.name,
                "category": _category(lang, place.category),
                "location": place.location,
            }
            for place in offer.where
        ]
        offers.append(
            {
                "name": offer.name,
                "what": what,
                "valid_from": None if offer.valid_now else offer.valid_from,
                "valid_until": offer.valid_until,
                "all": offer.open_to_all_merchants,
                "where": where,
            }
        )
        for place in offer.where:
            entry = places.setdefault(
                place.merchant_id,
                {
                    "name": place.name,
                    "category": _category(lang, place.category),
                    "location": place.location,
                    "hours": place.location.opening_hours.splitlines()
                    if place.location is not None and place.location.opening_hours
                    else [],
                    "offers": [],
                },
            )
            entry["offers"].append(offer.name)
    partners = sorted(places.values(), key=lambda entry: str(entry["name"]).casefold())
    return offers, partners


@router.get("/holder")
def holder_page(request: Request, settings: SettingsDep, runtime: RuntimeDep) -> Response:
    """The pass QR (renewed by holder.js), balances, recent history and the offers catalogue
    with where to use them (all from :mod:`api.holder_services`, as the holder API)."""
    pass_number = _holder_session(request)
    if pass_number is None:
        return _redirect("/holder/login")
    lang = pick_language(request)
    data = holder_services.balances_with_validity(runtime, pass_number)
    now = int(time.time())
    rows = [
        {
            "name": balance.name,
            "left": _quantity(lang, balance.unit, balance.balance, unlimited=balance.unlimited),
            "valid_from": None if balance.valid_now else balance.valid_from,
            "valid_until": balance.valid_until,
        }
        for balance in data.balances
        if balance.kind != "discount" and balance.valid_until >= now
    ]
    offers, partners = _offer_rows(lang, holder_services.offer_catalogue(runtime, pass_number))
    recent = holder_services.history(runtime, pass_number, limit=_HISTORY_RECENT)
    # the QR inline (its token is the one the short code beside it stands for); holder.js
    # renews both from /holder/qr.png
    token = services.make_pass_token(runtime, settings, pass_number)
    code = short_codes.issue(runtime, token.token_uri, token.expires_at)
    qr_png = base64.b64encode(render_png(token.token_uri)).decode()
    return _render(
        request,
        settings,
        "holder.html",
        holder=data,
        rows=rows,
        offers=offers,
        partners=partners,
        history=_history_rows(lang, recent.items),
        history_more=recent.next_offset is not None,
        qr_src=f"data:image/png;base64,{qr_png}",
        qr_expires=_when(lang, token.expires_at),
        short_code=short_codes.display(code),
        short_code_spoken=short_codes.spoken(code),
        short_code_expires=token.expires_at,
        refresh_s=max(10, settings.token_lifetime_s - 20),
    )


@router.get("/holder/history")
def holder_history_page(
    request: Request, settings: SettingsDep, runtime: RuntimeDep, page: str = "1"
) -> Response:
    """The pass's whole history, newest first, :data:`_HISTORY_PAGE` items a page."""
    pass_number = _holder_session(request)
    if pass_number is None:
        return _redirect("/holder/login")
    lang = pick_language(request)
    number = int(page) if page.isdecimal() and len(page) < 10 else 1
    number = max(1, min(number, _HISTORY_MAX_PAGE))
    found = holder_services.history(
        runtime, pass_number, limit=_HISTORY_PAGE, offset=(number - 1) * _HISTORY_PAGE
    )
    if not found.items and number > 1:
        return _redirect("/holder/history")
    return _render(
        request,
        settings,
        "holder_history.html",
        history=_history_rows(lang, found.items),
        page=number,
        newer=f"/holder/history?page={number - 1}" if number > 1 else None,
        older=f"/holder/history?page={number + 1}" if found.next_offset is not None else None,
    )


@router.get("/holder/qr.png")
def holder_qr(request: Request, runtime: RuntimeDep, settings: SettingsDep) -> Response:
    """The session holder's pass QR (a fresh short-lived token), for the holder page's <img>,
    with the short code that stands for the same token (``X-Short-Code``, and character by
    character for screen readers in ``X-Short-Code-Spoken``)."""
    principal = _principal(request, "holder")
    if principal is None or principal.pass_number is None:
        raise ApiProblem(401, "unauthorized", "log in at /holder/login")
    token = services.make_pass_token(runtime, settings, principal.pass_number)
    code = short_codes.issue(runtime, token.token_uri, token.expires_at)
    return Response(
        render_png(token.token_uri),
        media_type="image/png",
        headers={
            "Cache-Control": "no-store",
            "X-Token-Expires-At": str(token.expires_at),
            "X-Short-Code": short_codes.display(code),
            "X-Short-Code-Spoken": short_codes.spoken(code),
        },
    )


# -- merchant ---------------------------------------------------------------------------------


@router.get("/merchant/login")
def merchant_login_page(request: Request, settings: SettingsDep) -> Response:
    if _principal(request, "terminal") is not None:
        return _redirect("/merchant/scan")
    return _render(request, settings, "merchant_login.html", error=None, username="")


@router.post("/merchant/login")
async def merchant_login(request: Request, settings: SettingsDep) -> Response:
    return await _login(request, settings, "terminal", "merchant_login.html", "/merchant/scan")


@router.get("/merchant/scan")
def merchant_scan_page(request: Request, settings: SettingsDep) -> Response:
    principal = _principal(request, "terminal")
    if principal is None:
        return _redirect("/merchant/login")
    lang = pick_language(request)
    messages = {
        key: value
        for key, value in MESSAGES[lang].items()
        if key.startswith(("scanner.", "problem.", "merchant.", "unit."))
    }
    return _render(request, settings, "merchant_scan.html", messages=messages)


def _terminal(request: Request, runtime: RuntimeDep) -> Principal:
    principal = _session_or_problem(request, "terminal")
    if Scope.MERCHANT_REDEEM not in principal.scopes or principal.merchant_id is None:
        raise ApiProblem(403, "insufficient_scope", "this terminal may not redeem")
    if runtime.keys.merchant(principal.merchant_id) is None:
        raise ApiProblem(403, "merchant_unknown", "this merchant has no signing key")
    return principal


def _terminal_merchant(request: Request, runtime: RuntimeDep) -> int:
    merchant_id = _terminal(request, runtime).merchant_id
    assert merchant_id is not None
    return merchant_id


@router.post("/merchant/web/scan")
def merchant_web_scan(body: ScanIn, request: Request, runtime: RuntimeDep) -> ScanOut:
    """The scanner page's scan call (session cookie + CSRF header), as ``POST /merchant/scan``:
    a token URI or a short code."""
    terminal = _terminal(request, runtime)
    assert terminal.merchant_id is not None
    token = short_codes.resolve(runtime, body.token, terminal=terminal.subject)
    if body.pin is not None:
        token = card_pins.checkout_token(
            runtime, subject=token, pin=body.pin, terminal=terminal.subject
        )
    out = services.scan(runtime, merchant_id=terminal.merchant_id, token=token)
    if body.pin is not None:
        out.checkout_token = token
    return out


@router.post("/merchant/web/redemptions", status_code=201)
async def merchant_web_redeem(
    body: RedemptionIn, request: Request, runtime: RuntimeDep, response: Response
) -> RedemptionOut:
    """The scanner page's redeem call, with the page's Idempotency-Key (a token URI or a short
    code, as the scan)."""
    terminal = _terminal(request, runtime)
    assert terminal.merchant_id is not None
    key = parse_idempotency_key(request.headers.get("Idempotency-Key"))
    outcome = await redemptions.redeem(
        runtime,
        merchant_id=terminal.merchant_id,
        idempotency_key=key,
        token=await card_pins.counter_token(
            runtime, body.token, pin=body.pin, terminal=terminal.subject
        ),
        scheme_id=body.scheme_id,
        amount=body.amount,
        sent=body.token,
    )
    response.headers["Idempotent-Replayed"] = "true" if outcome.replayed else "false"
    return outcome.result


@router.post("/merchant/web/redemptions/{redemption_id}/reversal", status_code=201)
def merchant_web_reverse(
    redemption_id: Annotated[int, PathParam(ge=1, le=2**63 - 1)],
    request: Request,
    runtime: RuntimeDep,
) -> ReversalOut:
    """The scanner page's "reverse the last redemption"."""
    merchant_id = _terminal_merchant(request, runtime)
    return services.reverse(runtime, merchant_id=merchant_id, redemption_id=redemption_id)
