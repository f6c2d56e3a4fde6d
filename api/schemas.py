"""Request and response models of the HTTP API (separate from the store's tables).

Amounts are integers in the unit of their scheme: euro cents (budget schemes), a number of uses
(uses schemes), or, for a discount offer, the purchase price in cents the discount applies to.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from wallet.units import UINT64_MAX

__all__ = [
    "Balance",
    "BalancesOut",
    "EntitlementIn",
    "EntitlementOut",
    "HealthOut",
    "PassTokenOut",
    "RedemptionIn",
    "RedemptionOut",
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
    scheme_id: int = Field(ge=1, le=2**63 - 1)
    amount: int = Field(ge=1, le=UINT64_MAX, description="Cents or uses (uint64).")


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


class Balance(BaseModel):
    scheme_id: int
    name: str
    kind: Literal["budget", "uses", "discount"]
    unit: Literal["cents", "uses"]
    balance: int
    unlimited: bool = Field(description="True for an offer that never runs out.")


class BalancesOut(BaseModel):
    pass_number: str
    first_name: str
    registered: bool
    blocked: bool
    balances: list[Balance]


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

    token: str = Field(min_length=1, max_length=512, description="The scanned token URI.")
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
