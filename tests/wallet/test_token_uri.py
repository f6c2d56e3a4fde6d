"""The token URI: round trips, every refusal, and totality under arbitrary input."""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wallet import (
    MAX_TOKEN_URI_LENGTH,
    Amount,
    Domain,
    PassToken,
    PassTokenError,
    SignedPassToken,
    TokenMalformed,
    TokenTooLong,
    TokenTruncated,
    TokenUnsupportedVersion,
    decode_token_uri,
    encode_token_uri,
    verify_pass_token,
)
from wallet.uri import TOKEN_WHITESPACE

PREFIX = "stadjerspas:1:"
KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
VALID = (
    "stadjerspas:1:AAAAAAAAemlfvbIxVniv7LNn8DLZP2QvZBgKowABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"
    "AAAAAAAAAAcAAAAAaVW5AAAAAAAAAAnE.MOO4VTKhGDlY-Af9CL4cZgK5zZmMXDBEZK1h8cDt4aUUAdsL2HU7oSujB6dbBph"
    "gDGLj55SRs5XOc1T8W_YNGhs"
)
VALID_PAYLOAD, VALID_SIGNATURE = VALID.removeprefix(PREFIX).split(".")
VALID_SIGNER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
VALID_DOMAIN = Domain(
    chain_id=31337, verifying_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3"
)
VALID_NOW = 1_767_225_600 - 60

uint64 = st.integers(min_value=0, max_value=2**64 - 1)
signed_tokens = st.builds(
    SignedPassToken,
    token=st.builds(
        PassToken,
        pass_id=st.binary(min_size=32, max_size=32),
        serial=uint64,
        expiry=uint64,
        amount_cap=uint64.map(Amount),
    ),
    domain=st.builds(
        Domain,
        chain_id=st.integers(min_value=1, max_value=2**64 - 1),
        verifying_contract=st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex()),
    ),
    signature=st.binary(min_size=65, max_size=65),
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_decode_the_golden_uri() -> None:
    signed = decode_token_uri(VALID)
    assert signed.domain == VALID_DOMAIN
    assert signed.token == PassToken(
        pass_id=bytes(range(32)), serial=7, expiry=1_767_225_600, amount_cap=Amount(2_500)
    )
    assert signed.signature[64] in (27, 28)
    assert encode_token_uri(signed) == VALID
    assert len(VALID) == 214


@given(signed=signed_tokens)
def test_round_trip(signed: SignedPassToken) -> None:
    text = encode_token_uri(signed)
    assert len(text) == 214
    assert text.startswith(PREFIX)
    assert "=" not in text
    assert decode_token_uri(text) == signed
    assert decode_token_uri(text.encode("ascii")) == signed


def test_payload_layout_is_big_endian_in_spec_order() -> None:
    payload = base64.urlsafe_b64decode(VALID_PAYLOAD)
    assert len(payload) == 84
    assert payload[0:8] == (31337).to_bytes(8, "big")
    assert payload[8:28].hex() == "5fbdb2315678afecb367f032d93f642f64180aa3"
    assert payload[28:60] == bytes(range(32))
    assert payload[60:68] == (7).to_bytes(8, "big")
    assert payload[68:76] == (1_767_225_600).to_bytes(8, "big")
    assert payload[76:84] == (2_500).to_bytes(8, "big")
    assert len(base64.urlsafe_b64decode(VALID_SIGNATURE + "=")) == 65


@pytest.mark.parametrize("padding", [" ", "\n", "\r\n", "\t \n", "\u00a0", "\u3000"])
def test_surrounding_whitespace_is_ignored(padding: str) -> None:
    assert decode_token_uri(padding + VALID + padding) == decode_token_uri(VALID)


def test_input_up_to_the_cap_is_parsed_and_beyond_it_refused() -> None:
    spaces = " " * (MAX_TOKEN_URI_LENGTH - len(VALID))
    assert decode_token_uri(VALID + spaces) == decode_token_uri(VALID)
    with pytest.raises(TokenTooLong, match="513 characters long; at most 512") as info:
        decode_token_uri(VALID + spaces + " ")
    assert info.value.code == "token_too_long"
    with pytest.raises(TokenTooLong, match="513 bytes long"):
        decode_token_uri((VALID + spaces + " ").encode())
    with pytest.raises(TokenTooLong):
        decode_token_uri("x" * 100_000)


def test_every_proper_prefix_is_truncated() -> None:
    for end in range(1, len(VALID)):
        with pytest.raises(TokenTruncated) as info:
            decode_token_uri(VALID[:end])
        assert info.value.code == "token_truncated"
        assert isinstance(info.value, TokenMalformed)


@pytest.mark.parametrize(
    ("text", "error", "fragment"),
    [
        ("", TokenMalformed, "token is empty"),
        ("   \n", TokenMalformed, "token is empty"),
        ("https://example.org/", TokenMalformed, "does not start with 'stadjerspas:'"),
        (VALID.upper(), TokenMalformed, "does not start with 'stadjerspas:'"),
        ("Stadjerspas" + VALID[11:], TokenMalformed, "the scheme is lower case"),
        ("x" + VALID, TokenMalformed, "does not start with"),
        ("stadjerspas::" + VALID[14:], TokenMalformed, "version '' is not a decimal number"),
        ("stadjerspas:v1:" + VALID[14:], TokenMalformed, "version 'v1' is not a decimal"),
        ("stadjerspas:\u0661:" + VALID[14:], TokenMalformed, "is not a decimal number"),
        ("stadjerspas:1:" + VALID_PAYLOAD + "." + VALID_SIGNATURE + ".", TokenMalformed, "3 dot"),
        ("stadjerspas:1:" + VALID_PAYLOAD + ".." + VALID_SIGNATURE, TokenMalformed, "3 dot"),
        (VALID + ".AAAA", TokenMalformed, "expected exactly 2 \\(payload.signature\\)"),
        (VALID + ":", TokenMalformed, "character ':' at position 87"),
        (VALID + "=", TokenMalformed, "base64url must be unpadded"),
        (VALID + "A", TokenMalformed, "must be 87 base64url characters \\(65 bytes\\), got 88"),
        (PREFIX + VALID_PAYLOAD + "A." + VALID_SIGNATURE, TokenMalformed, "got 113"),
        (PREFIX + VALID_PAYLOAD[:-1] + "." + VALID_SIGNATURE, TokenMalformed, "got 111"),
        (PREFIX + "." + VALID_SIGNATURE, TokenMalformed, "payload must be 112"),
        (PREFIX + VALID_PAYLOAD + "AAAA", TokenMalformed, "must be 112 base64url characters"),
        (PREFIX + VALID_PAYLOAD + "+", TokenMalformed, "character '\\+'"),
        (VALID.replace("-", "+", 1), TokenMalformed, "only base64url characters"),
        (VALID.replace("_", "/", 1), TokenMalformed, "character '/'"),
        (VALID[:40] + " " + VALID[41:], TokenMalformed, "character ' ' at position"),
        (VALID[:150] + "\n" + VALID[151:], TokenMalformed, "character '\\\\n'"),
        (VALID[:150] + "\u00e9" + VALID[151:], TokenMalformed, "character"),
        (VALID[:150] + "\ud800" + VALID[151:], TokenMalformed, "character"),
        # 87 characters carry 522 bits for 520: the last character's two low bits must be zero.
        (VALID[:-1] + "t", TokenMalformed, "not canonical base64url"),
        (VALID[:-1] + "v", TokenMalformed, "not canonical base64url"),
    ],
)
def test_malformed_tokens(text: str, error: type[PassTokenError], fragment: str) -> None:
    with pytest.raises(error, match=fragment) as info:
        decode_token_uri(text)
    assert type(info.value) is error
    assert info.value.code == "token_malformed"


@pytest.mark.parametrize("version", ["0", "2", "10", "01", "999999999"])
def test_unsupported_versions(version: str) -> None:
    text = f"stadjerspas:{version}:" + VALID.removeprefix(PREFIX)
    with pytest.raises(TokenUnsupportedVersion, match=f"version '{version}' is not supported"):
        decode_token_uri(text)
    # A future version may use any body at all: it is never parsed.
    with pytest.raises(TokenUnsupportedVersion) as info:
        decode_token_uri(f"stadjerspas:{version}:anything.at.all")
    assert info.value.code == "token_unsupported_version"
    assert info.value.context["version"] == version
    with pytest.raises(TokenUnsupportedVersion):
        decode_token_uri(f"stadjerspas:{version}")


def test_a_valid_version_part_without_body_is_truncated() -> None:
    with pytest.raises(TokenTruncated, match="stops after its version"):
        decode_token_uri("stadjerspas:1")


def test_chain_id_zero_in_the_payload_is_malformed() -> None:
    payload = bytearray(base64.urlsafe_b64decode(VALID_PAYLOAD))
    payload[0:8] = bytes(8)
    with pytest.raises(TokenMalformed, match="chain_id must be >= 1, got 0"):
        decode_token_uri(PREFIX + b64(bytes(payload)) + "." + VALID_SIGNATURE)


def test_bytes_input_must_be_ascii() -> None:
    assert decode_token_uri(VALID.encode()) == decode_token_uri(VALID)
    with pytest.raises(TokenMalformed, match="must be ASCII, got byte b'\\\\xff' at position 3"):
        decode_token_uri(b"sta\xffjerspas")


@pytest.mark.parametrize("value", [None, 42, ["stadjerspas:1:"], bytearray(b"stadjerspas")])
def test_non_text_input_is_malformed(value: object) -> None:
    with pytest.raises(TokenMalformed, match="must be a str or bytes"):
        decode_token_uri(value)  # type: ignore[arg-type]


# -- totality ---------------------------------------------------------------------------------


def _decode_total(text: str | bytes) -> SignedPassToken | None:
    try:
        return decode_token_uri(text)
    except PassTokenError:
        return None


uri_alphabet = st.sampled_from(
    [*"stadjerspas:1.2AZaz09-_=+/ \n\t", "\u00a0", "\ud800", "\x00", "\u0661"]
)


@settings(max_examples=500)
@given(text=st.text())
@example(text="stadjerspas:1:")
@example(text="stadjerspas:1:.")
def test_arbitrary_text_only_raises_pass_token_errors(text: str) -> None:
    _decode_total(text)


@settings(max_examples=300)
@given(text=st.text(alphabet=uri_alphabet, max_size=600))
def test_uri_like_text_only_raises_pass_token_errors(text: str) -> None:
    _decode_total(PREFIX + text)


@settings(max_examples=300)
@given(data=st.binary(max_size=700))
def test_arbitrary_bytes_only_raise_pass_token_errors(data: bytes) -> None:
    _decode_total(data)
    _decode_total(data.decode("utf-8", errors="surrogateescape"))


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID.encode())
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["replace", "delete", "insert", "truncate", "swap"]))
        position = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        if kind == "replace" and data:
            data[position] = draw(st.integers(min_value=0, max_value=255))
        elif kind == "delete" and data:
            end = position + draw(st.integers(min_value=1, max_value=8))
            del data[position:end]
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "truncate":
            del data[position:]
        elif kind == "swap" and len(data) > 1:
            other = draw(st.integers(min_value=0, max_value=len(data) - 1))
            data[position], data[other] = data[other], data[position]
    return bytes(data)


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(mutated=mutations())
def test_mutations_of_a_valid_token_are_refused(mutated: bytes) -> None:
    original = decode_token_uri(VALID)
    for candidate in (mutated, mutated.decode("utf-8", errors="surrogateescape")):
        decoded = _decode_total(candidate)
        if decoded is None:
            continue
        stripped = (
            candidate.strip(TOKEN_WHITESPACE)
            if isinstance(candidate, str)
            else candidate.strip()  # bytes: ASCII whitespace only (other bytes are refused)
        )
        if stripped in (VALID, VALID.encode()):
            assert decoded == original
            continue
        # Canonical base64url is one-to-one: a different text is a different token...
        assert decoded != original
        # ...and verification refuses it with a token error, never anything else.
        with pytest.raises(PassTokenError):
            verify_pass_token(
                decoded,
                expected_domain=VALID_DOMAIN,
                now=VALID_NOW,
                allowed_signers={VALID_SIGNER},
                max_lifetime_s=None,
            )


def test_the_unmutated_token_verifies() -> None:
    verified = verify_pass_token(
        decode_token_uri(VALID),
        expected_domain=VALID_DOMAIN,
        now=VALID_NOW,
        allowed_signers={VALID_SIGNER},
    )
    assert verified.signer == VALID_SIGNER


@pytest.mark.parametrize("extra", ["\x1c", "\x1d", "\x1e", "\x1f"])
def test_control_characters_around_a_token_are_refused(extra: str) -> None:
    """``str.strip()`` would drop these too: then a different text would be the same token."""
    for text in (extra + VALID, VALID + extra):
        with pytest.raises(PassTokenError):
            decode_token_uri(text)
