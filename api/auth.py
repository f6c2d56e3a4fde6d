"""Authentication and authorisation: who is calling, and what they may do.

Three kinds of principal log in at ``POST /auth/token`` and get a signed bearer token:

- **staff** (municipal employees): a username and password (``api_staff_user``), with one
  role: ``admin``, ``issuer``, ``finance`` or ``auditor``;
- **terminal** (a merchant's till, phone or tablet): a terminal id and secret that an admin issued
  for one merchant (``api_terminal``; a merchant may have several, each revocable);
- **holder**: a pass number plus the activation code sent by letter (in the registry) or a PIN
  (``api_holder_pin``).

Passwords, secrets and PINs are stored as Argon2id hashes (:mod:`ledger.secrets_hash`, shared
with the registry); the scrypt hashes of older databases still verify and are replaced by
Argon2id at the first successful login. Activation codes (random, 60 bits) are keyed HMAC-SHA256
hashes (:mod:`api.code_keys`); their older Argon2id hashes still verify.

Tokens are JWTs made and checked by PyJWT, signed with HMAC-SHA256: header ``{"alg": "HS256",
"typ": "JWT"}``; claims ``iss``, ``aud``, ``sub``, ``kind``, ``scope`` (space separated), ``mid``
(the merchant of a terminal), ``pass`` (the pass number of a holder), ``role``, ``iat``, ``exp``
and ``jti``. Decoding allows ``HS256`` only (``algorithms=["HS256"]``: no ``none``, no algorithm
switching) and requires ``exp``, ``iss``, ``aud`` (exactly ``stadjerspas-api``) and ``sub``. The
key is ``STADJERSPAS_AUTH_SECRET`` (>= 32 bytes, required in production). Terminal and holder
tokens live ``STADJERSPAS_AUTH_TOKEN_TTL_S`` (15 min), staff tokens ``..._STAFF_TOKEN_TTL_S``
(30 min). Every request re-checks that a staff user or terminal is still active, so revoking a
terminal ends its tokens at once.

Scopes: ``admin`` (staff and terminals), ``issue`` (entitlements), ``finance`` (statements,
payouts), ``audit`` (reports, audit), ``merchant:redeem`` (scan, redeem, reverse),
``merchant:read`` (own redemptions, statement, offers), ``holder:read`` (own pass).

Brute-force protection (:class:`api.throttle.LoginThrottle`): failures are counted per client
and account, per client over accounts and per account over clients, in Redis so that every API
process counts together (see :mod:`api.throttle` for the limits and what happens without
Redis); past a limit, logins are refused with 429 ``login_locked`` for ``auth_lockout_s``, even
with the right password. Every holder login does the same hash work whether or not the pass
exists, or has an activation code or a PIN: two verifications, against dummy hashes where
nothing is stored, so response times do not reveal which passes exist.

Development only: fixed logins (see :data:`DEV_STAFF`, :func:`dev_terminal_id`,
:data:`DEV_HOLDER_PIN`) are created at start, and the slice's static bearer tokens
(``development-only-*-token``) still authenticate. In production the service refuses to start
while any of those logins still verifies (:meth:`Auth.development_credentials`): a database
copied from development must have them changed or disabled first.
"""

from __future__ import annotations

import enum
import re
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

import jwt
from sqlmodel import col, select, update

from api.problems import ApiProblem
from api.runtime import StartupError
from api.settings import Settings
from api.store import ApiStore, HolderPin, StaffUser, Terminal
from api.throttle import LoginThrottle, open_throttle_state
from ledger.secrets_hash import check_secret, hash_secret, needs_rehash

__all__ = [
    "ALL_SCOPES",
    "DEV_HOLDER_PIN",
    "DEV_STAFF",
    "ROLE_SCOPES",
    "Auth",
    "DevelopmentCredentialsInProduction",
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
ALGORITHM: Final = "HS256"
#: Longer bearer tokens are refused before they are parsed.
MAX_TOKEN_LENGTH: Final = 4096


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


_DEV_TERMINAL_ID: Final = re.compile(r"dev-terminal-([0-9]{1,9})")
#: The production start-up check verifies the development PIN against every distinct PIN hash
#: up to this many; beyond it, against the hashes shared by several passes (the development
#: seed sets one hash for all its passes) and those of the demo pass numbers.
DEV_PIN_CHECK_LIMIT: Final = 64


# -- tokens -----------------------------------------------------------------------------------


class TokenError(Exception):
    """A bearer token that is malformed, tampered with, for another audience, or expired."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def encode_token(claims: dict[str, Any], key: bytes) -> str:
    """``claims`` as a JWT signed with HMAC-SHA256 under ``key``."""
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"typ": "JWT"})


def _invalid(detail: str) -> TokenError:
    return TokenError("auth_token_invalid", detail)


def decode_token(token: str, key: bytes) -> dict[str, Any]:
    """The verified claims of ``token`` (signature, HS256 only, issuer, audience, expiry);
    raises :class:`TokenError` with ``auth_token_expired`` or ``auth_token_invalid``."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise _invalid(f"the bearer token is longer than {MAX_TOKEN_LENGTH} characters")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={
                "require": ["exp", "iss", "aud", "sub"],
                "strict_aud": True,
                "verify_iat": False,  # a few seconds of clock skew between hosts is no error
            },
        )
    except jwt.ExpiredSignatureError:
        raise TokenError(
            "auth_token_expired", f"the bearer token expired at {_unverified_exp(token)} (unix s)"
        ) from None
    except jwt.InvalidAlgorithmError:
        raise _invalid(
            f"the bearer token's algorithm {_unverified_alg(token)!r} is not {ALGORITHM}"
        ) from None
    except jwt.InvalidSignatureError:
        raise _invalid("the bearer token's signature does not match") from None
    except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
        raise _invalid("the bearer token is not for this service") from None
    except jwt.MissingRequiredClaimError as exc:
        raise _invalid(f"the bearer token has no {exc.claim!r} claim") from None
    except jwt.PyJWTError:
        raise _invalid("the bearer token is not a signed token") from None
    return claims


def _unverified_exp(token: str) -> object:
    """The ``exp`` of a token whose signature PyJWT has already verified (for the message)."""
    try:
        return jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return "?"


def _unverified_alg(token: str) -> str:
    try:
        return str(jwt.get_unverified_header(token).get("alg"))
    except jwt.PyJWTError:
        return "?"


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


class DevelopmentCredentialsInProduction(StartupError):
    """Production refuses to start while a development login still verifies (one line)."""


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
        #: Where login failures and request rates are counted (Redis: shared by every process);
        #: the hardening middleware counts in the same state.
        self.throttle_state = open_throttle_state(settings)
        self.throttle = LoginThrottle(
            state=self.throttle_state,
            max_failures=settings.auth_max_failures,
            max_client_failures=settings.auth_max_client_failures,
            max_account_failures=settings.auth_max_account_failures,
            window_s=settings.auth_failure_window_s,
            lockout_s=settings.auth_lockout_s,
        )
        self._static: dict[str, Principal] = {}
        if settings.is_development:
            self._static = self._static_tokens()

    # -- bootstrap ------------------------------------------------------------------------------

    def bootstrap(self, merchant_ids: Iterable[int]) -> None:
        """Create the bootstrap admin (if configured and no staff exists) and, in development,
        the development logins. Idempotent. In production, raise
        :class:`DevelopmentCredentialsInProduction` while a development login still verifies."""
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
            found = self.development_credentials()
            if found:
                raise DevelopmentCredentialsInProduction(
                    "refusing to start in production: development credentials still verify: "
                    + "; ".join(found)
                    + " (change or disable them; development creates them at start)"
                )
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

    def development_credentials(self) -> list[str]:
        """Which development logins still verify in this database (active ones): the staff
        passwords of :data:`DEV_STAFF`, the ``dev-terminal-N`` secrets and the development
        PIN. Empty when none does."""
        found: list[str] = []
        for username, (_, password) in DEV_STAFF.items():
            user = self.store.staff_user(username)
            if user is not None and user.active and check_secret(password, user.password_hash):
                found.append(f"staff user {username!r} has the password {password!r}")
        for terminal in self.store.terminals():
            match = _DEV_TERMINAL_ID.fullmatch(terminal.terminal_id)
            if (
                match is not None
                and terminal.active
                and check_secret(dev_terminal_secret(int(match.group(1))), terminal.secret_hash)
            ):
                found.append(
                    f"terminal {terminal.terminal_id!r} has the secret "
                    f"{dev_terminal_secret(int(match.group(1)))!r}"
                )
        passes = self._development_pin_passes()
        if passes:
            shown = ", ".join(passes[:3]) + (
                f" and {len(passes) - 3} more" if len(passes) > 3 else ""
            )
            found.append(f"the PIN {DEV_HOLDER_PIN!r} opens {len(passes)} passes ({shown})")
        return found

    def _development_pin_passes(self) -> list[str]:
        """Pass numbers whose PIN is :data:`DEV_HOLDER_PIN` (see :data:`DEV_PIN_CHECK_LIMIT`)."""
        with self.store.session() as session:
            rows = session.exec(select(HolderPin.pass_number, HolderPin.pin_hash)).all()
        by_hash: dict[str, list[str]] = {}
        for number, pin_hash in rows:
            by_hash.setdefault(pin_hash, []).append(number)
        if len(by_hash) <= DEV_PIN_CHECK_LIMIT:
            candidates = list(by_hash)
        else:
            demo = {f"GR{i:07d}" for i in range(1, 1000)}
            shared = Counter(pin_hash for _, pin_hash in rows)
            candidates = [
                pin_hash
                for pin_hash, numbers in by_hash.items()
                if shared[pin_hash] > 1 or demo.intersection(numbers)
            ]
        return sorted(
            number
            for pin_hash in candidates
            if check_secret(DEV_HOLDER_PIN, pin_hash)
            for number in by_hash[pin_hash]
        )

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
        left = self.throttle.locked_for(client=client, account=account)
        if left > 0:
            raise ApiProblem(
                429,
                "login_locked",
                f"too many failed logins; try again in {int(left) + 1} s",
                headers={"Retry-After": str(int(left) + 1)},
            )
        principal = self._check_credentials(kind, username, password)
        if principal is None:
            self.throttle.failed(client=client, account=account)
            raise _unauthorized("invalid_credentials", "the credentials are not valid")
        self.throttle.succeeded(client=client, account=account)
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
            stored = user.password_hash if user is not None else None
            if not check_secret(password, stored) or user is None or not user.active:
                return None
            self._upgrade_staff_hash(user.username, user.password_hash, password)
            role = Role(user.role)
            return Principal("staff", user.username, ROLE_SCOPES[role], role=role.value)
        if kind == "terminal":
            terminal = self.store.terminal(name)
            stored = terminal.secret_hash if terminal is not None else None
            if not check_secret(password, stored) or terminal is None or not terminal.active:
                return None
            self._upgrade_terminal_hash(terminal.terminal_id, terminal.secret_hash, password)
            return Principal(
                "terminal", terminal.terminal_id, TERMINAL_SCOPES, merchant_id=terminal.merchant_id
            )
        return self._check_holder(name, password)

    def _check_holder(self, name: str, password: str) -> Principal | None:
        """Always two hash verifications, whether or not the pass exists or has an activation
        code or a PIN: the activation code (the registry verifies against a dummy hash when
        there is none) and the PIN (a dummy when there is none)."""
        registry = self.store.registry
        record = registry.find_pass(name) if name.isalnum() and len(name) <= 32 else None
        if record is None:
            check_secret(password, None, key=registry.code_key)  # as an activation code
            check_secret(password, None)  # as a PIN
            return None
        number = record.pass_number
        code_ok = registry.verify_activation_code(number, password)
        pin = self.store.holder_pin(number)
        pin_ok = check_secret(password, pin)
        if not (code_ok or pin_ok):
            return None
        if pin_ok and pin is not None and needs_rehash(pin):
            self.store.set_holder_pins({number: hash_secret(password)})
        return Principal("holder", number, HOLDER_SCOPES, pass_number=number)

    def _upgrade_staff_hash(self, username: str, stored: str, password: str) -> None:
        """Replace a legacy (scrypt) or outdated hash by Argon2id after a successful login."""
        if not needs_rehash(stored):
            return
        with self.store.session() as session:
            session.exec(
                update(StaffUser)
                .where(col(StaffUser.username) == username)
                .where(col(StaffUser.password_hash) == stored)
                .values(password_hash=hash_secret(password))
            )
            session.commit()

    def _upgrade_terminal_hash(self, terminal_id: str, stored: str, secret: str) -> None:
        if not needs_rehash(stored):
            return
        with self.store.session() as session:
            session.exec(
                update(Terminal)
                .where(col(Terminal.terminal_id) == terminal_id)
                .where(col(Terminal.secret_hash) == stored)
                .values(secret_hash=hash_secret(secret))
            )
            session.commit()

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
