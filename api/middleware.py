"""HTTP middleware: security headers, CORS, request size and rate limits, access logs.

One pure ASGI middleware (:class:`HardeningMiddleware`, outermost) does, per HTTP request:

- ``X-Request-ID``: a well-formed incoming id (1-128 of ``[A-Za-z0-9._-]``) is kept, otherwise a
  new one is generated; it is echoed on the response and logged.
- Client: the socket peer, or, when the peer is one of ``trusted_proxies``, the client named in
  ``X-Forwarded-For`` (:func:`api.throttle.client_address`); the request's ``client`` is set
  to it, so the routes (login lockouts) see the same client.
- Rate limit: a token bucket per client, keyed by the *verified* bearer token's kind and subject
  (HMAC checked, nothing read from the database) or else the client address (IPv6 by /64);
  ``rate_limit_per_s`` refill, ``rate_limit_burst`` size; an empty bucket answers 429
  ``rate_limited`` with ``Retry-After``. The buckets live in Redis, shared by every process
  (:mod:`api.throttle`; in-process only where that module says).
- Request size: a ``Content-Length`` over ``max_request_body_bytes`` answers 413
  ``body_too_large`` before the body is read; a chunked body is counted as it streams and
  refused the moment it passes the limit (the rest is never buffered). The import uploads
  (``/admin/imports/...``, the import page) have their own limit, ``import_max_bytes``, and
  the other CSV uploads theirs (:data:`CSV_UPLOAD_LIMITS`: issuance, partners, postcodes).
- Security headers on every response: a strict Content-Security-Policy (the docs page
  ``/docs`` loads Swagger UI from this service, see :mod:`api.docs`), nosniff,
  ``Referrer-Policy: no-referrer``, ``Permissions-Policy: camera=(self)`` (the scanner),
  HSTS in production, and ``Cache-Control: no-store`` on API responses (not on ``/static``).
- Access log (:mod:`api.access_log`): one JSON line per request on logger ``api.access``
  with method, *route template* (``/holder/passes/{pass_number}/token``, never the raw path),
  status, duration in ms, principal kind and request id. No query strings, pass numbers,
  names, tokens or IPs. uvicorn's own access log is off (``stadjerspas up``,
  :mod:`api.log_privacy`), so this line is the only one per request.

CORS is Starlette's ``CORSMiddleware`` with the explicit allow-list ``cors_allow_origins``
(none by default: then no CORS headers at all, so browsers refuse cross-origin reads).
"""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.access_log import log_request
from api.admin_services import MAX_CSV_BYTES
from api.auth import TokenError, decode_token
from api.problems import problem_response
from api.settings import Settings
from api.throttle import (
    IPNetwork,
    LocalThrottleState,
    RateLimiter,
    ThrottleState,
    TokenBuckets,
    client_address,
    client_key,
    open_throttle_state,
    parse_networks,
)
from ledger.geography import MAX_FILE_BYTES

__all__ = [
    "BodyTooLarge",
    "HardeningMiddleware",
    "MiddlewareConfig",
    "TokenBuckets",
    "install_middleware",
]

CSP = (
    "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
    "frame-ancestors 'none'; base-uri 'self'; form-action 'self'; object-src 'none'"
)
#: The docs page (:mod:`api.docs`): Swagger UI and its start script from this service only (no
#: CDN, no inline script); Swagger UI sets style attributes and shows SVG icons as data URLs.
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; script-src 'self'; "
    "style-src 'self'; worker-src 'self' blob:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)
DOCS_PATHS = frozenset({"/docs"})
HSTS = "max-age=63072000; includeSubDomains"
#: Paths without ``Cache-Control: no-store`` (versioned static assets may be cached).
CACHEABLE_PREFIXES = ("/static/",)
#: Paths outside the rate limit (liveness probes).
UNLIMITED_PATHS = frozenset({"/health", "/health/live", "/health/ready"})

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` when a streamed body passes the limit (FastAPI re-raises HTTP
    exceptions from body parsing unchanged, so this reaches its handler)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")
        self.limit = limit


#: The form fields and multipart framing around uploaded files (``UPLOAD_FORM_EXTRA`` of the
#: pages).
_FORM_EXTRA = 64 * 1024
#: Largest request per CSV upload path besides the imports: the issuance and partner CSVs
#: (``MAX_CSV_BYTES``, 5 MiB) and the CBS postcode table (two files of ``MAX_FILE_BYTES``).
CSV_UPLOAD_LIMITS: dict[str, int] = {
    "/admin/entitlements/csv": MAX_CSV_BYTES + _FORM_EXTRA,
    "/admin/web/issuance": MAX_CSV_BYTES + _FORM_EXTRA,
    "/admin/web/merchants/import": MAX_CSV_BYTES + _FORM_EXTRA,
    "/admin/postcodes": MAX_FILE_BYTES + _FORM_EXTRA,
    "/admin/web/postcodes": 2 * MAX_FILE_BYTES + _FORM_EXTRA,
}


@dataclass(frozen=True, slots=True)
class MiddlewareConfig:
    max_body_bytes: int = 1024 * 1024
    rate_per_s: float = 50.0
    burst: int = 200
    production: bool = False
    auth_key: bytes | None = None
    #: Static development bearer tokens -> principal kind.
    static_tokens: dict[str, str] = field(default_factory=dict)
    #: Proxies whose ``X-Forwarded-For`` names the client.
    trusted_proxies: tuple[IPNetwork, ...] = ()
    #: Where the rate-limit buckets live (None: in this process).
    throttle: ThrottleState | None = None
    #: Paths that take file uploads (imports) and their larger limit.
    upload_prefixes: tuple[str, ...] = ("/admin/imports/", "/admin/web/imports/")
    max_upload_bytes: int = 20 * 1024 * 1024
    #: The other CSV uploads (exact paths) and their limits: their routes refuse a file over
    #: its own limit with their own 413; the middleware only stops what is larger still.
    csv_uploads: dict[str, int] = field(default_factory=lambda: dict(CSV_UPLOAD_LIMITS))

    def body_limit(self, path: str) -> int:
        """The body limit of ``path``: the upload limit for the import paths and the CSV
        uploads, else ``max_body_bytes``."""
        if path.startswith(self.upload_prefixes):
            return max(self.max_body_bytes, self.max_upload_bytes)
        return max(self.max_body_bytes, self.csv_uploads.get(path, 0))

    @classmethod
    def from_settings(
        cls, settings: Settings, *, throttle: ThrottleState | None = None
    ) -> MiddlewareConfig:
        static: dict[str, str] = {}
        if settings.is_development:
            if settings.admin_token is not None:
                static[settings.admin_token.get_secret_value()] = "staff"
            if settings.holder_token is not None:
                static[settings.holder_token.get_secret_value()] = "holder"
            for token in settings.merchant_tokens.values():
                static[token.get_secret_value()] = "terminal"
        return cls(
            max_body_bytes=settings.max_request_body_bytes,
            max_upload_bytes=settings.import_max_bytes,
            rate_per_s=settings.rate_limit_per_s,
            burst=settings.rate_limit_burst,
            production=not settings.is_development,
            auth_key=(
                settings.auth_secret.get_secret_value().encode()
                if settings.auth_secret is not None
                else None
            ),
            static_tokens=static,
            trusted_proxies=parse_networks(settings.trusted_proxies),
            throttle=throttle,
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class HardeningMiddleware:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, config: MiddlewareConfig) -> None:
        self.app = app
        self.config = config
        self.limiter = RateLimiter(
            state=config.throttle if config.throttle is not None else LocalThrottleState(),
            rate=config.rate_per_s,
            burst=config.burst,
        )

    # -- who is calling -------------------------------------------------------------------------

    def _principal(self, scope: Scope) -> tuple[str, str | None]:
        """``(kind, rate-limit subject)`` of a valid bearer token, else ``("anonymous", None)``."""
        authorization = _header(scope, b"authorization")
        if not authorization or authorization[:7].lower() != "bearer ":
            return "anonymous", None
        token = authorization[7:].strip()
        static = self.config.static_tokens.get(token)
        if static is not None:
            return static, f"static:{static}:{hash(token)}"
        if self.config.auth_key is None:
            return "anonymous", None
        try:
            claims = decode_token(token, self.config.auth_key)
        except TokenError:
            return "anonymous", None
        kind, sub = claims.get("kind"), claims.get("sub")
        if kind not in ("staff", "terminal", "holder") or not isinstance(sub, str):
            return "anonymous", None
        return str(kind), f"{kind}:{sub}"

    def _client(self, scope: Scope) -> str:
        """The client's address (trusted proxies resolved); sets the request's ``client``."""
        peer = scope.get("client")
        if not peer:
            return "unknown"
        forwarded = None
        if self.config.trusted_proxies:
            values = [
                value.decode("latin-1")
                for key, value in scope.get("headers", ())
                if key.lower() == b"x-forwarded-for"
            ]
            forwarded = ",".join(values) or None
        address = client_address(
            peer=str(peer[0]), forwarded_for=forwarded, trusted=self.config.trusted_proxies
        )
        if address != peer[0]:
            scope["client"] = (address, 0)
        return address

    # -- the request ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope.get("path", "")
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        kind, subject = self._principal(scope)
        client = self._client(scope)
        state: dict[str, Any] = {"status": 0, "started": False}
        extra_headers = self._security_headers(path, request_id)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                headers: list[tuple[bytes, bytes]] = list(message.get("headers", ()))
                present = {key.lower() for key, _ in headers}
                for key, value in extra_headers:
                    if key not in present:
                        headers.append((key, value))
                message = {**message, "headers": headers}
            await send(message)

        try:
            wait = (
                0.0
                if path in UNLIMITED_PATHS
                else self.limiter.take(subject or f"ip:{client_key(client)}")
            )
            if wait > 0:
                retry = max(1, math.ceil(wait))
                await self._problem(
                    scope,
                    receive,
                    send_wrapper,
                    status=429,
                    code="rate_limited",
                    title="Too many requests",
                    detail=f"too many requests from this client; retry in {retry} s",
                    headers={"Retry-After": str(retry)},
                )
                return
            declared = _header(scope, b"content-length")
            if declared is not None:
                try:
                    too_large = int(declared) > self.config.body_limit(path)
                except ValueError:
                    too_large = False  # the server rejects a malformed length itself
                if too_large:
                    await self._too_large(scope, receive, send_wrapper, path)
                    return
            try:
                await self.app(scope, self._limited(receive, path), send_wrapper)
            except BodyTooLarge:
                if not state["started"]:
                    await self._too_large(scope, receive, send_wrapper, path)
        finally:
            log_request(scope, state["status"] or 500, kind, request_id, started)

    def _limited(self, receive: Receive, path: str) -> Receive:
        limit = self.config.body_limit(path)
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return limited_receive

    def _security_headers(self, path: str, request_id: str) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"content-security-policy", (DOCS_CSP if path in DOCS_PATHS else CSP).encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"permissions-policy", b"camera=(self), microphone=(), geolocation=()"),
            (b"x-frame-options", b"DENY"),
            (b"x-request-id", request_id.encode()),
        ]
        if self.config.production:
            headers.append((b"strict-transport-security", HSTS.encode()))
        if not path.startswith(CACHEABLE_PREFIXES):
            headers.append((b"cache-control", b"no-store"))
        return headers

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        await self._problem(
            scope,
            receive,
            send,
            status=413,
            code="body_too_large",
            title="The request body is too large",
            detail=f"the request body is larger than {self.config.body_limit(path)} bytes",
            headers={"Connection": "close"},
        )

    @staticmethod
    async def _problem(
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        status: int,
        code: str,
        title: str,
        detail: str,
        headers: dict[str, str],
    ) -> None:
        response = problem_response(
            status=status,
            code=code,
            title=title,
            detail=detail,
            instance=None,
            headers=headers,
        )
        await response(scope, receive, send)


async def _body_too_large(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BodyTooLarge)
    return problem_response(
        status=413,
        code="body_too_large",
        title="The request body is too large",
        detail=exc.detail,
        instance=None,
        headers={"Connection": "close"},
    )


def install_middleware(app: FastAPI, settings: Settings) -> None:
    """CORS (allow-list from settings, if any) inside the hardening middleware (outermost)."""
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_allow_origins),
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After", "X-Token-Expires-At"],
            allow_credentials=False,
            max_age=600,
        )
    auth = getattr(app.state, "auth", None)
    throttle = getattr(auth, "throttle_state", None)  # the one the logins count in
    if throttle is None:
        throttle = open_throttle_state(settings)
    config = MiddlewareConfig.from_settings(settings, throttle=throttle)
    app.add_middleware(HardeningMiddleware, config=config)
    app.add_exception_handler(BodyTooLarge, _body_too_large)
