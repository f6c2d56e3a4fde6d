"""EIP-712 is defined once per language: Solidity (`LedgerHashes`, OpenZeppelin `EIP712`) and
`wallet.eip712`. These tests prove that both give the same type hash, domain separator and digests.
"""

from __future__ import annotations

import re
from pathlib import Path

from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.ledger.conftest import LedgerEnv
from wallet.eip712 import (
    DOMAIN_NAME,
    DOMAIN_VERSION,
    EIP712_DOMAIN_TYPEHASH,
    PASS_TOKEN_TYPE,
    PASS_TOKEN_TYPEHASH,
    Domain,
    PassToken,
    domain_separator,
    pass_token_digest,
    pass_token_struct_hash,
)
from wallet.units import Amount

# Pinned: tests/wallet/test_eip712.py pins the same values on the Python side alone.
PINNED_PASS_TOKEN_TYPEHASH = "e8b9ec96c2209997097e22999c833ffacd33fac8b9e78bd49be6afa7d1138d4d"
PINNED_EIP712_DOMAIN_TYPEHASH = "8b73c3c69bb8fe3d512ecc4cf759cc79239f7b179b0ffacaa9a75d522b39400f"
UINT64_MAX = 2**64 - 1

TOKENS = [
    PassToken(pass_id=bytes(32), serial=0, expiry=0, amount_cap=Amount(0)),
    PassToken(pass_id=bytes(range(32)), serial=7, expiry=1_767_225_600, amount_cap=Amount(2_500)),
    PassToken(
        pass_id=b"\xff" * 32, serial=UINT64_MAX, expiry=UINT64_MAX, amount_cap=Amount(UINT64_MAX)
    ),
    PassToken(pass_id=keccak(text="P123456"), serial=0, expiry=1_800_000_000, amount_cap=Amount(0)),
    PassToken(pass_id=b"\x80" + bytes(31), serial=1, expiry=1, amount_cap=Amount(1)),
]


def _solidity_source(project_root: Path) -> str:
    return (project_root / "contracts" / "libraries" / "LedgerHashes.sol").read_text("utf-8")


def test_pass_token_type_hash_is_pinned_in_both_languages(deployed: LedgerEnv) -> None:
    on_chain = bytes(deployed.client.contract.functions.PASS_TOKEN_TYPEHASH().call())
    assert on_chain.hex() == PINNED_PASS_TOKEN_TYPEHASH
    assert PASS_TOKEN_TYPEHASH.hex() == PINNED_PASS_TOKEN_TYPEHASH
    assert keccak(text=PASS_TOKEN_TYPE).hex() == PINNED_PASS_TOKEN_TYPEHASH


def test_domain_type_hash_is_pinned() -> None:
    assert EIP712_DOMAIN_TYPEHASH.hex() == PINNED_EIP712_DOMAIN_TYPEHASH


def test_solidity_type_string_equals_wallet_type_string(project_root: Path) -> None:
    source = _solidity_source(project_root)
    declared = re.search(
        r"PASS_TOKEN_TYPEHASH\s*=\s*keccak256\(\s*\"([^\"]+)\"\s*\)", source, re.MULTILINE
    )
    assert declared is not None, 'PASS_TOKEN_TYPEHASH = keccak256("...") not found'
    assert declared.group(1) == PASS_TOKEN_TYPE
    # The doc comment above it quotes the same string.
    documented = re.search(r"///\s*@dev\s*keccak256\(\"([^\"]+)\"\)", source)
    assert documented is not None
    assert documented.group(1) == PASS_TOKEN_TYPE


def test_domain_separator_matches(deployed: LedgerEnv) -> None:
    client = deployed.client
    on_chain = bytes(client.contract.functions.DOMAIN_SEPARATOR().call())
    assert on_chain == client.domain.separator
    assert on_chain == domain_separator(chain_id=client.chain_id, verifying_contract=client.address)
    other_chain = Domain(chain_id=client.chain_id + 1, verifying_contract=client.address)
    other_contract = Domain(chain_id=client.chain_id, verifying_contract="0x" + "22" * 20)
    assert on_chain not in (other_chain.separator, other_contract.separator)


def test_erc5267_domain_fields_match_the_wallet(deployed: LedgerEnv) -> None:
    client = deployed.client
    fields, name, version, chain_id, contract, salt, extensions = (
        client.contract.functions.eip712Domain().call()
    )
    assert fields == b"\x0f"  # name, version, chainId, verifyingContract
    assert (name, version) == (DOMAIN_NAME, DOMAIN_VERSION)
    assert chain_id == client.domain.chain_id
    assert contract == client.domain.verifying_contract
    assert salt == bytes(32)
    assert extensions == []


def test_pass_token_digests_match_for_several_tokens(deployed: LedgerEnv) -> None:
    client = deployed.client
    for token in TOKENS:
        on_chain = client.contract.functions.passTokenDigest(
            token.pass_id, token.serial, token.expiry, token.amount_cap
        ).call()
        assert bytes(on_chain) == pass_token_digest(token, domain=client.domain), token
        # And the parts: 0x1901 || separator || struct hash.
        assert bytes(on_chain) == keccak(
            b"\x19\x01" + client.domain.separator + pass_token_struct_hash(token)
        )


def test_digests_of_distinct_tokens_differ(deployed: LedgerEnv) -> None:
    client = deployed.client
    digests = {
        bytes(
            client.contract.functions.passTokenDigest(
                t.pass_id, t.serial, t.expiry, t.amount_cap
            ).call()
        )
        for t in TOKENS
    }
    assert len(digests) == len(TOKENS)


uint64 = st.integers(min_value=0, max_value=UINT64_MAX)


@settings(max_examples=40, deadline=None)
@given(
    pass_id=st.binary(min_size=32, max_size=32),
    serial=uint64,
    expiry=uint64,
    amount_cap=uint64,
)
def test_pass_token_digest_matches_for_any_token(
    deployed: LedgerEnv, pass_id: bytes, serial: int, expiry: int, amount_cap: int
) -> None:
    token = PassToken(pass_id=pass_id, serial=serial, expiry=expiry, amount_cap=Amount(amount_cap))
    client = deployed.client
    on_chain = client.contract.functions.passTokenDigest(pass_id, serial, expiry, amount_cap).call()
    assert bytes(on_chain) == pass_token_digest(token, domain=client.domain)
