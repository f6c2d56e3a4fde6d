"""``stadjerspas report ...``: a Typer sub-app the ``stadjerspas`` command mounts.

    stadjerspas report scheme   [--period 2025-03] [--by month] [--format csv|json] [--out FILE]
    stadjerspas report merchant [--period ...] [--format ...] [--out FILE]
    stadjerspas report district [--period ...] [--k 10] [--format ...] [--out FILE]
    stadjerspas report governance [--period ...] [--kind role_granted] [--limit 1000] [...]
    stadjerspas report chart scheme|merchant|district --out chart.png|chart.svg [--metric ...]

The database comes from ``--database`` or ``$STADJERSPAS_DATABASE_URL``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import Engine

from ledger.errors import LedgerError
from ledger.reports.governance import MAX_ENTRIES, governance_log
from ledger.reports.periods import DEFAULT_TZ, Granularity, Period
from ledger.reports.queries import district_report, merchant_report, scheme_report
from ledger.reports.suppression import DEFAULT_K
from ledger.reports.writers import Report, to_csv, to_json

__all__ = ["app"]

DATABASE_ENV = "STADJERSPAS_DATABASE_URL"

app = typer.Typer(
    name="report",
    help="Reports per scheme, merchant and district, the governance log (CSV, JSON, charts).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
chart_app = typer.Typer(help="Charts as PNG or SVG.", no_args_is_help=True)
app.add_typer(chart_app, name="chart")

Database = Annotated[
    str | None, typer.Option("--database", help=f"database URL (default: ${DATABASE_ENV})")
]
PeriodOpt = Annotated[
    str | None, typer.Option("--period", help="YYYY-MM, YYYY-MM-DD or FIRST..LAST (default: all)")
]
FormatOpt = Annotated[str, typer.Option("--format", help="csv or json")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="file to write (default: stdout)")]
TzOpt = Annotated[str, typer.Option("--tz", help="time zone of periods and buckets")]


@contextmanager
def _engine(database: str | None) -> Iterator[Engine]:
    from ledger.store.db import StoreConfig, open_store

    url = database or os.environ.get(DATABASE_ENV)
    if not url:
        raise typer.BadParameter(f"give --database or set ${DATABASE_ENV}")
    store = open_store(StoreConfig(url))
    try:
        store.check_connection()
        yield store.engine
    finally:
        store.close()


def _period(text: str | None, tz: str) -> Period | None:
    return None if text is None else Period.parse(text, tz=tz)


def _report(
    database: str | None, build: Callable[[Engine], Report], fmt: str, out: Path | None
) -> None:
    """Build a report on the database and write it; a refused input is a usage error (exit 2,
    one line)."""
    try:
        with _engine(database) as engine:
            report = build(engine)
    except (LedgerError, ValueError) as exc:  # PeriodError, a bad filter
        raise typer.BadParameter(str(exc)) from None
    _emit(report, fmt, out)


def _emit(report: Report, fmt: str, out: Path | None) -> None:
    if fmt not in ("csv", "json"):
        raise typer.BadParameter("--format is csv or json")
    body = to_csv(report) if fmt == "csv" else to_json(report)
    if out is None:
        typer.echo(body, nl=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(body, encoding="utf-8")
        typer.echo(f"wrote {out}", err=True)


@app.command("scheme")
def scheme_cmd(
    database: Database = None,
    period: PeriodOpt = None,
    by: Annotated[Granularity, typer.Option("--by", "--granularity")] = Granularity.MONTH,
    fmt: FormatOpt = "csv",
    out: OutOpt = None,
    tz: TzOpt = DEFAULT_TZ,
) -> None:
    """Issued, redeemed, reversed, expired, remaining and uptake per scheme and period."""
    _report(
        database,
        lambda engine: scheme_report(engine, period=_period(period, tz), granularity=by, tz=tz),
        fmt,
        out,
    )


@app.command("merchant")
def merchant_cmd(
    database: Database = None,
    period: PeriodOpt = None,
    fmt: FormatOpt = "csv",
    out: OutOpt = None,
    tz: TzOpt = DEFAULT_TZ,
) -> None:
    """Redemptions, amounts, reversals, settled and owed per merchant."""
    _report(database, lambda engine: merchant_report(engine, period=_period(period, tz)), fmt, out)


@app.command("governance")
def governance_cmd(
    database: Database = None,
    period: PeriodOpt = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help="only this kind, e.g. role_granted")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=MAX_ENTRIES)] = 1_000,
    fmt: FormatOpt = "csv",
    out: OutOpt = None,
    tz: TzOpt = DEFAULT_TZ,
) -> None:
    """Role grants and revocations, pauses, merchant allowances, the reversal window."""
    _report(
        database,
        lambda engine: governance_log(engine, period=_period(period, tz), kind=kind, limit=limit),
        fmt,
        out,
    )


@app.command("district")
def district_cmd(
    database: Database = None,
    period: PeriodOpt = None,
    k: Annotated[int, typer.Option("--k", min=1, help="minimum holders per cell")] = DEFAULT_K,
    fmt: FormatOpt = "csv",
    out: OutOpt = None,
    tz: TzOpt = DEFAULT_TZ,
) -> None:
    """The scheme figures per district (wijk), small cells suppressed."""
    _report(
        database, lambda engine: district_report(engine, period=_period(period, tz), k=k), fmt, out
    )


@chart_app.command("scheme")
def chart_scheme(
    out: Annotated[Path, typer.Option("--out", help="chart.png or chart.svg")],
    database: Database = None,
    period: PeriodOpt = None,
    by: Annotated[Granularity, typer.Option("--by")] = Granularity.MONTH,
    metric: Annotated[str, typer.Option("--metric")] = "redeemed",
    tz: TzOpt = DEFAULT_TZ,
) -> None:
    from ledger.reports.charts import save, scheme_chart

    with _engine(database) as engine:
        report = scheme_report(engine, period=_period(period, tz), granularity=by, tz=tz)
    typer.echo(f"wrote {save(scheme_chart(report, metric=metric), out)}", err=True)


@chart_app.command("merchant")
def chart_merchant(
    out: Annotated[Path, typer.Option("--out", help="chart.png or chart.svg")],
    database: Database = None,
    period: PeriodOpt = None,
    metric: Annotated[str, typer.Option("--metric")] = "owed",
    tz: TzOpt = DEFAULT_TZ,
) -> None:
    from ledger.reports.charts import merchant_chart, save

    with _engine(database) as engine:
        report = merchant_report(engine, period=_period(period, tz))
    typer.echo(f"wrote {save(merchant_chart(report, metric=metric), out)}", err=True)


@chart_app.command("district")
def chart_district(
    out: Annotated[Path, typer.Option("--out", help="chart.png or chart.svg")],
    database: Database = None,
    period: PeriodOpt = None,
    metric: Annotated[str, typer.Option("--metric")] = "redeemed",
    scheme: Annotated[int | None, typer.Option("--scheme")] = None,
    k: Annotated[int, typer.Option("--k", min=1)] = DEFAULT_K,
    tz: TzOpt = DEFAULT_TZ,
) -> None:
    from ledger.reports.charts import district_chart, save

    with _engine(database) as engine:
        report = district_report(engine, period=_period(period, tz), k=k)
    figure = district_chart(report, metric=metric, scheme_id=scheme)
    typer.echo(f"wrote {save(figure, out)}", err=True)
