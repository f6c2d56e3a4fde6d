"""FastAPI dependencies, exposed as ``Annotated`` aliases for the routes.

The settings, the runtime and the :class:`api.auth.Auth` service are built once, outside the
routes, and reached through ``app.state``; routes declare what they need (``SettingsDep``,
``RuntimeDep``, ``AuthDep``) and who may call them:

- ``require_scopes(*scopes, kind=...)``: a ``Security`` dependency that authenticates the bearer
  token (401 ``unauthorized`` / ``auth_token_invalid`` / ``auth_token_expired`` /
  ``auth_token_revoked`` with ``WWW-Authenticate``) and checks the principal's kind and scopes
  (403 ``insufficient_scope`` / ``wrong_principal_kind``); it returns the :class:`Principal`.
  The scopes appear in the OpenAPI document (OAuth2 password flow at ``/auth/token``).
- ``CurrentStaff``, ``CurrentTerminal``, ``CurrentHolder``: any authenticated principal of that
  kind; ``MerchantId``: the merchant of the calling terminal (``merchant:redeem``).
- ``AdminAuth`` (scope ``issue``) and ``HolderAuth`` (scope ``holder:read`` and object-level:
  the ``{pass_number}`` of the path must be the holder's own, else 404 ``pass_number_unknown``,
  exactly as for a pass that does not exist) guard the admin and holder routers.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, Path, Request, Security
from fastapi.security import OAuth2PasswordBearer, SecurityScopes

from api.auth import ALL_SCOPES, Auth, Kind, Principal, Scope
from api.problems import ApiProblem
from api.runtime import Runtime
from api.settings import Settings

__all__ = [
    "AdminAuth",
    "AuthDep",
    "CurrentHolder",
    "CurrentPrincipal",
    "CurrentStaff",
    "CurrentTerminal",
    "HolderAuth",
    "IdempotencyKey",
    "MerchantId",
    "ReadingTerminal",
    "RedeemingTerminal",
    "RuntimeDep",
    "SettingsDep",
    "require_scopes",
]


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_auth(request: Request) -> Auth:
    auth: Auth = request.app.state.auth
    return auth


SettingsDep = Annotated[Settings, Depends(get_settings)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
AuthDep = Annotated[Auth, Depends(get_auth)]

oauth2_scheme = OAuth2PasswordBearer(
    tokenUrl="/auth/token",
    scheme_name="BearerToken",
    scopes=ALL_SCOPES,
    description="Log in at POST /auth/token (kind staff, terminal or holder) for a bearer token.",
    auto_error=False,
)


async def current_principal(
    auth: AuthDep, token: Annotated[str | None, Depends(oauth2_scheme)]
) -> Principal:
    # On the event loop: a token is checked in memory; the still-active check reads the
    # database at most once per ``auth_recheck_s`` per login (a quick indexed query).
    return auth.authenticate(token)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def _check(principal: Principal, scopes: list[str], kind: Kind | None) -> Principal:
    if kind is not None and principal.kind != kind:
        raise ApiProblem(
            403,
            "wrong_principal_kind",
            f"this endpoint is for {kind} logins, not {principal.kind} logins",
        )
    missing = sorted(set(scopes) - principal.scopes)
    if missing:
        raise ApiProblem(
            403,
            "insufficient_scope",
            f"this endpoint needs the scopes {missing}",
            headers={
                "WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{" ".join(scopes)}"'
            },
            required_scopes=list(scopes),
        )
    return principal


def require_scopes(*scopes: str, kind: Kind | None = None) -> Any:
    """A ``Security`` dependency returning the principal if it has ``scopes`` (and ``kind``)."""

    async def checker(security_scopes: SecurityScopes, principal: CurrentPrincipal) -> Principal:
        return _check(principal, security_scopes.scopes, kind)

    checker.__name__ = f"require_{'_'.join(s.replace(':', '_') for s in scopes) or 'login'}"
    return Security(checker, scopes=list(scopes))


def _kind(kind: Kind) -> Any:
    async def checker(principal: CurrentPrincipal) -> Principal:
        return _check(principal, [], kind)

    checker.__name__ = f"current_{kind}"
    return Depends(checker)


CurrentStaff = Annotated[Principal, _kind("staff")]
CurrentTerminal = Annotated[Principal, _kind("terminal")]
CurrentHolder = Annotated[Principal, _kind("holder")]
RedeemingTerminal = Annotated[Principal, require_scopes(Scope.MERCHANT_REDEEM, kind="terminal")]
ReadingTerminal = Annotated[Principal, require_scopes(Scope.MERCHANT_READ, kind="terminal")]


async def _merchant_id(runtime: RuntimeDep, terminal: RedeemingTerminal) -> int:
    merchant_id = terminal.merchant_id
    assert merchant_id is not None  # a terminal token always names its merchant
    if runtime.keys.merchant(merchant_id) is None:
        raise ApiProblem(403, "merchant_unknown", f"merchant {merchant_id} has no signing key")
    return merchant_id


MerchantId = Annotated[int, Depends(_merchant_id)]

_holder_read = require_scopes(Scope.HOLDER_READ, kind="holder")


async def _own_pass(
    pass_number: Annotated[str, Path()],
    holder: Annotated[Principal, _holder_read],
) -> Principal:
    """Object-level access: a holder reaches only their own pass (others look unknown)."""
    if not holder.any_pass and (holder.pass_number or "") != pass_number.strip().upper():
        raise ApiProblem(404, "pass_number_unknown", f"no holder has pass number {pass_number!r}")
    return holder


async def idempotency_key(
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Required. Unique per redemption; a retry with the same key and body "
            "returns the first result and never redeems twice.",
            examples=["0f8fad5b-d9cb-469f-a165-70867728950e"],
        ),
    ] = None,
) -> str:
    return parse_idempotency_key(key)


def parse_idempotency_key(key: str | None) -> str:
    """The stripped key, or a 400 problem when it is missing or malformed."""
    if key is None or not key.strip():
        raise ApiProblem(
            400, "idempotency_key_missing", "send an Idempotency-Key header with each redemption"
        )
    key = key.strip()
    if len(key) > 255 or not key.isprintable():
        raise ApiProblem(
            400, "idempotency_key_invalid", "the Idempotency-Key must be 1-255 printable characters"
        )
    return key


AdminAuth = require_scopes(Scope.ISSUE, kind="staff")
HolderAuth = Depends(_own_pass)
IdempotencyKey = Annotated[str, Depends(idempotency_key)]
