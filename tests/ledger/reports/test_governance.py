"""The governance log over a real index: the deployment's role grants and the story's
allowances, by name, newest first, filtered by kind and period; bad filters refused."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ledger.client import ROLES
from ledger.reports import Period, governance_log
from ledger.reports.cli import app
from ledger.reports.writers import as_dict, to_csv
from ledger.store.db import Store
from tests.ledger.conftest import LedgerEnv
from tests.ledger.indexer.conftest import every_event, make_indexer


def test_governance_log_of_the_story(ledger: LedgerEnv, migrated_store: Store) -> None:
    every_event(ledger)
    make_indexer(migrated_store, ledger).sync()
    engine = migrated_store.engine

    log = governance_log(engine)
    kinds = {row.kind for row in log.rows}
    assert "role_granted" in kinds
    grants = {(row.role_name, row.account) for row in log.rows if row.kind == "role_granted"}
    assert ("issuer", ledger.issuer.address) in grants
    assert ("merchant", ledger.merchant.address) in grants
    assert all(row.role == "0x" + ROLES[row.role_name].hex() for row in log.rows if row.role_name)
    order = [(row.block_number, row.log_index) for row in log.rows]
    assert order == sorted(order, reverse=True)

    only = governance_log(engine, kind="role_granted", limit=2)
    assert [row.kind for row in only.rows] == ["role_granted", "role_granted"]
    assert only.rows == [row for row in log.rows if row.kind == "role_granted"][:2]

    newest = log.rows[0].block_time
    assert governance_log(engine, period=Period(newest + 1, newest + 86_400)).rows == []
    inside = governance_log(engine, period=Period(newest, newest + 1))
    assert inside.rows
    assert all(row.block_time == newest for row in inside.rows)

    assert as_dict(log)["report"] == "governance"
    assert to_csv(log).count("\n") == len(log.rows) + 1
    assert to_csv(governance_log(engine, kind="eip712_domain_changed")).startswith("block_number,")


def test_bad_filters_are_refused(migrated_store: Store) -> None:
    with pytest.raises(ValueError, match="'promoted' is not a governance event"):
        governance_log(migrated_store.engine, kind="promoted")
    for limit in (0, 10_001):
        with pytest.raises(ValueError, match="limit must be between 1 and 10000"):
            governance_log(migrated_store.engine, limit=limit)


def test_cli_writes_the_governance_log(
    ledger: LedgerEnv, migrated_store: Store, tmp_path: Path
) -> None:
    make_indexer(migrated_store, ledger).sync()
    url = migrated_store.engine.url.render_as_string(hide_password=False)
    runner = CliRunner()
    result = runner.invoke(app, ["governance", "--database", url, "--kind", "role_granted"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert rows
    assert {row["kind"] for row in rows} == {"role_granted"}
    assert ("issuer", ledger.issuer.address) in {(r["role_name"], r["account"]) for r in rows}
    out = tmp_path / "governance.json"
    result = runner.invoke(
        app, ["governance", "--database", url, "--format", "json", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["report"] == "governance"
    bad = runner.invoke(app, ["governance", "--database", url, "--kind", "promoted"])
    assert bad.exit_code == 2
    assert "'promoted' is not a governance event" in bad.output
