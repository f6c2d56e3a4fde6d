"""CSRF tokens for the web pages, bound to the session (a signed double-submit cookie).

Every POST of the pages (forms, and the merchant page's JSON calls under ``/merchant/web/``)
carries the token in the form field ``csrf`` or the header ``X-CSRF-Token``; the same token is
in the CSRF cookie. A request passes only when

1. the sent token equals the cookie's (double submit: another site can neither read nor set the
   cookie), and
2. the token is signed for *this* session: ``token = nonce || HMAC-SHA256(key, len(sid) ! sid !
   nonce)`` (OWASP's signed double-submit cookie; 32 + 64 hex digits), where ``sid`` is the
   session's id, the SHA-256 of the ``sp_session`` cookie (a bearer token with its own ``jti``,
   new at every login), or empty before login, and ``key`` is derived from the service's
   ``STADJERSPAS_AUTH_SECRET``.

So a token (and cookie) taken from another session - another login, another person, or the
anonymous login page - is refused: a 403 problem ``csrf_failed`` for the page scripts and the
logout, the form's "expired" message for the login forms, and nothing changes. A page renders a
fresh token whenever the cookie's one is not signed for the current session (after a login or a
logout), so the token changes with the session.

The cookie is ``__Host-csrf``: ``Secure``, ``Path=/``, no ``Domain``, so neither a sibling
subdomain nor a plain-http page can set or overwrite it (browsers refuse a ``__Host-`` cookie
set otherwise). It is also HttpOnly and SameSite=Strict. Development fallback: on a plain-http
request in development (``make run`` on http://127.0.0.1:8000, Starlette's TestClient on
http://testserver) the cookie is ``sp_csrf`` without ``Secure``, because a ``Secure`` cookie
is never sent back over plain http by httpx's cookie jar and not by every browser. Production
always uses ``__Host-csrf`` (and runs behind https).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Final

from starlette.requests import Request

from api.settings import Settings

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "DEV_COOKIE",
    "HOST_COOKIE",
    "CsrfCookie",
    "check",
    "cookie_for",
    "current",
    "issue",
    "session_id",
    "signed_for",
]

HOST_COOKIE: Final = "__Host-csrf"
#: Development on plain http only (see the module docstring).
DEV_COOKIE: Final = "sp_csrf"
CSRF_FIELD: Final = "csrf"
CSRF_HEADER: Final = "X-CSRF-Token"
_NONCE_HEX: Final = 32
_TOKEN: Final = re.compile(r"[0-9a-f]{96}")
_KEY_LABEL: Final = b"stadjerspas/csrf/v1"


@dataclass(frozen=True, slots=True)
class CsrfCookie:
    """Name and ``Secure`` flag of the CSRF cookie for one request."""

    name: str
    secure: bool


def cookie_for(request: Request, settings: Settings) -> CsrfCookie:
    """``__Host-csrf`` (Secure) except on plain http in development (``sp_csrf``)."""
    if settings.is_development and request.url.scheme == "http":
        return CsrfCookie(DEV_COOKIE, secure=False)
    return CsrfCookie(HOST_COOKIE, secure=True)


def _key(settings: Settings) -> bytes:
    assert settings.auth_secret is not None  # settings validation guarantees it
    secret = settings.auth_secret.get_secret_value().encode()
    return hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest()


def session_id(session_cookie: str | None) -> str:
    """The id a token is bound to: SHA-256 of the session cookie, or empty without one."""
    if not session_cookie:
        return ""
    return hashlib.sha256(session_cookie.encode()).hexdigest()


def _mac(key: bytes, sid: str, nonce: str) -> str:
    message = f"{len(sid)}!{sid}!{len(nonce)}!{nonce}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def issue(settings: Settings, sid: str) -> str:
    """A new token for session ``sid``."""
    nonce = secrets.token_hex(_NONCE_HEX // 2)
    return nonce + _mac(_key(settings), sid, nonce)


def signed_for(settings: Settings, sid: str, token: str) -> bool:
    """Whether ``token`` is well formed and signed for session ``sid``."""
    if _TOKEN.fullmatch(token) is None:
        return False
    nonce, mac = token[:_NONCE_HEX], token[_NONCE_HEX:]
    return hmac.compare_digest(mac, _mac(_key(settings), sid, nonce))


def current(request: Request, settings: Settings, session_cookie: str) -> tuple[str, bool]:
    """The token for a page of this request, and whether it is new (then set the cookie)."""
    sid = session_id(request.cookies.get(session_cookie))
    existing = request.cookies.get(cookie_for(request, settings).name, "")
    if signed_for(settings, sid, existing):
        return existing, False
    return issue(settings, sid), True


def check(request: Request, settings: Settings, session_cookie: str, sent: str | None) -> bool:
    """Whether ``sent`` equals the CSRF cookie and is signed for this request's session."""
    cookie = request.cookies.get(cookie_for(request, settings).name, "")
    if not cookie or not sent or not hmac.compare_digest(cookie.encode(), sent.encode()):
        return False
    return signed_for(settings, session_id(request.cookies.get(session_cookie)), sent)
