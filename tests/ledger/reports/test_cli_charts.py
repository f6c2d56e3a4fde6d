"""The report sub-app (CSV/JSON files) and the PNG/SVG charts."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ledger.reports.cli import app
from ledger.store.db import Store
from tests.ledger.reports.helpers import Rows, ts


def _data(store: Store) -> None:
    rows = Rows(store.engine)
    rows.district("A")
    rows.merchant(1)
    for n in range(1, 13):
        rows.holder(n, "A", n)
        rows.issue(1, n, 1_000, ts("2025-01-02"))
        rows.redeem(1, n, 100, ts("2025-01-10"), merchant_n=1)
    rows.redeem(1, 99, 100, ts("2025-02-10"), merchant_n=1)  # an erased holder


def test_cli_writes_csv_and_json(migrated_store: Store, tmp_path: Path) -> None:
    _data(migrated_store)
    url = migrated_store.engine.url.render_as_string(hide_password=False)
    runner = CliRunner()
    out = tmp_path / "scheme.json"
    result = runner.invoke(
        app, ["scheme", "--database", url, "--by", "month", "--format", "json", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert [r["bucket"] for r in json.loads(out.read_text())["rows"]] == ["2025-01", "2025-02"]
    result = runner.invoke(app, ["merchant", "--database", url, "--period", "2025-01"])
    assert result.exit_code == 0
    assert "owed" in result.output.splitlines()[0]
    result = runner.invoke(app, ["district", "--database", url, "--format", "csv"])
    assert result.exit_code == 0
    unknown = next(line for line in result.output.splitlines() if line.startswith("unknown,"))
    assert "primary" in unknown
    bad = runner.invoke(app, ["scheme", "--database", url, "--period", "March"])
    assert bad.exit_code != 0


def test_charts_png_and_svg(migrated_store: Store, tmp_path: Path) -> None:
    _data(migrated_store)
    url = migrated_store.engine.url.render_as_string(hide_password=False)
    runner = CliRunner()
    for kind in ("scheme", "merchant", "district"):
        for suffix in ("png", "svg"):
            path = tmp_path / f"{kind}.{suffix}"
            result = runner.invoke(app, ["chart", kind, "--database", url, "--out", str(path)])
            assert result.exit_code == 0, result.output
            head = path.read_bytes()[:200]
            assert (
                head.startswith(b"\x89PNG")
                if suffix == "png"
                else b"<svg" in path.read_bytes()[:2000]
            )
