"""Request and response bodies of the admin registry routes (``api/routes/admin_registry.py``)."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from api.schemas import JSON_INT_MAX, UtcDatetime
from ledger.registry import format_postcode
from ledger.store.registry import Merchant

if TYPE_CHECKING:
    from api.jobs import Job

__all__ = [
    "PERIOD_PATTERN",
    "AuditIn",
    "AuditOut",
    "CardOut",
    "CohortIn",
    "ConfirmOut",
    "DebtorIn",
    "DifferenceOut",
    "ErasureOut",
    "HolderIn",
    "HolderOut",
    "HouseholdIn",
    "HouseholdMemberIn",
    "HouseholdMemberOut",
    "HouseholdOut",
    "HouseholdPage",
    "IssuedPassOut",
    "JobOut",
    "MerchantIn",
    "MerchantLocationIn",
    "MerchantLocationOut",
    "MerchantOut",
    "PassIn",
    "PassOut",
    "PayoutIn",
    "PayoutLineOut",
    "PayoutRunOut",
    "SchemeIn",
    "SchemeOut",
]

SchemeKindName = Literal["budget", "uses", "discount"]
_UINT64 = 2**64 - 1

# The service's own syntax rules, documented as patterns: the service checks them itself and
# answers its own code (``postcode_invalid``, ``kvk_invalid``, ...), after stripping spaces.
POSTCODE_PATTERN = r"^\s*[1-9][0-9]{3} ?[A-Za-z]{2}\s*$"
KVK_PATTERN = r"^\s*[0-9]{8}\s*$"
WEBSITE_PATTERN = r"^\s*(([Hh][Tt][Tt][Pp][Ss]?)://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/\S*)?\s*)?$"
_DAY = r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
#: A month (``2026-11``), a day (``2026-11-28``) or a range of days (``2026-11-01..2026-11-15``).
PERIOD_PATTERN = rf"^\s*([0-9]{{4}}-(0[1-9]|1[0-2])|{_DAY}|{_DAY}\.\.{_DAY})\s*$"


def _date_text(value: object) -> object:
    """A date in a JSON body is ISO 8601 text, as documented (``format: date``), never a number
    that pydantic would read as unix seconds."""
    if isinstance(value, int | float):
        raise ValueError("a date is written as YYYY-MM-DD")
    return value


IsoDate = Annotated[date, BeforeValidator(_date_text)]


def _json_integer(value: object) -> object:
    """A JSON integer (``5`` or ``5.0``, as JSON Schema counts them), never ``true`` or ``"5"``."""
    if isinstance(value, bool | str):
        raise ValueError("an integer is written as a JSON number")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]


def _non_blank(schema: dict[str, Any]) -> None:
    """A required text (``minLength`` >= 1) is read with its surrounding spaces stripped, so it
    needs a character that is not a space: say so (``pattern: \\S``) where nothing else does."""
    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "string" and option.get("minLength", 0) >= 1:
            option.setdefault("pattern", r"\S")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core_schema))
        for prop in schema.get("properties", {}).values():
            _non_blank(prop)
        return schema


class HolderIn(_In):
    """A holder to enrol; the district follows from the postcode."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {
                    "first_name": "Anna",
                    "last_name": "de Vries",
                    "birth_date": "1984-03-12",
                    "postcode": "9712 AB",
                }
            ]
        },
    )

    first_name: str = Field(min_length=1, max_length=120)
    last_name: str = Field(min_length=1, max_length=120)
    birth_date: IsoDate
    postcode: str = Field(json_schema_extra={"pattern": POSTCODE_PATTERN})
    household_reference: str | None = Field(default=None, min_length=1, max_length=64)
    household_role: Literal["parent", "child", "other"] | None = None
    street: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Street and house number of the postal address (for activation letters); "
        "given with town, or neither",
    )
    town: str | None = Field(default=None, min_length=1, max_length=100)


class PassSummary(BaseModel):
    pass_number: str
    status: Literal["active", "blocked"]
    created_at: UtcDatetime
    card_serial: int | None = Field(default=None, description="serial of the active card")


class HolderOut(BaseModel):
    id: int
    first_name: str
    last_name: str
    birth_date: date
    postcode: str
    district_code: str | None
    household_id: int | None = None
    household_reference: str | None = None
    household_role: str
    possible_duplicate: bool = Field(
        description="True when a holder with the same name, birth date and postcode exists "
        "(enrolled anyway, flagged for a person to review)"
    )
    possible_duplicate_of: int | None
    created_at: UtcDatetime
    passes: list[PassSummary] = Field(default_factory=list)
    street: str | None = None
    town: str | None = None


HouseholdRoleName = Literal["parent", "child", "other"]


class HouseholdIn(_In):
    """A new, empty household; link holders to it with ``PUT .../members/{holder_id}``."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={"examples": [{"reference": "HH-2027-0042"}]},
    )

    reference: str = Field(
        min_length=1, max_length=64, description="The municipality's own household reference"
    )


class HouseholdMemberIn(_In):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"role": "child"}]})

    role: HouseholdRoleName


class HouseholdMemberOut(BaseModel):
    """A member: first name only (the holder's full record is ``GET /admin/holders/{id}``)."""

    holder_id: int
    first_name: str
    role: HouseholdRoleName
    pass_numbers: list[str]


class HouseholdOut(BaseModel):
    id: int
    reference: str
    members: list[HouseholdMemberOut]


class HouseholdPage(BaseModel):
    total: int
    limit: int
    offset: int
    households: list[HouseholdOut]


class ErasureOut(BaseModel):
    holder_id: int
    passes: int
    cards: int
    household_removed: bool


class PassIn(_In):
    holder_key: str | None = Field(
        default=None,
        description="Optional address of the holder's own signing key (app wallet)",
        pattern=r"^0x[0-9a-fA-F]{40}$",
    )


class IssuedPassOut(BaseModel):
    holder_id: int
    pass_number: str
    activation_code: str | None = Field(
        description="Shown only in this response (print it on the letter); never again"
    )
    tx_hash: str
    block_number: int


class PassOut(BaseModel):
    pass_number: str
    status: Literal["active", "blocked"]
    registered_on_chain: bool
    blocked_on_chain: bool
    card_serial: int
    tx_hash: str | None = Field(description="None when the chain already had this state")


class CardOut(BaseModel):
    pass_number: str
    serial: int
    issued_at: UtcDatetime
    expires_at: int
    token_uri: str
    card_png: str = Field(description="Path of the printable card (PNG)")
    card_pdf: str = Field(description="Path of the printable card (PDF, 85.6 x 54 mm)")
    tx_hash: str
    block_number: int


class SchemeIn(_In):
    """Terms of a new scheme. Amounts in cents, times in unix seconds."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {
                    "name": "Kindpakket 2027",
                    "kind": "budget",
                    "valid_from": 1798761600,
                    "valid_until": 1830297599,
                    "budget_cap": 50000000,
                    "per_redemption_cap": 5000,
                    "open_to_all_merchants": True,
                }
            ]
        },
    )

    name: str = Field(min_length=1, max_length=120)
    kind: SchemeKindName
    valid_from: JsonInt = Field(ge=0, lt=2**40)
    valid_until: JsonInt = Field(ge=0, lt=2**40)
    budget_cap: JsonInt = Field(ge=0, le=JSON_INT_MAX)
    per_redemption_cap: JsonInt = Field(default=0, ge=0, le=JSON_INT_MAX)
    unit_value: JsonInt = Field(default=0, ge=0, le=JSON_INT_MAX)
    discount_bps: JsonInt = Field(default=0, ge=0, lt=2**16)
    reimburse_bps: JsonInt = Field(default=0, ge=0, lt=2**16)
    discount_fixed: JsonInt = Field(default=0, ge=0, le=JSON_INT_MAX)
    open_to_all_merchants: bool = Field(default=False, strict=True)
    allowed_merchants: list[JsonInt] = Field(default_factory=list, max_length=1000)


class SchemeOut(BaseModel):
    scheme_id: int
    name: str
    kind: SchemeKindName
    valid_from: int
    valid_until: int
    budget_cap: int
    committed: int
    per_redemption_cap: int
    unit_value: int
    discount_bps: int
    reimburse_bps: int
    discount_fixed: int
    open_to_all_merchants: bool
    tx_hash: str | None = None


class CohortIn(_In):
    """Everyone whose pass is active and who meets every given criterion gets ``amount``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "scheme_id": 1,
                    "amount": 5000,
                    "min_age": 4,
                    "max_age": 17,
                    "age_at": "2027-01-01",
                }
            ]
        },
    )

    scheme_id: int = Field(ge=1)
    amount: int = Field(ge=1, le=JSON_INT_MAX)
    min_age: int | None = Field(default=None, ge=0, le=150)
    max_age: int | None = Field(default=None, ge=0, le=150)
    age_at: date | None = Field(default=None, description="the date ages count at; default today")
    district_codes: list[str] | None = Field(default=None, min_length=1, max_length=200)


class JobOut(BaseModel):
    id: str
    kind: str
    status: Literal["queued", "running", "done", "failed"]
    done: int
    total: int
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    result: dict[str, Any] | None
    problem: dict[str, Any] | None = Field(
        description="Why it failed: status, code and detail, as in a problem document"
    )

    @classmethod
    def of(cls, job: Job) -> JobOut:
        """The answer for a job of :mod:`api.jobs` (a copy of its snapshot)."""
        return cls(
            id=job.id,
            kind=job.kind,
            status=job.status.value,
            done=job.done,
            total=job.total,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            result=job.result,
            problem=job.problem,
        )


_LOCATION_EXAMPLE: dict[str, Any] = {
    "street": "Kraneweg 90",
    "postcode": "9718 JN",
    "town": "Groningen",
    "website": "https://noorderbad.example",
    "opening_hours": "ma-vr 7:00-21:00\nza-zo 9:00-17:00",
}


class MerchantLocationIn(_In):
    """Where the merchant is: street and house number, Dutch postcode and town (all three), and
    optionally a website and opening hours. Public: holders see it with the offers."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={"examples": [_LOCATION_EXAMPLE]},
    )

    street: str = Field(min_length=1, max_length=200, description="Street and house number")
    postcode: str = Field(
        description="Dutch postcode: 4 digits (the first not 0) and 2 letters, `9718 JN` or "
        "`9718JN` (else 422 `postcode_invalid`)",
        json_schema_extra={"pattern": POSTCODE_PATTERN},
    )
    town: str = Field(min_length=1, max_length=100)
    website: str | None = Field(
        default=None,
        max_length=200,
        description="`http://` or `https://` address (as text)",
        json_schema_extra={"pattern": WEBSITE_PATTERN},
    )
    opening_hours: str | None = Field(
        default=None, max_length=500, description="Free text, at most 10 lines"
    )


class MerchantLocationOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_LOCATION_EXAMPLE]})

    street: str
    postcode: str = Field(description="As written on an address: `9718 JN`")
    town: str
    website: str | None = None
    opening_hours: str | None = Field(default=None, description="Lines separated by `\\n`")

    @classmethod
    def of(cls, merchant: Merchant) -> MerchantLocationOut | None:
        """The registry row's location (postcode as ``9718 JN``), or None if not set."""
        if merchant.street is None or merchant.postcode is None or merchant.town is None:
            return None
        return cls(
            street=merchant.street,
            postcode=format_postcode(merchant.postcode),
            town=merchant.town,
            website=merchant.website,
            opening_hours=merchant.opening_hours,
        )


class MerchantIn(_In):
    """A partner. The service creates its signing key (kept in the encrypted partner
    keystore) and grants that address the merchant role; the partner supplies no address."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {
                    "name": "Sportclub Be Quick",
                    "kvk_number": "01012345",
                    "category": "sport",
                    "iban": "NL91 ABNA 0417 1643 00",
                    "location": {
                        "street": "Concourslaan 17",
                        "postcode": "9727 KC",
                        "town": "Groningen",
                    },
                }
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200)
    kvk_number: str = Field(
        min_length=1,
        max_length=16,
        description="8 digits (else 422 `kvk_invalid`)",
        json_schema_extra={"pattern": KVK_PATTERN},
    )
    category: str = Field(min_length=1, max_length=64)
    iban: str | None = Field(default=None, max_length=42)
    location: MerchantLocationIn | None = Field(
        default=None, description="Optional; set or change later at `PUT .../location`"
    )

    @model_validator(mode="before")
    @classmethod
    def _lengths_as_sent(cls, data: Any) -> Any:
        """The declared ``maxLength`` holds for the text as sent, spaces included (the
        fields are stripped after): a 17-character KvK of 8 digits and spaces is refused."""
        if isinstance(data, dict):
            for name, info in cls.model_fields.items():
                value = data.get(name)
                limit = next(
                    (m.max_length for m in info.metadata if hasattr(m, "max_length")), None
                )
                if isinstance(value, str) and limit is not None and len(value) > limit:
                    raise ValueError(f"{name} is longer than {limit} characters")
        return data


class MerchantOut(BaseModel):
    id: int
    name: str
    kvk_number: str
    address: str
    category: str
    iban: str | None
    bic: str | None
    active: bool
    merchant_role: bool = Field(description="Whether the address holds the merchant role")
    location: MerchantLocationOut | None = Field(
        default=None, description="Where the merchant is (public), if set"
    )


class AuditIn(_In):
    to_block: int | None = Field(
        default=None, ge=0, description="default: the index checkpoint, else the head"
    )
    compare_reports: bool = True


class DifferenceOut(BaseModel):
    kind: str
    key: str
    expected: Any
    actual: Any


class AuditOut(BaseModel):
    ok: bool
    chain_id: int
    contract: str
    from_block: int
    to_block: int
    block_hash: str
    events: int
    checked: list[str]
    notes: list[str]
    differences: list[DifferenceOut]


class DebtorIn(_In):
    name: str = Field(min_length=1, max_length=70)
    iban: str = Field(min_length=1, max_length=42)
    bic: str | None = Field(default=None, max_length=11)


class PayoutIn(_In):
    """A payout run for a period: who is owed what for redemptions in it."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={"examples": [{"period": "2026-11", "execution_date": "2026-12-02"}]},
    )

    period: str = Field(
        min_length=1,
        max_length=40,
        description="A month (2026-11), a day (2026-11-28) or a range (2026-11-01..2026-11-15)",
        json_schema_extra={"pattern": PERIOD_PATTERN},
    )
    execution_date: date | None = Field(default=None, description="default: today")
    debtor: DebtorIn | None = Field(
        default=None,
        description="The municipality's account paying the run; default: the configured one "
        "(STADJERSPAS_PAYOUT_DEBTOR_NAME, _IBAN, _BIC)",
    )


class PayoutLineOut(BaseModel):
    merchant: str
    name: str | None
    amount: int
    status: str
    iban: str | None
    end_to_end_id: str | None
    error: str | None


class PayoutRunOut(BaseModel):
    reference: str
    status: str
    period_start: int
    period_end: int
    execution_date: str
    total: int
    transactions: int
    pain001: str = Field(description="Path of the pain.001 file")
    lines: list[PayoutLineOut]


class ConfirmOut(BaseModel):
    reference: str
    complete: bool
    settled: list[PayoutLineOut]
    already: list[PayoutLineOut]
    failed: list[PayoutLineOut]
