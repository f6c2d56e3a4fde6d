"""FastAPI dependencies, exposed as ``Annotated`` aliases for the routes.

The settings and the runtime are built once, outside the app, and reached through
``app.state``; routes declare what they need (``SettingsDep``, ``RuntimeDep``) and which role
they serve (``AdminAuth``, ``HolderAuth``, ``MerchantId``).

Auth in this slice is one bearer token per role (per merchant for merchants) from the settings;
the real authentication comes with the API issue and replaces only this module's checks.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from api.problems import ApiProblem
from api.runtime import Runtime
from api.settings import Settings

__all__ = [
    "AdminAuth",
    "HolderAuth",
    "IdempotencyKey",
    "MerchantId",
    "RuntimeDep",
    "SettingsDep",
]


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


SettingsDep = Annotated[Settings, Depends(get_settings)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]

_admin_bearer = HTTPBearer(
    scheme_name="AdminToken", description="Municipality admin token.", auto_error=False
)
_holder_bearer = HTTPBearer(
    scheme_name="HolderToken", description="Holder-facing token.", auto_error=False
)
_merchant_bearer = HTTPBearer(
    scheme_name="MerchantToken", description="A merchant's own token.", auto_error=False
)

Credentials = HTTPAuthorizationCredentials | None


def _unauthorized(role: str) -> ApiProblem:
    return ApiProblem(
        401,
        "unauthorized",
        f"this endpoint needs the {role} bearer token (Authorization: Bearer <token>)",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _matches(credentials: Credentials, expected: SecretStr | None) -> bool:
    if credentials is None or expected is None:
        return False
    return hmac.compare_digest(
        credentials.credentials.encode(), expected.get_secret_value().encode()
    )


def require_admin(
    settings: SettingsDep, credentials: Annotated[Credentials, Depends(_admin_bearer)]
) -> None:
    if not _matches(credentials, settings.admin_token):
        raise _unauthorized("admin")


def require_holder(
    settings: SettingsDep, credentials: Annotated[Credentials, Depends(_holder_bearer)]
) -> None:
    if not _matches(credentials, settings.holder_token):
        raise _unauthorized("holder")


def current_merchant(
    settings: SettingsDep,
    runtime: RuntimeDep,
    credentials: Annotated[Credentials, Depends(_merchant_bearer)],
) -> int:
    """The id of the merchant whose bearer token this is."""
    for merchant_id, token in settings.merchant_tokens.items():
        if _matches(credentials, token):
            if runtime.keys.merchant(merchant_id) is None:
                raise ApiProblem(
                    403, "merchant_unknown", f"merchant {merchant_id} has no signing key"
                )
            return merchant_id
    raise _unauthorized("merchant")


def idempotency_key(
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Unique per redemption; a retry with the same key and body returns "
            "the first result and never redeems twice.",
            examples=["0f8fad5b-d9cb-469f-a165-70867728950e"],
        ),
    ] = None,
) -> str:
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


AdminAuth = Depends(require_admin)
HolderAuth = Depends(require_holder)
MerchantId = Annotated[int, Depends(current_merchant)]
IdempotencyKey = Annotated[str, Depends(idempotency_key)]
