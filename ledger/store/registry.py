"""Registry tables: personal data held by the municipality. Never on chain.

A holder has passes; a pass has a pass number (printed on the card), a per-pass secret and the
pseudonym ``pass_id = HMAC(secret, pass_number)`` that is all the chain ever sees. Erasing a holder
deletes the holder, the pass secrets and the cards; the on-chain history stays consistent but can
no longer be linked to the person.

Enumerations are stored as their lower-case values in a VARCHAR with a CHECK constraint (not as
PostgreSQL enum types), so exports and both databases see the same text. Timestamps are
timezone-aware (UTC).
"""

from __future__ import annotations

import enum
from datetime import date, datetime

from sqlalchemy import BigInteger, Column, DateTime, Enum, Index, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel

__all__ = [
    "CardStatus",
    "District",
    "Holder",
    "Household",
    "HouseholdRole",
    "Merchant",
    "PassRecord",
    "PassStatus",
    "PostcodeDistrict",
    "PrintedCard",
]


class HouseholdRole(enum.StrEnum):
    PARENT = "parent"
    CHILD = "child"
    OTHER = "other"


class PassStatus(enum.StrEnum):
    ACTIVE = "active"
    BLOCKED = "blocked"


class CardStatus(enum.StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"


def _values(cls: type[enum.StrEnum]) -> list[str]:
    return [member.value for member in cls]


def _enum(cls: type[enum.StrEnum], name: str) -> Enum:
    """A VARCHAR(16) holding the member's value, checked by a named CHECK constraint."""
    return Enum(
        cls,
        name=name,
        native_enum=False,
        length=16,
        values_callable=_values,
        create_constraint=True,
        validate_strings=True,
    )


def _utc() -> DateTime:
    return DateTime(timezone=True)


class District(SQLModel, table=True):
    """A wijk (CBS "wijk- en buurtindeling"): the unit reports are broken down by."""

    __tablename__ = "registry_district"

    code: str = Field(primary_key=True, max_length=16)
    name: str = Field(max_length=120)
    municipality: str = Field(max_length=120)


class PostcodeDistrict(SQLModel, table=True):
    """Which district a postcode (4 digits + 2 letters, no space) lies in."""

    __tablename__ = "registry_postcode_district"

    postcode: str = Field(primary_key=True, max_length=6)
    district_code: str = Field(foreign_key="registry_district.code", index=True, max_length=16)


class Household(SQLModel, table=True):
    __tablename__ = "registry_household"

    id: int | None = Field(default=None, primary_key=True)
    reference: str = Field(unique=True, max_length=64)


class Holder(SQLModel, table=True):
    """A pass holder. Duplicates (same name, birth date and postcode) are flagged, not merged."""

    __tablename__ = "registry_holder"
    __table_args__ = (Index("ix_registry_holder_identity", "birth_date", "postcode"),)

    id: int | None = Field(default=None, primary_key=True)
    first_name: str = Field(max_length=120)
    last_name: str = Field(max_length=120)
    birth_date: date
    postcode: str = Field(max_length=6, index=True)
    district_code: str | None = Field(
        default=None, foreign_key="registry_district.code", index=True, max_length=16
    )
    #: postal address for letters (revision ``r0009``): street and house number, and town; the
    #: postcode is :attr:`postcode`. Optional: a holder without them gets no activation letter.
    street: str | None = Field(default=None, max_length=200)
    town: str | None = Field(default=None, max_length=100)
    household_id: int | None = Field(default=None, foreign_key="registry_household.id", index=True)
    household_role: HouseholdRole = Field(
        default=HouseholdRole.OTHER, sa_type=_enum(HouseholdRole, "household_role")
    )
    possible_duplicate_of: int | None = Field(
        default=None, foreign_key="registry_holder.id", index=True, ondelete="SET NULL"
    )
    created_at: datetime = Field(sa_type=_utc())


class PassRecord(SQLModel, table=True):
    """A city pass: its number, its secret and the on-chain pseudonym derived from both."""

    __tablename__ = "registry_pass"

    id: int | None = Field(default=None, primary_key=True)
    holder_id: int = Field(foreign_key="registry_holder.id", index=True)
    pass_number: str = Field(unique=True, max_length=32)
    pass_secret: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))
    pass_id: str = Field(unique=True, max_length=66, description="0x-hex bytes32 pseudonym")
    holder_key: str | None = Field(default=None, max_length=42)
    status: PassStatus = Field(default=PassStatus.ACTIVE, sa_type=_enum(PassStatus, "pass_status"))
    activation_code_hash: str | None = Field(default=None, max_length=128)
    created_at: datetime = Field(sa_type=_utc())
    #: when the holder first logged in with an activation code (revision ``r0009``); None: not
    #: yet activated (letters for "everyone not yet activated" select these)
    activated_at: datetime | None = Field(default=None, sa_type=_utc())


class PrintedCard(SQLModel, table=True):
    """A printed card of a pass; replacing it revokes the old serial on chain."""

    __tablename__ = "registry_card"
    __table_args__ = (UniqueConstraint("pass_record_id", "serial"),)

    id: int | None = Field(default=None, primary_key=True)
    pass_record_id: int = Field(foreign_key="registry_pass.id", index=True)
    serial: int = Field(sa_column=Column(BigInteger, nullable=False))
    status: CardStatus = Field(default=CardStatus.ACTIVE, sa_type=_enum(CardStatus, "card_status"))
    issued_at: datetime = Field(sa_type=_utc())


class Merchant(SQLModel, table=True):
    """A partner organisation: its chain address, KvK number, IBAN (for payouts) and category.

    Its public location (revision ``0004``), all optional and set together: ``street`` (street
    and house number), ``postcode`` (``9712AB``, no space, as the holders' postcodes), ``town``,
    and optionally ``website`` and ``opening_hours`` (free text, a few lines). A
    merchant is a business: the holder page shows its location.
    """

    __tablename__ = "registry_merchant"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    kvk_number: str = Field(max_length=8, index=True)
    iban: str | None = Field(default=None, max_length=34)
    bic: str | None = Field(default=None, max_length=11)
    category: str = Field(max_length=64)
    address: str = Field(unique=True, max_length=42, description="chain address (MERCHANT_ROLE)")
    active: bool = True
    street: str | None = Field(default=None, max_length=200)
    postcode: str | None = Field(default=None, max_length=6)
    town: str | None = Field(default=None, max_length=100)
    website: str | None = Field(default=None, max_length=200)
    opening_hours: str | None = Field(default=None, max_length=500)
