"""Index tables: a mirror of the ledger contract's events, written only by the indexer.

Every event row carries where it happened (chain id, block number, block hash, transaction hash,
log index) and is unique per ``(chain_id, block_hash, log_index)``, so applying the same logs twice
changes nothing. Amounts are integers (cents or uses); an unlimited discount entitlement is a flag,
not a number. ``index_checkpoint`` and ``index_block`` are written in the same transaction as the
rows; a reorganisation deletes the rows of the abandoned blocks and rewinds the checkpoint.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Numeric, UniqueConstraint
from sqlmodel import Field, SQLModel

__all__ = [
    "EVENT_TABLES",
    "GOVERNANCE_KINDS",
    "GOVERNANCE_VALUES",
    "IndexBlock",
    "IndexCheckpoint",
    "IndexedCardChange",
    "IndexedCohort",
    "IndexedCohortClaim",
    "IndexedEntitlement",
    "IndexedExpiry",
    "IndexedGovernance",
    "IndexedPass",
    "IndexedPassBlock",
    "IndexedRedemption",
    "IndexedRejection",
    "IndexedReversal",
    "IndexedScheme",
    "IndexedSettlement",
]


def _big(*, index: bool = False) -> int:
    """A 64-bit integer column (block numbers, timestamps, uint64 amounts below 2**63)."""
    result: int = Field(sa_type=BigInteger, index=index)
    return result


def _uint() -> int:
    """Up to uint128 amounts (budget caps) exactly, on SQLite and PostgreSQL."""
    result: int = Field(sa_type=Numeric(40, 0))
    return result


class IndexCheckpoint(SQLModel, table=True):
    """How far the indexer has applied the chain of ``chain_id``/``contract``."""

    __tablename__ = "index_checkpoint"

    chain_id: int = Field(sa_type=BigInteger, primary_key=True)
    contract: str = Field(primary_key=True, max_length=42)
    block_number: int = _big()
    block_hash: str = Field(max_length=66)
    updated_at: datetime


class IndexBlock(SQLModel, table=True):
    """A block the indexer applied: its hash and parent hash detect reorganisations."""

    __tablename__ = "index_block"

    chain_id: int = Field(sa_type=BigInteger, primary_key=True)
    number: int = Field(sa_type=BigInteger, primary_key=True)
    hash: str = Field(max_length=66, index=True)
    parent_hash: str = Field(max_length=66)
    timestamp: int = _big()


class _EventRow(SQLModel):
    """Where an event happened; the natural key is (chain_id, block_hash, log_index)."""

    id: int | None = Field(default=None, primary_key=True)
    chain_id: int = _big()
    block_number: int = _big(index=True)
    block_hash: str = Field(max_length=66)
    block_time: int = _big(index=True)
    transaction_hash: str = Field(max_length=66, index=True)
    log_index: int


def _natural_key(name: str) -> tuple[UniqueConstraint]:
    return (UniqueConstraint("chain_id", "block_hash", "log_index", name=f"uq_{name}_log"),)


class IndexedPass(_EventRow, table=True):
    __tablename__ = "index_pass"
    __table_args__ = _natural_key("index_pass")

    pass_id: str = Field(max_length=66, index=True)
    holder_key: str | None = Field(default=None, max_length=42)
    card_serial: int = _big()


class IndexedPassBlock(_EventRow, table=True):
    """A pass was blocked or unblocked, or its holder key changed (``kind``)."""

    __tablename__ = "index_pass_change"
    __table_args__ = _natural_key("index_pass_change")

    pass_id: str = Field(max_length=66, index=True)
    kind: str = Field(max_length=16)  # blocked | unblocked | holder_key
    holder_key: str | None = Field(default=None, max_length=42)


class IndexedCardChange(_EventRow, table=True):
    __tablename__ = "index_card_change"
    __table_args__ = _natural_key("index_card_change")

    pass_id: str = Field(max_length=66, index=True)
    old_serial: int = _big()
    new_serial: int = _big()


class IndexedScheme(_EventRow, table=True):
    __tablename__ = "index_scheme"
    __table_args__ = _natural_key("index_scheme")

    scheme_id: int = _big(index=True)
    kind: str = Field(max_length=16)  # budget | uses | discount
    valid_from: int = _big()
    valid_until: int = _big()
    per_redemption_cap: int = _big()
    unit_value: int = _big()
    discount_bps: int
    reimburse_bps: int
    discount_fixed: int = _big()
    budget_cap: int = _uint()
    open_to_all_merchants: bool


class IndexedEntitlement(_EventRow, table=True):
    """Value added to an entitlement by ``issue``, ``issueBatch`` (a row per pass) or ``claim``."""

    __tablename__ = "index_entitlement"
    __table_args__ = (
        UniqueConstraint(
            "chain_id", "block_hash", "log_index", "position", name="uq_index_entitlement_log"
        ),
    )

    position: int = 0  # the pass's position in a batch event; 0 otherwise
    scheme_id: int = _big(index=True)
    pass_id: str = Field(max_length=66, index=True)
    amount: int = _big()
    unlimited: bool = False
    source: str = Field(max_length=16)  # issue | batch | claim
    cohort_root: str | None = Field(default=None, max_length=66)


class IndexedCohort(_EventRow, table=True):
    __tablename__ = "index_cohort"
    __table_args__ = _natural_key("index_cohort")

    scheme_id: int = _big(index=True)
    root: str = Field(max_length=66, index=True)
    holder_count: int = _big()
    total_amount: int = _uint()


class IndexedCohortClaim(_EventRow, table=True):
    __tablename__ = "index_cohort_claim"
    __table_args__ = _natural_key("index_cohort_claim")

    root: str = Field(max_length=66, index=True)
    leaf_index: int = _big()
    pass_id: str = Field(max_length=66, index=True)
    amount: int = _big()
    unlimited: bool = False


class IndexedExpiry(_EventRow, table=True):
    __tablename__ = "index_expiry"
    __table_args__ = _natural_key("index_expiry")

    scheme_id: int = _big(index=True)
    pass_id: str = Field(max_length=66, index=True)
    amount: int = _big()  # 0 for an unlimited entitlement: nothing countable was written off
    unlimited: bool = False


class IndexedRedemption(_EventRow, table=True):
    """An accepted redemption; ``receipt_root`` and ``receipt_position`` locate its proof."""

    __tablename__ = "index_redemption"
    __table_args__ = _natural_key("index_redemption")

    redemption_id: str = Field(max_length=78, index=True)  # uint256 as decimal text
    pass_id: str = Field(max_length=66, index=True)
    scheme_id: int = _big(index=True)
    merchant: str = Field(max_length=42, index=True)
    amount: int = _big()
    debited: int = _big()
    discount: int = _big()
    credited: int = _big()
    receipt_root: str | None = Field(default=None, max_length=66)
    receipt_position: int | None = None


class IndexedRejection(_EventRow, table=True):
    """An item of a batch the contract refused (``reason`` is the error's name)."""

    __tablename__ = "index_rejection"
    __table_args__ = _natural_key("index_rejection")

    redemption_id: str = Field(max_length=78, index=True)
    reason: str = Field(max_length=64)
    detail: str = Field(max_length=66)


class IndexedReversal(_EventRow, table=True):
    __tablename__ = "index_reversal"
    __table_args__ = _natural_key("index_reversal")

    redemption_id: str = Field(max_length=78, index=True)
    pass_id: str = Field(max_length=66, index=True)
    scheme_id: int = _big(index=True)
    merchant: str = Field(max_length=42, index=True)
    debited: int = _big()
    credited: int = _big()


class IndexedSettlement(_EventRow, table=True):
    __tablename__ = "index_settlement"
    __table_args__ = _natural_key("index_settlement")

    merchant: str = Field(max_length=42, index=True)
    payment_reference: str = Field(max_length=66, index=True)
    amount: int = _uint()


#: ``index_governance.kind`` of each governance event.
GOVERNANCE_KINDS: dict[str, str] = {
    "RoleGranted": "role_granted",
    "RoleRevoked": "role_revoked",
    "RoleAdminChanged": "role_admin_changed",
    "Paused": "paused",
    "Unpaused": "unpaused",
    "MerchantAllowanceChanged": "merchant_allowance_changed",
    "ReversalWindowChanged": "reversal_window_changed",
    "EIP712DomainChanged": "eip712_domain_changed",
}


class IndexedGovernance(_EventRow, table=True):
    """Who may do what, and the contract's settings: role grants and revocations, role admin
    changes, pause and unpause, merchant allowances per scheme, the reversal window, and EIP-712
    domain changes. ``kind`` names the event; the other columns are set where the event has them.
    """

    __tablename__ = "index_governance"
    __table_args__ = _natural_key("index_governance")

    kind: str = Field(max_length=32, index=True)
    role: str | None = Field(default=None, max_length=66)  # bytes32 role id
    previous_admin_role: str | None = Field(default=None, max_length=66)
    new_admin_role: str | None = Field(default=None, max_length=66)
    account: str | None = Field(default=None, max_length=42, index=True)  # or the merchant
    sender: str | None = Field(default=None, max_length=42)
    scheme_id: int | None = Field(default=None, sa_type=BigInteger)
    allowed: bool | None = None  # merchant allowance
    window_s: int | None = Field(default=None, sa_type=BigInteger)  # reversal window


#: The columns of ``index_governance`` that an event sets or leaves empty (all but where it
#: happened and its ``kind``).
GOVERNANCE_VALUES: tuple[str, ...] = tuple(
    name
    for name in IndexedGovernance.model_fields
    if name not in _EventRow.model_fields and name != "kind"
)


EVENT_TABLES: tuple[type[_EventRow], ...] = (
    IndexedPass,
    IndexedPassBlock,
    IndexedCardChange,
    IndexedScheme,
    IndexedEntitlement,
    IndexedCohort,
    IndexedCohortClaim,
    IndexedExpiry,
    IndexedRedemption,
    IndexedRejection,
    IndexedReversal,
    IndexedSettlement,
    IndexedGovernance,
)
