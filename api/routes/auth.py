"""Auth routes: log in for a bearer token, who am I, and (admins) staff users and terminals."""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.auth import Principal, Role, Scope
from api.deps import AuthDep, CurrentPrincipal, require_scopes
from api.problems import ApiProblem, problem_responses
from api.schemas import (
    MeOut,
    StaffIn,
    StaffOut,
    TerminalIn,
    TerminalIssuedOut,
    TerminalOut,
    TokenIn,
    TokenOut,
)
from api.store import Terminal

router = APIRouter(prefix="/auth", tags=["auth"])

AdminStaff = Annotated[Principal, require_scopes(Scope.ADMIN, kind="staff")]
_UNAUTHORIZED = (401, "unauthorized", "this endpoint needs a bearer token")
_ADMIN_SCOPE = (403, "insufficient_scope", "this endpoint needs the scopes ['admin']")
_MAX_BODY = 4096

_TOKEN_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/TokenIn"}},
            "application/x-www-form-urlencoded": {
                # TokenIn's fields as form fields (OAuth2 password grant), nothing else
                "schema": {
                    "type": "object",
                    "required": ["username", "password"],
                    "properties": {
                        "grant_type": {"type": "string", "enum": ["password"]},
                        "client_id": {"type": "string"},
                        "client_secret": {"type": "string"},
                        "kind": {"type": "string", "enum": ["staff", "terminal", "holder"]},
                        "username": {"type": "string", "minLength": 1, "maxLength": 64},
                        "password": {
                            "type": "string",
                            "format": "password",
                            "minLength": 1,
                            "maxLength": 256,
                        },
                        "scope": {"type": "string", "maxLength": 256},
                    },
                    "additionalProperties": False,
                }
            },
        },
    }
}


async def _token_body(request: Request) -> TokenIn:
    raw = await request.body()
    if len(raw) > _MAX_BODY:
        raise ApiProblem(413, "body_too_large", f"the login body may be at most {_MAX_BODY} bytes")
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    data: Any
    try:
        if media == "application/x-www-form-urlencoded":
            data = dict(parse_qsl(raw.decode(), keep_blank_values=True))
            grant = data.pop("grant_type", "password")
            data.pop("client_id", None)
            data.pop("client_secret", None)
            if grant != "password":
                raise ApiProblem(
                    400, "unsupported_grant_type", "only grant_type=password is supported"
                )
            if not data.get("scope"):
                data.pop("scope", None)
        elif media in ("application/json", ""):
            data = json.loads(raw or b"null")
        else:
            raise ApiProblem(
                415,
                "unsupported_media_type",
                "send application/json or application/x-www-form-urlencoded",
            )
    except (UnicodeDecodeError, ValueError):
        raise ApiProblem(400, "body_malformed", "the body is not valid JSON or form data") from None
    try:
        return TokenIn.model_validate(data)
    except ValidationError as exc:
        errors = [
            {**error, "loc": ("body", *error["loc"])}
            for error in exc.errors(include_url=False, include_context=False)
        ]
        raise RequestValidationError(errors) from None


@router.post(
    "/token",
    summary="Log in: staff, merchant terminal or holder -> bearer token",
    openapi_extra=_TOKEN_BODY,
    responses=problem_responses(
        (400, "invalid_scope", "this login may not have the scopes ['admin']"),
        (401, "invalid_credentials", "the credentials are not valid"),
        (415, "unsupported_media_type", "send application/json or form data"),
        (422, "validation_failed", "body.username: Field required"),
        (429, "login_locked", "too many failed logins; try again in 900 s"),
    ),
)
async def token(request: Request, auth: AuthDep) -> TokenOut:
    """OAuth2 password-style login (form) or JSON. ``kind`` is ``staff`` (username and
    password), ``terminal`` (terminal id and secret) or ``holder`` (pass number and activation
    code or PIN); it defaults to ``staff``. ``scope`` may narrow the token.

    Too many failures lock logins for a while (429 ``login_locked`` with ``Retry-After``),
    even with the right password: of one client for one account, of one client that failed on
    many accounts, or of one account that failed from many clients. The counters are shared by
    every API process; the client is the socket peer, or the address a trusted proxy forwarded
    (see ``docs/security.md``)."""
    body = await _token_body(request)
    # the hardening middleware has already resolved a trusted proxy's X-Forwarded-For
    client = request.client.host if request.client is not None else "unknown"
    scopes = body.scope.split() if body.scope else []

    issued = await run_in_threadpool(
        auth.login,
        kind=body.kind,
        username=body.username,
        password=body.password,
        scopes=scopes,
        client=client,
    )
    principal = issued.principal
    return TokenOut(
        access_token=issued.access_token,
        expires_in=issued.expires_in,
        scope=" ".join(sorted(principal.scopes)),
        kind=principal.kind,
        merchant_id=principal.merchant_id,
        pass_number=principal.pass_number,
    )


@router.get(
    "/me", summary="Who the bearer token belongs to", responses=problem_responses(_UNAUTHORIZED)
)
def me(principal: CurrentPrincipal) -> MeOut:
    """The principal of the token: kind, subject, scopes, and its merchant or pass."""
    return MeOut(
        kind=principal.kind,
        subject=principal.subject,
        scopes=sorted(principal.scopes),
        role=principal.role,
        merchant_id=principal.merchant_id,
        pass_number=principal.pass_number,
        expires_at=principal.expires_at,
    )


@router.post(
    "/staff",
    status_code=status.HTTP_201_CREATED,
    summary="Create a staff login (admins)",
    responses=problem_responses(
        _UNAUTHORIZED,
        _ADMIN_SCOPE,
        (409, "staff_username_taken", "the username 'j.devries' is taken"),
        (422, "validation_failed", "body.password: String should have at least 12 characters"),
    ),
)
def create_staff(body: StaffIn, _admin: AdminStaff, auth: AuthDep) -> StaffOut:
    """A new staff user with one role (``admin``, ``issuer``, ``finance``, ``auditor``).
    Scopes: ``admin``."""
    user = auth.create_staff(body.username, body.password, Role(body.role))
    return StaffOut(username=user.username, role=user.role, active=user.active)


def _terminal_out(terminal: Terminal) -> TerminalOut:
    return TerminalOut(
        terminal_id=terminal.terminal_id,
        merchant_id=terminal.merchant_id,
        label=terminal.label,
        active=terminal.active,
        created_at=terminal.created_at,
        revoked_at=terminal.revoked_at,
    )


@router.post(
    "/terminals",
    status_code=status.HTTP_201_CREATED,
    summary="Issue a terminal (id and secret) for a merchant (admins)",
    responses=problem_responses(
        _UNAUTHORIZED,
        _ADMIN_SCOPE,
        (404, "merchant_unknown", "no merchant has id 9"),
        (422, "validation_failed", "body.merchant_id: Input should be greater than 0"),
    ),
)
def issue_terminal(body: TerminalIn, _admin: AdminStaff, auth: AuthDep) -> TerminalIssuedOut:
    """The secret is returned only here; the terminal logs in with ``kind=terminal``.
    Scopes: ``admin``."""
    issued = auth.issue_terminal(body.merchant_id, body.label)
    return TerminalIssuedOut(**_terminal_out(issued.terminal).model_dump(), secret=issued.secret)


@router.get(
    "/terminals",
    summary="List terminals (admins)",
    responses=problem_responses(_UNAUTHORIZED, _ADMIN_SCOPE),
)
def list_terminals(
    _admin: AdminStaff,
    auth: AuthDep,
    merchant_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> list[TerminalOut]:
    """All terminals, or those of one merchant. Scopes: ``admin``."""
    return [_terminal_out(t) for t in auth.store.terminals(merchant_id)]


@router.delete(
    "/terminals/{terminal_id}",
    summary="Revoke a terminal: its tokens stop working at once (admins)",
    responses=problem_responses(
        _UNAUTHORIZED, _ADMIN_SCOPE, (404, "terminal_unknown", "no terminal has id 'T2-…'")
    ),
)
def revoke_terminal(
    terminal_id: Annotated[str, Path(min_length=1, max_length=64)],
    _admin: AdminStaff,
    auth: AuthDep,
) -> TerminalOut:
    """Scopes: ``admin``."""
    terminal = auth.store.revoke_terminal(terminal_id)
    if terminal is None:
        raise ApiProblem(404, "terminal_unknown", f"no terminal has id {terminal_id!r}")
    return _terminal_out(terminal)
