"""The key activation codes are hashed under (HMAC-SHA256), derived from the auth secret.

``HMAC(STADJERSPAS_AUTH_SECRET, "stadjerspas activation codes v1")``: the same derivation as the
short codes' key (:mod:`api.short_codes`), with its own label, so the service and the
``stadjerspas letters`` command (which reads the same settings) agree without another secret to
manage. Rotating the auth secret makes every outstanding activation code (HMAC-hashed) invalid:
print new letters after a rotation (Argon2 hashes of older codes are not affected).
"""

from __future__ import annotations

import hashlib
import hmac

from api.settings import Settings

__all__ = ["activation_code_key"]

_LABEL = b"stadjerspas activation codes v1"


def activation_code_key(settings: Settings) -> bytes:
    """The 32-byte activation-code key of these settings."""
    secret = settings.auth_secret
    assert secret is not None  # settings validation guarantees it
    return hmac.new(secret.get_secret_value().encode(), _LABEL, hashlib.sha256).digest()
