"""Authentication and authorisation: who is calling, and what they may do.

Three kinds of principal log in at ``POST /auth/token`` and get a signed bearer token:

- **staff** (municipal employees): a username and password (scrypt hash in ``api_staff_user``),
  with one role: ``admin``, ``issuer``, ``finance`` or ``auditor``;
- **terminal** (a merchant's till, phone or tablet): a terminal id and secret that an admin issued
  for one merchant (``api_terminal``; a merchant may have several, each revocable);
- **holder**: a pass number plus the activation code sent by letter (the registry's scrypt hash)
  or a PIN (``api_holder_pin``).

Tokens are compact JWTs (``header.payload.signature``, base64url) signed with HMAC-SHA256 using
only the standard library (``hmac``; PyJWT is not installed): header ``{"alg": "HS256", "typ":
"JWT"}``; claims ``iss``, ``aud``, ``sub``, ``kind``, ``scope`` (space separated), ``mid`` (the
merchant of a terminal), ``pass`` (the pass number of a holder), ``iat``, ``exp`` and ``jti``.
Only ``HS256`` is accepted (no ``none``, no algorithm switching). The key is
``STADJERSPAS_AUTH_SECRET`` (>= 32 bytes, required in production). Terminal and holder tokens
live ``STADJERSPAS_AUTH_TOKEN_TTL_S`` (15 min), staff tokens ``..._STAFF_TOKEN_TTL_S`` (30 min).
Every request re-checks that a staff user or terminal is still active, so revoking a terminal
ends its tokens at once.

Scopes: ``admin`` (staff and terminals), ``issue`` (entitlements), ``finance`` (statements,
payouts), ``audit`` (reports, audit), ``merchant:redeem`` (scan, redeem, reverse),
``merchant:read`` (own redemptions, statement, offers), ``holder:read`` (own pass).

Brute-force protection (:class:`LoginThrottle`) is **in-process**: failures are counted per
client address and account (``auth_max_failures``, default 5) and per client address over all
accounts (``auth_max_client_failures``, default 20) within ``auth_failure_window_s``; past either
limit, logins from that client (for that account) are refused with 429 ``login_locked`` for
``auth_lockout_s``, even with the right password. Several API processes each count on their own
(a limit per process); a shared store (e.g. PostgreSQL or Redis) is the next step for that. Unknown
accounts cost the same scrypt work as known ones, so response times do not reveal which exist.

Development only: fixed logins (see :data:`DEV_STAFF`, :func:`dev_terminal_id`,
:data:`DEV_HOLDER_PIN`) are created at start, and the slice's static bearer tokens
(``development-only-*-token``) still authenticate.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from api.problems import ApiProblem
from api.settings import Settings
from api.store import ApiStore, StaffUser, Terminal

__all__ = [
    "ALL_SCOPES",
    "DEV_HOLDER_PIN",
    "DEV_STAFF",
    "ROLE_SCOPES",
    "Auth",
    "Kind",
    "LoginThrottle",
    "Principal",
    "Role",
    "Scope",
    "TokenError",
    "check_secret",
    "decode_token",
    "dev_terminal_id",
    "dev_terminal_secret",
    "encode_token",
    "hash_secret",
]

ISSUER: Final = "stadjerspas"
AUDIENCE: Final = "stadjerspas-api"
_HEADER: Final = {"alg": "HS256", "typ": "JWT"}


class Scope(enum.StrEnum):
    ADMIN = "admin"
    ISSUE = "issue"
    FINANCE = "finance"
    AUDIT = "audit"
    MERCHANT_REDEEM = "merchant:redeem"
    MERCHANT_READ = "merchant:read"
    HOLDER_READ = "holder:read"


ALL_SCOPES: dict[str, str] = {
    Scope.ADMIN: "Administer staff, terminals, merchants and passes.",
    Scope.ISSUE: "Issue entitlements.",
    Scope.FINANCE: "Statements and payouts of all merchants.",
    Scope.AUDIT: "Reports and audit.",
    Scope.MERCHANT_REDEEM: "A terminal: scan, redeem and reverse for its own merchant.",
    Scope.MERCHANT_READ: "A terminal: its merchant's redemptions, statement and offers.",
    Scope.HOLDER_READ: "A holder: their own pass, token and balances.",
}


class Role(enum.StrEnum):
    ADMIN = "admin"
    ISSUER = "issuer"
    FINANCE = "finance"
    AUDITOR = "auditor"


ROLE_SCOPES: dict[Role, frozenset[str]] = {
    Role.ADMIN: frozenset({Scope.ADMIN, Scope.ISSUE, Scope.FINANCE, Scope.AUDIT}),
    Role.ISSUER: frozenset({Scope.ISSUE}),
    Role.FINANCE: frozenset({Scope.FINANCE, Scope.AUDIT}),
    Role.AUDITOR: frozenset({Scope.AUDIT}),
}
TERMINAL_SCOPES: Final = frozenset({Scope.MERCHANT_REDEEM, Scope.MERCHANT_READ})
HOLDER_SCOPES: Final = frozenset({Scope.HOLDER_READ})

Kind = Literal["staff", "terminal", "holder"]

#: Development only: staff logins ``<role>`` / ``development-only-<role>-password``.
DEV_STAFF: dict[str, tuple[Role, str]] = {
    role.value: (role, f"development-only-{role.value}-password") for role in Role
}
#: Development only: the PIN of every demo pass without an activation code.
DEV_HOLDER_PIN: Final = "development-only-pin"


def dev_terminal_id(merchant_id: int) -> str:
    """Development only: the terminal id of merchant ``merchant_id``'s demo terminal."""
    return f"dev-terminal-{merchant_id}"


def dev_terminal_secret(merchant_id: int) -> str:
    return f"development-only-terminal-{merchant_id}-secret"


# -- secret hashing (hashlib.scrypt) ----------------------------------------------------------

_SCRYPT_LOG_N, _SCRYPT_R, _SCRYPT_P = 14, 8, 1
_DUMMY_HASH: str | None = None


def hash_secret(secret: str) -> str:
    """``scrypt$logN$r$p$salt$digest`` (base64) of ``secret`` with a fresh 16-byte salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        secret.encode(), salt=salt, n=2**_SCRYPT_LOG_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    b64 = base64.b64encode
    params = f"{_SCRYPT_LOG_N}${_SCRYPT_R}${_SCRYPT_P}"
    return f"scrypt${params}${b64(salt).decode()}${b64(digest).decode()}"


def check_secret(secret: str, stored: str | None) -> bool:
    """Whether ``secret`` matches ``stored``; with ``stored=None`` it does the same work and
    returns False (no timing difference between unknown and known accounts)."""
    global _DUMMY_HASH
    if stored is None:
        if _DUMMY_HASH is None:
            _DUMMY_HASH = hash_secret(secrets.token_hex(16))
        check_secret(secret, _DUMMY_HASH)
        return False
    try:
        scheme, log_n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt" or not 10 <= int(log_n) <= 20:
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            secret.encode(),
            salt=base64.b64decode(salt),
            n=2 ** int(log_n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(actual, expected)


# -- tokens -----------------------------------------------------------------------------------


class TokenError(Exception):
    """A bearer token that is malformed, tampered with, for another audience, or expired."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if _B64URL.fullmatch(text) is None:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def _sign(key: bytes, signing_input: bytes) -> bytes:
    return hmac.new(key, signing_input, hashlib.sha256).digest()


def encode_token(claims: dict[str, Any], key: bytes) -> str:
    header = _b64(json.dumps(_HEADER, separators=(",", ":")).encode())
    payload = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    signing_input = f"{header}.{payload}".encode()
    return f"{header}.{payload}.{_b64(_sign(key, signing_input))}"


def decode_token(token: str, key: bytes, *, now: float | None = None) -> dict[str, Any]:
    """The verified claims of ``token``; raises :class:`TokenError`."""
    parts = token.split(".")
    if len(parts) != 3 or len(token) > 4096:
        raise TokenError("auth_token_invalid", "the bearer token is not a signed token")
    try:
        header = json.loads(_unb64(parts[0]))
        signature = _unb64(parts[2])
    except (ValueError, UnicodeDecodeError):
        raise TokenError("auth_token_invalid", "the bearer token is not a signed token") from None
    if header != _HEADER:
        raise TokenError("auth_token_invalid", "the bearer token's algorithm is not HS256")
    expected = _sign(key, f"{parts[0]}.{parts[1]}".encode())
    if not hmac.compare_digest(signature, expected):
        raise TokenError("auth_token_invalid", "the bearer token's signature does not match")
    try:
        claims = json.loads(_unb64(parts[1]))
    except (ValueError, UnicodeDecodeError):
        raise TokenError("auth_token_invalid", "the bearer token's claims are unreadable") from None
    if not isinstance(claims, dict):
        raise TokenError("auth_token_invalid", "the bearer token's claims are unreadable")
    if claims.get("iss") != ISSUER or claims.get("aud") != AUDIENCE:
        raise TokenError("auth_token_invalid", "the bearer token is not for this service")
    exp = claims.get("exp")
    if not isinstance(exp, int):
        raise TokenError("auth_token_invalid", "the bearer token has no expiry")
    if (now if now is not None else time.time()) >= exp:
        raise TokenError("auth_token_expired", f"the bearer token expired at {exp} (unix s)")
    return claims


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a staff user, a merchant terminal or a holder, with their scopes."""

    kind: Kind
    subject: str
    scopes: frozenset[str]
    merchant_id: int | None = None
    pass_number: str | None = None
    expires_at: int | None = None
    role: str | None = None
    #: Development only: the slice's static holder token reaches every pass.
    any_pass: bool = False

    def has(self, scopes: Iterable[str]) -> bool:
        return set(scopes) <= self.scopes


# -- brute-force protection -------------------------------------------------------------------


@dataclass(slots=True)
class _Counter:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0


class LoginThrottle:
    """Failed logins per (client, account) and per client; in-process (see the module docs)."""

    def __init__(
        self,
        *,
        max_failures: int,
        max_client_failures: int,
        window_s: float,
        lockout_s: float,
        clock: Any = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.max_client_failures = max_client_failures
        self.window_s = window_s
        self.lockout_s = lockout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, ...], _Counter] = {}

    def _keys(self, client: str, account: str) -> list[tuple[tuple[str, ...], int]]:
        return [((client, account), self.max_failures), ((client,), self.max_client_failures)]

    def locked_for(self, client: str, account: str) -> float:
        """Seconds left of a lockout of this client (for this account), or 0."""
        now = self._clock()
        with self._lock:
            left = [
                c.locked_until - now
                for key, _ in self._keys(client, account)
                if (c := self._counters.get(key)) is not None and c.locked_until > now
            ]
        return max(left, default=0.0)

    def failed(self, client: str, account: str) -> None:
        now = self._clock()
        with self._lock:
            for key, limit in self._keys(client, account):
                counter = self._counters.setdefault(key, _Counter())
                while counter.failures and counter.failures[0] <= now - self.window_s:
                    counter.failures.popleft()
                counter.failures.append(now)
                if len(counter.failures) >= limit:
                    counter.locked_until = now + self.lockout_s
                    counter.failures.clear()
            if len(self._counters) > 100_000:  # bound memory: forget idle counters
                for key in [k for k, c in self._counters.items() if c.locked_until <= now]:
                    del self._counters[key]

    def succeeded(self, client: str, account: str) -> None:
        with self._lock:
            self._counters.pop((client, account), None)

    def reset(self) -> None:
        with self._lock:
            self._counters.clear()


# -- the service ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssuedToken:
    access_token: str
    expires_in: int
    principal: Principal


@dataclass(frozen=True, slots=True)
class IssuedTerminal:
    terminal: Terminal
    secret: str


def _unauthorized(code: str, detail: str, *, error: str | None = None) -> ApiProblem:
    challenge = "Bearer" if error is None else f'Bearer error="{error}"'
    return ApiProblem(401, code, detail, headers={"WWW-Authenticate": challenge})


class Auth:
    """Logins, token issuance and verification, and credential management."""

    def __init__(self, settings: Settings, store: ApiStore) -> None:
        assert settings.auth_secret is not None  # settings validation guarantees it
        self.settings = settings
        self.store = store
        self._key = settings.auth_secret.get_secret_value().encode()
        self.throttle = LoginThrottle(
            max_failures=settings.auth_max_failures,
            max_client_failures=settings.auth_max_client_failures,
            window_s=settings.auth_failure_window_s,
            lockout_s=settings.auth_lockout_s,
        )
        self._static: dict[str, Principal] = {}
        if settings.is_development:
            self._static = self._static_tokens()

    # -- bootstrap ------------------------------------------------------------------------------

    def bootstrap(self, merchant_ids: Iterable[int]) -> None:
        """Create the bootstrap admin (if configured and no staff exists) and, in development,
        the development logins. Idempotent."""
        settings = self.settings
        if (
            settings.bootstrap_admin_username is not None
            and settings.bootstrap_admin_password is not None
            and self.store.staff_count() == 0
        ):
            self.create_staff(
                settings.bootstrap_admin_username,
                settings.bootstrap_admin_password.get_secret_value(),
                Role.ADMIN,
            )
        if not settings.is_development:
            return
        for username, (role, password) in DEV_STAFF.items():
            if self.store.staff_user(username) is None:
                self.create_staff(username, password, role)
        for merchant_id in merchant_ids:
            if self.store.terminal(dev_terminal_id(merchant_id)) is None:
                self.store.add_terminal(
                    Terminal(
                        terminal_id=dev_terminal_id(merchant_id),
                        merchant_id=merchant_id,
                        secret_hash=hash_secret(dev_terminal_secret(merchant_id)),
                        label="development terminal",
                    )
                )
        missing = [
            record.pass_number
            for record, _holder in self.store.registry.pass_holders()
            if record.activation_code_hash is None
            and self.store.holder_pin(record.pass_number) is None
        ]
        if missing:
            pin_hash = hash_secret(DEV_HOLDER_PIN)  # one hash for all: development only
            self.store.set_holder_pins(dict.fromkeys(missing, pin_hash))

    def _static_tokens(self) -> dict[str, Principal]:
        settings = self.settings
        static: dict[str, Principal] = {}
        if settings.admin_token is not None:
            static[settings.admin_token.get_secret_value()] = Principal(
                "staff", "development-admin", ROLE_SCOPES[Role.ADMIN], role=Role.ADMIN
            )
        if settings.holder_token is not None:
            static[settings.holder_token.get_secret_value()] = Principal(
                "holder", "development-holder", HOLDER_SCOPES, any_pass=True
            )
        for merchant_id, token in settings.merchant_tokens.items():
            static[token.get_secret_value()] = Principal(
                "terminal",
                f"development-merchant-{merchant_id}",
                TERMINAL_SCOPES,
                merchant_id=merchant_id,
            )
        return static

    # -- management -----------------------------------------------------------------------------

    def create_staff(self, username: str, password: str, role: Role) -> StaffUser:
        user = self.store.add_staff_user(
            StaffUser(username=username, password_hash=hash_secret(password), role=role.value)
        )
        if user is None:
            raise ApiProblem(409, "staff_username_taken", f"the username {username!r} is taken")
        return user

    def issue_terminal(self, merchant_id: int, label: str) -> IssuedTerminal:
        if self.store.merchant(merchant_id) is None:
            raise ApiProblem(404, "merchant_unknown", f"no merchant has id {merchant_id}")
        secret = secrets.token_urlsafe(32)
        terminal = self.store.add_terminal(
            Terminal(
                terminal_id=f"T{merchant_id}-{uuid.uuid4().hex[:12]}",
                merchant_id=merchant_id,
                secret_hash=hash_secret(secret),
                label=label,
            )
        )
        if terminal is None:  # a 48-bit collision: practically never
            raise ApiProblem(503, "terminal_id_collision", "try again")
        return IssuedTerminal(terminal, secret)

    # -- login ----------------------------------------------------------------------------------

    def login(
        self, *, kind: Kind, username: str, password: str, scopes: list[str], client: str
    ) -> IssuedToken:
        account = f"{kind}:{username.strip().lower()}"
        left = self.throttle.locked_for(client, account)
        if left > 0:
            raise ApiProblem(
                429,
                "login_locked",
                f"too many failed logins; try again in {int(left) + 1} s",
                headers={"Retry-After": str(int(left) + 1)},
            )
        principal = self._check_credentials(kind, username, password)
        if principal is None:
            self.throttle.failed(client, account)
            raise _unauthorized("invalid_credentials", "the credentials are not valid")
        self.throttle.succeeded(client, account)
        if scopes:
            unknown = set(scopes) - principal.scopes
            if unknown:
                raise ApiProblem(
                    400,
                    "invalid_scope",
                    f"this login may not have the scopes {sorted(unknown)}",
                    allowed_scopes=sorted(principal.scopes),
                )
            principal = Principal(
                principal.kind,
                principal.subject,
                frozenset(scopes),
                merchant_id=principal.merchant_id,
                pass_number=principal.pass_number,
                role=principal.role,
            )
        return self.issue(principal)

    def _check_credentials(self, kind: Kind, username: str, password: str) -> Principal | None:
        name = username.strip()
        if kind == "staff":
            user = self.store.staff_user(name)
            ok = check_secret(password, user.password_hash if user is not None else None)
            if not ok or user is None or not user.active:
                return None
            role = Role(user.role)
            return Principal("staff", user.username, ROLE_SCOPES[role], role=role.value)
        if kind == "terminal":
            terminal = self.store.terminal(name)
            ok = check_secret(password, terminal.secret_hash if terminal is not None else None)
            if not ok or terminal is None or not terminal.active:
                return None
            return Principal(
                "terminal", terminal.terminal_id, TERMINAL_SCOPES, merchant_id=terminal.merchant_id
            )
        record = self.store.registry.find_pass(name) if name.isalnum() else None
        number = record.pass_number if record is not None else name.upper()
        ok = False
        if record is not None and record.activation_code_hash is not None:
            ok = self.store.registry.verify_activation_code(number, password)
        if not ok:
            pin = self.store.holder_pin(number) if record is not None else None
            ok = check_secret(password, pin) and record is not None
        if not ok or record is None:
            return None
        return Principal("holder", number, HOLDER_SCOPES, pass_number=number)

    def issue(self, principal: Principal) -> IssuedToken:
        ttl = (
            self.settings.auth_staff_token_ttl_s
            if principal.kind == "staff"
            else self.settings.auth_token_ttl_s
        )
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": principal.subject,
            "kind": principal.kind,
            "scope": " ".join(sorted(principal.scopes)),
            "iat": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
        }
        if principal.merchant_id is not None:
            claims["mid"] = principal.merchant_id
        if principal.pass_number is not None:
            claims["pass"] = principal.pass_number
        if principal.role is not None:
            claims["role"] = principal.role
        token = encode_token(claims, self._key)
        return IssuedToken(
            token,
            ttl,
            Principal(
                principal.kind,
                principal.subject,
                principal.scopes,
                merchant_id=principal.merchant_id,
                pass_number=principal.pass_number,
                expires_at=now + ttl,
                role=principal.role,
            ),
        )

    # -- verification ---------------------------------------------------------------------------

    def authenticate(self, token: str | None) -> Principal:
        """The principal of a bearer token, or a 401 problem (with ``WWW-Authenticate``)."""
        if token is None or not token.strip():
            raise _unauthorized(
                "unauthorized",
                "this endpoint needs a bearer token (Authorization: Bearer <token>); "
                "get one at POST /auth/token",
            )
        token = token.strip()
        static = self._static.get(token)
        if static is not None:  # development only (empty otherwise)
            return static
        try:
            claims = decode_token(token, self._key)
            principal = self._principal(claims)
        except TokenError as exc:
            raise _unauthorized(exc.code, exc.detail, error="invalid_token") from None
        self._still_valid(principal)
        return principal

    @staticmethod
    def _principal(claims: dict[str, Any]) -> Principal:
        kind, sub, scope = claims.get("kind"), claims.get("sub"), claims.get("scope")
        if kind not in ("staff", "terminal", "holder") or not isinstance(sub, str):
            raise TokenError("auth_token_invalid", "the bearer token names no principal")
        if not isinstance(scope, str):
            raise TokenError("auth_token_invalid", "the bearer token has no scopes")
        mid, number = claims.get("mid"), claims.get("pass")
        if kind == "terminal" and not isinstance(mid, int):
            raise TokenError("auth_token_invalid", "a terminal token needs its merchant")
        if kind == "holder" and not isinstance(number, str):
            raise TokenError("auth_token_invalid", "a holder token needs its pass")
        role = claims.get("role")
        return Principal(
            kind,
            sub,
            frozenset(scope.split()),
            merchant_id=mid if isinstance(mid, int) else None,
            pass_number=number if isinstance(number, str) else None,
            expires_at=int(claims["exp"]),
            role=role if isinstance(role, str) else None,
        )

    def _still_valid(self, principal: Principal) -> None:
        """A revoked terminal or a deactivated staff user loses its tokens at once."""
        if principal.kind == "terminal":
            if not self.store.terminal_active(principal.subject):
                raise _unauthorized(
                    "auth_token_revoked", "this terminal was revoked", error="invalid_token"
                )
        elif principal.kind == "staff" and not self.store.staff_active(principal.subject):
            raise _unauthorized(
                "auth_token_revoked", "this staff login was disabled", error="invalid_token"
            )
