"""Reports over the index (and the registry, for districts): per scheme, merchant and district.

Pure SQL aggregates on SQLite and PostgreSQL (:mod:`ledger.reports.queries`), typed results
(:mod:`ledger.reports.models`), small-cell suppression (:mod:`ledger.reports.suppression`), CSV
and JSON writers (:mod:`ledger.reports.writers`), PNG/SVG charts (:mod:`ledger.reports.charts`,
needs matplotlib) and a Typer sub-app (:mod:`ledger.reports.cli`).
"""

from ledger.reports.governance import GovernanceEntry, GovernanceLog, governance_log
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
from ledger.reports.periods import Granularity, Period, PeriodError
from ledger.reports.queries import district_report, merchant_report, scheme_report
from ledger.reports.suppression import DEFAULT_K

__all__ = [
    "DEFAULT_K",
    "DISTRICT_METRICS",
    "UNKNOWN_DISTRICT",
    "DistrictCell",
    "DistrictReport",
    "Figure",
    "GovernanceEntry",
    "GovernanceLog",
    "Granularity",
    "MerchantReport",
    "MerchantRow",
    "Period",
    "PeriodError",
    "SchemeReport",
    "SchemeRow",
    "district_report",
    "governance_log",
    "merchant_report",
    "scheme_report",
]
