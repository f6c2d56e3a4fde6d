"""Periods and time buckets of reports and settlements, in the municipality's time zone.

A :class:`Period` is half-open, ``[start, end)``, in unix seconds (what ``block_time`` holds).
Bucketing happens in SQL and is portable across SQLite and PostgreSQL: the bucket boundaries are
computed here with :mod:`zoneinfo` (so days, weeks and months follow local midnight across
daylight-saving changes) and :func:`bucket_index` turns them into a balanced ``CASE`` tree, so
each row costs about ``log2(buckets)`` integer comparisons and no database date functions.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Integer, case, literal_column

from ledger.errors import LedgerError

__all__ = [
    "DEFAULT_TZ",
    "Bucket",
    "Granularity",
    "Period",
    "PeriodError",
    "bucket_index",
    "buckets",
]

DEFAULT_TZ = "Europe/Amsterdam"
#: Bucket index of rows before the first bucket (the opening balance of cumulative figures).
BEFORE = -1
MAX_BUCKETS = 5_000


class PeriodError(LedgerError, ValueError):
    """A period or granularity that makes no sense (end before start, too many buckets...)."""


class Granularity(enum.StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


@dataclass(frozen=True, slots=True)
class Period:
    """``[start, end)`` in unix seconds."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise PeriodError(f"a period must end after it starts ({self.start} >= {self.end})")

    def overlaps(self, other: Period) -> bool:
        return self.start < other.end and other.start < self.end

    @classmethod
    def of_dates(cls, first: date, last: date, *, tz: str = DEFAULT_TZ) -> Period:
        """From local midnight of ``first`` to local midnight after ``last`` (both included)."""
        zone = ZoneInfo(tz)
        start = datetime(first.year, first.month, first.day, tzinfo=zone)
        after = last + timedelta(days=1)
        end = datetime(after.year, after.month, after.day, tzinfo=zone)
        return cls(int(start.timestamp()), int(end.timestamp()))

    @classmethod
    def month(cls, year: int, month: int, *, tz: str = DEFAULT_TZ) -> Period:
        first = date(year, month, 1)
        nxt = date(year + month // 12, month % 12 + 1, 1)
        return cls.of_dates(first, nxt - timedelta(days=1), tz=tz)

    @classmethod
    def parse(cls, text: str, *, tz: str = DEFAULT_TZ) -> Period:
        """``2025-03`` (a month), ``2025-03-01`` (a day) or ``2025-01-01..2025-03-31``."""
        text = text.strip()
        try:
            if ".." in text:
                first, last = (date.fromisoformat(part) for part in text.split("..", 1))
                return cls.of_dates(first, last, tz=tz)
            if len(text) == 7:
                year, month = (int(part) for part in text.split("-"))
                return cls.month(year, month, tz=tz)
            day = date.fromisoformat(text)
            period = cls.of_dates(day, day, tz=tz)
        except (ValueError, OverflowError) as exc:  # 9999-12-31 has no day after it
            raise PeriodError(
                f"unreadable period {text!r}: use YYYY-MM, YYYY-MM-DD or YYYY-MM-DD..YYYY-MM-DD"
            ) from exc
        return period

    def label(self, *, tz: str = DEFAULT_TZ) -> str:
        zone = ZoneInfo(tz)
        first = datetime.fromtimestamp(self.start, zone).date()
        last = (datetime.fromtimestamp(self.end, zone) - timedelta(seconds=1)).date()
        return first.isoformat() if first == last else f"{first.isoformat()}..{last.isoformat()}"


@dataclass(frozen=True, slots=True)
class Bucket:
    """One day, ISO week or month: ``[start, end)`` in unix seconds and a readable label."""

    index: int
    start: int
    end: int
    label: str


def _floor(moment: datetime, granularity: Granularity) -> date:
    day = moment.date()
    if granularity is Granularity.WEEK:
        return day - timedelta(days=day.weekday())
    if granularity is Granularity.MONTH:
        return day.replace(day=1)
    return day


def _next(day: date, granularity: Granularity) -> date:
    if granularity is Granularity.DAY:
        return day + timedelta(days=1)
    if granularity is Granularity.WEEK:
        return day + timedelta(days=7)
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def _label(day: date, granularity: Granularity) -> str:
    if granularity is Granularity.MONTH:
        return f"{day.year:04d}-{day.month:02d}"
    if granularity is Granularity.WEEK:
        year, week, _ = day.isocalendar()
        return f"{year:04d}-W{week:02d}"
    return day.isoformat()


def buckets(period: Period, granularity: Granularity, *, tz: str = DEFAULT_TZ) -> list[Bucket]:
    """The local days, weeks or months that cover ``period`` (the first and last are clipped)."""
    zone = ZoneInfo(tz)
    day = _floor(datetime.fromtimestamp(period.start, zone), granularity)
    result: list[Bucket] = []
    while True:
        nxt = _next(day, granularity)
        start = int(datetime(day.year, day.month, day.day, tzinfo=zone).timestamp())
        end = int(datetime(nxt.year, nxt.month, nxt.day, tzinfo=zone).timestamp())
        if start >= period.end:
            break
        result.append(
            Bucket(
                index=len(result),
                start=max(start, period.start),
                end=min(end, period.end),
                label=_label(day, granularity),
            )
        )
        if len(result) > MAX_BUCKETS:
            raise PeriodError(f"more than {MAX_BUCKETS} {granularity.value} buckets: narrow it")
        day = nxt
    return result


def bucket_index(column: ColumnElement[int], edges: Sequence[int]) -> ColumnElement[int]:
    """SQL for the index ``i`` with ``edges[i] <= column < edges[i + 1]``.

    ``edges`` are ascending bucket boundaries (``len(buckets) + 1`` of them); values before
    ``edges[0]`` give :data:`BEFORE`, values from ``edges[-1]`` on give ``len(edges) - 1`` (callers
    filter those out). A balanced tree of ``CASE`` expressions: portable and cheap per row.
    """
    if len(edges) < 2:
        raise PeriodError("bucketing needs at least one bucket")

    def lit(value: int) -> ColumnElement[int]:
        # inline integers (never bind parameters), so that PostgreSQL sees the same expression
        # in SELECT and GROUP BY
        return literal_column(str(int(value)), Integer)

    def tree(lo: int, hi: int) -> ColumnElement[int]:
        # the index in [lo, hi] for values in [edges[lo], edges[hi + 1]); lo == hi: constant
        if lo == hi:
            return lit(lo)
        mid = (lo + hi + 1) // 2
        return case((column < lit(edges[mid]), tree(lo, mid - 1)), else_=tree(mid, hi))

    top = len(edges) - 1  # values >= edges[-1]
    return case(
        (column < lit(edges[0]), lit(BEFORE)),
        (column >= lit(edges[-1]), lit(top)),
        else_=tree(0, top - 1),
    )


def utc(moment: int) -> datetime:
    return datetime.fromtimestamp(moment, UTC)
