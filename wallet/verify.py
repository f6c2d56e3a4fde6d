"""Offline verification of pass tokens: no node, no database.

:func:`verify_pass_token` checks, in this order, and raises the first failure:

1. chain id equals the expected domain's       -> :class:`TokenWrongChain`
2. verifying contract equals the expected one  -> :class:`TokenWrongContract`
3. not expired (``now <= expiry + clock_skew``) -> :class:`TokenExpired`;
   for ``serial == 0`` tokens, ``expiry <= now + max_lifetime + clock_skew``
   -> :class:`TokenLifetimeTooLong`
4. signature well formed (r, s in range, low s, v 27/28) and recoverable
   -> :class:`TokenSignatureInvalid`
5. signer allowed                              -> :class:`TokenSignerNotAllowed`
6. pass id equals ``expected_pass_id`` (if given) -> :class:`TokenWrongPass`
7. card serial not revoked (``serial != 0`` and a hook given) -> :class:`TokenRevoked`

Card-serial revocation needs the registry, so callers pass ``is_serial_revoked``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TypeAlias

from eth_keys.datatypes import Signature
from eth_typing import ChecksumAddress

from wallet.eip712 import Domain, PassToken, SignedPassToken, checksummed
from wallet.errors import (
    InvalidValue,
    TokenExpired,
    TokenLifetimeTooLong,
    TokenRevoked,
    TokenSignatureInvalid,
    TokenSignerNotAllowed,
    TokenWrongChain,
    TokenWrongContract,
    TokenWrongPass,
)
from wallet.keys import SECP256K1_N

__all__ = [
    "DEFAULT_CLOCK_SKEW_S",
    "DEFAULT_MAX_LIFETIME_S",
    "AllowedSigners",
    "VerifiedPassToken",
    "recover_signer",
    "verify_pass_token",
]

#: Tolerance for the verifier's clock being behind/ahead of the signer's.
DEFAULT_CLOCK_SKEW_S = 5
#: Longest accepted lifetime (expiry - now) of a short-lived (serial 0) token.
DEFAULT_MAX_LIFETIME_S = 15 * 60

_HALF_N = SECP256K1_N // 2

#: Either a collection of addresses (any case) or ``f(signer, token) -> bool``.
AllowedSigners: TypeAlias = Collection[str] | Callable[[ChecksumAddress, PassToken], bool]


@dataclass(frozen=True)
class VerifiedPassToken:
    """A token that passed :func:`verify_pass_token`, with the address that signed it."""

    token: PassToken
    domain: Domain
    signer: ChecksumAddress


@functools.lru_cache(maxsize=8192)
def recover_signer(signed: SignedPassToken) -> ChecksumAddress:
    """Return the address that signed ``signed``.

    Refuses (with :class:`TokenSignatureInvalid`) what the contract would refuse: ``v`` not 27/28,
    ``r`` or ``s`` zero or ``>= n``, high ``s`` (EIP-2 malleability), or no recoverable key.

    Cached (the signer of a given token never changes, and recovery is the costly part of a
    verification: a pass is scanned, then redeemed, often more than once): what a token
    *may* do (expiry, allowed signers) is still checked by :func:`verify_pass_token` each time.
    Refusals are not cached.
    """
    signature = signed.signature
    r = int.from_bytes(signature[0:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if v not in (27, 28):
        raise TokenSignatureInvalid(f"signature v must be 27 or 28, got {v}", v=v)
    if not 0 < r < SECP256K1_N:
        raise TokenSignatureInvalid(f"signature r must be in 1 .. n-1, got {r:#x}")
    if not 0 < s <= _HALF_N:
        raise TokenSignatureInvalid(f"signature s must be in 1 .. n/2 (low-s, EIP-2), got {s:#x}")
    try:
        public_key = Signature(vrs=(v - 27, r, s)).recover_public_key_from_msg_hash(signed.digest)
    except Exception as exc:  # eth-keys backends raise various types
        raise TokenSignatureInvalid(
            f"signature does not recover to a public key ({type(exc).__name__}: {exc})"
        ) from None
    return checksummed(public_key.to_canonical_address())


def _signer_allowed(
    signer: ChecksumAddress, token: PassToken, allowed_signers: AllowedSigners
) -> bool:
    if callable(allowed_signers):
        return bool(allowed_signers(signer, token))
    if signer in allowed_signers:
        return True
    lowered = signer.lower()
    return any(isinstance(a, str) and a.lower() == lowered for a in allowed_signers)


def verify_pass_token(
    signed: SignedPassToken,
    *,
    expected_domain: Domain,
    now: int,
    allowed_signers: AllowedSigners,
    max_lifetime_s: int | None = DEFAULT_MAX_LIFETIME_S,
    clock_skew_s: int = DEFAULT_CLOCK_SKEW_S,
    expected_pass_id: bytes | None = None,
    is_serial_revoked: Callable[[bytes, int], bool] | None = None,
) -> VerifiedPassToken:
    """Verify a decoded token offline; return it with its signer or raise a
    :class:`~wallet.errors.PassTokenError` subclass (see the module docs for the order).

    ``now`` is unix seconds. ``max_lifetime_s=None`` disables the lifetime check of serial-0
    tokens. ``is_serial_revoked(pass_id, serial)`` is called only for card tokens
    (``serial != 0``) that passed every other check.
    """
    if isinstance(allowed_signers, str):
        raise InvalidValue(
            "allowed_signers must be a collection of addresses or a callable, not one str "
            f"({allowed_signers!r}); wrap it: {{address}}"
        )
    if clock_skew_s < 0:
        raise InvalidValue(f"clock_skew_s must be >= 0, got {clock_skew_s}")
    if max_lifetime_s is not None and max_lifetime_s < 0:
        raise InvalidValue(f"max_lifetime_s must be >= 0 or None, got {max_lifetime_s}")
    token, domain = signed.token, signed.domain
    if domain.chain_id != expected_domain.chain_id:
        raise TokenWrongChain(
            f"token is for chain id {domain.chain_id}, this verifier accepts chain id "
            f"{expected_domain.chain_id}",
            chain_id=domain.chain_id,
            expected_chain_id=expected_domain.chain_id,
        )
    if domain.verifying_contract != expected_domain.verifying_contract:
        raise TokenWrongContract(
            f"token is for contract {domain.verifying_contract}, this verifier accepts "
            f"{expected_domain.verifying_contract}",
            verifying_contract=domain.verifying_contract,
            expected_verifying_contract=expected_domain.verifying_contract,
        )
    if now > token.expiry + clock_skew_s:
        raise TokenExpired(
            f"token expired at {token.expiry} (unix s), {now - token.expiry} s before now "
            f"({now}); tokens are valid up to their expiry plus {clock_skew_s} s clock skew",
            expiry=token.expiry,
            now=now,
        )
    if (
        token.serial == 0
        and max_lifetime_s is not None
        and token.expiry > now + max_lifetime_s + clock_skew_s
    ):
        raise TokenLifetimeTooLong(
            f"short-lived token (serial 0) expires at {token.expiry}, {token.expiry - now} s "
            f"from now ({now}); at most {max_lifetime_s} s (+{clock_skew_s} s skew) is allowed",
            expiry=token.expiry,
            now=now,
            max_lifetime_s=max_lifetime_s,
        )
    signer = recover_signer(signed)
    if not _signer_allowed(signer, token, allowed_signers):
        raise TokenSignerNotAllowed(
            f"token is signed by {signer}, which is neither the pass's key nor a pass signer",
            signer=signer,
        )
    if expected_pass_id is not None and token.pass_id != expected_pass_id:
        raise TokenWrongPass(
            f"token is for pass 0x{token.pass_id.hex()}, expected 0x{expected_pass_id.hex()}",
            pass_id="0x" + token.pass_id.hex(),
        )
    if (
        token.serial != 0
        and is_serial_revoked is not None
        and is_serial_revoked(token.pass_id, token.serial)
    ):
        raise TokenRevoked(
            f"card serial {token.serial} of pass 0x{token.pass_id.hex()} is revoked "
            f"(replaced or blocked card)",
            serial=token.serial,
        )
    return VerifiedPassToken(token=token, domain=domain, signer=signer)
