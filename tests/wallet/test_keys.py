"""Keys and encrypted keystore files."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, TypedDict

import pytest
from eth_account import Account
from eth_utils.crypto import keccak

from wallet import (
    InvalidValue,
    KeystoreDecryptionFailed,
    KeystoreError,
    KeystoreExists,
    KeystoreInvalid,
    address_of,
    as_private_key,
    decrypt_keystore,
    encrypt_keystore,
    generate_private_key,
    load_keystore,
    save_keystore,
)
from wallet.keys import KDF, MAX_KEYSTORE_BYTES, SECP256K1_N


# Low work factors: tests only. Production uses eth-account's defaults.
class FastOptions(TypedDict):
    kdf: KDF
    work_factor: int


FAST_SCRYPT: FastOptions = {"kdf": "scrypt", "work_factor": 2**4}
FAST_PBKDF2: FastOptions = {"kdf": "pbkdf2", "work_factor": 2}
PASSWORD = "correct horse battery staple"


def test_generate_private_key() -> None:
    keys = {generate_private_key() for _ in range(20)}
    assert len(keys) == 20
    for key in keys:
        assert len(key) == 32
        assert 0 < int.from_bytes(key, "big") < SECP256K1_N
        assert address_of(key) == Account.from_key(key).address


def test_as_private_key_keeps_an_existing_object() -> None:
    key = as_private_key(generate_private_key())
    assert as_private_key(key) is key


@pytest.mark.parametrize("options", [FAST_SCRYPT, FAST_PBKDF2])
def test_save_and_load_round_trip(tmp_path: Path, options: FastOptions) -> None:
    key = generate_private_key()
    path = tmp_path / "holder.json"
    assert save_keystore(path, key, password=PASSWORD, **options) == address_of(key)
    assert load_keystore(path, password=PASSWORD) == key
    data = json.loads(path.read_text())
    assert data["version"] == 3
    assert data["crypto"]["kdf"] == options["kdf"]
    params = data["crypto"]["kdfparams"]
    assert params.get("n", params.get("c")) == options["work_factor"]
    # Readable by eth-account (and so by geth, brownie, ...).
    assert bytes(Account.decrypt(data, PASSWORD)) == key


def test_keystore_file_is_private_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    save_keystore(path, generate_private_key(), password=PASSWORD, **FAST_SCRYPT)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["k.json"]


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    first, second = generate_private_key(), generate_private_key()
    save_keystore(path, first, password=PASSWORD, **FAST_SCRYPT)
    with pytest.raises(KeystoreExists, match="refusing to overwrite existing keystore") as info:
        save_keystore(path, second, password=PASSWORD, **FAST_SCRYPT)
    assert info.value.code == "keystore_exists"
    assert load_keystore(path, password=PASSWORD) == first
    assert os.listdir(tmp_path) == ["k.json"]
    save_keystore(path, second, password=PASSWORD, overwrite=True, **FAST_SCRYPT)
    assert load_keystore(path, password=PASSWORD) == second
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["k.json"]


def test_overwrite_replaces_a_world_readable_file_with_a_private_one(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    path.write_text("old")
    path.chmod(0o644)
    save_keystore(path, generate_private_key(), password=PASSWORD, overwrite=True, **FAST_SCRYPT)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_wrong_password(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    save_keystore(path, generate_private_key(), password=PASSWORD, **FAST_PBKDF2)
    with pytest.raises(KeystoreDecryptionFailed, match="wrong password") as info:
        load_keystore(path, password="wrong")
    assert info.value.code == "keystore_decryption_failed"
    assert "wrong" not in info.value.message.replace("wrong password", "")
    assert isinstance(info.value, KeystoreError)


def test_loads_a_keystore_made_by_eth_account(tmp_path: Path) -> None:
    key = generate_private_key()
    path = tmp_path / "k.json"
    path.write_text(json.dumps(Account.encrypt(key, PASSWORD, kdf="scrypt", iterations=16)))
    assert load_keystore(path, password=PASSWORD) == key


def test_missing_file_raises_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_keystore(tmp_path / "absent.json", password=PASSWORD)


@pytest.fixture
def keystore() -> dict[str, Any]:
    return encrypt_keystore(generate_private_key(), password=PASSWORD, **FAST_PBKDF2)


def _set(data: dict[str, Any], dotted: str, value: object) -> dict[str, Any]:
    target = data
    *path, last = dotted.split(".")
    for name in path:
        target = target[name]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("version", 4, "'version' must be 3, got 4"),
        ("version", _DELETE, "'version' must be 3, got None"),
        ("crypto", _DELETE, "'crypto' must be an object"),
        ("crypto", [], "'crypto' must be an object"),
        ("crypto.cipher", "aes-256-gcm", "unsupported cipher 'aes-256-gcm'"),
        ("crypto.cipherparams", _DELETE, "'cipherparams.iv' must be hex"),
        ("crypto.cipherparams.iv", "xyz", "'cipherparams.iv' must be hex"),
        ("crypto.ciphertext", "", "'ciphertext' must be hex"),
        ("crypto.mac", 12, "'mac' must be hex"),
        ("crypto.kdf", "argon2", "unsupported kdf 'argon2'"),
        ("crypto.kdfparams", "x", "'kdfparams' must be an object"),
        ("crypto.kdfparams.salt", "zz", "'kdfparams.salt' must be hex"),
        ("crypto.kdfparams.dklen", 16, "'kdfparams.dklen' must be 32"),
        ("crypto.kdfparams.c", 0, "'kdfparams.c' must be a positive int"),
        ("crypto.kdfparams.c", True, "'kdfparams.c' must be a positive int"),
        ("crypto.kdfparams.c", 10**9, "'kdfparams.c' 1000000000 exceeds the limit"),
        ("crypto.kdfparams.prf", "hmac-md5", "'kdfparams.prf' must be 'hmac-sha256'"),
        ("address", "0x" + "00" * 20, "does not match the decrypted key"),
    ],
)
def test_corrupt_keystores_are_invalid(
    keystore: dict[str, Any], field: str, value: object, fragment: str
) -> None:
    with pytest.raises(KeystoreInvalid, match=fragment) as info:
        decrypt_keystore(_set(keystore, field, value), password=PASSWORD)
    assert info.value.code == "keystore_invalid"


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("crypto.kdfparams.n", 3, "'kdfparams.n' must be a power of two"),
        ("crypto.kdfparams.r", -1, "'kdfparams.r' must be a positive int"),
        ("crypto.kdfparams.p", "8", "'kdfparams.p' must be a positive int"),
        ("crypto.kdfparams.n", 2**30, "'kdfparams.n' 1073741824 exceeds the limit 1048576"),
        ("crypto.kdfparams.p", 1000, "exceeds the limit 64"),
    ],
)
def test_corrupt_scrypt_parameters(field: str, value: object, fragment: str) -> None:
    keystore = encrypt_keystore(generate_private_key(), password=PASSWORD, **FAST_SCRYPT)
    with pytest.raises(KeystoreInvalid, match=fragment):
        decrypt_keystore(_set(keystore, field, value), password=PASSWORD)


def test_short_ciphertext_with_a_valid_mac_is_invalid(keystore: dict[str, Any]) -> None:
    params = keystore["crypto"]["kdfparams"]
    derived = hashlib.pbkdf2_hmac(
        "sha256", PASSWORD.encode(), bytes.fromhex(params["salt"]), params["c"], 32
    )
    ciphertext = b"\x00"
    keystore["crypto"]["ciphertext"] = ciphertext.hex()
    keystore["crypto"]["mac"] = keccak(derived[16:32] + ciphertext).hex()
    with pytest.raises(KeystoreInvalid, match="a private key must be 32 bytes, got 1"):
        decrypt_keystore(keystore, password=PASSWORD)


def test_tampered_ciphertext_is_indistinguishable_from_a_wrong_password(
    keystore: dict[str, Any],
) -> None:
    text = keystore["crypto"]["ciphertext"]
    keystore["crypto"]["ciphertext"] = ("0" if text[0] != "0" else "1") + text[1:]
    with pytest.raises(KeystoreDecryptionFailed):
        decrypt_keystore(keystore, password=PASSWORD)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "is not UTF-8 JSON"),
        (b"{not json", "is not UTF-8 JSON"),
        (b"\xff\xfe\x00garbage", "is not UTF-8 JSON"),
        (b"[1, 2, 3]", "does not hold a JSON object"),
        (b'"text"', "does not hold a JSON object"),
        (b"{}", "'version' must be 3"),
        (b"{" + b" " * MAX_KEYSTORE_BYTES + b"}", "is larger than 65536 bytes"),
    ],
)
def test_corrupt_files_are_invalid(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "k.json"
    path.write_bytes(content)
    with pytest.raises(KeystoreInvalid, match=fragment):
        load_keystore(path, password=PASSWORD)


def test_truncated_file_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    save_keystore(path, generate_private_key(), password=PASSWORD, **FAST_PBKDF2)
    data = path.read_bytes()
    for end in (1, len(data) // 2, len(data) - 2):
        path.write_bytes(data[:end])
        with pytest.raises(KeystoreInvalid):
            load_keystore(path, password=PASSWORD)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"kdf": "argon2"}, "unsupported kdf 'argon2'"),
        ({"kdf": "scrypt", "work_factor": 1000}, "must be a power of two, got 1000"),
        ({"kdf": "pbkdf2", "work_factor": 1}, "work_factor must be an int >= 2, got 1"),
        ({"kdf": "pbkdf2", "work_factor": True}, "work_factor must be an int >= 2, got True"),
        (
            {"kdf": "pbkdf2", "work_factor": 2, "password": b"pw"},
            "password must be a str, got bytes",
        ),
    ],
)
def test_bad_encryption_options(options: dict[str, Any], fragment: str) -> None:
    options = {"password": PASSWORD, **options}
    with pytest.raises(InvalidValue, match=fragment):
        encrypt_keystore(generate_private_key(), **options)


def test_decrypt_password_must_be_text(keystore: dict[str, Any]) -> None:
    with pytest.raises(InvalidValue, match="password must be a str, got NoneType"):
        decrypt_keystore(keystore, password=None)  # type: ignore[arg-type]
