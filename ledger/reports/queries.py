"""The standard reports as SQL over the index tables, joined to the registry for districts.

Every figure is computed by the database (aggregates grouped by scheme, merchant, district and
time bucket); Python only assembles the grouped rows into typed results, counts the distinct
buckets of each pass's redemptions (see :func:`_redeeming_passes`) and runs the small-cell
suppression. The same statements run on SQLite and PostgreSQL: no date functions (time buckets are
integer ``CASE`` trees from :mod:`ledger.reports.periods`), conditional aggregates instead of
``FILTER``, no ``GROUPING SETS``.

Written for a million redemptions (``bench/reports.py``): no statement sorts every row of
``index_redemption``. Groups follow the order of a covering index (per merchant; per scheme and
pass), sums per time bucket are range aggregates on ``(scheme_id, block_time, ...)``
(:mod:`ledger.store.report_indexes`), and distinct passes per bucket come from the per-pass
groups instead of ``COUNT(DISTINCT)``. ``tests/ledger/reports/test_report_oracle.py`` checks the
figures against a plain-Python recomputation.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from eth_utils import to_checksum_address
from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
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
    text,
    true,
    union_all,
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
from ledger.store import imports as _import_tables  # noqa: F401 - registers the tables
from ledger.store import index as _index_tables  # noqa: F401 - registers the tables
from ledger.store import registry as _registry_tables  # noqa: F401 - registers the tables
from ledger.store import report_indexes as _report_indexes  # noqa: F401 - declares indexes
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
            if conn.dialect.name == "postgresql":
                # The aggregates over a million rows cost enough for PostgreSQL to JIT-compile
                # them, which takes longer (~100-200 ms per statement) than it saves here. Only
                # for this transaction of our own connection (it rolls back on return).
                conn.execute(text("SET LOCAL jit = off"))
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


# ================================================================ redemptions per bucket

#: Up to this many buckets, redemptions are summed by one range aggregate per bucket and scheme
#: (a compound SELECT per scheme: SQLite allows at most 500 terms).
_RANGE_BUCKETS = 100
#: A bucket index ``i`` travels as the character ``chr(_CODE_BASE + i)`` (``BEFORE`` is ``/``)...
_CODE_BASE = 48
#: ... while that stays ASCII (PostgreSQL's ``chr`` takes only ASCII in non-UTF8 databases).
_NARROW_BUCKETS = 127 - _CODE_BASE


def _scheme_ids(conn: Connection, table: Table) -> list[int]:
    """The distinct ``scheme_id`` of ``table``: a loose index scan (one seek per scheme) by a
    recursive CTE, so neither database reads every row of a big table for a handful of ids."""
    col = table.c.scheme_id
    ids = select(func.min(col).label("id")).cte("scheme_ids", recursive=True)
    following = select(func.min(col)).where(col > ids.c.id).scalar_subquery()
    ids = ids.union_all(select(following).where(ids.c.id.is_not(None)))
    return [int(sid) for (sid,) in conn.execute(select(ids.c.id).where(ids.c.id.is_not(None)))]


def _redemption_flows(
    conn: Connection,
    red: Table,
    edges: Sequence[int],
    cond: ColumnElement[bool],
    scheme_ids: Sequence[int] | None,
) -> Iterator[tuple[int, int, int, int, int]]:
    """``(scheme_id, bucket, count, debited, credited)`` of the non-empty buckets.

    Up to :data:`_RANGE_BUCKETS` buckets: one range aggregate per scheme and bucket
    (``scheme_id = s AND block_time`` in the bucket), answered from the covering index
    ``(scheme_id, block_time, debited, credited)``, so neither database computes a bucket per
    row or sorts a million rows for a ``GROUP BY``. The rows before the first bucket come back
    as :data:`BEFORE` (the opening balance). Rows from the period's end on are not asked for:
    with a period ``cond`` excludes them, and without one the period ends after the last
    redemption. With more buckets (days over months), the statements and their branches would
    cost more than they save: one ``GROUP BY (scheme_id, bucket)`` over ``cond`` instead.
    """
    if len(edges) - 1 > _RANGE_BUCKETS:
        b = bucket_index(red.c.block_time, edges)
        for sid, bi, count, debited, credited in conn.execute(
            select(
                red.c.scheme_id,
                b,
                func.count(),
                func.sum(red.c.debited),
                func.sum(red.c.credited),
            )
            .where(cond)
            .group_by(red.c.scheme_id, b)
        ):
            yield int(sid), int(bi), int(count), _i(debited), _i(credited)
        return
    ranges: list[tuple[int, int | None, int]] = [(BEFORE, None, edges[0])]
    ranges.extend((i, edges[i], edges[i + 1]) for i in range(len(edges) - 1))
    schemes = sorted(set(scheme_ids)) if scheme_ids is not None else _scheme_ids(conn, red)
    for sid in schemes:
        parts = []
        for bi, low, high in ranges:
            where = and_(red.c.scheme_id == _lit(sid), red.c.block_time < _lit(high))
            if low is not None:
                where = and_(where, red.c.block_time >= _lit(low))
            parts.append(
                select(
                    _lit(bi).label("bucket"),
                    func.count().label("n"),
                    func.sum(red.c.debited).label("debited"),
                    func.sum(red.c.credited).label("credited"),
                ).where(where)
            )
        for bi, count, debited, credited in conn.execute(union_all(*parts)):
            if count:
                yield sid, int(bi), int(count), _i(debited), _i(credited)


def _redeeming_passes(
    conn: Connection,
    red: Table,
    edges: Sequence[int],
    scheme_ids: Sequence[int] | None,
    bounded: bool,
) -> tuple[dict[tuple[int, int], int], dict[int, int]]:
    """Distinct passes that redeemed, per ``(scheme_id, bucket)`` and per scheme in the period.

    ``COUNT(DISTINCT pass_id)`` per bucket makes both databases sort (or hash) every row. The
    passes are instead grouped by ``(scheme_id, pass_id)``, which streams in the order of the
    covering index ``(scheme_id, pass_id, block_time, ...)`` without a sort; each group returns
    the buckets of its rows as a string, and counting a pass once per distinct bucket in it
    gives exactly the distinct passes per bucket. A pass counts for the period when it has a
    bucket of the period (not :data:`BEFORE`, nor after the last bucket).

    Up to :data:`_NARROW_BUCKETS` buckets, a bucket ``i`` is the one ASCII character
    ``chr(48 + i)`` (the cheapest string to build and to take apart); beyond, the decimal
    numbers separated by commas.
    """
    bucket = bucket_index(red.c.block_time, edges)
    count = len(edges) - 1
    narrow = count <= _NARROW_BUCKETS
    postgres = conn.dialect.name == "postgresql"
    if narrow:
        code = _lit(_CODE_BASE) + bucket
        piece: ColumnElement[str] = func.chr(code) if postgres else func.char(code)
        separator: ColumnElement[str] = literal_column("''")
    else:
        piece = cast(bucket, String)
        separator = literal_column("','")
    marks = func.string_agg(piece, separator) if postgres else func.group_concat(piece, separator)
    where: ColumnElement[bool] = true()
    if scheme_ids is not None:
        where = red.c.scheme_id.in_(list(scheme_ids))
    if bounded:
        # On SQLite ``block_time + 0``: a filter, not an index range. Over a range of
        # block_time, SQLite reads the rows in time order and sorts them for the GROUP BY; the
        # (scheme_id, pass_id, block_time) index streams them in groups. PostgreSQL's planner
        # weighs both plans itself.
        time: ColumnElement[int] = red.c.block_time
        if not postgres:
            time = time + _lit(0)
        where = and_(where, time >= _lit(edges[0]), time < _lit(edges[-1]))
    valid: set[str] = (
        {chr(_CODE_BASE + i) for i in range(count)} if narrow else {str(i) for i in range(count)}
    )
    inside: dict[int, list[str]] = defaultdict(list)
    for sid, buckets_of_pass in conn.execute(
        select(red.c.scheme_id, marks).where(where).group_by(red.c.scheme_id, red.c.pass_id)
    ):
        found = str(buckets_of_pass)
        seen = (set(found) if narrow else set(found.split(","))) & valid
        if seen:
            inside[int(sid)].append(("" if narrow else ",").join(seen))
    per_bucket: dict[tuple[int, int], int] = {}
    for sid, pieces in inside.items():
        if narrow:
            counted = Counter("".join(pieces))
            per_bucket.update(((sid, ord(c) - _CODE_BASE), n) for c, n in counted.items())
        else:
            counted = Counter(",".join(pieces).split(","))
            per_bucket.update(((sid, int(c)), n) for c, n in counted.items())
    return per_bucket, {sid: len(pieces) for sid, pieces in inside.items()}


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

        # the part of ``issued`` that opening balances migrated from an old system are
        # (ledger.imports): the entitlements of the transactions recorded for them
        mig = _t("index_migrated_balance")
        migration_txs = (
            select(mig.c.transaction_hash).where(mig.c.transaction_hash.is_not(None)).distinct()
        )
        for sid, bi, migrated in conn.execute(
            select(ent.c.scheme_id, b, func.sum(ent.c.amount))
            .where(only(ent))
            .where(ent.c.transaction_hash.in_(migration_txs))
            .where(ent.c.unlimited.is_(False))
            .group_by(ent.c.scheme_id, b)
        ):
            rows[(sid, bi)]["migrated"] += _i(migrated)

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

        # redemptions: amounts per bucket...
        for sid, bi, count, debited, credited in _redemption_flows(
            conn, red, edges, only(red), scheme_ids
        ):
            row = rows[(sid, bi)]
            row["redemptions"] += count
            row["redeemed"] += debited
            row["credited"] += credited
        # ... and the passes that redeemed, per bucket and in the whole period
        used_per_bucket, used_total = _redeeming_passes(conn, red, edges, scheme_ids, bounded)
        for (sid, bi), used in used_per_bucket.items():
            rows[(sid, bi)]["holders_used"] += used

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
                    migrated=row.get("migrated", 0),
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

    # One group per merchant, figures inside the period as conditional sums next to the totals
    # up to its end: grouping by merchant alone streams in the order of the covering index
    # (merchant, block_time, amount, discount, credited); grouping by (merchant, in period) would
    # sort every row.
    def cond(table: Table) -> ColumnElement[bool]:
        return true() if period is None else table.c.block_time < _lit(period.end)

    def inside(table: Table, value: ColumnElement[int]) -> ColumnElement[int]:
        if period is None:
            return func.sum(value)
        return func.sum(case((table.c.block_time >= _lit(period.start), value), else_=_lit(0)))

    data: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    shown: dict[str, str] = {}

    def key(address: str) -> str:
        lowered = address.lower()
        shown.setdefault(lowered, address)
        return lowered

    one = _lit(1)
    with _connect(bind) as conn:
        for merchant, count, amount, discount, credited, credited_total in conn.execute(
            select(
                red.c.merchant,
                inside(red, one),
                inside(red, red.c.amount),
                inside(red, red.c.discount),
                inside(red, red.c.credited),
                func.sum(red.c.credited),
            )
            .where(cond(red))
            .group_by(red.c.merchant)
        ):
            row = data[key(merchant)]
            row["credited_total"] += _i(credited_total)
            row["redemptions"] += _i(count)
            row["amount"] += _i(amount)
            row["discount"] += _i(discount)
            row["credited"] += _i(credited)
        for merchant, count, credited, credited_total in conn.execute(
            select(
                rev.c.merchant,
                inside(rev, one),
                inside(rev, rev.c.credited),
                func.sum(rev.c.credited),
            )
            .where(cond(rev))
            .group_by(rev.c.merchant)
        ):
            row = data[key(merchant)]
            row["reversed_total"] += _i(credited_total)
            row["reversals"] += _i(count)
            row["reversed"] += _i(credited)
        for merchant, amount, amount_total in conn.execute(
            select(sett.c.merchant, inside(sett, sett.c.amount), func.sum(sett.c.amount))
            .where(cond(sett))
            .group_by(sett.c.merchant)
        ):
            row = data[key(merchant)]
            row["settled_total"] += _i(amount_total)
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
            # without a period start, the same expression twice: computed once per row
            within = value if start is None else case((flag == _lit(1), value), else_=_lit(0))
            columns.append(func.sum(within).label(name))
            columns.append(func.sum(value).label(f"{name}_all"))
        return (
            select(*columns)
            .where(cond(table))
            .group_by(table.c.scheme_id, table.c.pass_id)
            .subquery()
        )

    def two_levels(
        name: str, sub: Any, sums: Sequence[str], *, all_in_period: bool
    ) -> CompoundSelect[Any]:
        """One statement, two levels of rows ``(level, scheme_id, district, *sums, holders,
        holders in period)``: level 0 per scheme and district; level 1 per district over all
        schemes, with only the holders (in the period if ``all_in_period``; in the last column
        then, else in the one before). Both read the per-pass rows joined to the registry as one
        CTE, which the databases compute once: the big table is scanned once, not twice."""
        joined, district, holder = located(sub)
        loc = (
            select(
                sub.c.scheme_id,
                district.label("district"),
                holder.label("holder"),
                sub.c.in_period,
                *(sub.c[column] for column in sums),
            )
            .select_from(joined)
            .cte(f"located_{name}")
        )
        used = case((loc.c.in_period == one, loc.c.holder))
        per_scheme = select(
            zero.label("level"),
            loc.c.scheme_id,
            loc.c.district,
            *(func.sum(loc.c[column]) for column in sums),
            func.count(loc.c.holder.distinct()),
            func.count(used.distinct()),
        ).group_by(loc.c.scheme_id, loc.c.district)
        counted = func.count((used if all_in_period else loc.c.holder).distinct())
        all_schemes = select(
            one,
            zero,
            loc.c.district,
            *(zero for _ in sums),
            zero if all_in_period else counted,
            counted if all_in_period else zero,
        ).group_by(loc.c.district)
        return union_all(per_scheme, all_schemes)

    one = _lit(1)
    zero = _lit(0)
    with _connect(bind) as conn:
        # entitlements: issued in the period, issued up to its end, holders entitled; and the
        # holders entitled to any scheme per district
        sub = per_pass(ent, ("issued", case((ent.c.unlimited, zero), else_=ent.c.amount)))
        for level, sid, dist, issued, issued_all, entitled, issuing in conn.execute(
            two_levels("entitled", sub, ("issued", "issued_all"), all_in_period=False)
        ):
            if level:
                rows_all[dist]["holders_entitled"] = _i(entitled)
                continue
            cell = cells[(dist, sid)]
            cell.values["issued"] = _i(issued)
            cell.values["remaining"] += _i(issued_all)
            cell.values["holders_entitled"] = _i(entitled)
            cell.holders["issued"] = _i(issuing)
            cell.holders["remaining"] = _i(entitled)
            cell.holders["holders_entitled"] = _i(entitled)

        # redemptions; and the holders who redeemed from any scheme in the period per district
        sub = per_pass(
            red,
            ("redemptions", one),
            ("redeemed", red.c.debited),
            ("credited", red.c.credited),
        )
        for level, sid, dist, count, redeemed, redeemed_all, credited, _all, used in conn.execute(
            two_levels(
                "redeemed",
                sub,
                ("redemptions", "redeemed", "redeemed_all", "credited"),
                all_in_period=True,
            )
        ):
            if level:
                rows_all[dist]["holders_used"] = _i(used)
                continue
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
