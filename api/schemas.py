"""Request and response models of the HTTP API (separate from the store's tables).

Amounts are integers in the unit of their scheme: euro cents (budget schemes), a number of uses
(uses schemes), or, for a discount offer, the purchase price in cents the discount applies to.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from wallet.units import UINT64_MAX


def _as_utc(value: datetime) -> datetime:
    """The store keeps UTC moments without an offset (SQLite): answer with the offset explicit."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: The largest integer a request may carry (2**53 - 1, I-JSON, RFC 7493): clients and
#: validators that read JSON numbers as doubles hold every integer up to it exactly. The
#: chain's uint64 amounts and ids hold more; the API does not need it.
JSON_INT_MAX = 2**53 - 1

#: A moment in every response: RFC 3339 in UTC with its offset (``2026-12-04T15:48:59.077210Z``).
UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]

__all__ = [
    "JSON_INT_MAX",
    "Balance",
    "BalancesOut",
    "EntitlementIn",
    "EntitlementOut",
    "HealthOut",
    "MeOut",
    "OfferOut",
    "PassTokenOut",
    "Redeemable",
    "RedemptionIn",
    "RedemptionItem",
    "RedemptionOut",
    "RedemptionPage",
    "ReversalOut",
    "ScanIn",
    "ScanOut",
    "StaffIn",
    "StaffOut",
    "StatementLineOut",
    "StatementOut",
    "TerminalIn",
    "TerminalIssuedOut",
    "TerminalOut",
    "TokenIn",
    "TokenOut",
    "UtcDatetime",
]

_PASS_NUMBER = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9]+$", examples=["GR0000001"])
_TX_HASH_EXAMPLE = "0x5c504ed432cb51138bcf09aa5e8a410dd4a1e204ef84bfed1be16dfba1b22060"


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    chain_id: int
    head_block: int | None
    ledger_address: str
    deployment_block: int
    rpc: Literal["embedded-anvil", "external"]
    env: Literal["development", "production"]
    index_lag_blocks: int | None = None
    #: Why the service is degraded, in one line (None when ``status`` is ``ok``).
    detail: str | None = None
    #: Outbox rows per state (``signed``, ``sent``, ``mined``, ``final``, ``failed``).
    outbox: dict[str, int] | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ok",
                    "chain_id": 31337,
                    "head_block": 12,
                    "ledger_address": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
                    "deployment_block": 1,
                    "rpc": "embedded-anvil",
                    "env": "development",
                    "index_lag_blocks": 0,
                }
            ]
        }
    )


class EntitlementIn(BaseModel):
    """Issue ``amount`` (cents or uses) of scheme ``scheme_id`` to the pass ``pass_number``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"pass_number": "GR0000001", "scheme_id": 1, "amount": 2500}]
        },
    )

    pass_number: str = _PASS_NUMBER
    scheme_id: int = Field(ge=1, le=JSON_INT_MAX)
    amount: int = Field(ge=1, le=JSON_INT_MAX, description="Cents or uses.")


class EntitlementOut(BaseModel):
    pass_number: str
    scheme_id: int
    amount: int
    balance: int = Field(description="The pass's balance of the scheme after this issuance.")
    tx_hash: str
    block_number: int

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "pass_number": "GR0000001",
                    "scheme_id": 1,
                    "amount": 2500,
                    "balance": 17500,
                    "tx_hash": _TX_HASH_EXAMPLE,
                    "block_number": 14,
                }
            ]
        }
    )


class PassTokenOut(BaseModel):
    token_uri: str = Field(description="The QR content: stadjerspas:1:<payload>.<signature>")
    expires_at: int = Field(description="Unix seconds; the token is refused after this.")
    pass_number: str
    short_code: str | None = Field(
        default=None,
        description="With ``?short_code=true``: a code such as ``K7QX-M4PZ`` that a terminal "
        "may type instead of the token URI, valid as long as the token.",
        examples=["K7QX-M4PZ"],
    )


class Balance(BaseModel):
    scheme_id: int
    name: str
    kind: Literal["budget", "uses", "discount"]
    unit: Literal["cents", "uses"]
    balance: int = Field(
        description="What is left, including an unclaimed cohort share (claimed on first use)."
    )
    unlimited: bool = Field(description="True for an offer that never runs out.")
    unclaimed: int = Field(
        default=0,
        description="Of ``balance``, a cohort share not yet claimed on chain; the first "
        "redemption in this scheme claims it.",
    )


class BalancesOut(BaseModel):
    pass_number: str
    first_name: str
    registered: bool
    blocked: bool
    balances: list[Balance]


#: The holder's PIN at a terminal (``ScanIn``, ``RedemptionIn``).
CounterPin = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=64,
        description="The holder's PIN, typed at the terminal: with a printed card's token above "
        "the card's limit, or with a pass number (``token``) for a holder without card or phone. "
        "The service then signs a fresh token for this checkout.",
    ),
]


class RedemptionIn(BaseModel):
    """Redeem against a scanned pass token. Send an ``Idempotency-Key`` header with it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "token": "stadjerspas:1:AAAAAAAAelnvpc…",
                    "scheme_id": 1,
                    "amount": 1250,
                }
            ]
        },
    )

    token: str = Field(
        min_length=1,
        max_length=512,
        description="The scanned token URI, or the short code shown beside the QR (any case, "
        "spaces and dashes ignored).",
    )
    pin: CounterPin = None
    scheme_id: int = Field(ge=1, le=2**63 - 1)
    amount: int = Field(
        ge=1,
        le=UINT64_MAX,
        description="Cents (budget), uses (uses) or the purchase price in cents (discount).",
    )


class RedemptionOut(BaseModel):
    redemption_id: int
    merchant_id: int
    scheme_id: int
    amount: int
    debited: int = Field(description="What left the entitlement (cents or uses).")
    credited: int = Field(description="What the municipality owes the merchant, in cents.")
    discount: int = Field(description="Discount granted in cents (discount schemes).")
    balance: int = Field(description="The pass's balance of the scheme after this redemption.")
    tx_hash: str
    block_number: int

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "redemption_id": 7,
                    "merchant_id": 2,
                    "scheme_id": 1,
                    "amount": 1250,
                    "debited": 1250,
                    "credited": 1250,
                    "discount": 0,
                    "balance": 13750,
                    "tx_hash": _TX_HASH_EXAMPLE,
                    "block_number": 15,
                }
            ]
        }
    )


# -- auth -------------------------------------------------------------------------------------


class TokenIn(BaseModel):
    """Log in. ``kind`` says what ``username``/``password`` are: a staff username and password,
    a terminal id and secret, or a pass number and its activation code or PIN."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"kind": "terminal", "username": "dev-terminal-2", "password": "…"},
                {"kind": "holder", "username": "GR0000001", "password": "ABCD-EFGH-JKLM"},
                {"kind": "staff", "username": "admin", "password": "…", "scope": "issue"},
            ]
        },
    )

    kind: Literal["staff", "terminal", "holder"] = "staff"
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)
    scope: str | None = Field(
        default=None,
        max_length=256,
        description="Space-separated scopes to narrow the token to (default: all of the login's).",
    )


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth2 token type
    expires_in: int = Field(description="Seconds until the token expires.")
    scope: str = Field(description="Space-separated scopes of the token.")
    kind: Literal["staff", "terminal", "holder"]
    merchant_id: int | None = None
    pass_number: str | None = None


class MeOut(BaseModel):
    kind: Literal["staff", "terminal", "holder"]
    subject: str
    scopes: list[str]
    role: str | None = None
    merchant_id: int | None = None
    pass_number: str | None = None
    expires_at: int | None = None


class StaffIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"username": "j.devries", "password": "a long passphrase", "role": "issuer"}
            ]
        },
    )

    username: str = Field(min_length=2, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")
    password: str = Field(min_length=12, max_length=256)
    role: Literal["admin", "issuer", "finance", "auditor"]


class StaffOut(BaseModel):
    username: str
    role: str
    active: bool


class TerminalIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"merchant_id": 2, "label": "Kassa 1"}]}
    )

    merchant_id: int = Field(ge=1, le=2**31 - 1)
    label: str = Field(default="", max_length=120)


class TerminalOut(BaseModel):
    terminal_id: str
    merchant_id: int
    label: str
    active: bool
    created_at: UtcDatetime
    revoked_at: UtcDatetime | None = None


class TerminalIssuedOut(TerminalOut):
    secret: str = Field(description="Shown only here: the terminal logs in with it.")


# -- merchant ---------------------------------------------------------------------------------


class ScanIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"token": "stadjerspas:1:AAAAAAAAelnvpc…"}]}
    )

    token: str = Field(
        min_length=1,
        max_length=512,
        description="The scanned token URI, or the short code shown beside the QR (any case, "
        "spaces and dashes ignored); with ``pin``, also a pass number.",
    )
    pin: CounterPin = None


class Redeemable(BaseModel):
    """A scheme the pass may redeem at this merchant, with what is left of it."""

    scheme_id: int
    name: str
    kind: Literal["budget", "uses", "discount"]
    unit: Literal["cents", "uses"]
    balance: int = Field(
        description="What is left: cents (budget) or uses, including an unclaimed cohort share."
    )
    unlimited: bool
    unclaimed: int = Field(
        default=0,
        description="Of ``balance``, a cohort share not yet claimed on chain; the first "
        "redemption in this scheme claims it (one transaction with the redemption).",
    )
    valid_from: int = Field(description="Unix seconds.")
    valid_until: int = Field(description="Unix seconds.")
    valid_now: bool
    per_redemption_cap: int | None = Field(description="Cents per redemption, if capped.")
    discount_bps: int = Field(description="Discount in basis points (discount schemes).")


class ScanOut(BaseModel):
    """What a merchant may know about a scanned pass: nothing personal but the first name."""

    status: Literal["active", "blocked", "unregistered"]
    first_name: str | None
    token_expires_at: int
    token_kind: Literal["app", "card"]
    amount_cap: int | None = Field(description="The token's cap per redemption, if any.")
    redeemable: list[Redeemable]
    checkout_token: str | None = Field(
        default=None,
        description="After a right PIN: the token to redeem with in this checkout (it serves "
        "this checkout only and expires with the token lifetime).",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "active",
                    "first_name": "Anouk",
                    "token_expires_at": 1767225600,
                    "token_kind": "app",
                    "amount_cap": None,
                    "redeemable": [
                        {
                            "scheme_id": 1,
                            "name": "Kindpakket (budget €150)",
                            "kind": "budget",
                            "unit": "cents",
                            "balance": 13750,
                            "unlimited": False,
                            "valid_from": 1764547200,
                            "valid_until": 1796083200,
                            "valid_now": True,
                            "per_redemption_cap": None,
                            "discount_bps": 0,
                        }
                    ],
                }
            ]
        }
    )


class OfferOut(BaseModel):
    scheme_id: int
    name: str
    kind: Literal["budget", "uses", "discount"]
    valid_from: int
    valid_until: int
    valid_now: bool
    discount_bps: int
    discount_fixed: int
    per_redemption_cap: int | None
    unit_value: int = Field(description="Cents credited per use (uses schemes).")
    open_to_all_merchants: bool


class RedemptionItem(BaseModel):
    redemption_id: int
    scheme_id: int
    amount: int
    status: Literal["pending", "succeeded", "failed"]
    debited: int | None
    credited: int | None
    discount: int | None
    tx_hash: str | None
    block_number: int | None
    problem_code: str | None
    #: Why it failed, in one line (e.g. its transaction was lost).
    problem_detail: str | None = None
    #: True when the chain contradicted an answer already given for it (see the audit).
    promise_broken: bool = False
    created_at: UtcDatetime
    reversed: bool
    reversal_tx_hash: str | None
    reversed_at: UtcDatetime | None


class RedemptionPage(BaseModel):
    items: list[RedemptionItem]
    next_before: int | None = Field(
        description="Pass as ?before= for the next (older) page; null on the last page."
    )


class ReversalOut(BaseModel):
    redemption_id: int
    scheme_id: int
    restored: int = Field(description="Returned to the entitlement (cents or uses).")
    credited_reversed: int = Field(description="No longer owed to the merchant, in cents.")
    balance: int = Field(description="The pass's balance of the scheme after the reversal.")
    tx_hash: str
    block_number: int


class StatementLineOut(BaseModel):
    kind: Literal["redemption", "reversal", "settlement"]
    at: int = Field(description="Unix seconds (block time, or request time for API records).")
    reference: str
    scheme_id: int | None
    amount: int = Field(description="Cents: + credited, - reversed or settled.")
    tx_hash: str | None


class StatementOut(BaseModel):
    merchant_id: int
    name: str
    period_start: int
    period_end: int
    source: Literal["index", "api_records"] = Field(
        description="index: the chain index (with settlements); api_records: this service's own "
        "redemption records (no settlements)."
    )
    opening: int | None
    redeemed: int
    reversed: int
    settled: int | None
    lines: list[StatementLineOut]
    owed_now: int = Field(description="Read from the chain: redeemed - reversed - settled.")


class PinIn(BaseModel):
    """A new PIN for the pass: for holder login and, with a printed card or the pass number,
    at a terminal."""

    model_config = ConfigDict(extra="forbid")

    pin: str = Field(min_length=4, max_length=64)
