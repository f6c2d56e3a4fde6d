"""One way to store passwords, PINs, activation codes and terminal secrets: Argon2id.

Used by the API (staff passwords, terminal secrets, holder PINs) and the registry (activation
codes), so there is one implementation, not two. Hashes are argon2-cffi's PHC strings
(``$argon2id$v=19$m=19456,t=2,p=1$<salt>$<digest>``, OWASP's minimum parameters for Argon2id:
19 MiB, 2 passes, 1 lane; about 40 ms here), each with a fresh 16-byte salt.

Hashes written before this module, ``scrypt$<logN>$<r>$<p>$<salt>$<digest>`` (base64; the two
former copies in ``api.auth`` and ``ledger.registry``), still verify, so existing databases keep
working. :func:`needs_rehash` is True for them (and for Argon2 hashes with older parameters):
a caller that has just verified a secret stores :func:`hash_secret` of it in their place.

:func:`check_secret` with ``stored=None`` (an unknown account) verifies against a fixed dummy
Argon2 hash and returns False, so an unknown account costs the same work as a known one.
:func:`verification_count` counts the hash computations of :func:`check_secret`, so tests can
show that both paths do the same work without measuring time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = [
    "ARGON2_MEMORY_KIB",
    "ARGON2_PARALLELISM",
    "ARGON2_TIME_COST",
    "KEYED_PREFIX",
    "check_secret",
    "hash_secret",
    "keyed_hash",
    "legacy_scrypt_hash",
    "needs_rehash",
    "verification_count",
]

ARGON2_TIME_COST: Final = 2
ARGON2_MEMORY_KIB: Final = 19 * 1024
ARGON2_PARALLELISM: Final = 1
#: Prefix of a keyed hash (:func:`keyed_hash`).
KEYED_PREFIX: Final = "hmac-sha256$"

_HASHER: Final = PasswordHasher(
    time_cost=ARGON2_TIME_COST,
    memory_cost=ARGON2_MEMORY_KIB,
    parallelism=ARGON2_PARALLELISM,
    hash_len=32,
    salt_len=16,
)
#: Bounds on the parameters of a stored legacy scrypt hash (a forged row must not make a login
#: allocate gigabytes): n = 2**logN with logN in [10, 20], r * p <= 64, 128 * r * n <= 128 MiB.
_SCRYPT_LOG_N_RANGE: Final = range(10, 21)
_SCRYPT_MAX_R_TIMES_P: Final = 64
_SCRYPT_MAX_MEMORY: Final = 128 * 1024 * 1024

_lock = threading.Lock()
_dummy_hash: str | None = None
_verifications = 0


def hash_secret(secret: str) -> str:
    """The Argon2id PHC string of ``secret`` with a fresh salt."""
    return _HASHER.hash(secret)


def keyed_hash(secret: str, key: bytes) -> str:
    """``hmac-sha256$<hex>``: HMAC-SHA256 of ``secret`` under ``key``. Only for secrets that are
    random and high-entropy (activation codes: 60 bits): guessing them is hopeless without a
    slow hash, and the key (not in the database) keeps a stolen database from checking guesses
    offline at all. Never for passwords or PINs."""
    return KEYED_PREFIX + hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()


def check_secret(secret: str, stored: str | None, *, key: bytes | None = None) -> bool:
    """Whether ``secret`` matches ``stored`` (a keyed HMAC under ``key``, an Argon2 or a legacy
    scrypt hash), compared in constant time. With ``stored=None`` it verifies against a dummy
    (a keyed one when ``key`` is given, else Argon2: the work a real check of new hashes costs)
    and returns False. A malformed ``stored``, or a keyed hash without the key, is a mismatch,
    never an exception."""
    if stored is None:
        if key is not None:
            _count()
            hmac.compare_digest(keyed_hash(secret, key), KEYED_PREFIX + "0" * 64)
            return False
        _verify_argon2(secret, _dummy())
        return False
    if stored.startswith(KEYED_PREFIX):
        _count()
        if key is None:
            return False
        return hmac.compare_digest(keyed_hash(secret, key).encode(), stored.encode())
    if stored.startswith("$argon2"):
        return _verify_argon2(secret, stored)
    if stored.startswith("scrypt$"):
        return _verify_scrypt(secret, stored)
    _verify_argon2(secret, _dummy())  # an unreadable hash: the same work, never a match
    return False


def needs_rehash(stored: str) -> bool:
    """Whether ``stored`` should be replaced by :func:`hash_secret` of the secret that has just
    verified against it: a legacy scrypt hash, or Argon2 with other parameters (a keyed hash
    never: it is the newest format of the secrets that use it)."""
    if stored.startswith(KEYED_PREFIX):
        return False
    if not stored.startswith("$argon2"):
        return True
    try:
        return _HASHER.check_needs_rehash(stored)
    except (InvalidHashError, ValueError):
        return True


def verification_count() -> int:
    """How many hash verifications :func:`check_secret` has done in this process."""
    with _lock:
        return _verifications


def legacy_scrypt_hash(secret: str, *, log_n: int = 14, r: int = 8, p: int = 1) -> str:
    """A hash in the former scrypt format (``scrypt$logN$r$p$salt$digest``), as databases made
    before Argon2 hold them: for tests and migrations only; new hashes use :func:`hash_secret`."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=2**log_n, r=r, p=p, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${log_n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


# -- internals --------------------------------------------------------------------------------


def _count() -> None:
    global _verifications
    with _lock:
        _verifications += 1


def _dummy() -> str:
    global _dummy_hash
    with _lock:
        if _dummy_hash is None:
            _dummy_hash = _HASHER.hash(secrets.token_hex(16))
        return _dummy_hash


def _verify_argon2(secret: str, stored: str) -> bool:
    _count()
    try:
        return _HASHER.verify(stored, secret)
    except VerifyMismatchError:
        return False
    except (VerificationError, InvalidHashError, ValueError):
        return False


def _verify_scrypt(secret: str, stored: str) -> bool:
    _count()
    try:
        _scheme, log_n_text, r_text, p_text, salt_b64, digest_b64 = stored.split("$")
        log_n, r, p = int(log_n_text), int(r_text), int(p_text)
        if (
            log_n not in _SCRYPT_LOG_N_RANGE
            or r < 1
            or p < 1
            or r * p > _SCRYPT_MAX_R_TIMES_P
            or 128 * r * 2**log_n > _SCRYPT_MAX_MEMORY
        ):
            return False
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(digest_b64, validate=True)
        if not 16 <= len(expected) <= 64:
            return False
        actual = hashlib.scrypt(
            secret.encode(),
            salt=salt,
            n=2**log_n,
            r=r,
            p=p,
            dklen=len(expected),
            maxmem=2 * _SCRYPT_MAX_MEMORY,
        )
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(actual, expected)
