"""secp256k1 keys and encrypted keystore files (Web3 Secret Storage v3, as geth/eth-account).

Keystores are written atomically (temporary file in the same directory, fsync, rename/link)
with permissions ``0600``. The default KDF is scrypt with eth-account's default work factor;
``work_factor`` can be lowered for tests only.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeAlias

from eth_account import Account
from eth_keys.datatypes import PrivateKey
from eth_typing import ChecksumAddress

from wallet.errors import (
    InvalidPrivateKey,
    InvalidValue,
    KeystoreDecryptionFailed,
    KeystoreExists,
    KeystoreInvalid,
)

__all__ = [
    "KDF",
    "MAX_KEYSTORE_BYTES",
    "MAX_PBKDF2_ITERATIONS",
    "MAX_SCRYPT_N",
    "MAX_SCRYPT_R_TIMES_P",
    "SECP256K1_N",
    "PrivateKeyLike",
    "address_of",
    "as_private_key",
    "decrypt_keystore",
    "encrypt_keystore",
    "generate_private_key",
    "load_keystore",
    "save_keystore",
]

#: Order of the secp256k1 group.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

#: Key derivation functions supported for keystores.
KDF: TypeAlias = Literal["scrypt", "pbkdf2"]

#: A private key as 32 raw bytes, a hex string (with or without ``0x``) or an eth-keys object.
PrivateKeyLike: TypeAlias = bytes | str | PrivateKey

#: Keystore files larger than this are refused before parsing.
MAX_KEYSTORE_BYTES = 64 * 1024
#: Upper bounds on KDF parameters read from a keystore (a hostile file must not exhaust memory).
MAX_SCRYPT_N = 2**20
MAX_SCRYPT_R_TIMES_P = 64
MAX_PBKDF2_ITERATIONS = 10_000_000


def generate_private_key() -> bytes:
    """Return a fresh random private key (32 bytes, from :mod:`secrets`)."""
    while True:
        candidate = secrets.token_bytes(32)
        if 0 < int.from_bytes(candidate, "big") < SECP256K1_N:
            return candidate


def as_private_key(private_key: PrivateKeyLike) -> PrivateKey:
    """Return an eth-keys ``PrivateKey``; raise :class:`InvalidPrivateKey` for anything else.

    Passing a ``PrivateKey`` object avoids re-deriving the public key on every call.
    """
    if isinstance(private_key, PrivateKey):
        return private_key
    raw: bytes
    if isinstance(private_key, str):
        text = private_key[2:] if private_key[:2] in ("0x", "0X") else private_key
        if len(text) != 64:
            raise InvalidPrivateKey(
                f"a hex private key must have 64 hex digits, got {len(text)}",
            )
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise InvalidPrivateKey("a hex private key must contain only hex digits") from None
    elif isinstance(private_key, bytes):
        raw = private_key
    else:
        raise InvalidPrivateKey(
            f"a private key must be bytes, a hex string or eth_keys PrivateKey, "
            f"got {type(private_key).__name__}"
        )
    if len(raw) != 32:
        raise InvalidPrivateKey(f"a private key must be 32 bytes, got {len(raw)}")
    if not 0 < int.from_bytes(raw, "big") < SECP256K1_N:
        raise InvalidPrivateKey("a private key must be in the range 1 .. n-1 of secp256k1")
    return PrivateKey(raw)


def address_of(private_key: PrivateKeyLike) -> ChecksumAddress:
    """Return the checksummed Ethereum address of a private key."""
    return as_private_key(private_key).public_key.to_checksum_address()


def encrypt_keystore(
    private_key: PrivateKeyLike,
    *,
    password: str,
    kdf: KDF = "scrypt",
    work_factor: int | None = None,
) -> dict[str, Any]:
    """Encrypt a key into a v3 keystore dict.

    ``work_factor`` is scrypt's ``n`` (a power of two) or pbkdf2's iteration count; ``None``
    uses eth-account's default (scrypt n=262144). Lower it only in tests.
    """
    key = as_private_key(private_key)
    _check_password(password)
    if kdf not in ("scrypt", "pbkdf2"):
        raise InvalidValue(f"unsupported kdf {kdf!r}: use 'scrypt' or 'pbkdf2'")
    if work_factor is not None:
        if isinstance(work_factor, bool) or not isinstance(work_factor, int) or work_factor < 2:
            raise InvalidValue(f"work_factor must be an int >= 2, got {work_factor!r}")
        if kdf == "scrypt" and work_factor & (work_factor - 1):
            raise InvalidValue(f"scrypt work_factor must be a power of two, got {work_factor}")
    return Account.encrypt(key.to_bytes(), password, kdf=kdf, iterations=work_factor)


def _check_password(password: str) -> None:
    if not isinstance(password, str):
        raise InvalidValue(f"password must be a str, got {type(password).__name__}")


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise KeystoreInvalid(f"not a valid v3 keystore: {what}")


def _is_hex(value: object) -> bool:
    if not isinstance(value, str) or not value:
        return False
    try:
        bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        return False
    return True


def _check_keystore_shape(keystore: Mapping[str, Any]) -> None:
    _require(isinstance(keystore, Mapping), "the top level must be a JSON object")
    _require(keystore.get("version") == 3, f"'version' must be 3, got {keystore.get('version')!r}")
    crypto = keystore.get("crypto")
    _require(isinstance(crypto, Mapping), "'crypto' must be an object")
    assert isinstance(crypto, Mapping)
    _require(crypto.get("cipher") == "aes-128-ctr", f"unsupported cipher {crypto.get('cipher')!r}")
    cipherparams = crypto.get("cipherparams")
    _require(
        isinstance(cipherparams, Mapping) and _is_hex(cipherparams.get("iv")),
        "'cipherparams.iv' must be hex",
    )
    _require(_is_hex(crypto.get("ciphertext")), "'ciphertext' must be hex")
    _require(_is_hex(crypto.get("mac")), "'mac' must be hex")
    kdf = crypto.get("kdf")
    params = crypto.get("kdfparams")
    _require(isinstance(params, Mapping), "'kdfparams' must be an object")
    assert isinstance(params, Mapping)
    _require(_is_hex(params.get("salt")), "'kdfparams.salt' must be hex")
    _require(params.get("dklen") == 32, "'kdfparams.dklen' must be 32")
    if kdf == "scrypt":
        for name in ("n", "r", "p"):
            value = params.get(name)
            _require(
                isinstance(value, int) and not isinstance(value, bool) and value > 0,
                f"'kdfparams.{name}' must be a positive int",
            )
        n = params["n"]
        _require(n > 1 and n & (n - 1) == 0, "'kdfparams.n' must be a power of two")
        _require(n <= MAX_SCRYPT_N, f"'kdfparams.n' {n} exceeds the limit {MAX_SCRYPT_N}")
        _require(
            params["r"] * params["p"] <= MAX_SCRYPT_R_TIMES_P,
            f"'kdfparams.r' * 'kdfparams.p' exceeds the limit {MAX_SCRYPT_R_TIMES_P}",
        )
    elif kdf == "pbkdf2":
        c = params.get("c")
        if not isinstance(c, int) or isinstance(c, bool) or c <= 0:
            raise KeystoreInvalid("not a valid v3 keystore: 'kdfparams.c' must be a positive int")
        _require(
            c <= MAX_PBKDF2_ITERATIONS,
            f"'kdfparams.c' {c} exceeds the limit {MAX_PBKDF2_ITERATIONS}",
        )
        _require(params.get("prf") == "hmac-sha256", "'kdfparams.prf' must be 'hmac-sha256'")
    else:
        raise KeystoreInvalid(f"not a valid v3 keystore: unsupported kdf {kdf!r}")


def decrypt_keystore(keystore: Mapping[str, Any], *, password: str) -> bytes:
    """Decrypt a v3 keystore dict and return the 32-byte private key.

    Raises :class:`KeystoreDecryptionFailed` for a wrong password and :class:`KeystoreInvalid`
    for anything that is not a well-formed v3 keystore.
    """
    _check_password(password)
    _check_keystore_shape(keystore)
    try:
        raw = bytes(Account.decrypt(dict(keystore), password))
    except ValueError as exc:
        if "MAC mismatch" in str(exc):
            raise KeystoreDecryptionFailed(
                "cannot decrypt the keystore: wrong password (MAC mismatch)"
            ) from None
        raise KeystoreInvalid(f"not a valid v3 keystore: {exc}") from exc
    except Exception as exc:  # anything else means a corrupt keystore
        raise KeystoreInvalid(f"not a valid v3 keystore: {type(exc).__name__}: {exc}") from exc
    try:
        key = as_private_key(raw)
    except InvalidPrivateKey as exc:
        raise KeystoreInvalid(f"not a valid v3 keystore: {exc}") from None
    address = keystore.get("address")
    if isinstance(address, str) and address:
        expected = address.lower().removeprefix("0x")
        actual = key.public_key.to_checksum_address().lower().removeprefix("0x")
        if expected != actual:
            raise KeystoreInvalid(
                f"not a valid v3 keystore: 'address' {address!r} does not match the decrypted key"
            )
    return raw


def save_keystore(
    path: str | os.PathLike[str],
    private_key: PrivateKeyLike,
    *,
    password: str,
    kdf: KDF = "scrypt",
    work_factor: int | None = None,
    overwrite: bool = False,
) -> ChecksumAddress:
    """Encrypt ``private_key`` and write it to ``path`` atomically with mode ``0600``.

    Refuses to replace an existing file (:class:`KeystoreExists`) unless ``overwrite``.
    Returns the key's address.
    """
    key = as_private_key(private_key)
    keystore = encrypt_keystore(key, password=password, kdf=kdf, work_factor=work_factor)
    data = json.dumps(keystore, indent=2, sort_keys=True).encode("utf-8")
    target = Path(path)
    directory = target.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)
            except FileExistsError:
                raise KeystoreExists(
                    f"refusing to overwrite existing keystore {str(target)!r} "
                    f"(pass overwrite=True to replace it)"
                ) from None
            tmp.unlink()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
    return key.public_key.to_checksum_address()


def _fsync_directory(directory: Path) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def load_keystore(path: str | os.PathLike[str], *, password: str) -> bytes:
    """Read and decrypt a keystore file; return the 32-byte private key.

    Raises :class:`KeystoreInvalid` for a corrupt/oversized/non-JSON file,
    :class:`KeystoreDecryptionFailed` for a wrong password, and ``OSError`` (e.g.
    ``FileNotFoundError``) if the file cannot be read.
    """
    with open(path, "rb") as handle:
        data = handle.read(MAX_KEYSTORE_BYTES + 1)
    if len(data) > MAX_KEYSTORE_BYTES:
        raise KeystoreInvalid(
            f"not a valid v3 keystore: file {os.fspath(path)!r} is larger than "
            f"{MAX_KEYSTORE_BYTES} bytes"
        )
    try:
        keystore = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeystoreInvalid(
            f"not a valid v3 keystore: file {os.fspath(path)!r} is not UTF-8 JSON ({exc})"
        ) from None
    if not isinstance(keystore, dict):
        raise KeystoreInvalid(
            f"not a valid v3 keystore: file {os.fspath(path)!r} does not hold a JSON object"
        )
    return decrypt_keystore(keystore, password=password)
