"""Per-merchant statements: redemptions minus reversals minus what was already settled."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_utils import to_checksum_address
from sqlalchemy import Connection, Engine, func, literal_column, select, union_all

from ledger.reports.periods import Period
from ledger.reports.queries import Bind, _connect, _i, _t

__all__ = ["Statement", "StatementLine", "statement", "statements"]


@dataclass(frozen=True, slots=True)
class StatementLine:
    kind: str  # redemption | reversal | settlement
    block_time: int
    transaction_hash: str
    reference: str  # redemption id, or the settlement's payment reference
    scheme_id: int | None
    amount: int  # cents: + for a redemption (credited), - for a reversal or settlement


@dataclass(frozen=True, slots=True)
class Statement:
    """What the municipality owes ``merchant`` over ``period``, in cents.

    ``closing = opening + redeemed - reversed - settled`` is what is owed at the period's end.
    """

    merchant: str
    name: str | None
    period: Period
    opening: int
    redeemed: int
    reversed: int
    settled: int
    lines: list[StatementLine]

    @property
    def closing(self) -> int:
        return self.opening + self.redeemed - self.reversed - self.settled


def _merchant_rows(conn: Connection, merchants: Sequence[str] | None, period: Period) -> Any:
    red, rev, sett = _t("index_redemption"), _t("index_reversal"), _t("index_settlement")
    parts = []
    for table, kind, ref, scheme, amount in (
        (red, "redemption", red.c.redemption_id, red.c.scheme_id, red.c.credited),
        (rev, "reversal", rev.c.redemption_id, rev.c.scheme_id, -rev.c.credited),
        (sett, "settlement", sett.c.payment_reference, None, -sett.c.amount),
    ):
        cond = table.c.block_time < period.end
        if merchants is not None:
            cond = cond & table.c.merchant.in_(list(merchants))
        parts.append(
            select(
                table.c.merchant.label("merchant"),
                literal_column(f"'{kind}'").label("kind"),
                table.c.block_time.label("block_time"),
                table.c.transaction_hash.label("transaction_hash"),
                table.c.log_index.label("log_index"),
                ref.label("reference"),
                (scheme if scheme is not None else literal_column("NULL")).label("scheme_id"),
                amount.label("amount"),
            ).where(cond)
        )
    return conn.execute(union_all(*parts).order_by("merchant", "block_time", "log_index"))


def statements(
    bind: Bind | Engine, period: Period, *, merchants: Sequence[str] | None = None
) -> list[Statement]:
    """Statements of ``merchants`` (chain addresses; default: all with any activity)."""
    wanted = None if merchants is None else [to_checksum_address(m) for m in merchants]
    reg = _t("registry_merchant")
    by_merchant: dict[str, dict[str, Any]] = {}
    with _connect(bind) as conn:
        names = {
            str(address).lower(): str(name)
            for address, name in conn.execute(select(reg.c.address, reg.c.name))
        }
        for merchant, kind, when, tx, _log, ref, scheme, amount in _merchant_rows(
            conn, wanted, period
        ):
            entry = by_merchant.setdefault(
                str(merchant),
                {"opening": 0, "redemption": 0, "reversal": 0, "settlement": 0, "lines": []},
            )
            value = _i(amount)
            if int(when) < period.start:
                entry["opening"] += value
                continue
            entry[str(kind)] += -value if kind != "redemption" else value
            entry["lines"].append(
                StatementLine(
                    kind=str(kind),
                    block_time=int(when),
                    transaction_hash=str(tx),
                    reference=str(ref),
                    scheme_id=None if scheme is None else int(scheme),
                    amount=value,
                )
            )
        _ = func  # the aggregates above are per line; totals are summed while reading
    result = []
    for merchant in wanted if wanted is not None else sorted(by_merchant):
        entry = by_merchant.get(
            merchant, {"opening": 0, "redemption": 0, "reversal": 0, "settlement": 0, "lines": []}
        )
        result.append(
            Statement(
                merchant=merchant,
                name=names.get(merchant.lower()),
                period=period,
                opening=entry["opening"],
                redeemed=entry["redemption"],
                reversed=entry["reversal"],
                settled=entry["settlement"],
                lines=entry["lines"],
            )
        )
    return result


def statement(bind: Bind, merchant: str, period: Period) -> Statement:
    return statements(bind, period, merchants=[merchant])[0]
