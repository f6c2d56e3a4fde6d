"""Offline verification: every refusal, the order of the checks, the hooks."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wallet import (
    Domain,
    InvalidValue,
    PassToken,
    PassTokenError,
    SignedPassToken,
    TokenExpired,
    TokenLifetimeTooLong,
    TokenRevoked,
    TokenSignatureInvalid,
    TokenSignerNotAllowed,
    TokenWrongChain,
    TokenWrongContract,
    TokenWrongPass,
    VerifiedPassToken,
    address_of,
    decode_token_uri,
    encode_token_uri,
    recover_signer,
    verify_pass_token,
)
from wallet.keys import SECP256K1_N
from wallet.verify import DEFAULT_CLOCK_SKEW_S, DEFAULT_MAX_LIFETIME_S

SECP256K1_P = 2**256 - 2**32 - 977


def with_signature(signed: SignedPassToken, signature: bytes) -> SignedPassToken:
    return dataclasses.replace(signed, signature=signature)


def parts(signed: SignedPassToken) -> tuple[int, int, int]:
    sig = signed.signature
    return int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64]


def pack(r: int, s: int, v: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v])


@pytest.fixture
def verify(domain, now, holder_address, pass_signer_address):
    """verify_pass_token with this test module's defaults; keyword overrides."""

    def run(signed: SignedPassToken, **overrides: object) -> VerifiedPassToken:
        kwargs: dict[str, object] = {
            "expected_domain": domain,
            "now": now,
            "allowed_signers": {holder_address, pass_signer_address},
        }
        kwargs.update(overrides)
        return verify_pass_token(signed, **kwargs)  # type: ignore[arg-type]

    return run


def test_a_valid_holder_token_verifies(make_signed, verify, holder_address, domain) -> None:
    signed = make_signed()
    verified = verify(signed)
    assert verified == VerifiedPassToken(token=signed.token, domain=domain, signer=holder_address)


def test_a_valid_card_token_signed_by_the_pass_signer(
    make_signed, verify, pass_signer_key, pass_signer_address, now
) -> None:
    signed = make_signed(serial=3, expiry=now + 5 * 365 * 86400, key=pass_signer_key)
    assert verify(signed).signer == pass_signer_address


def test_after_a_uri_round_trip(make_signed, verify, holder_address) -> None:
    signed = decode_token_uri(encode_token_uri(make_signed(amount_cap=750)))
    verified = verify(signed)
    assert verified.signer == holder_address
    assert verified.token.amount_cap == 750


def test_allowed_signers_may_be_any_case_and_any_collection(
    make_signed, verify, holder_address
) -> None:
    signed = make_signed()
    for allowed in (
        [holder_address.lower()],
        (holder_address.upper().replace("0X", "0x"),),
        frozenset({holder_address}),
    ):
        assert verify(signed, allowed_signers=allowed).signer == holder_address


def test_allowed_signers_as_a_callable(make_signed, verify, holder_address, pass_id) -> None:
    calls: list[tuple[str, PassToken]] = []

    def allowed(signer: str, token: PassToken) -> bool:
        calls.append((signer, token))
        return bool(signer == holder_address and token.pass_id == pass_id)

    signed = make_signed()
    assert verify(signed, allowed_signers=allowed).signer == holder_address
    assert calls == [(holder_address, signed.token)]
    with pytest.raises(TokenSignerNotAllowed):
        verify(make_signed(pass_id=b"\x22" * 32), allowed_signers=allowed)


def test_wrong_chain(make_signed, verify, other_contract) -> None:
    signed = make_signed(domain=Domain(chain_id=1, verifying_contract=other_contract), expiry=0)
    with pytest.raises(TokenWrongChain, match="chain id 1, this verifier accepts chain id 31337"):
        verify(with_signature(signed, bytes(65)))  # also wrong contract, expired, bad signature
    with pytest.raises(TokenWrongChain) as info:
        verify(signed)
    assert info.value.code == "token_wrong_chain"
    assert info.value.context == {"chain_id": 1, "expected_chain_id": 31337}


def test_wrong_contract(make_signed, verify, other_contract) -> None:
    signed = make_signed(
        domain=Domain(chain_id=31337, verifying_contract=other_contract.lower()), expiry=0
    )
    with pytest.raises(
        TokenWrongContract, match=f"contract {other_contract}, this verifier"
    ) as info:
        verify(with_signature(signed, bytes(65)))
    assert info.value.code == "token_wrong_contract"


def test_expiry_boundary_with_clock_skew(make_signed, verify, now) -> None:
    signed = make_signed(expiry=now - DEFAULT_CLOCK_SKEW_S)
    assert verify(signed).token.expiry == now - DEFAULT_CLOCK_SKEW_S
    expired = make_signed(expiry=now - DEFAULT_CLOCK_SKEW_S - 1)
    with pytest.raises(
        TokenExpired, match=f"expired at {now - 6} \\(unix s\\), 6 s before"
    ) as info:
        verify(expired)
    assert info.value.code == "token_expired"
    assert info.value.context == {"expiry": now - 6, "now": now}
    with pytest.raises(TokenExpired):
        verify(make_signed(expiry=now - 1), clock_skew_s=0)
    assert verify(make_signed(expiry=now), clock_skew_s=0)


def test_expired_is_checked_before_the_signature(make_signed, verify, now) -> None:
    signed = with_signature(make_signed(expiry=now - 3600), bytes(65))
    with pytest.raises(TokenExpired):
        verify(signed)


def test_expired_card_tokens_are_refused_too(make_signed, verify, now) -> None:
    with pytest.raises(TokenExpired):
        verify(make_signed(serial=9, expiry=now - 60))


def test_short_lived_token_lifetime_limit(make_signed, verify, now) -> None:
    limit = now + DEFAULT_MAX_LIFETIME_S + DEFAULT_CLOCK_SKEW_S
    assert verify(make_signed(expiry=limit))
    with pytest.raises(TokenLifetimeTooLong, match="at most 900 s \\(\\+5 s skew\\)") as info:
        verify(make_signed(expiry=limit + 1))
    assert info.value.code == "token_lifetime_too_long"
    with pytest.raises(TokenLifetimeTooLong):
        verify(make_signed(expiry=now + 61), max_lifetime_s=60, clock_skew_s=0)
    assert verify(make_signed(expiry=2**64 - 1), max_lifetime_s=None)


def test_card_tokens_have_no_lifetime_limit(make_signed, verify) -> None:
    assert verify(make_signed(serial=1, expiry=2**64 - 1), max_lifetime_s=0)


def test_lifetime_is_checked_before_the_signature(make_signed, verify, now) -> None:
    with pytest.raises(TokenLifetimeTooLong):
        verify(with_signature(make_signed(expiry=now + 10**6), bytes(65)))


@pytest.mark.parametrize("v", [0, 1, 26, 29, 255])
def test_signature_v_must_be_27_or_28(make_signed, verify, v: int) -> None:
    signed = make_signed()
    r, s, _ = parts(signed)
    with pytest.raises(TokenSignatureInvalid, match=f"v must be 27 or 28, got {v}") as info:
        verify(with_signature(signed, pack(r, s, v)))
    assert info.value.code == "token_signature_invalid"


@pytest.mark.parametrize(
    ("which", "value", "fragment"),
    [
        ("r", 0, "r must be in 1 .. n-1, got 0x0"),
        ("r", SECP256K1_N, "r must be in 1 .. n-1"),
        ("r", 2**256 - 1, "r must be in 1 .. n-1"),
        ("s", 0, "s must be in 1 .. n/2 \\(low-s, EIP-2\\), got 0x0"),
        ("s", SECP256K1_N, "low-s"),
        ("s", SECP256K1_N // 2 + 1, "low-s"),
    ],
)
def test_signature_r_and_s_ranges(
    make_signed, verify, which: str, value: int, fragment: str
) -> None:
    signed = make_signed()
    r, s, v = parts(signed)
    bad = pack(value, s, v) if which == "r" else pack(r, value, v)
    with pytest.raises(TokenSignatureInvalid, match=fragment):
        verify(with_signature(signed, bad))


def test_the_high_s_twin_of_a_valid_signature_is_refused(make_signed, verify) -> None:
    signed = make_signed()
    r, s, v = parts(signed)
    twin = with_signature(signed, pack(r, SECP256K1_N - s, 55 - v))  # 27 <-> 28
    with pytest.raises(TokenSignatureInvalid, match="low-s"):
        verify(twin)


def test_an_r_that_is_not_on_the_curve_does_not_recover(make_signed, verify) -> None:
    r = next(x for x in range(1, 100) if pow(x**3 + 7, (SECP256K1_P - 1) // 2, SECP256K1_P) != 1)
    signed = make_signed()
    with pytest.raises(TokenSignatureInvalid, match="does not recover to a public key"):
        verify(with_signature(signed, pack(r, 1, 27)))
    with pytest.raises(TokenSignatureInvalid):
        recover_signer(with_signature(signed, pack(r, 1, 27)))


def test_flipping_v_recovers_someone_else(make_signed, verify, holder_address) -> None:
    signed = make_signed()
    r, s, v = parts(signed)
    other = with_signature(signed, pack(r, s, 55 - v))
    assert recover_signer(other) != holder_address
    with pytest.raises(TokenSignerNotAllowed):
        verify(other)


def test_signer_not_allowed(make_signed, verify, stranger_key) -> None:
    stranger = address_of(stranger_key)
    with pytest.raises(TokenSignerNotAllowed, match=f"signed by {stranger}") as info:
        verify(make_signed(key=stranger_key))
    assert info.value.code == "token_signer_not_allowed"
    assert info.value.context == {"signer": stranger}
    with pytest.raises(TokenSignerNotAllowed):
        verify(make_signed(), allowed_signers=())


def test_a_token_signed_for_other_fields_is_not_allowed(make_signed, verify) -> None:
    signed = make_signed(amount_cap=100)
    tampered = dataclasses.replace(
        signed, token=dataclasses.replace(signed.token, amount_cap=10**6)
    )
    with pytest.raises(TokenSignerNotAllowed):
        verify(tampered)


def test_wrong_pass(make_signed, verify, pass_id) -> None:
    signed = make_signed()
    assert verify(signed, expected_pass_id=pass_id)
    with pytest.raises(TokenWrongPass, match=r"for pass 0x1111.*expected 0x2222") as info:
        verify(signed, expected_pass_id=b"\x22" * 32)
    assert info.value.code == "token_wrong_pass"


def test_revocation_hook(make_signed, verify, pass_id) -> None:
    calls: list[tuple[bytes, int]] = []

    def revoked(pass_id_: bytes, serial: int) -> bool:
        calls.append((pass_id_, serial))
        return serial < 5

    assert verify(make_signed(serial=5), is_serial_revoked=revoked)
    with pytest.raises(TokenRevoked, match="card serial 4 of pass 0x1111") as info:
        verify(make_signed(serial=4), is_serial_revoked=revoked)
    assert info.value.code == "token_revoked"
    assert calls == [(pass_id, 5), (pass_id, 4)]
    # Never consulted for short-lived tokens, nor before the other checks pass.
    assert verify(make_signed(serial=0), is_serial_revoked=revoked)
    with pytest.raises(TokenSignerNotAllowed):
        verify(make_signed(serial=4), is_serial_revoked=revoked, allowed_signers=())
    with pytest.raises(TokenWrongPass):
        verify(make_signed(serial=4), is_serial_revoked=revoked, expected_pass_id=bytes(32))
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"clock_skew_s": -1}, "clock_skew_s must be >= 0, got -1"),
        ({"max_lifetime_s": -1}, "max_lifetime_s must be >= 0 or None, got -1"),
        (
            {"allowed_signers": "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"},
            "not one str",
        ),
    ],
)
def test_bad_arguments(make_signed, verify, overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidValue, match=fragment):
        verify(make_signed(), **overrides)


def test_errors_share_the_pass_token_root(make_signed, verify) -> None:
    with pytest.raises(PassTokenError):
        verify(make_signed(expiry=0))


@settings(max_examples=300)
@given(payload=st.binary(min_size=84, max_size=84), signature=st.binary(min_size=65, max_size=65))
def test_verifying_arbitrary_decodable_tokens_only_raises_token_errors(
    payload: bytes, signature: bytes
) -> None:
    import base64

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    domain = Domain(chain_id=31337, verifying_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3")
    # Pin chain and contract on half of the inputs so the later checks are reached.
    chosen = (
        payload
        if payload[0] & 1
        else (31337).to_bytes(8, "big")
        + bytes.fromhex("5FbDB2315678afecb367f032d93F642f64180aa3")
        + payload[28:60]
        + bytes(8)
        + (2**63).to_bytes(8, "big")
        + payload[76:]
    )
    try:
        signed = decode_token_uri(f"stadjerspas:1:{b64(chosen)}.{b64(signature)}")
    except PassTokenError:
        return
    with pytest.raises(PassTokenError):
        verify_pass_token(
            signed,
            expected_domain=domain,
            now=0,
            allowed_signers={"0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"},
            max_lifetime_s=None,
        )


def test_recovery_is_cached_but_every_check_still_runs(
    make_signed, verify, holder_address, now
) -> None:
    """A token seen again skips the signature recovery, never the checks on what it may do."""
    signed = make_signed()
    recover_signer.cache_clear()
    for _ in range(3):
        assert verify(signed).signer == holder_address
    info = recover_signer.cache_info()
    assert (info.misses, info.hits) == (1, 2)
    with pytest.raises(TokenExpired):
        verify(signed, now=signed.token.expiry + DEFAULT_CLOCK_SKEW_S + 1)
    with pytest.raises(TokenSignerNotAllowed):
        verify(signed, allowed_signers={"0x" + "11" * 20})
    forged = with_signature(signed, pack(1, SECP256K1_N - 1, 27))  # high s: refused, uncached
    for _ in range(2):
        with pytest.raises(TokenSignatureInvalid):
            verify(forged)
