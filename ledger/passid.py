"""Pass pseudonyms: the only way a pass appears on chain.

``passId = HMAC-SHA256(pass_secret, pass_number)``. The secret is 32 random bytes per holder kept in
the off-chain registry; erasing it (GDPR article 17) leaves the on-chain history consistent but no
longer linkable to the person.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from ledger.errors import LedgerError

__all__ = ["PASS_SECRET_BYTES", "PassIdError", "new_pass_secret", "pass_id"]

PASS_SECRET_BYTES = 32


class PassIdError(LedgerError):
    """A pass secret or pass number cannot make a pass id."""


def new_pass_secret() -> bytes:
    """A fresh random per-holder secret."""
    return secrets.token_bytes(PASS_SECRET_BYTES)


def pass_id(*, pass_secret: bytes, pass_number: str) -> bytes:
    """The 32-byte pseudonym of ``pass_number`` under ``pass_secret``."""
    if len(pass_secret) != PASS_SECRET_BYTES:
        raise PassIdError(
            f"pass secret is {len(pass_secret)} bytes; it must be {PASS_SECRET_BYTES} random bytes"
        )
    number = pass_number.strip()
    if not number or not number.isascii() or not number.isalnum():
        raise PassIdError(f"pass number {pass_number!r} must be non-empty ASCII letters and digits")
    return hmac.new(pass_secret, number.encode("ascii"), hashlib.sha256).digest()
