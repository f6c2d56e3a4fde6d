"""The one hashing helper: Argon2id for new hashes, the former scrypt hashes still verify."""

from __future__ import annotations

import pytest

from ledger.secrets_hash import (
    KEYED_PREFIX,
    check_secret,
    hash_secret,
    keyed_hash,
    legacy_scrypt_hash,
    needs_rehash,
    verification_count,
)


def test_new_hashes_are_argon2id_with_a_fresh_salt() -> None:
    first, second = hash_secret("correct horse"), hash_secret("correct horse")
    assert first.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert first != second  # salted
    assert "correct horse" not in first
    assert check_secret("correct horse", first)
    assert check_secret("correct horse", second)
    assert not check_secret("correct hors", first)
    assert not check_secret("", first)
    assert not needs_rehash(first)


def test_legacy_scrypt_hashes_still_verify_and_need_a_rehash() -> None:
    legacy = legacy_scrypt_hash("development-only-admin-password")
    assert legacy.startswith("scrypt$14$8$1$")
    assert check_secret("development-only-admin-password", legacy)
    assert not check_secret("development-only-admin-passwor", legacy)
    assert needs_rehash(legacy)


def test_argon2_with_weaker_parameters_needs_a_rehash() -> None:
    from argon2 import PasswordHasher

    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("pin")
    assert check_secret("pin", weak)
    assert needs_rehash(weak)


_SALT, _DIGEST = "A" * 22 + "==", "A" * 43 + "="


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plain-text",
        "scrypt$14$8$1$notbase64!$AAAA",
        "scrypt$14$8$1$AAAA",  # too few fields
        f"scrypt$30$8$1${_SALT}${_DIGEST}",  # n out of range
        f"scrypt$20$64$1${_SALT}${_DIGEST}",  # 8 GiB of memory
        f"scrypt$x$8$1${_SALT}${_DIGEST}",
        "$argon2id$v=19$m=19456,t=2,p=1$garbage",
    ],
)
def test_a_malformed_stored_hash_is_a_mismatch_with_the_same_work(stored: str) -> None:
    before = verification_count()
    assert not check_secret("anything", stored)
    assert verification_count() == before + 1
    assert needs_rehash(stored)


def test_an_unknown_account_costs_one_verification_against_a_dummy() -> None:
    known = hash_secret("secret")
    before = verification_count()
    assert not check_secret("secret", None)
    after_unknown = verification_count()
    assert not check_secret("wrong", known)
    assert after_unknown - before == 1
    assert verification_count() - after_unknown == 1


def test_keyed_hashes_for_random_codes() -> None:
    key, other = b"k" * 32, b"o" * 32
    stored = keyed_hash("ABCDEFGHJKLM", key)
    assert stored.startswith(KEYED_PREFIX)
    assert len(stored) == len(KEYED_PREFIX) + 64
    assert keyed_hash("ABCDEFGHJKLM", key) == stored  # no salt: the key is the secret
    assert check_secret("ABCDEFGHJKLM", stored, key=key)
    assert not check_secret("ABCDEFGHJKLN", stored, key=key)
    assert not check_secret("ABCDEFGHJKLM", stored, key=other)
    assert not check_secret("ABCDEFGHJKLM", stored)  # no key: never a match
    assert not needs_rehash(stored)
    before = verification_count()
    assert not check_secret("ABCDEFGHJKLM", None, key=key)  # the same work as a real check
    assert verification_count() == before + 1
    # an Argon2 hash still verifies when a key is given
    assert check_secret("pin 1234", hash_secret("pin 1234"), key=key)
