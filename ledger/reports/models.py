"""Typed results of the reports: what the CLI, the admin API, the writers and the charts share.

All amounts are integers in the scheme's unit (euro cents for budget and discount schemes, a
number of uses for a uses scheme); ``credited`` is always euro cents owed to merchants.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ledger.reports.periods import Granularity, Period

__all__ = [
    "DISTRICT_METRICS",
    "UNKNOWN_DISTRICT",
    "DistrictCell",
    "DistrictReport",
    "Figure",
    "MerchantReport",
    "MerchantRow",
    "SchemeReport",
    "SchemeRow",
]

#: The district of passes that are not (or no longer) in the registry, e.g. of erased holders.
UNKNOWN_DISTRICT = "unknown"


@dataclass(frozen=True, slots=True)
class SchemeRow:
    """One scheme in one bucket. Flows are within the bucket; stocks are at its end."""

    scheme_id: int
    kind: str
    bucket: str
    start: int
    end: int
    issued: int
    issued_unlimited: int  # unlimited (discount) entitlements issued: a count, not an amount
    redemptions: int
    redeemed: int  # debited from entitlements
    credited: int  # cents owed to merchants by these redemptions
    reversals: int
    reversed: int  # debited amounts restored
    reversed_credited: int
    expired: int
    remaining: int  # at the end of the bucket
    holders_entitled: int  # passes with an entitlement issued up to the end of the bucket
    holders_used: int  # passes that redeemed in the bucket (uptake)
    #: the part of ``issued`` that is opening balances migrated from an old system
    #: (``ledger.imports``); ``issued - migrated`` is new issuance
    migrated: int = 0

    @property
    def uptake(self) -> float | None:
        return None if not self.holders_entitled else self.holders_used / self.holders_entitled


@dataclass(frozen=True, slots=True)
class SchemeReport:
    period: Period
    granularity: Granularity
    tz: str
    rows: list[SchemeRow]
    #: per scheme over the whole period: distinct passes that redeemed at least once
    holders_used_in_period: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MerchantRow:
    merchant: str  # chain address
    name: str | None  # from the registry; None if the address is not registered there
    kvk_number: str | None
    redemptions: int
    amount: int  # as requested
    discount: int
    credited: int
    reversals: int
    reversed: int  # credited amounts taken back
    settled: int  # recorded on chain in the period
    owed: int  # at the end of the period: credited - reversed - settled, all up to then


@dataclass(frozen=True, slots=True)
class MerchantReport:
    period: Period | None
    rows: list[MerchantRow]


@dataclass(frozen=True, slots=True)
class Figure:
    """A published number, or ``None`` when it is suppressed (``reason`` says why)."""

    value: int | None
    suppressed: bool = False
    reason: str | None = None  # "primary" (fewer than k holders) | "complementary"


DISTRICT_METRICS: tuple[str, ...] = (
    "issued",
    "redeemed",
    "reversed",
    "expired",
    "remaining",
    "credited",
    "redemptions",
    "holders_entitled",
    "holders_used",
)


@dataclass(frozen=True, slots=True)
class DistrictCell:
    """The figures of one district (``None``: all districts) for one scheme (``None``: all).

    The all-schemes row of a district carries only the figures that make sense across units:
    ``redemptions``, ``holders_entitled`` and ``holders_used``.
    """

    district: str | None
    district_name: str | None
    scheme_id: int | None
    figures: dict[str, Figure]


@dataclass(frozen=True, slots=True)
class DistrictReport:
    period: Period | None
    k: int
    cells: list[DistrictCell]
    #: figures that could still be computed back (empty unless the table is too small to protect)
    exposed: list[str] = field(default_factory=list)

    def cell(self, district: str | None, scheme_id: int | None) -> DistrictCell:
        for cell in self.cells:
            if cell.district == district and cell.scheme_id == scheme_id:
                return cell
        raise KeyError((district, scheme_id))
