"""Fixtures for the wallet tests: fixed keys, a domain and token factories."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from eth_keys.datatypes import PrivateKey

from wallet import Amount, Domain, PassToken, SignedPassToken, address_of, sign_pass_token

# Fixed keys so failures are reproducible (never use these anywhere real).
HOLDER_KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
PASS_SIGNER_KEY = bytes.fromhex("8da4ef21b864d2cc526dbdb2a120bd2874c36c9d0a1fb7f8c63d7f7a8b41de8f")
STRANGER_KEY = bytes.fromhex("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")

CHAIN_ID = 31337
CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
OTHER_CONTRACT = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
NOW = 1_750_000_000
PASS_ID = bytes.fromhex("11" * 32)


@pytest.fixture
def domain() -> Domain:
    return Domain(chain_id=CHAIN_ID, verifying_contract=CONTRACT)


@pytest.fixture
def holder_key() -> PrivateKey:
    return PrivateKey(HOLDER_KEY)


@pytest.fixture
def holder_address() -> str:
    return address_of(HOLDER_KEY)


@pytest.fixture
def pass_signer_address() -> str:
    return address_of(PASS_SIGNER_KEY)


MakeSigned = Callable[..., SignedPassToken]


@pytest.fixture
def make_signed(domain: Domain) -> MakeSigned:
    """Build and sign a token; keyword overrides for every field, the domain and the key."""

    def make(
        *,
        pass_id: bytes = PASS_ID,
        serial: int = 0,
        expiry: int = NOW + 120,
        amount_cap: int = 0,
        domain: Domain = domain,
        key: bytes = HOLDER_KEY,
    ) -> SignedPassToken:
        token = PassToken(
            pass_id=pass_id, serial=serial, expiry=expiry, amount_cap=Amount(amount_cap)
        )
        return sign_pass_token(token, domain=domain, private_key=key)

    return make


@pytest.fixture
def now() -> int:
    return NOW


@pytest.fixture
def pass_id() -> bytes:
    return PASS_ID


@pytest.fixture
def other_contract() -> str:
    return OTHER_CONTRACT


@pytest.fixture
def pass_signer_key() -> bytes:
    return PASS_SIGNER_KEY


@pytest.fixture
def stranger_key() -> bytes:
    return STRANGER_KEY
