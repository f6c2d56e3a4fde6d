"""The pass token URI carried in the QR code.

::

    stadjerspas:1:<base64url(payload)>.<base64url(signature)>

base64url without padding; ``payload`` is 84 bytes big-endian
``chainId (8) | verifyingContract (20) | passId (32) | serial (8) | expiry (8) | amountCap (8)``
and ``signature`` is 65 bytes ``r (32) | s (32) | v (1, 27 or 28)``. A complete URI is
:data:`TOKEN_URI_LENGTH` (214) characters.

:func:`decode_token_uri` is strict and total: for *any* input it returns a
:class:`~wallet.eip712.SignedPassToken` or raises a :class:`~wallet.errors.PassTokenError`
(never another exception type). It does not check the signature: see
:func:`wallet.verify_pass_token`.
"""

from __future__ import annotations

import base64
import re

from wallet.eip712 import SIGNATURE_LENGTH, Domain, PassToken, SignedPassToken, checksummed
from wallet.errors import (
    InvalidValue,
    TokenMalformed,
    TokenTooLong,
    TokenTruncated,
    TokenUnsupportedVersion,
)
from wallet.units import Amount

__all__ = [
    "MAX_TOKEN_URI_LENGTH",
    "PAYLOAD_LENGTH",
    "TOKEN_URI_LENGTH",
    "TOKEN_URI_SCHEME",
    "TOKEN_URI_VERSION",
    "TOKEN_WHITESPACE",
    "decode_token_uri",
    "encode_token_uri",
]

TOKEN_URI_SCHEME = "stadjerspas"  # noqa: S105
TOKEN_URI_VERSION = 1
_PREFIX = f"{TOKEN_URI_SCHEME}:{TOKEN_URI_VERSION}:"
_SCHEME_PREFIX = f"{TOKEN_URI_SCHEME}:"

#: Bytes in the payload: chainId 8 + contract 20 + passId 32 + serial 8 + expiry 8 + cap 8.
PAYLOAD_LENGTH = 84
_PAYLOAD_CHARS = 112  # base64url of 84 bytes, no padding
_SIGNATURE_CHARS = 87  # base64url of 65 bytes, no padding
#: Length of every valid version-1 token URI.
TOKEN_URI_LENGTH = len(_PREFIX) + _PAYLOAD_CHARS + 1 + _SIGNATURE_CHARS
#: What is ignored around a token: whitespace, ASCII and Unicode (a paste from a phone), but
#: not the control characters \x1c-\x1f that ``str.isspace()`` also counts.
TOKEN_WHITESPACE = "".join(
    chr(code) for code in range(0x3001) if chr(code).isspace() and not 0x1C <= code <= 0x1F
)

#: Inputs longer than this (before stripping whitespace) are refused without parsing.
MAX_TOKEN_URI_LENGTH = 512

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*\Z")
_BAD_CHAR = re.compile(r"[^A-Za-z0-9_-]")
_VERSION = re.compile(r"[0-9]{1,9}\Z")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def encode_token_uri(signed: SignedPassToken) -> str:
    """Return ``stadjerspas:1:<payload>.<signature>`` for a signed token."""
    token, domain = signed.token, signed.domain
    payload = (
        domain.chain_id.to_bytes(8, "big")
        + bytes.fromhex(domain.verifying_contract[2:])
        + token.pass_id
        + token.serial.to_bytes(8, "big")
        + token.expiry.to_bytes(8, "big")
        + token.amount_cap.to_bytes(8, "big")
    )
    return f"{_PREFIX}{_b64(payload)}.{_b64(signed.signature)}"


def _excerpt(text: str, limit: int = 48) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _decode_part(part: str, *, name: str, chars: int, size: int) -> bytes:
    """Decode one canonical, unpadded base64url part of exactly ``chars`` characters."""
    bad = _BAD_CHAR.search(part)
    if bad is not None:
        char = bad.group()
        rule = (
            "base64url must be unpadded"
            if char == "="
            else "only base64url characters A-Z a-z 0-9 - _ are allowed"
        )
        raise TokenMalformed(
            f"{name} has character {char!r} at position {bad.start()}: {rule}",
            part=name,
        )
    if len(part) != chars:
        raise TokenMalformed(
            f"{name} must be {chars} base64url characters ({size} bytes), got {len(part)}",
            part=name,
        )
    data = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    if _b64(data) != part:
        raise TokenMalformed(
            f"{name} is not canonical base64url: the unused low bits of its last "
            f"character {part[-1]!r} must be zero",
            part=name,
        )
    return data


def decode_token_uri(text: str | bytes) -> SignedPassToken:
    """Parse a token URI (surrounding whitespace is ignored) into a :class:`SignedPassToken`.

    Raises :class:`TokenTooLong` (more than :data:`MAX_TOKEN_URI_LENGTH` characters),
    :class:`TokenTruncated` (the text stops before the token ends),
    :class:`TokenUnsupportedVersion`, or :class:`TokenMalformed` (anything else unparseable).
    ``bytes`` (as some scanners deliver) must be ASCII.
    """
    if isinstance(text, bytes):
        if len(text) > MAX_TOKEN_URI_LENGTH:
            raise TokenTooLong(
                f"token is {len(text)} bytes long; at most {MAX_TOKEN_URI_LENGTH} are accepted"
            )
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError as exc:
            raise TokenMalformed(
                f"token bytes must be ASCII, got byte {text[exc.start : exc.start + 1]!r} "
                f"at position {exc.start}"
            ) from None
    if not isinstance(text, str):
        raise TokenMalformed(f"token must be a str or bytes, got {type(text).__name__}")
    if len(text) > MAX_TOKEN_URI_LENGTH:
        raise TokenTooLong(
            f"token is {len(text)} characters long; at most {MAX_TOKEN_URI_LENGTH} are accepted"
        )
    # Whitespace only (str.strip() would also drop the control characters \x1c-\x1f).
    text = text.strip(TOKEN_WHITESPACE)
    if not text:
        raise TokenMalformed("token is empty")
    if not text.startswith(_SCHEME_PREFIX):
        if _PREFIX.startswith(text):
            raise TokenTruncated(f"token {text!r} stops inside the prefix {_PREFIX!r}")
        raise TokenMalformed(
            f"token {_excerpt(text)} does not start with {_SCHEME_PREFIX!r} "
            f"(the scheme is lower case)"
        )
    version, colon, body = text[len(_SCHEME_PREFIX) :].partition(":")
    if not _VERSION.match(version):
        if not colon and not version:
            raise TokenTruncated(f"token {text!r} stops before its version")
        raise TokenMalformed(
            f"token version {_excerpt(version)} is not a decimal number (expected {_PREFIX!r}...)"
        )
    if version != str(TOKEN_URI_VERSION):
        raise TokenUnsupportedVersion(
            f"token version {version!r} is not supported; this verifier reads version "
            f"{TOKEN_URI_VERSION}",
            version=version,
        )
    if not colon:
        raise TokenTruncated(f"token {text!r} stops after its version")
    parts = body.split(".")
    if len(parts) > 2:
        raise TokenMalformed(
            f"token has {len(parts)} dot-separated parts after {_PREFIX!r}; "
            f"expected exactly 2 (payload.signature)"
        )
    if len(parts) == 1:
        (payload_text,) = parts
        if _BASE64URL.match(payload_text) and len(payload_text) <= _PAYLOAD_CHARS:
            raise TokenTruncated(
                f"token stops after {len(payload_text)} of {_PAYLOAD_CHARS} payload "
                f"characters, before the '.signature' part"
            )
        _decode_part(payload_text, name="payload", chars=_PAYLOAD_CHARS, size=PAYLOAD_LENGTH)
        raise TokenMalformed("token has no '.signature' part after its payload")
    payload_text, signature_text = parts
    payload = _decode_part(payload_text, name="payload", chars=_PAYLOAD_CHARS, size=PAYLOAD_LENGTH)
    if _BASE64URL.match(signature_text) and len(signature_text) < _SIGNATURE_CHARS:
        raise TokenTruncated(
            f"token stops after {len(signature_text)} of {_SIGNATURE_CHARS} signature characters"
        )
    signature = _decode_part(
        signature_text, name="signature", chars=_SIGNATURE_CHARS, size=SIGNATURE_LENGTH
    )
    try:
        domain = Domain(
            chain_id=int.from_bytes(payload[0:8], "big"),
            verifying_contract=checksummed(bytes(payload[8:28])),
        )
        token = PassToken(
            pass_id=payload[28:60],
            serial=int.from_bytes(payload[60:68], "big"),
            expiry=int.from_bytes(payload[68:76], "big"),
            amount_cap=Amount(int.from_bytes(payload[76:84], "big")),
        )
        return SignedPassToken(token=token, domain=domain, signature=signature)
    except InvalidValue as exc:
        raise TokenMalformed(f"token payload is invalid: {exc.message}") from None
