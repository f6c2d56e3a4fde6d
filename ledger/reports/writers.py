"""CSV and JSON renderings of the reports (what the CLI writes and the admin API returns)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from typing import Any

from ledger.csv_safe import csv_cell
from ledger.reports.governance import GovernanceEntry, GovernanceLog
from ledger.reports.models import (
    DISTRICT_METRICS,
    DistrictReport,
    MerchantReport,
    SchemeReport,
)
from ledger.reports.periods import Period

__all__ = ["Report", "as_dict", "to_csv", "to_json"]

Report = SchemeReport | MerchantReport | DistrictReport | GovernanceLog


def _period(period: Period | None) -> dict[str, Any] | None:
    if period is None:
        return None
    return {"start": period.start, "end": period.end, "label": period.label()}


def as_dict(report: Report) -> dict[str, Any]:
    """A JSON-ready dict (amounts are integers; suppressed figures are ``null``)."""
    if isinstance(report, SchemeReport):
        return {
            "report": "scheme",
            "period": _period(report.period),
            "granularity": report.granularity.value,
            "tz": report.tz,
            "holders_used_in_period": {str(k): v for k, v in report.holders_used_in_period.items()},
            "rows": [asdict(row) for row in report.rows],
        }
    if isinstance(report, MerchantReport):
        return {
            "report": "merchant",
            "period": _period(report.period),
            "rows": [asdict(row) for row in report.rows],
        }
    if isinstance(report, GovernanceLog):
        return {
            "report": "governance",
            "period": _period(report.period),
            "kind": report.kind,
            "rows": [asdict(row) for row in report.rows],
        }
    return {
        "report": "district",
        "period": _period(report.period),
        "k": report.k,
        "exposed": report.exposed,
        "cells": [
            {
                "district": cell.district,
                "district_name": cell.district_name,
                "scheme_id": cell.scheme_id,
                "figures": {name: asdict(fig) for name, fig in cell.figures.items()},
            }
            for cell in report.cells
        ],
    }


def to_json(report: Report) -> str:
    return json.dumps(as_dict(report), indent=2, sort_keys=False) + "\n"


def to_csv(report: Report) -> str:
    """One row per scheme and bucket / merchant / district and scheme.

    District rows leave suppressed figures empty and name them in the ``suppressed`` column;
    ``district`` and ``scheme_id`` are empty for totals over all districts / schemes. Text cells
    that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``, tab, CR first) get a
    leading ``'`` (:mod:`ledger.csv_safe`); numbers are written as numbers.
    """
    out = io.StringIO()
    if isinstance(report, SchemeReport | MerchantReport | GovernanceLog):
        rows = [asdict(row) for row in report.rows]
        fields = list(rows[0]) if rows else _empty_fields(report)
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(_safe(row) for row in rows)
        return out.getvalue()
    fields = ["district", "district_name", "scheme_id", *DISTRICT_METRICS, "suppressed"]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for cell in report.cells:
        row: dict[str, Any] = {
            "district": cell.district or "",
            "district_name": cell.district_name or "",
            "scheme_id": "" if cell.scheme_id is None else cell.scheme_id,
        }
        hidden = []
        for metric in DISTRICT_METRICS:
            fig = cell.figures.get(metric)
            if fig is None:
                row[metric] = ""
                continue
            row[metric] = "" if fig.value is None else fig.value
            if fig.suppressed:
                hidden.append(f"{metric}:{fig.reason}")
        row["suppressed"] = ";".join(hidden)
        writer.writerow(_safe(row))
    return out.getvalue()


def _safe(row: dict[str, Any]) -> dict[str, Any]:
    return {key: csv_cell(value) for key, value in row.items()}


def _empty_fields(report: SchemeReport | MerchantReport | GovernanceLog) -> list[str]:
    from ledger.reports.models import MerchantRow, SchemeRow

    if isinstance(report, GovernanceLog):
        return list(GovernanceEntry.__dataclass_fields__)
    model = SchemeRow if isinstance(report, SchemeReport) else MerchantRow
    return list(model.__dataclass_fields__)
