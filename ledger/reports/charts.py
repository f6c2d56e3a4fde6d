"""Charts of the reports as PNG or SVG (matplotlib, Agg backend: no display needed).

Suppressed district figures are drawn as hatched empty bars labelled "suppressed", never as
zero.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.figure import Figure as MplFigure

from ledger.reports.models import DistrictReport, MerchantReport, SchemeReport

__all__ = ["FORMATS", "district_chart", "merchant_chart", "save", "scheme_chart"]

FORMATS = ("png", "svg")


def scheme_chart(report: SchemeReport, *, metric: str = "redeemed") -> MplFigure:
    """One line per scheme over the buckets (``metric``: a field of :class:`SchemeRow`)."""
    series: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for row in report.rows:
        series[row.scheme_id].append((row.bucket, int(getattr(row, metric))))
    figure, axes = plt.subplots(figsize=(9, 4.5))
    for scheme_id, points in sorted(series.items()):
        axes.plot(
            [p[0] for p in points], [p[1] for p in points], marker="o", label=f"scheme {scheme_id}"
        )
    axes.set_title(f"{metric} per {report.granularity.value}")
    axes.set_ylabel(metric)
    axes.legend(loc="best")
    axes.tick_params(axis="x", rotation=45)
    figure.tight_layout()
    return figure


def merchant_chart(report: MerchantReport, *, metric: str = "owed", top: int = 20) -> MplFigure:
    rows = sorted(report.rows, key=lambda r: int(getattr(r, metric)), reverse=True)[:top]
    figure, axes = plt.subplots(figsize=(9, 0.35 * max(len(rows), 4) + 1.5))
    labels = [row.name or row.merchant[:10] for row in rows]
    axes.barh(labels[::-1], [int(getattr(r, metric)) for r in rows][::-1])
    axes.set_title(f"{metric} per merchant (top {len(rows)})")
    figure.tight_layout()
    return figure


def district_chart(
    report: DistrictReport, *, metric: str = "redeemed", scheme_id: int | None = None
) -> MplFigure:
    """Bars per district for one scheme (default: the first); suppressed cells are hatched."""
    cells = [c for c in report.cells if c.district is not None and c.scheme_id is not None]
    schemes = sorted({c.scheme_id for c in cells if c.scheme_id is not None})
    chosen = scheme_id if scheme_id is not None else (schemes[0] if schemes else None)
    cells = [c for c in cells if c.scheme_id == chosen and metric in c.figures]
    figure, axes = plt.subplots(figsize=(10, 4.5))
    labels = [c.district or "" for c in cells]
    values = [c.figures[metric].value or 0 for c in cells]
    bars = axes.bar(labels, values)
    top = max(values, default=0) or 1
    for bar, cell in zip(bars, cells, strict=True):
        if cell.figures[metric].suppressed:
            bar.set_height(top * 0.05)
            bar.set_hatch("//")
            bar.set_fill(False)
            axes.annotate(
                "suppressed",
                (bar.get_x() + bar.get_width() / 2, top * 0.06),
                ha="center",
                rotation=90,
                fontsize=7,
            )
    axes.set_title(f"{metric} per district, scheme {chosen} (k = {report.k})")
    axes.tick_params(axis="x", rotation=60)
    figure.tight_layout()
    return figure


def save(figure: MplFigure, path: Path) -> Path:
    """Write ``figure`` as PNG or SVG (by the suffix of ``path``)."""
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ValueError(f"charts are written as {' or '.join(FORMATS)}, not {suffix!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format=suffix, facecolor="white")
    plt.close(figure)
    return path
