"""EIP-712 typed data for pass tokens, computed directly with keccak and ABI encoding.

Domain: ``EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)``
with ``name = "Stadjerspas Ledger"`` and ``version = "1"``.

Struct: ``PassToken(bytes32 passId,uint64 serial,uint64 expiry,uint64 amountCap)``.

``digest = keccak256(0x1901 || domainSeparator || keccak256(abi.encode(PASS_TOKEN_TYPEHASH,
passId, serial, expiry, amountCap)))``, exactly what the Solidity contract computes.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from wallet.errors import InvalidValue
from wallet.keys import SECP256K1_N, PrivateKeyLike, as_private_key
from wallet.units import UINT64_MAX, Amount

__all__ = [
    "DOMAIN_NAME",
    "DOMAIN_VERSION",
    "EIP712_DOMAIN_TYPE",
    "EIP712_DOMAIN_TYPEHASH",
    "PASS_TOKEN_TYPE",
    "PASS_TOKEN_TYPEHASH",
    "SIGNATURE_LENGTH",
    "Domain",
    "PassToken",
    "SignedPassToken",
    "domain_separator",
    "pass_token_digest",
    "pass_token_struct_hash",
    "pass_token_typed_data",
    "sign_pass_token",
]

DOMAIN_NAME = "Stadjerspas Ledger"
DOMAIN_VERSION = "1"
EIP712_DOMAIN_TYPE = (
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
EIP712_DOMAIN_TYPEHASH: bytes = keccak(text=EIP712_DOMAIN_TYPE)
PASS_TOKEN_TYPE = "PassToken(bytes32 passId,uint64 serial,uint64 expiry,uint64 amountCap)"  # noqa: S105
PASS_TOKEN_TYPEHASH: bytes = keccak(text=PASS_TOKEN_TYPE)

_NAME_HASH = keccak(text=DOMAIN_NAME)
_VERSION_HASH = keccak(text=DOMAIN_VERSION)
_HALF_N = SECP256K1_N // 2

#: Length of a signature ``r (32) | s (32) | v (1)``.
SIGNATURE_LENGTH = 65

_ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}\Z")


def _check_uint64(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValue(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not 0 <= value <= UINT64_MAX:
        raise InvalidValue(f"{name} must be in the uint64 range 0 .. 2**64-1, got {value}")
    return value


@functools.lru_cache(maxsize=1024)
def checksummed(address: str | bytes) -> ChecksumAddress:
    """EIP-55 form of ``address`` (cached: a verifier sees the same few contract and signer
    addresses over and over, and each checksum costs a keccak)."""
    return to_checksum_address(address)


def _checksum(address: object, name: str) -> ChecksumAddress:
    if not isinstance(address, str) or not _ADDRESS_RE.match(address):
        raise InvalidValue(f"{name} must be a 0x-prefixed 20-byte hex address, got {address!r}")
    checksummed_address = checksummed(address)
    body = address[2:]
    if body != body.lower() and body != body.upper() and address != checksummed_address:
        raise InvalidValue(
            f"{name} {address!r} has mixed case but an invalid EIP-55 checksum "
            f"(expected {checksummed_address!r})"
        )
    return checksummed_address


@dataclass(frozen=True)
class Domain:
    """The EIP-712 domain: which chain and which ledger contract a token is for.

    ``verifying_contract`` may be given in any case; it is stored EIP-55 checksummed
    (a mixed-case address must carry a valid checksum).
    """

    chain_id: int
    verifying_contract: str

    def __post_init__(self) -> None:
        chain_id = _check_uint64(self.chain_id, "chain_id")
        if chain_id == 0:
            raise InvalidValue("chain_id must be >= 1, got 0")
        object.__setattr__(
            self, "verifying_contract", _checksum(self.verifying_contract, "verifying_contract")
        )

    @property
    def separator(self) -> bytes:
        """The EIP-712 domain separator (cached)."""
        return _domain_separator(self.chain_id, self.verifying_contract)


@dataclass(frozen=True)
class PassToken:
    """The signed message: which pass, which card serial (0 = short-lived), until when, cap.

    - ``serial == 0``: a short-lived token (app / web page), valid until ``expiry``.
    - ``serial != 0``: a printed card, valid while ``serial`` is the pass's current card serial.
    - ``amount_cap == 0``: no cap.

    ``expiry`` is unix seconds; the token is valid up to and including that second.
    """

    pass_id: bytes
    serial: int
    expiry: int
    amount_cap: Amount = Amount(0)  # noqa: RUF009 - NewType call is the identity

    def __post_init__(self) -> None:
        if not isinstance(self.pass_id, bytes) or len(self.pass_id) != 32:
            shown = self.pass_id.hex() if isinstance(self.pass_id, bytes) else repr(self.pass_id)
            size = len(self.pass_id) if isinstance(self.pass_id, bytes) else "?"
            raise InvalidValue(f"pass_id must be exactly 32 bytes, got {size}: {shown}")
        _check_uint64(self.serial, "serial")
        _check_uint64(self.expiry, "expiry")
        _check_uint64(self.amount_cap, "amount_cap")

    @property
    def is_card(self) -> bool:
        """True for a printed-card token (``serial != 0``)."""
        return self.serial != 0


@dataclass(frozen=True)
class SignedPassToken:
    """A pass token, its domain and a 65-byte signature ``r | s | v`` (v = 27 or 28).

    Construction checks only the signature's length; :func:`wallet.verify_pass_token`
    checks the rest.
    """

    token: PassToken
    domain: Domain
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.token, PassToken):
            raise InvalidValue(f"token must be a PassToken, got {type(self.token).__name__}")
        if not isinstance(self.domain, Domain):
            raise InvalidValue(f"domain must be a Domain, got {type(self.domain).__name__}")
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_LENGTH:
            size = len(self.signature) if isinstance(self.signature, bytes) else "?"
            raise InvalidValue(f"signature must be exactly {SIGNATURE_LENGTH} bytes, got {size}")

    @functools.cached_property
    def digest(self) -> bytes:
        """The EIP-712 digest that was signed (computed once per token object)."""
        return pass_token_digest(self.token, domain=self.domain)


def _uint256(value: int) -> bytes:
    return value.to_bytes(32, "big")


@lru_cache(maxsize=256)
def _domain_separator(chain_id: int, verifying_contract: str) -> bytes:
    return keccak(
        EIP712_DOMAIN_TYPEHASH
        + _NAME_HASH
        + _VERSION_HASH
        + _uint256(chain_id)
        + bytes(12)
        + bytes.fromhex(verifying_contract[2:])
    )


def domain_separator(*, chain_id: int, verifying_contract: str) -> bytes:
    """Return ``keccak256(abi.encode(EIP712_DOMAIN_TYPEHASH, keccak(name), keccak(version),
    chainId, verifyingContract))``."""
    return Domain(chain_id=chain_id, verifying_contract=verifying_contract).separator


def pass_token_struct_hash(token: PassToken) -> bytes:
    """Return ``keccak256(abi.encode(PASS_TOKEN_TYPEHASH, passId, serial, expiry, amountCap))``."""
    return keccak(
        PASS_TOKEN_TYPEHASH
        + token.pass_id
        + _uint256(token.serial)
        + _uint256(token.expiry)
        + _uint256(token.amount_cap)
    )


def pass_token_digest(token: PassToken, *, domain: Domain) -> bytes:
    """Return the 32-byte EIP-712 digest ``keccak256(0x1901 || separator || structHash)``."""
    return keccak(b"\x19\x01" + domain.separator + pass_token_struct_hash(token))


def pass_token_typed_data(token: PassToken, *, domain: Domain) -> dict[str, Any]:
    """Return the token as a JSON-serialisable EIP-712 message (``eth_signTypedData_v4``)."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "PassToken": [
                {"name": "passId", "type": "bytes32"},
                {"name": "serial", "type": "uint64"},
                {"name": "expiry", "type": "uint64"},
                {"name": "amountCap", "type": "uint64"},
            ],
        },
        "primaryType": "PassToken",
        "domain": {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": domain.chain_id,
            "verifyingContract": domain.verifying_contract,
        },
        "message": {
            "passId": "0x" + token.pass_id.hex(),
            "serial": token.serial,
            "expiry": token.expiry,
            "amountCap": token.amount_cap,
        },
    }


def sign_pass_token(
    token: PassToken, *, domain: Domain, private_key: PrivateKeyLike
) -> SignedPassToken:
    """Sign ``token`` for ``domain`` (low-s, v = 27/28) without any node.

    For repeated signing pass an ``eth_keys.PrivateKey`` (see
    :func:`wallet.keys.as_private_key`) so the public key is not re-derived each time.
    """
    key = as_private_key(private_key)
    signature = key.sign_msg_hash(pass_token_digest(token, domain=domain))
    r, s, v = signature.r, signature.s, signature.v
    if s > _HALF_N:  # normalise to low-s (EIP-2); libsecp256k1 already does this
        s, v = SECP256K1_N - s, v ^ 1
    return SignedPassToken(
        token=token,
        domain=domain,
        signature=_uint256(r) + _uint256(s) + bytes([v + 27]),
    )
