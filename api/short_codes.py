"""Short codes: the counter without a camera.

A pass token URI is about 190 characters; nobody types that at a till. Beside the QR, the holder
page shows a short code such as ``K7QX-M4PZ`` that stands for that one token, for as long as the
token lives (``STADJERSPAS_TOKEN_LIFETIME_S``, at most 120 s by default), and the merchant scan
and redemption endpoints take it wherever they take a token URI.

- **Alphabet.** :data:`ALPHABET` has 30 characters: the digits 2-9 and the capitals without
  I, L, O and U (Crockford's base 32 without 0 and 1 either). None of the look-alike pairs
  0/O, 1/I/L, U/V is in it, so there is nothing to map: a code never contains them. A code is
  :data:`LENGTH` (8) characters, shown in two groups of four (``K7QX-M4PZ``).
- **Typing.** :func:`normalise` ignores case, spaces and dashes: ``k7qx m4pz`` is ``K7QX-M4PZ``.
  Text that is not 8 characters of the alphabet is not a code and goes on as a token URI (and
  is refused as such: ``token_malformed``).
- **Storage** (``api_short_code``, migration ``api_0004``). A row is found by
  ``HMAC(k, code)`` (``k`` derived from ``STADJERSPAS_AUTH_SECRET``), and holds the token
  encrypted with AES-256-GCM under another key derived from ``k`` and the code. The database alone
  therefore neither lists live codes nor yields a token; rows are deleted once expired (on each
  new code), and an expired row never resolves.
- **Single mapping.** Codes come from :mod:`secrets`; a new code that collides with a stored one
  is drawn again. A code resolves only to its own token and only until that token expires; the
  token's own rules (signature, expiry, what it may redeem) then apply as for a scanned QR.
- **Guessing.** A code that resolves to nothing is ``422 short_code_unknown`` and is recorded
  per terminal (``api_short_code_miss``, shared by every API process through the database);
  after :data:`MISS_LIMIT` (10) such misses within :data:`MISS_WINDOW_S` (60 s) the terminal's
  short codes are refused with ``429 short_code_throttled`` (and ``Retry-After``) until the
  oldest miss leaves the window, right codes included. Token URIs are never throttled here.
  The odds are in ``docs/security.md`` ("Short codes").
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from functools import lru_cache

from Crypto.Cipher import AES
from sqlalchemy import Table, delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from api.problems import ApiProblem
from api.runtime import Runtime
from api.store import ShortCode, ShortCodeMiss

__all__ = [
    "ALPHABET",
    "LENGTH",
    "MISS_LIMIT",
    "MISS_WINDOW_S",
    "display",
    "generate",
    "issue",
    "normalise",
    "resolve",
    "resolve_token",
    "spoken",
]

#: 2-9 and A-Z without I, L, O and U: no look-alikes (0/O, 1/I/L, U/V).
ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
#: Characters per code (30**8 ~ 6.6e11 codes, ~39 bits).
LENGTH = 8
#: Wrong codes a terminal may type within :data:`MISS_WINDOW_S` before it is throttled.
MISS_LIMIT = 10
MISS_WINDOW_S = 60
#: Ignored when typed: spaces (any whitespace) and dashes (ASCII and Unicode).
_IGNORED = frozenset("-\u2010\u2011\u2012\u2013\u2014\u2212")
_DRAWS = 8
_NONCE = 12
_TAG = 16

_CODES: Table = ShortCode.__table__  # type: ignore[attr-defined]
_MISSES: Table = ShortCodeMiss.__table__  # type: ignore[attr-defined]


def normalise(text: str) -> str | None:
    """The code in ``text`` (upper case, without spaces and dashes), or None if ``text`` is not a
    short code (e.g. a token URI)."""
    if len(text) > 4 * LENGTH:
        return None
    compact = "".join(ch for ch in text if not ch.isspace() and ch not in _IGNORED).upper()
    if len(compact) != LENGTH or any(ch not in ALPHABET for ch in compact):
        return None
    return compact


def generate() -> str:
    """A fresh random code (normalised: 8 characters of :data:`ALPHABET`)."""
    return "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))


def display(code: str) -> str:
    """``K7QXM4PZ`` as shown on the holder page: ``K7QX-M4PZ``."""
    half = LENGTH // 2
    return f"{code[:half]}-{code[half:]}"


def spoken(code: str) -> str:
    """The code for a screen reader, character by character: ``K 7 Q X, M 4 P Z``."""
    half = LENGTH // 2
    return f"{' '.join(code[:half])}, {' '.join(code[half:])}"


@lru_cache(maxsize=4)
def _master(secret: str) -> bytes:
    return hmac.new(secret.encode(), b"stadjerspas short codes v1", hashlib.sha256).digest()


def _keys(runtime: Runtime, code: str) -> tuple[str, bytes]:
    """The row's lookup (hex ``HMAC(k, "lookup" code)``) and the sealing key of ``code``."""
    secret = runtime.settings.auth_secret
    assert secret is not None  # settings validation guarantees it
    master = _master(secret.get_secret_value())
    lookup = hmac.new(master, b"lookup:" + code.encode(), hashlib.sha256).hexdigest()
    key = hmac.new(master, b"seal:" + code.encode(), hashlib.sha256).digest()
    return lookup, key


def _seal(key: bytes, lookup: str, token_uri: str) -> bytes:
    nonce = secrets.token_bytes(_NONCE)
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    cipher.update(lookup.encode())
    sealed, tag = cipher.encrypt_and_digest(token_uri.encode())
    return nonce + tag + sealed


def _unseal(key: bytes, lookup: str, blob: bytes) -> str | None:
    nonce, tag, sealed = blob[:_NONCE], blob[_NONCE : _NONCE + _TAG], blob[_NONCE + _TAG :]
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    cipher.update(lookup.encode())
    try:
        return cipher.decrypt_and_verify(sealed, tag).decode()
    except ValueError:  # another secret sealed it (e.g. rotated): as good as unknown
        return None


def issue(runtime: Runtime, token_uri: str, expires_at: int, *, now: float | None = None) -> str:
    """A new code (normalised) standing for ``token_uri`` until ``expires_at`` (unix s).

    Deletes expired codes in the same transaction; draws again on a collision."""
    now_s = int(time.time() if now is None else now)
    engine = runtime.store.db.engine
    for _ in range(_DRAWS):
        code = generate()
        lookup, key = _keys(runtime, code)
        row = {"lookup": lookup, "sealed": _seal(key, lookup, token_uri), "expires_at": expires_at}
        try:
            with engine.begin() as conn:
                conn.execute(delete(_CODES).where(_CODES.c.expires_at < now_s))
                conn.execute(insert(_CODES).values(row))
        except IntegrityError:
            continue  # a live code already has this value: draw another
        return code
    raise ApiProblem(503, "short_code_unavailable", "no free short code was found; try again")


def resolve(runtime: Runtime, text: str, *, terminal: str, now: float | None = None) -> str:
    """The token URI that the short code in ``text`` stands for; ``text`` itself when it is not
    a short code (a token URI goes on unchanged).

    Raises ``422 short_code_unknown`` for a code that is not (or no longer) live, recorded as a
    miss of ``terminal``, and ``429 short_code_throttled`` while ``terminal`` has
    :data:`MISS_LIMIT` misses within :data:`MISS_WINDOW_S`."""
    code = normalise(text)
    if code is None:
        return text
    now_ms = int((time.time() if now is None else now) * 1000)
    window_ms = MISS_WINDOW_S * 1000
    engine = runtime.store.db.engine
    with engine.connect() as conn:
        misses, oldest = conn.execute(
            select(func.count(), func.min(_MISSES.c.at_ms)).where(
                _MISSES.c.terminal == terminal, _MISSES.c.at_ms > now_ms - window_ms
            )
        ).one()
    if misses >= MISS_LIMIT:
        wait_s = max(1, math.ceil((int(oldest) + window_ms - now_ms) / 1000))
        raise ApiProblem(
            429,
            "short_code_throttled",
            f"{misses} wrong short codes from this terminal within {MISS_WINDOW_S} s; short codes "
            f"are refused for {wait_s} s (scan the QR code meanwhile)",
            headers={"Retry-After": str(wait_s)},
        )
    lookup, key = _keys(runtime, code)
    with engine.connect() as conn:
        row = conn.execute(
            select(_CODES.c.sealed, _CODES.c.expires_at).where(_CODES.c.lookup == lookup)
        ).first()
    token_uri = None
    if row is not None and int(row.expires_at) * 1000 >= now_ms:
        token_uri = _unseal(key, lookup, bytes(row.sealed))
    if token_uri is None:
        with engine.begin() as conn:
            conn.execute(delete(_MISSES).where(_MISSES.c.at_ms <= now_ms - window_ms))
            conn.execute(insert(_MISSES).values(terminal=terminal, at_ms=now_ms))
        raise ApiProblem(
            422,
            "short_code_unknown",
            f"no live short code {display(code)}: it was mistyped or has expired; ask the holder "
            "for the code on their screen now",
        )
    return token_uri


async def resolve_token(runtime: Runtime, text: str, *, terminal: str) -> str:
    """:func:`resolve` for async routes: a token URI returns at once (no thread hop, no
    database); only a short code is looked up, on a worker thread."""
    if normalise(text) is None:
        return text
    return await run_in_threadpool(resolve, runtime, text, terminal=terminal)
