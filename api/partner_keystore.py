"""The partner keystore: the signing keys the service creates for enrolled partners.

A partner (a sports club, a shop) has no Ethereum address and never will, but the contract
credits ``msg.sender`` as the merchant of a redemption. So the service creates one account per
partner at enrolment and keeps its private key here, in the table ``api_partner_key`` of the
service's own database (backed up and moved with it; see ``docs/security.md``).

Each key is sealed with AES-256-GCM under a key-encryption key (KEK) derived from
``STADJERSPAS_KEYSTORE_PASSWORD`` with scrypt (N=2**15, r=8, p=1, a random 16-byte salt stored
beside the rows). The KEK is derived once per process (about 0.1 s), so opening 200 partners'
keys at start costs milliseconds, not the ~0.5 s per key of a Web3 Secret Storage file each.
The associated data binds every sealed key to its address: a row copied onto another address,
or a wrong password, fails the GCM tag and refuses to open (:class:`KeystoreLocked`).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from datetime import UTC, datetime

from Crypto.Cipher import AES
from eth_account import Account
from eth_account.signers.local import LocalAccount
from sqlalchemy import DateTime, LargeBinary
from sqlmodel import Column, Field, SQLModel, col, delete, select

from ledger.store.db import Store

__all__ = ["KeystoreError", "KeystoreLocked", "PartnerKey", "PartnerKeystore"]

#: scrypt cost of the key-encryption key (derived once per process and salt).
KDF_N = 2**15
KDF_R = 8
KDF_P = 1
_SALT_BYTES = 16
_NONCE_BYTES = 12
_AAD_PREFIX = b"stadjerspas partner key v1 "


class KeystoreError(Exception):
    """The partner keystore cannot do what was asked (root of this module's errors)."""


class KeystoreLocked(KeystoreError):
    """The password does not open a sealed key (wrong password, or a tampered row)."""


class PartnerKey(SQLModel, table=True):
    """One partner's private key, sealed (AES-256-GCM) under the keystore's KEK."""

    __tablename__ = "api_partner_key"

    address: str = Field(primary_key=True, max_length=42)
    kdf_salt: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))
    nonce: bytes = Field(sa_column=Column(LargeBinary(16), nullable=False))
    sealed_key: bytes = Field(sa_column=Column(LargeBinary(64), nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class PartnerKeystore:
    """Create, open and discard partner keys in ``api_partner_key``."""

    def __init__(self, db: Store, *, password: str) -> None:
        if not password:
            raise KeystoreError("the partner keystore needs a password (…_KEYSTORE_PASSWORD)")
        self._db = db
        self._password = password.encode()
        self._keks: dict[bytes, bytes] = {}
        self._lock = threading.Lock()
        self._salt: bytes | None = None

    def _kek(self, salt: bytes) -> bytes:
        with self._lock:
            kek = self._keks.get(salt)
            if kek is None:
                kek = hashlib.scrypt(
                    self._password,
                    salt=salt,
                    n=KDF_N,
                    r=KDF_R,
                    p=KDF_P,
                    maxmem=64 * 1024 * 1024,
                    dklen=32,
                )
                self._keks[salt] = kek
            return kek

    def _current_salt(self) -> bytes:
        """The salt new keys are sealed with: the stored one (all rows share it), else new."""
        if self._salt is None:
            with self._db.session() as session:
                stored = session.exec(select(PartnerKey.kdf_salt).limit(1)).first()
            self._salt = stored if stored is not None else secrets.token_bytes(_SALT_BYTES)
        return self._salt

    def create(self) -> LocalAccount:
        """A new random account whose key is sealed and stored before it is returned."""
        account: LocalAccount = Account.create()
        salt = self._current_salt()
        nonce = secrets.token_bytes(_NONCE_BYTES)
        cipher = AES.new(self._kek(salt), AES.MODE_GCM, nonce=nonce)
        cipher.update(_AAD_PREFIX + account.address.encode())
        sealed, tag = cipher.encrypt_and_digest(bytes(account.key))
        row = PartnerKey(
            address=account.address,
            kdf_salt=salt,
            nonce=nonce,
            sealed_key=sealed + tag,
            created_at=datetime.now(UTC),
        )
        with self._db.session() as session:
            session.add(row)
            session.commit()
        return account

    def discard(self, address: str) -> None:
        """Forget a key that never served (its enrolment failed)."""
        with self._db.session() as session:
            session.exec(delete(PartnerKey).where(col(PartnerKey.address) == address))
            session.commit()

    def load(self) -> dict[str, LocalAccount]:
        """Every stored key, opened: address -> account. :class:`KeystoreLocked` if the
        password does not open one of them."""
        with self._db.session() as session:
            rows = list(session.exec(select(PartnerKey)).all())
        accounts: dict[str, LocalAccount] = {}
        for row in rows:
            cipher = AES.new(self._kek(bytes(row.kdf_salt)), AES.MODE_GCM, nonce=bytes(row.nonce))
            cipher.update(_AAD_PREFIX + row.address.encode())
            sealed = bytes(row.sealed_key)
            try:
                key = cipher.decrypt_and_verify(sealed[:-16], sealed[-16:])
            except ValueError:
                raise KeystoreLocked(
                    "the keystore password does not open the partner key of "
                    f"{row.address} (wrong STADJERSPAS_KEYSTORE_PASSWORD, or a tampered row)"
                ) from None
            account: LocalAccount = Account.from_key(key)
            if account.address != row.address:
                raise KeystoreLocked(f"the partner key stored for {row.address} is another key's")
            accounts[row.address] = account
        return accounts
