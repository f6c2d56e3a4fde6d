"""Exceptions raised by :mod:`wallet`.

Every exception derives from :class:`WalletError` and carries a stable machine-readable
:attr:`~WalletError.code` (for problem details in the API) and a human-readable message that
quotes the offending value and the rule it broke. Extra facts (the expiry, the recovered signer,
...) are in :attr:`~WalletError.context`.

Hierarchy::

    WalletError
    +-- InvalidValue (also ValueError)          bad argument to a wallet constructor/function
    |   +-- InvalidPrivateKey
    +-- KeystoreError
    |   +-- KeystoreInvalid                     not a readable v3 keystore (corrupt, truncated, ...)
    |   +-- KeystoreDecryptionFailed            wrong password (MAC mismatch)
    |   +-- KeystoreExists                      refusing to overwrite an existing file
    +-- QrError
    |   +-- QrDataTooLong
    +-- PassTokenError                          a pass token is refused
        +-- TokenMalformed (also ValueError)    cannot be parsed
        |   +-- TokenTooLong
        |   +-- TokenTruncated
        +-- TokenUnsupportedVersion
        +-- TokenWrongChain
        +-- TokenWrongContract
        +-- TokenExpired
        +-- TokenLifetimeTooLong                serial-0 token whose expiry is too far ahead
        +-- TokenSignatureInvalid
        +-- TokenSignerNotAllowed
        +-- TokenWrongPass
        +-- TokenRevoked
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "InvalidPrivateKey",
    "InvalidValue",
    "KeystoreDecryptionFailed",
    "KeystoreError",
    "KeystoreExists",
    "KeystoreInvalid",
    "PassTokenError",
    "QrDataTooLong",
    "QrError",
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
    "WalletError",
]


class WalletError(Exception):
    """Root of every exception raised on purpose by :mod:`wallet`."""

    code: ClassVar[str] = "wallet_error"

    def __init__(self, message: str, **context: object) -> None:
        super().__init__(message)
        self.message = message
        self.context: dict[str, object] = dict(context)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


# -- argument validation ---------------------------------------------------------------------


class InvalidValue(WalletError, ValueError):
    """An argument has the wrong type, length or range."""

    code = "invalid_value"


class InvalidPrivateKey(InvalidValue):
    """Not a valid secp256k1 private key (32 bytes, 1 <= k < n)."""

    code = "invalid_private_key"


# -- keystores -------------------------------------------------------------------------------


class KeystoreError(WalletError):
    code = "keystore_error"


class KeystoreInvalid(KeystoreError):
    code = "keystore_invalid"


class KeystoreDecryptionFailed(KeystoreError):
    code = "keystore_decryption_failed"


class KeystoreExists(KeystoreError):
    code = "keystore_exists"


# -- QR rendering ----------------------------------------------------------------------------


class QrError(WalletError):
    code = "qr_error"


class QrDataTooLong(QrError):
    code = "qr_data_too_long"


# -- pass tokens -----------------------------------------------------------------------------


class PassTokenError(WalletError):
    """A pass token was refused; :attr:`code` says why."""

    code = "token_invalid"


class TokenMalformed(PassTokenError, ValueError):
    """The token text cannot be parsed (wrong scheme, bad base64, wrong lengths, ...)."""

    code = "token_malformed"


class TokenTooLong(TokenMalformed):
    code = "token_too_long"


class TokenTruncated(TokenMalformed):
    """The text ends before the token does (a partial scan)."""

    code = "token_truncated"


class TokenUnsupportedVersion(PassTokenError):
    code = "token_unsupported_version"


class TokenWrongChain(PassTokenError):
    code = "token_wrong_chain"


class TokenWrongContract(PassTokenError):
    code = "token_wrong_contract"


class TokenExpired(PassTokenError):
    code = "token_expired"


class TokenLifetimeTooLong(PassTokenError):
    """A short-lived (serial 0) token whose expiry lies further ahead than allowed."""

    code = "token_lifetime_too_long"


class TokenSignatureInvalid(PassTokenError):
    code = "token_signature_invalid"


class TokenSignerNotAllowed(PassTokenError):
    code = "token_signer_not_allowed"


class TokenWrongPass(PassTokenError):
    code = "token_wrong_pass"


class TokenRevoked(PassTokenError):
    code = "token_revoked"
