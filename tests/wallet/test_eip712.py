"""EIP-712 type hashes, domain separator, digest and signing, cross-checked with eth-account."""

from __future__ import annotations

import pytest
from Crypto.Hash import keccak as pycryptodome_keccak
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_keys.datatypes import PrivateKey, Signature
from eth_utils.crypto import keccak
from hypothesis import given
from hypothesis import strategies as st

from wallet import (
    DOMAIN_NAME,
    DOMAIN_VERSION,
    EIP712_DOMAIN_TYPE,
    EIP712_DOMAIN_TYPEHASH,
    PASS_TOKEN_TYPE,
    PASS_TOKEN_TYPEHASH,
    Amount,
    Domain,
    InvalidPrivateKey,
    InvalidValue,
    PassToken,
    SignedPassToken,
    WalletError,
    address_of,
    as_private_key,
    domain_separator,
    encode_token_uri,
    pass_token_digest,
    pass_token_struct_hash,
    pass_token_typed_data,
    sign_pass_token,
)
from wallet.keys import SECP256K1_N

# Pinned: the Solidity contract's tests pin the same values.
PINNED_EIP712_DOMAIN_TYPEHASH = "8b73c3c69bb8fe3d512ecc4cf759cc79239f7b179b0ffacaa9a75d522b39400f"
PINNED_PASS_TOKEN_TYPEHASH = "e8b9ec96c2209997097e22999c833ffacd33fac8b9e78bd49be6afa7d1138d4d"

# A golden vector for other implementations (Solidity, JavaScript): hardhat/anvil account #0
# signing a fixed token for chain 31337 and the first contract anvil deploys.
GOLDEN_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
GOLDEN_SIGNER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
GOLDEN_DOMAIN = Domain(
    chain_id=31337, verifying_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3"
)
GOLDEN_TOKEN = PassToken(
    pass_id=bytes(range(32)), serial=7, expiry=1_767_225_600, amount_cap=Amount(2_500)
)

uint64 = st.integers(min_value=0, max_value=2**64 - 1)
tokens = st.builds(
    PassToken,
    pass_id=st.binary(min_size=32, max_size=32),
    serial=uint64,
    expiry=uint64,
    amount_cap=uint64.map(Amount),
)
domains = st.builds(
    Domain,
    chain_id=st.integers(min_value=1, max_value=2**64 - 1),
    verifying_contract=st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex()),
)


def test_type_strings_are_the_spec() -> None:
    assert (
        PASS_TOKEN_TYPE == "PassToken(bytes32 passId,uint64 serial,uint64 expiry,uint64 amountCap)"
    )
    assert EIP712_DOMAIN_TYPE == (
        "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
    )
    assert (DOMAIN_NAME, DOMAIN_VERSION) == ("Stadjerspas Ledger", "1")


def test_type_hashes_are_pinned() -> None:
    assert EIP712_DOMAIN_TYPEHASH.hex() == PINNED_EIP712_DOMAIN_TYPEHASH
    assert PASS_TOKEN_TYPEHASH.hex() == PINNED_PASS_TOKEN_TYPEHASH


def test_type_hashes_match_an_independent_keccak() -> None:
    for text, expected in [
        (EIP712_DOMAIN_TYPE, EIP712_DOMAIN_TYPEHASH),
        (PASS_TOKEN_TYPE, PASS_TOKEN_TYPEHASH),
    ]:
        hasher = pycryptodome_keccak.new(digest_bits=256)
        hasher.update(text.encode("ascii"))
        assert hasher.digest() == expected


@given(token=tokens, domain=domains)
def test_digest_equals_eth_account_encode_typed_data(token: PassToken, domain: Domain) -> None:
    signable = encode_typed_data(full_message=pass_token_typed_data(token, domain=domain))
    assert signable.version == b"\x01"
    assert signable.header == domain.separator
    assert signable.body == pass_token_struct_hash(token)
    full = keccak(b"\x19" + signable.version + signable.header + signable.body)
    assert pass_token_digest(token, domain=domain) == full


@given(domain=domains)
def test_domain_separator_function_matches_domain(domain: Domain) -> None:
    lower = domain.verifying_contract.lower()
    assert domain_separator(chain_id=domain.chain_id, verifying_contract=lower) == (
        domain.separator
    )


def test_domain_separator_is_the_abi_encoding() -> None:
    expected = keccak(
        EIP712_DOMAIN_TYPEHASH
        + keccak(text="Stadjerspas Ledger")
        + keccak(text="1")
        + (31337).to_bytes(32, "big")
        + bytes(12)
        + bytes.fromhex("5FbDB2315678afecb367f032d93F642f64180aa3")
    )
    assert GOLDEN_DOMAIN.separator == expected


def test_golden_vector() -> None:
    signed = sign_pass_token(GOLDEN_TOKEN, domain=GOLDEN_DOMAIN, private_key=GOLDEN_KEY)
    assert address_of(GOLDEN_KEY) == GOLDEN_SIGNER
    assert signed.digest.hex() == (
        "5fe13928a8ab179761187e92ce1abb1ae93f4b0380b4711384090c6d94b793e3"
    )
    assert encode_token_uri(signed) == (
        "stadjerspas:1:AAAAAAAAemlfvbIxVniv7LNn8DLZP2QvZBgKowABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"
        "AAAAAAAAAAcAAAAAaVW5AAAAAAAAAAnE.MOO4VTKhGDlY-Af9CL4cZgK5zZmMXDBEZK1h8cDt4aUUAdsL2HU7oSujB6dbBph"
        "gDGLj55SRs5XOc1T8W_YNGhs"
    )


@given(token=tokens, domain=domains)
def test_signature_equals_eth_account_sign_typed_data(token: PassToken, domain: Domain) -> None:
    key = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
    signed = sign_pass_token(token, domain=domain, private_key=key)
    reference = Account.sign_typed_data(
        key, full_message=pass_token_typed_data(token, domain=domain)
    )
    assert signed.signature == bytes(reference.signature)
    assert signed.signature[64] in (27, 28)
    assert int.from_bytes(signed.signature[32:64], "big") <= SECP256K1_N // 2
    signable = encode_typed_data(full_message=pass_token_typed_data(token, domain=domain))
    assert Account.recover_message(signable, signature=signed.signature) == address_of(key)


def test_sign_accepts_bytes_hex_and_private_key_objects(domain: Domain) -> None:
    key = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
    token = PassToken(pass_id=bytes(32), serial=0, expiry=1)
    expected = sign_pass_token(token, domain=domain, private_key=key)
    for form in (key.hex(), "0x" + key.hex(), "0X" + key.hex().upper(), PrivateKey(key)):
        assert sign_pass_token(token, domain=domain, private_key=form) == expected


def test_sign_normalises_a_high_s_signature(
    monkeypatch: pytest.MonkeyPatch, domain: Domain
) -> None:
    key = PrivateKey(
        bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
    )
    token = PassToken(pass_id=bytes(32), serial=3, expiry=10)
    expected = sign_pass_token(token, domain=domain, private_key=key)
    low = key.sign_msg_hash(expected.digest)
    high = Signature(vrs=(low.v ^ 1, low.r, SECP256K1_N - low.s))

    monkeypatch.setattr(PrivateKey, "sign_msg_hash", lambda self, msg_hash: high)
    assert sign_pass_token(token, domain=domain, private_key=key) == expected


def test_signed_token_digest_property(domain: Domain) -> None:
    token = PassToken(pass_id=bytes(32), serial=0, expiry=5)
    signed = sign_pass_token(token, domain=domain, private_key="0x" + "01" * 32)
    assert signed.digest == pass_token_digest(token, domain=domain)


def test_domain_normalises_the_contract_address() -> None:
    lower = Domain(chain_id=1, verifying_contract="0x5fbdb2315678afecb367f032d93f642f64180aa3")
    upper = Domain(chain_id=1, verifying_contract="0x5FBDB2315678AFECB367F032D93F642F64180AA3")
    assert lower.verifying_contract == "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    assert lower == upper


@pytest.mark.parametrize(
    ("chain_id", "contract", "fragment"),
    [
        (0, "0x5FbDB2315678afecb367f032d93F642f64180aa3", "chain_id must be >= 1, got 0"),
        (-1, "0x5FbDB2315678afecb367f032d93F642f64180aa3", "uint64 range"),
        (2**64, "0x5FbDB2315678afecb367f032d93F642f64180aa3", "uint64 range"),
        (True, "0x5FbDB2315678afecb367f032d93F642f64180aa3", "must be an int"),
        ("1", "0x5FbDB2315678afecb367f032d93F642f64180aa3", "must be an int"),
        (1, "5FbDB2315678afecb367f032d93F642f64180aa3", "0x-prefixed 20-byte hex address"),
        (1, "0x5FbDB2315678afecb367f032d93F642f64180a", "0x-prefixed 20-byte hex address"),
        (1, "0x5FbDB2315678afecb367f032d93F642f64180aaz", "0x-prefixed 20-byte hex address"),
        (1, "0x5FbDB2315678afecb367f032d93F642f64180aA3", "invalid EIP-55 checksum"),
        (1, b"\x00" * 20, "0x-prefixed 20-byte hex address"),
    ],
)
def test_domain_rejects_bad_values(chain_id: object, contract: object, fragment: str) -> None:
    with pytest.raises(InvalidValue, match=fragment) as info:
        Domain(chain_id=chain_id, verifying_contract=contract)  # type: ignore[arg-type]
    assert info.value.code == "invalid_value"
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, WalletError)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"pass_id": bytes(31)}, "pass_id must be exactly 32 bytes, got 31"),
        ({"pass_id": bytes(33)}, "pass_id must be exactly 32 bytes, got 33"),
        ({"pass_id": "11" * 32}, "pass_id must be exactly 32 bytes"),
        ({"pass_id": bytearray(32)}, "pass_id must be exactly 32 bytes"),
        ({"serial": -1}, "serial must be in the uint64 range"),
        (
            {"serial": 2**64},
            "serial must be in the uint64 range 0 .. 2\\*\\*64-1, got 18446744073709551616",
        ),
        ({"expiry": 1.5}, "expiry must be an int, got float"),
        ({"expiry": False}, "expiry must be an int, got bool"),
        ({"amount_cap": -5}, "amount_cap must be in the uint64 range"),
    ],
)
def test_pass_token_rejects_bad_values(kwargs: dict[str, object], fragment: str) -> None:
    fields: dict[str, object] = {"pass_id": bytes(32), "serial": 0, "expiry": 0, "amount_cap": 0}
    fields.update(kwargs)
    with pytest.raises(InvalidValue, match=fragment):
        PassToken(**fields)  # type: ignore[arg-type]


def test_pass_token_defaults_and_card_flag() -> None:
    token = PassToken(pass_id=bytes(32), serial=0, expiry=0)
    assert token.amount_cap == 0
    assert not token.is_card
    assert PassToken(pass_id=bytes(32), serial=1, expiry=0).is_card
    extremes = PassToken(
        pass_id=bytes(32), serial=2**64 - 1, expiry=2**64 - 1, amount_cap=Amount(2**64 - 1)
    )
    assert extremes.serial == 2**64 - 1


def test_signed_pass_token_rejects_bad_signatures(domain: Domain) -> None:
    token = PassToken(pass_id=bytes(32), serial=0, expiry=0)
    for bad in (bytes(64), bytes(66), b""):
        with pytest.raises(InvalidValue, match=f"exactly 65 bytes, got {len(bad)}"):
            SignedPassToken(token=token, domain=domain, signature=bad)
    with pytest.raises(InvalidValue, match="exactly 65 bytes"):
        SignedPassToken(token=token, domain=domain, signature="00" * 65)  # type: ignore[arg-type]
    with pytest.raises(InvalidValue, match="token must be a PassToken"):
        SignedPassToken(token="x", domain=domain, signature=bytes(65))  # type: ignore[arg-type]
    with pytest.raises(InvalidValue, match="domain must be a Domain"):
        SignedPassToken(token=token, domain=1, signature=bytes(65))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        (bytes(32), "range 1 .. n-1"),
        (SECP256K1_N.to_bytes(32, "big"), "range 1 .. n-1"),
        (b"\xff" * 32, "range 1 .. n-1"),
        (bytes(31), "must be 32 bytes, got 31"),
        ("0x1234", "64 hex digits, got 4"),
        ("zz" * 32, "only hex digits"),
        (12345, "got int"),
    ],
)
def test_invalid_private_keys(key: object, fragment: str, domain: Domain) -> None:
    with pytest.raises(InvalidPrivateKey, match=fragment) as info:
        as_private_key(key)  # type: ignore[arg-type]
    assert info.value.code == "invalid_private_key"
    token = PassToken(pass_id=bytes(32), serial=0, expiry=0)
    with pytest.raises(InvalidPrivateKey):
        sign_pass_token(token, domain=domain, private_key=key)  # type: ignore[arg-type]
