"""The standard reports as SQL over the index tables, joined to the registry for districts.

Every figure is computed by the database (aggregates grouped by scheme, merchant, district and
time bucket); Python only assembles the grouped rows into typed results and runs the small-cell
suppression. The same statements run on SQLite and PostgreSQL: no date functions (time buckets are
integer ``CASE`` trees from :mod:`ledger.reports.periods`), conditional aggregates instead of
``FILTER``, no ``GROUPING SETS``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from eth_utils import to_checksum_address
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Integer,
    String,
    Table,
    and_,
    case,
    cast,
    func,
    literal_column,
    select,
    true,
)

from ledger.reports.models import (
    DISTRICT_METRICS,
    UNKNOWN_DISTRICT,
    DistrictCell,
    DistrictReport,
    Figure,
    MerchantReport,
    MerchantRow,
    SchemeReport,
    SchemeRow,
)
from ledger.reports.periods import (
    BEFORE,
    DEFAULT_TZ,
    Granularity,
    Period,
    bucket_index,
    buckets,
)
from ledger.reports.suppression import DEFAULT_K, Equation
from ledger.reports.suppression import suppress as suppress_cells
from ledger.store import index as _index_tables  # noqa: F401 - registers the tables
from ledger.store import registry as _registry_tables  # noqa: F401 - registers the tables
from ledger.store.base import metadata

__all__ = [
    "Bind",
    "data_period",
    "district_report",
    "merchant_report",
    "scheme_report",
]

Bind = Engine | Connection


def _t(name: str) -> Table:
    return metadata.tables[name]


@contextmanager
def _connect(bind: Bind) -> Iterator[Connection]:
    if isinstance(bind, Connection):
        yield bind
    else:
        with bind.connect() as conn:
            yield conn


def _i(value: Any) -> int:
    """Aggregates come back as int, Decimal (Numeric columns, PostgreSQL sums) or None."""
    return 0 if value is None else int(value)


def _lit(value: int) -> ColumnElement[int]:
    return literal_column(str(int(value)), Integer)


def data_period(bind: Bind) -> Period | None:
    """From the first to just after the last indexed entitlement or redemption; None if empty."""
    lows: list[int] = []
    highs: list[int] = []
    with _connect(bind) as conn:
        for name in ("index_entitlement", "index_redemption"):
            table = _t(name)
            # two statements: SQLite answers a lone min() or max() from the index at once
            low = conn.execute(select(func.min(table.c.block_time))).scalar()
            high = conn.execute(select(func.max(table.c.block_time))).scalar()
            if low is not None and high is not None:
                lows.append(int(low))
                highs.append(int(high))
    if not lows:
        return None
    return Period(min(lows), max(highs) + 1)


def _default_period(bind: Bind, period: Period | None) -> Period:
    if period is not None:
        return period
    found = data_period(bind)
    if found is not None:
        return found
    now = int(datetime.now(UTC).timestamp())
    return Period(now - 86_400, now)


# ================================================================ per scheme


def scheme_report(
    bind: Bind,
    *,
    period: Period | None = None,
    granularity: Granularity = Granularity.MONTH,
    tz: str = DEFAULT_TZ,
    scheme_ids: Sequence[int] | None = None,
) -> SchemeReport:
    """Issued, redeemed, reversed, expired, remaining and uptake per scheme and bucket.

    ``period`` defaults to the span of the indexed data. Flows (issued, redeemed...) are per
    bucket; ``remaining`` and ``holders_entitled`` are stocks at the end of each bucket, so
    everything before the period counts as their opening value.
    """
    # Without a period the report spans all the data: no time predicate at all, so that the
    # databases can answer from the covering indexes instead of a range over block_time.
    bounded = period is not None
    period = _default_period(bind, period)
    bkts = buckets(period, granularity, tz=tz)
    edges = [b.start for b in bkts] + [bkts[-1].end]
    ent, red, rev, exp, sch = (
        _t("index_entitlement"),
        _t("index_redemption"),
        _t("index_reversal"),
        _t("index_expiry"),
        _t("index_scheme"),
    )

    def only(table: Table) -> ColumnElement[bool]:
        cond: ColumnElement[bool] = table.c.block_time < period.end if bounded else true()
        if scheme_ids is not None:
            cond = and_(cond, table.c.scheme_id.in_(list(scheme_ids)))
        return cond

    zero = _lit(0)
    one = _lit(1)
    rows: dict[tuple[int, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    with _connect(bind) as conn:
        b = bucket_index(ent.c.block_time, edges)
        for sid, bi, issued, unlimited in conn.execute(
            select(
                ent.c.scheme_id,
                b,
                func.sum(case((ent.c.unlimited, zero), else_=ent.c.amount)),
                func.sum(case((ent.c.unlimited, one), else_=zero)),
            )
            .where(only(ent))
            .group_by(ent.c.scheme_id, b)
        ):
            rows[(sid, bi)]["issued"] += _i(issued)
            rows[(sid, bi)]["issued_unlimited"] += _i(unlimited)

        first = (
            select(
                ent.c.scheme_id.label("scheme_id"),
                func.min(ent.c.block_time).label("first_time"),
            )
            .where(only(ent))
            .group_by(ent.c.scheme_id, ent.c.pass_id)
            .subquery()
        )
        b = bucket_index(first.c.first_time, edges)
        for sid, bi, count in conn.execute(
            select(first.c.scheme_id, b, func.count()).group_by(first.c.scheme_id, b)
        ):
            rows[(sid, bi)]["new_entitled"] += _i(count)

        b = bucket_index(red.c.block_time, edges)
        for sid, bi, count, debited, credited, used in conn.execute(
            select(
                red.c.scheme_id,
                b,
                func.count(),
                func.sum(red.c.debited),
                func.sum(red.c.credited),
                func.count(red.c.pass_id.distinct()),
            )
            .where(only(red))
            .group_by(red.c.scheme_id, b)
        ):
            row = rows[(sid, bi)]
            row["redemptions"] += _i(count)
            row["redeemed"] += _i(debited)
            row["credited"] += _i(credited)
            row["holders_used"] += _i(used)

        b = bucket_index(rev.c.block_time, edges)
        for sid, bi, count, debited, credited in conn.execute(
            select(
                rev.c.scheme_id,
                b,
                func.count(),
                func.sum(rev.c.debited),
                func.sum(rev.c.credited),
            )
            .where(only(rev))
            .group_by(rev.c.scheme_id, b)
        ):
            row = rows[(sid, bi)]
            row["reversals"] += _i(count)
            row["reversed"] += _i(debited)
            row["reversed_credited"] += _i(credited)

        b = bucket_index(exp.c.block_time, edges)
        for sid, bi, amount in conn.execute(
            select(exp.c.scheme_id, b, func.sum(exp.c.amount))
            .where(only(exp))
            .group_by(exp.c.scheme_id, b)
        ):
            rows[(sid, bi)]["expired"] += _i(amount)

        # distinct passes per scheme as a grouped subquery: (scheme_id, pass_id) streams in
        # index order instead of a COUNT(DISTINCT) sort
        users = select(red.c.scheme_id.label("scheme_id")).where(only(red))
        if bounded:
            users = users.where(red.c.block_time >= period.start)
        per_pass = users.group_by(red.c.scheme_id, red.c.pass_id).subquery()
        used_total = {
            int(sid): _i(used)
            for sid, used in conn.execute(
                select(per_pass.c.scheme_id, func.count()).group_by(per_pass.c.scheme_id)
            )
        }
        kinds = {
            int(sid): str(kind)
            for sid, kind in conn.execute(select(sch.c.scheme_id, sch.c.kind).distinct())
        }

    schemes = sorted({sid for sid, _ in rows} | set(kinds if scheme_ids is None else ()))
    if scheme_ids is not None:
        schemes = sorted(set(schemes) | set(scheme_ids))
    result: list[SchemeRow] = []
    for sid in schemes:
        opening = rows.get((sid, BEFORE), {})
        remaining = (
            opening.get("issued", 0)
            - opening.get("redeemed", 0)
            + opening.get("reversed", 0)
            - opening.get("expired", 0)
        )
        entitled = opening.get("new_entitled", 0)
        for bucket in bkts:
            row = rows.get((sid, bucket.index), {})
            remaining += (
                row.get("issued", 0)
                - row.get("redeemed", 0)
                + row.get("reversed", 0)
                - row.get("expired", 0)
            )
            entitled += row.get("new_entitled", 0)
            result.append(
                SchemeRow(
                    scheme_id=sid,
                    kind=kinds.get(sid, "unknown"),
                    bucket=bucket.label,
                    start=bucket.start,
                    end=bucket.end,
                    issued=row.get("issued", 0),
                    issued_unlimited=row.get("issued_unlimited", 0),
                    redemptions=row.get("redemptions", 0),
                    redeemed=row.get("redeemed", 0),
                    credited=row.get("credited", 0),
                    reversals=row.get("reversals", 0),
                    reversed=row.get("reversed", 0),
                    reversed_credited=row.get("reversed_credited", 0),
                    expired=row.get("expired", 0),
                    remaining=remaining,
                    holders_entitled=entitled,
                    holders_used=row.get("holders_used", 0),
                )
            )
    return SchemeReport(
        period=period,
        granularity=granularity,
        tz=tz,
        rows=result,
        holders_used_in_period={sid: used_total.get(sid, 0) for sid in schemes},
    )


# ================================================================ per merchant


def merchant_report(bind: Bind, *, period: Period | None = None) -> MerchantReport:
    """Redemptions, amounts, reversals, settlements in ``period`` and what is owed at its end.

    Without a period: everything indexed so far.
    """
    red, rev, sett, reg = (
        _t("index_redemption"),
        _t("index_reversal"),
        _t("index_settlement"),
        _t("registry_merchant"),
    )

    def window(table: Table) -> tuple[ColumnElement[int], ColumnElement[bool]]:
        if period is None:
            return _lit(1), true()
        flag = case((table.c.block_time >= period.start, _lit(1)), else_=_lit(0))
        return flag, table.c.block_time < period.end

    data: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    shown: dict[str, str] = {}

    def key(address: str) -> str:
        lowered = address.lower()
        shown.setdefault(lowered, address)
        return lowered

    with _connect(bind) as conn:
        flag, cond = window(red)
        for merchant, inside, count, amount, discount, credited in conn.execute(
            select(
                red.c.merchant,
                flag,
                func.count(),
                func.sum(red.c.amount),
                func.sum(red.c.discount),
                func.sum(red.c.credited),
            )
            .where(cond)
            .group_by(red.c.merchant, flag)
        ):
            row = data[key(merchant)]
            row["credited_total"] += _i(credited)
            if inside:
                row["redemptions"] += _i(count)
                row["amount"] += _i(amount)
                row["discount"] += _i(discount)
                row["credited"] += _i(credited)
        flag, cond = window(rev)
        for merchant, inside, count, credited in conn.execute(
            select(rev.c.merchant, flag, func.count(), func.sum(rev.c.credited))
            .where(cond)
            .group_by(rev.c.merchant, flag)
        ):
            row = data[key(merchant)]
            row["reversed_total"] += _i(credited)
            if inside:
                row["reversals"] += _i(count)
                row["reversed"] += _i(credited)
        flag, cond = window(sett)
        for merchant, inside, amount in conn.execute(
            select(sett.c.merchant, flag, func.sum(sett.c.amount))
            .where(cond)
            .group_by(sett.c.merchant, flag)
        ):
            row = data[key(merchant)]
            row["settled_total"] += _i(amount)
            if inside:
                row["settled"] += _i(amount)
        registry = {
            str(address).lower(): (str(name), str(kvk))
            for address, name, kvk in conn.execute(
                select(reg.c.address, reg.c.name, reg.c.kvk_number)
            )
        }
    for lowered in registry:
        data[lowered]
    rows = []
    for lowered in sorted(data):
        row = data[lowered]
        name, kvk = registry.get(lowered, (None, None))
        address = shown.get(lowered, lowered)
        with suppress(ValueError):
            address = to_checksum_address(address)
        rows.append(
            MerchantRow(
                merchant=address,
                name=name,
                kvk_number=kvk,
                redemptions=row["redemptions"],
                amount=row["amount"],
                discount=row["discount"],
                credited=row["credited"],
                reversals=row["reversals"],
                reversed=row["reversed"],
                settled=row["settled"],
                owed=row["credited_total"] - row["reversed_total"] - row["settled_total"],
            )
        )
    return MerchantReport(period=period, rows=rows)


# ================================================================ per district


@dataclass(slots=True)
class _Cell:
    values: dict[str, int]
    holders: dict[str, int]


def district_report(
    bind: Bind,
    *,
    period: Period | None = None,
    k: int = DEFAULT_K,
    scheme_ids: Sequence[int] | None = None,
) -> DistrictReport:
    """The scheme figures per district (wijk) and scheme, with small-cell suppression.

    A pass's district is its holder's ``district_code`` in the registry; passes not in the
    registry (erased holders) or holders without a district count under ``"unknown"``. A figure
    based on fewer than ``k`` distinct holders is suppressed, and so is any figure that would let a
    suppressed one be computed back (see :mod:`ledger.reports.suppression`). The totals over all
    districts equal the scheme report's and are never suppressed (they are published there).

    Flows (issued, redeemed, reversed, expired, credited, redemptions, holders_used) are within
    ``period``; ``remaining`` and ``holders_entitled`` are stocks at its end.
    """
    ent, red, rev, exp = (
        _t("index_entitlement"),
        _t("index_redemption"),
        _t("index_reversal"),
        _t("index_expiry"),
    )
    passes, holders, districts = (
        _t("registry_pass"),
        _t("registry_holder"),
        _t("registry_district"),
    )
    start = None if period is None else period.start
    end = None if period is None else period.end

    def cond(table: Table) -> ColumnElement[bool]:
        parts: list[ColumnElement[bool]] = []
        if end is not None:
            parts.append(table.c.block_time < end)
        if scheme_ids is not None:
            parts.append(table.c.scheme_id.in_(list(scheme_ids)))
        return and_(true(), *parts)

    def inside(table: Table) -> ColumnElement[int]:
        if start is None:
            return _lit(1)
        return case((table.c.block_time >= start, _lit(1)), else_=_lit(0))

    def located(sub: Any) -> tuple[Any, ColumnElement[str], ColumnElement[str]]:
        """Join per-pass rows to the registry: (from clause, district, holder key)."""
        joined = sub.outerjoin(passes, passes.c.pass_id == sub.c.pass_id).outerjoin(
            holders, holders.c.id == passes.c.holder_id
        )
        district = func.coalesce(holders.c.district_code, UNKNOWN_DISTRICT)
        holder = func.coalesce(cast(passes.c.holder_id, String), sub.c.pass_id)
        return joined, district, holder

    cells: dict[tuple[str, int], _Cell] = defaultdict(
        lambda: _Cell(defaultdict(int), defaultdict(int))
    )
    rows_all: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def per_pass(table: Table, *sums: tuple[str, ColumnElement[int]]) -> Any:
        flag = inside(table)
        columns: list[Any] = [table.c.scheme_id.label("scheme_id"), table.c.pass_id]
        columns.append(func.max(flag).label("in_period"))
        for name, value in sums:
            columns.append(func.sum(case((flag == _lit(1), value), else_=_lit(0))).label(name))
            columns.append(func.sum(value).label(f"{name}_all"))
        return (
            select(*columns)
            .where(cond(table))
            .group_by(table.c.scheme_id, table.c.pass_id)
            .subquery()
        )

    one = _lit(1)
    zero = _lit(0)
    with _connect(bind) as conn:
        # entitlements: issued in the period, issued up to its end, holders entitled
        sub = per_pass(ent, ("issued", case((ent.c.unlimited, zero), else_=ent.c.amount)))
        joined, district, holder = located(sub)
        for sid, dist, issued, issued_all, entitled, issuing in conn.execute(
            select(
                sub.c.scheme_id,
                district,
                func.sum(sub.c.issued),
                func.sum(sub.c.issued_all),
                func.count(holder.distinct()),
                func.count(case((sub.c.in_period == one, holder)).distinct()),
            )
            .select_from(joined)
            .group_by(sub.c.scheme_id, district)
        ):
            cell = cells[(dist, sid)]
            cell.values["issued"] = _i(issued)
            cell.values["remaining"] += _i(issued_all)
            cell.values["holders_entitled"] = _i(entitled)
            cell.holders["issued"] = _i(issuing)
            cell.holders["remaining"] = _i(entitled)
            cell.holders["holders_entitled"] = _i(entitled)

        # redemptions
        sub = per_pass(
            red,
            ("redemptions", one),
            ("redeemed", red.c.debited),
            ("credited", red.c.credited),
        )
        joined, district, holder = located(sub)
        for sid, dist, count, redeemed, redeemed_all, credited, used in conn.execute(
            select(
                sub.c.scheme_id,
                district,
                func.sum(sub.c.redemptions),
                func.sum(sub.c.redeemed),
                func.sum(sub.c.redeemed_all),
                func.sum(sub.c.credited),
                func.count(case((sub.c.in_period == one, holder)).distinct()),
            )
            .select_from(joined)
            .group_by(sub.c.scheme_id, district)
        ):
            cell = cells[(dist, sid)]
            cell.values["redemptions"] = _i(count)
            cell.values["redeemed"] = _i(redeemed)
            cell.values["remaining"] -= _i(redeemed_all)
            cell.values["credited"] = _i(credited)
            cell.values["holders_used"] = _i(used)
            for metric in ("redemptions", "redeemed", "credited", "holders_used"):
                cell.holders[metric] = _i(used)

        # reversals and expiries
        for table, metric, sign, amount in (
            (rev, "reversed", 1, rev.c.debited),
            (exp, "expired", -1, exp.c.amount),
        ):
            sub = per_pass(table, ("amount", amount))
            joined, district, holder = located(sub)
            for sid, dist, value, value_all, basis in conn.execute(
                select(
                    sub.c.scheme_id,
                    district,
                    func.sum(sub.c.amount),
                    func.sum(sub.c.amount_all),
                    func.count(case((sub.c.in_period == one, holder)).distinct()),
                )
                .select_from(joined)
                .group_by(sub.c.scheme_id, district)
            ):
                cell = cells[(dist, sid)]
                cell.values[metric] = _i(value)
                cell.values["remaining"] += sign * _i(value_all)
                cell.holders[metric] = _i(basis)

        # all schemes per district: distinct holders entitled (to any) and who used (any)
        for table, metric, in_period_only in (
            (ent, "holders_entitled", False),
            (red, "holders_used", True),
        ):
            flag = inside(table)
            pass_sub = (
                select(table.c.pass_id, func.max(flag).label("in_period"))
                .where(cond(table))
                .group_by(table.c.pass_id)
                .subquery()
            )
            joined, district, holder = located(pass_sub)
            counted = case((pass_sub.c.in_period == one, holder)) if in_period_only else holder
            for dist, count in conn.execute(
                select(district, func.count(counted.distinct()))
                .select_from(joined)
                .group_by(district)
            ):
                rows_all[dist][metric] = _i(count)

        names = {
            str(code): str(name)
            for code, name in conn.execute(select(districts.c.code, districts.c.name))
        }

    schemes = sorted({sid for _, sid in cells} | set(scheme_ids or ()))
    codes = sorted({dist for dist, _ in cells} | set(names) | set(rows_all))
    return _suppressed_report(
        period=period,
        k=k,
        cells=cells,
        rows_all=rows_all,
        schemes=schemes,
        codes=codes,
        names=names,
    )


_ROW_METRICS = ("redemptions", "holders_entitled", "holders_used")
_Key = tuple[str | None, int | None, str]


def _suppressed_report(
    *,
    period: Period | None,
    k: int,
    cells: dict[tuple[str, int], _Cell],
    rows_all: dict[str, dict[str, int]],
    schemes: list[int],
    codes: list[str],
    names: dict[str, str],
) -> DistrictReport:
    values: dict[_Key, int] = {}
    basis: dict[_Key, int] = {}
    for code in codes:
        for sid in schemes:
            cell = cells.get((code, sid), _Cell({}, {}))
            for metric in DISTRICT_METRICS:
                values[(code, sid, metric)] = cell.values.get(metric, 0)
                basis[(code, sid, metric)] = cell.holders.get(metric, 0)
        row = rows_all.get(code, {})
        values[(code, None, "redemptions")] = sum(
            values[(code, sid, "redemptions")] for sid in schemes
        )
        basis[(code, None, "redemptions")] = row.get("holders_used", 0)
        for metric in ("holders_entitled", "holders_used"):
            values[(code, None, metric)] = row.get(metric, 0)
            basis[(code, None, metric)] = row.get(metric, 0)
    # totals over all districts (pinned: the scheme report publishes them unsuppressed)
    pinned: list[_Key] = []
    for sid in schemes:
        for metric in DISTRICT_METRICS:
            values[(None, sid, metric)] = sum(values[(c, sid, metric)] for c in codes)
            pinned.append((None, sid, metric))
    for metric in _ROW_METRICS:
        values[(None, None, metric)] = sum(values[(c, None, metric)] for c in codes)
        pinned.append((None, None, metric))

    equations: list[Equation[_Key]] = []
    column_ids: list[int | None] = [*schemes, None]
    for column_id in column_ids:
        for metric in DISTRICT_METRICS if column_id is not None else _ROW_METRICS:
            terms: list[tuple[_Key, int]] = [((c, column_id, metric), 1) for c in codes]
            terms.append(((None, column_id, metric), -1))
            equations.append(Equation(tuple(terms)))
    row_codes: list[str | None] = [*codes, None]
    for row_code in row_codes:
        terms = [((row_code, sid, "redemptions"), 1) for sid in schemes]
        terms.append(((row_code, None, "redemptions"), -1))
        equations.append(Equation(tuple(terms)))
    if period is None:
        # remaining = issued - redeemed + reversed - expired, per cell, when the flows cover all
        # history; with a period the stock also holds the opening balance, which this report
        # does not publish (combining reports of adjacent periods is out of this check's scope)
        equations.extend(
            Equation(
                (
                    ((row_code, sid, "remaining"), 1),
                    ((row_code, sid, "issued"), -1),
                    ((row_code, sid, "redeemed"), 1),
                    ((row_code, sid, "reversed"), -1),
                    ((row_code, sid, "expired"), 1),
                )
            )
            for row_code in row_codes
            for sid in schemes
        )

    outcome = suppress_cells(values=values, holders=basis, equations=equations, pinned=pinned, k=k)

    def figure(key: _Key) -> Figure:
        reason = outcome.reasons.get(key)
        if reason is None:
            return Figure(values[key])
        return Figure(None, suppressed=True, reason=reason)

    result: list[DistrictCell] = []
    for row_code in row_codes:
        name = None if row_code is None else names.get(row_code)
        if row_code == UNKNOWN_DISTRICT and name is None:
            name = "not in the registry"
        result.extend(
            DistrictCell(
                district=row_code,
                district_name=name,
                scheme_id=sid,
                figures={m: figure((row_code, sid, m)) for m in DISTRICT_METRICS},
            )
            for sid in schemes
        )
        result.append(
            DistrictCell(
                district=row_code,
                district_name=name,
                scheme_id=None,
                figures={m: figure((row_code, None, m)) for m in _ROW_METRICS},
            )
        )
    return DistrictReport(
        period=period,
        k=k,
        cells=result,
        exposed=sorted(f"{c}/{s}/{m}" for c, s, m in outcome.exposed),
    )
