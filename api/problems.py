"""Errors as RFC 9457 problem details (``application/problem+json``) with a stable ``code``.

Every error response has ``type``, ``title``, ``status``, ``detail``, ``instance`` and ``code``.
``code`` is the machine-readable part clients switch on: the wallet's codes (``token_expired``,
``token_wrong_chain``, ...), the contract's codes (snake case of its custom error, e.g.
``redemption_amount_over_balance``) and the API's own (``pass_number_unknown``,
``idempotency_key_reused``, ``validation_failed``, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api.access_log import route_template
from ledger import contract_errors as ce
from ledger.errors import LedgerError, NodeError, RelayerError
from ledger.relayer import ReceiptTimeout
from wallet.errors import PassTokenError, TokenMalformed, TokenUnsupportedVersion, WalletError

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "ApiProblem",
    "Problem",
    "contract_status",
    "document_problems",
    "install_problem_handlers",
    "problem_response",
    "problem_responses",
    "wallet_status",
]

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "urn:stadjerspas:problem:"


class Problem(BaseModel):
    """An RFC 9457 problem details object with a stable ``code``."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "urn:stadjerspas:problem:redemption_amount_over_balance",
                    "title": "The amount exceeds what is left of the entitlement",
                    "status": 409,
                    "detail": "RedemptionAmountOverBalance(redemptionId=7, available=1500): "
                    "the amount exceeds what is left of the entitlement",
                    "instance": "/merchant/redemptions",
                    "code": "redemption_amount_over_balance",
                }
            ]
        },
    )

    type: str = Field(description="URI naming the problem type (urn:stadjerspas:problem:<code>).")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    code: str = Field(description="Stable machine-readable code; switch on this.")


class ApiProblem(Exception):
    """Raise from anywhere in the API to answer with a problem document."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str | None = None,
        *,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or code)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or _title(code)
        self.headers = dict(headers or {})
        self.extensions = extensions


def _title(code: str) -> str:
    return code.replace("_", " ").capitalize()


def problem_response(
    *,
    status: int,
    code: str,
    title: str,
    detail: str | None,
    instance: str | None,
    extensions: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        "code": code,
    }
    for key, value in (extensions or {}).items():
        body.setdefault(key, value)
    return JSONResponse(
        jsonable_encoder(body, custom_encoder={bytes: lambda b: "0x" + b.hex()}),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=dict(headers or {}),
    )


# -- status per error -------------------------------------------------------------------------

_CONTRACT_STATUS: dict[type[ce.ContractRevert], int] = {
    ce.RedemptionIdUsed: 409,
    ce.RedemptionTokenUsed: 409,
    ce.RedemptionAmountOverBalance: 409,
    ce.RedemptionBudgetExhausted: 409,
    ce.SchemeBudgetExceeded: 409,
    ce.RedemptionSchemeUnknown: 404,
    ce.SchemeUnknown: 404,
    ce.RedemptionPassUnknown: 404,
    ce.PassUnknown: 404,
    ce.RedemptionMerchantNotAllowed: 403,
    ce.ReversalUnknownRedemption: 404,
    ce.ReversalAlreadyDone: 409,
    ce.ReversalWindowClosed: 409,
    ce.ReversalExceedsOwed: 409,
    ce.ReversalNotMerchant: 403,
    ce.AccessRefused: 403,
    ce.PausedRefused: 503,
    ce.ContractPanic: 500,
    ce.UnknownRevert: 500,
}


def contract_status(exc: ce.ContractRevert) -> int:
    """HTTP status of a contract refusal: the most specific class in the table, else 422."""
    for cls in type(exc).__mro__:
        if cls in _CONTRACT_STATUS:
            return _CONTRACT_STATUS[cls]
    return 422


def wallet_status(exc: WalletError) -> int:
    if isinstance(exc, TokenMalformed | TokenUnsupportedVersion):
        return 400
    if isinstance(exc, PassTokenError):
        return 422
    return 400


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        out[key] = "0x" + value.hex() if isinstance(value, bytes) else value
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
            out[key] = str(value)
    return out


# -- handlers ---------------------------------------------------------------------------------


def _instance(request: Request) -> str:
    return request.url.path


async def _api_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiProblem)
    return problem_response(
        status=exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        instance=_instance(request),
        extensions=exc.extensions,
        headers=exc.headers,
    )


async def _wallet_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, WalletError)
    return problem_response(
        status=wallet_status(exc),
        code=exc.code,
        title=(type(exc).__doc__ or _title(exc.code)).strip().splitlines()[0],
        detail=exc.message,
        instance=_instance(request),
    )


async def _contract_revert(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ce.ContractRevert)
    return problem_response(
        status=contract_status(exc),
        code=exc.code,
        title=exc.rule[:1].upper() + exc.rule[1:],
        detail=str(exc),
        instance=_instance(request),
        extensions={"error": exc.error_name, "values": _jsonable(exc.values)},
    )


async def _ledger_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LedgerError)
    if isinstance(exc, ReceiptTimeout):
        status, code = 504, "receipt_timeout"
    elif isinstance(exc, NodeError):
        status, code = 503, "chain_unavailable"
    elif isinstance(exc, RelayerError):
        status, code = 503, "relayer_unavailable"
    else:
        status, code = 502, "chain_error"
    # the route's template, never the path (it can hold a pass number); api.log_privacy
    # scrubs the error's text
    log.warning("%s on %s %s: %s", code, request.method, route_template(request.scope), exc)
    return problem_response(
        status=status, code=code, title=_title(code), detail=str(exc), instance=_instance(request)
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type")}
        for err in exc.errors()
    ]
    first = errors[0] if errors else None
    detail = (
        f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}" if first else "invalid request"
    )
    return problem_response(
        status=422,
        code="validation_failed",
        title="The request is invalid",
        detail=detail,
        instance=_instance(request),
        extensions={"errors": errors},
    )


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    try:
        phrase = HTTPStatus(exc.status_code).phrase
    except ValueError:
        phrase = "Error"
    code = phrase.lower().replace(" ", "_").replace("-", "_")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return problem_response(
        status=exc.status_code,
        code=code,
        title=phrase,
        detail=str(exc.detail) if exc.detail else None,
        instance=_instance(request),
        headers=headers,
    )


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _allowed_methods(request: Request) -> str:
    """Every method some route answers on this path (RFC 9110: ``Allow`` on a 405). Starlette
    names only the first route's, but a path can have several (``GET`` and ``DELETE``): each
    method is tried against the app's routes (included routers match as a whole)."""
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in request.app.router.routes
        )
    ]
    return ", ".join(allowed)


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The database dropped or refused the connection (a restart, a cut network): nothing was
    changed by this request's failed statement; the same request may be retried."""
    assert isinstance(exc, DBAPIError)
    log.warning(
        "store_unavailable on %s %s: %s",
        request.method,
        route_template(request.scope),
        type(exc.orig).__name__,
    )
    return problem_response(
        status=503,
        code="store_unavailable",
        title=_title("store_unavailable"),
        detail="the database is not reachable at the moment; retry the same request shortly",
        instance=_instance(request),
        headers={"Retry-After": "1"},
    )


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DBAPIError)
    if exc.connection_invalidated or isinstance(exc, OperationalError):
        return await _store_unavailable(request, exc)
    return await _unhandled(request, exc)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.error(
        "unhandled error on %s %s", request.method, route_template(request.scope), exc_info=exc
    )
    return problem_response(
        status=500,
        code="internal_error",
        title="Internal server error",
        detail="an unexpected error occurred; it has been logged",
        instance=_instance(request),
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiProblem, _api_problem)
    app.add_exception_handler(WalletError, _wallet_error)
    app.add_exception_handler(ce.ContractRevert, _contract_revert)
    app.add_exception_handler(LedgerError, _ledger_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(Exception, _unhandled)


def problem_responses(*examples: tuple[int, str, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for routes: ``(status, code, detail)`` examples grouped by status."""
    grouped: dict[int, dict[str, Any]] = {}
    for status, code, detail in examples:
        grouped.setdefault(status, {})[code] = {
            "summary": code,
            "value": {
                "type": PROBLEM_TYPE_BASE + code,
                "title": _title(code),
                "status": status,
                "detail": detail,
                "code": code,
            },
        }
    return {
        status: {
            "model": Problem,
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_MEDIA_TYPE: {"examples": found}},
        }
        for status, found in grouped.items()
    }


# -- the OpenAPI document ---------------------------------------------------------------------

#: What any operation may answer besides its own problems, and when (see ``document_problems``).
_COMMON_PROBLEMS: dict[int, tuple[str, str]] = {
    400: ("bad_request", "There was an error parsing the body"),
    401: ("unauthorized", "this endpoint needs a bearer token"),
    403: ("insufficient_scope", "this endpoint needs the scopes ['admin']"),
    413: ("body_too_large", "the request body is larger than 1048576 bytes"),
    422: ("validation_failed", "body.amount: Input should be greater than 0"),
    429: ("rate_limited", "too many requests from this client; retry in 1 s"),
    503: ("store_unavailable", "the database is not reachable at the moment; retry shortly"),
}
_RETRY_AFTER = {
    "description": "Seconds to wait before the same request is retried.",
    "schema": {"type": "integer", "minimum": 1},
}
_UNUSED_SCHEMAS = ("HTTPValidationError", "ValidationError")


def _common_statuses(
    path: str, operation: Mapping[str, Any], unlimited: frozenset[str]
) -> set[int]:
    statuses = {503}
    if path not in unlimited:
        statuses.add(429)
    if operation.get("security"):
        statuses |= {401, 403}
    if operation.get("parameters") or operation.get("requestBody"):
        statuses.add(422)
    if operation.get("requestBody"):
        statuses |= {400, 413}
    return statuses


def _problem_content(response: Mapping[str, Any]) -> dict[str, Any]:
    """The response's content as ``application/problem+json`` only (the service never answers an
    error as ``application/json``), keeping the examples a route gave."""
    media: dict[str, Any] = {"schema": {"$ref": "#/components/schemas/Problem"}}
    for declared in response.get("content", {}).values():
        for key in ("examples", "example"):
            if key in declared:
                media[key] = declared[key]
    return {PROBLEM_MEDIA_TYPE: media}


def document_problems(
    document: dict[str, Any], *, unlimited_paths: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Make the OpenAPI document say what the service answers on errors, for every operation:

    - every 4xx/5xx response is ``application/problem+json`` with the ``Problem`` schema (FastAPI's
      default 422 ``HTTPValidationError`` in ``application/json`` is never sent);
    - the statuses any route can answer are listed where they apply: 401/403 (a bearer token is
      needed: missing, expired, wrong kind or scope), 422 (parameters or a body to validate),
      400/413 (a body: unparseable, too large), 429 (rate limit, with ``Retry-After``; not on
      ``unlimited_paths``) and 503 (the database is unreachable, with ``Retry-After``).
    """
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if method not in {"get", "put", "post", "delete", "patch", "head", "options"}:
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            for status in sorted(_common_statuses(path, operation, unlimited_paths)):
                if str(status) not in responses:
                    code, detail = _COMMON_PROBLEMS[status]
                    responses[str(status)] = problem_responses((status, code, detail))[status]
            for key, response in responses.items():
                if key.isdigit() and int(key) >= 400:
                    response.pop("model", None)
                    response["content"] = _problem_content(response)
                    if int(key) in {429, 503}:
                        response.setdefault("headers", {})["Retry-After"] = _RETRY_AFTER
    schemas = document.get("components", {}).get("schemas", {})
    if "Problem" not in schemas:
        schemas["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    for name in _UNUSED_SCHEMAS:
        schemas.pop(name, None)
    return document
