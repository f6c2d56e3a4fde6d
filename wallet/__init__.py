"""Stadjerspas wallet: keys, EIP-712 pass tokens, token URIs and QR codes.

Offline by design: nothing here talks to a node or a database, so a merchant terminal can
verify a scanned pass token with this package alone.

Typical use::

    from wallet import Domain, PassToken, sign_pass_token, encode_token_uri, render_png

    domain = Domain(chain_id=31337, verifying_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3")
    signed = sign_pass_token(PassToken(pass_id=..., serial=0, expiry=now + 120),
                             domain=domain, private_key=key)
    png = render_png(encode_token_uri(signed))

    verified = verify_pass_token(decode_token_uri(scanned), expected_domain=domain, now=now,
                                 allowed_signers={holder_address, pass_signer_address})
"""

from __future__ import annotations

from wallet.eip712 import (
    DOMAIN_NAME,
    DOMAIN_VERSION,
    EIP712_DOMAIN_TYPE,
    EIP712_DOMAIN_TYPEHASH,
    PASS_TOKEN_TYPE,
    PASS_TOKEN_TYPEHASH,
    Domain,
    PassToken,
    SignedPassToken,
    domain_separator,
    pass_token_digest,
    pass_token_struct_hash,
    pass_token_typed_data,
    sign_pass_token,
)
from wallet.errors import (
    InvalidPrivateKey,
    InvalidValue,
    KeystoreDecryptionFailed,
    KeystoreError,
    KeystoreExists,
    KeystoreInvalid,
    PassTokenError,
    QrDataTooLong,
    QrError,
    TokenExpired,
    TokenLifetimeTooLong,
    TokenMalformed,
    TokenRevoked,
    TokenSignatureInvalid,
    TokenSignerNotAllowed,
    TokenTooLong,
    TokenTruncated,
    TokenUnsupportedVersion,
    TokenWrongChain,
    TokenWrongContract,
    TokenWrongPass,
    WalletError,
)
from wallet.keys import (
    PrivateKeyLike,
    address_of,
    as_private_key,
    decrypt_keystore,
    encrypt_keystore,
    generate_private_key,
    load_keystore,
    save_keystore,
)
from wallet.qr import render_png, render_svg
from wallet.units import Amount, Cents, Uses
from wallet.uri import MAX_TOKEN_URI_LENGTH, decode_token_uri, encode_token_uri
from wallet.verify import (
    AllowedSigners,
    VerifiedPassToken,
    recover_signer,
    verify_pass_token,
)

__all__ = [
    "DOMAIN_NAME",
    "DOMAIN_VERSION",
    "EIP712_DOMAIN_TYPE",
    "EIP712_DOMAIN_TYPEHASH",
    "MAX_TOKEN_URI_LENGTH",
    "PASS_TOKEN_TYPE",
    "PASS_TOKEN_TYPEHASH",
    "AllowedSigners",
    "Amount",
    "Cents",
    "Domain",
    "InvalidPrivateKey",
    "InvalidValue",
    "KeystoreDecryptionFailed",
    "KeystoreError",
    "KeystoreExists",
    "KeystoreInvalid",
    "PassToken",
    "PassTokenError",
    "PrivateKeyLike",
    "QrDataTooLong",
    "QrError",
    "SignedPassToken",
    "TokenExpired",
    "TokenLifetimeTooLong",
    "TokenMalformed",
    "TokenRevoked",
    "TokenSignatureInvalid",
    "TokenSignerNotAllowed",
    "TokenTooLong",
    "TokenTruncated",
    "TokenUnsupportedVersion",
    "TokenWrongChain",
    "TokenWrongContract",
    "TokenWrongPass",
    "Uses",
    "VerifiedPassToken",
    "WalletError",
    "address_of",
    "as_private_key",
    "decode_token_uri",
    "decrypt_keystore",
    "domain_separator",
    "encode_token_uri",
    "encrypt_keystore",
    "generate_private_key",
    "load_keystore",
    "pass_token_digest",
    "pass_token_struct_hash",
    "pass_token_typed_data",
    "recover_signer",
    "render_png",
    "render_svg",
    "save_keystore",
    "sign_pass_token",
    "verify_pass_token",
]
