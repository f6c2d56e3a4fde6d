"""The audit on a real anvil chain and both databases.

A scenario with every event kind (passes and their changes, schemes of each kind, issue, batch,
cohort by Merkle root with a claim and a claim-and-redeem, single and batched redemptions with a
rejected item, a reversal, a settlement, an expiry) is mirrored into the index tables; the audit
of the clean index finds nothing; one tampered row (an amount changed, a row deleted, a row added)
is reported exactly, and the CLI exits 1; re-indexing makes it clean again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, Table, delete, insert, select, update
from typer.testing import CliRunner

from ledger.audit import (
    AuditResult,
    _block_times,
    audit,
    expected_index_rows,
    fetch_events,
)
from ledger.audit_cli import app
from ledger.client import UNLIMITED
from ledger.deploy import save_deployment
from ledger.rpc import RpcClient
from ledger.store.db import Store
from ledger.store.index import (
    EVENT_TABLES,
    IndexBlock,
    IndexCheckpoint,
    IndexedRedemption,
    IndexedReversal,
    IndexedSettlement,
)
from tests.ledger.conftest import LedgerEnv, every_event, rpc_of

REF = b"SEPA-AUDIT-0001".ljust(32, b"\x00")
EVERY_EVENT = {
    "PassRegistered",
    "HolderKeyChanged",
    "CardReplaced",
    "PassBlockStatusChanged",
    "SchemeCreated",
    "EntitlementIssued",
    "EntitlementsIssued",
    "CohortIssued",
    "CohortClaimed",
    "EntitlementExpired",
    "Redeemed",
    "RedemptionRejected",
    "ReceiptsRecorded",
    "Reversed",
    "Settled",
}


def _table(model: type) -> Table:
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table


@dataclass
class Scenario:
    env: LedgerEnv
    rpc: RpcClient
    from_block: int
    budget: int
    uses: int
    discount: int
    short: int
    passes: list[bytes]

    def audit(self, store: Store | Engine | None, **kwargs: object) -> AuditResult:
        return audit(
            rpc=self.rpc,
            client=self.env.client,
            from_block=self.from_block,
            store=store,
            **kwargs,  # type: ignore[arg-type]
        )


def build_scenario(ledger: LedgerEnv) -> Scenario:
    """Every event kind the contract emits (:func:`tests.ledger.conftest.every_event`)."""
    story = every_event(ledger, reference=REF)
    budget, uses, discount, short = story.budget, story.uses, story.discount, story.short
    p1, p2, p3, p4 = story.passes
    rpc = rpc_of(ledger)  # closed after the test
    return Scenario(
        env=ledger,
        rpc=rpc,
        from_block=ledger.deployment.deployed_block,
        budget=budget,
        uses=uses,
        discount=discount,
        short=short,
        passes=[p1, p2, p3, p4],
    )


def fill_index(scenario: Scenario, store: Store | Engine) -> int:
    """Mirror the scenario into the index tables with the real indexer (backfill to the head).

    Falls back to decoding the logs with the audit's own row mapping when ``ledger.indexer`` is
    not available. Returns the number of logs (or rows) written."""
    try:
        from ledger.indexer import Indexer, IndexerConfig
    except ImportError:  # pragma: no cover - before the indexer existed
        return _mirror_by_decoding(scenario, store)
    indexer = Indexer(
        store,
        scenario.rpc,
        scenario.env.client.abi,
        IndexerConfig(contract=scenario.env.client.address, start_block=scenario.from_block),
    )
    return indexer.sync()


def _mirror_by_decoding(scenario: Scenario, store: Store | Engine) -> int:
    engine = store if isinstance(store, Engine) else store.engine
    head = int(scenario.rpc.call("eth_blockNumber"), 16)
    client = scenario.env.client
    events = fetch_events(scenario.rpc, client, from_block=scenario.from_block, to_block=head)
    headers = _block_times(scenario.rpc, [e.block_number for e in events])
    times = {n: t for n, (_, t) in headers.items()}
    tables = expected_index_rows(
        events, chain_id=client.chain_id, block_times=times, abi=client.abi
    )
    written = 0
    with engine.begin() as conn:
        for model in EVENT_TABLES:
            table = _table(model)
            rows = list(tables[table.name].values())
            if rows:
                conn.execute(insert(table), rows)
                written += len(rows)
    return written


def url_of(store: Store) -> str:
    """The store's URL with its password, for the CLI."""
    return store.engine.url.render_as_string(hide_password=False)


def clear_index(store: Store | Engine) -> None:
    """Drop everything the index holds (rows, blocks, checkpoint): a re-index starts over."""
    engine = store if isinstance(store, Engine) else store.engine
    with engine.begin() as conn:
        for model in (*EVENT_TABLES, IndexBlock, IndexCheckpoint):
            conn.execute(delete(_table(model)))


@pytest.fixture
def scenario(ledger: LedgerEnv) -> Iterator[Scenario]:
    built = build_scenario(ledger)
    yield built
    built.rpc.close()


@pytest.fixture
def cli_files(scenario: Scenario, tmp_path: Path) -> dict[str, str]:
    deployment = tmp_path / "deployment.json"
    save_deployment(scenario.env.deployment, deployment)
    abi = tmp_path / "abi.json"
    abi.write_text(json.dumps(scenario.env.client.abi))
    return {"deployment": str(deployment), "abi": str(abi), "rpc": scenario.rpc.url}


def _cli(files: dict[str, str], database_url: str | None, *extra: str) -> tuple[int, str]:
    args = ["audit", "--rpc-url", files["rpc"], "--deployment", files["deployment"]]
    args += ["--abi", files["abi"]]
    if database_url is not None:
        args += ["--database-url", database_url]
    result = CliRunner().invoke(app, [*args, *extra], env={"COLUMNS": "200"})
    return result.exit_code, result.output


# ---------------------------------------------------------------- clean


def test_clean_audit_of_every_event_kind(
    scenario: Scenario, migrated_store: Store, cli_files: dict[str, str]
) -> None:
    rows = fill_index(scenario, migrated_store)
    result = scenario.audit(migrated_store)

    assert result.differences == []
    assert result.ok
    assert result.checked == ["contract views", "index rows", "reports"]
    names = {
        e.name
        for e in fetch_events(
            scenario.rpc,
            scenario.env.client,
            from_block=scenario.from_block,
            to_block=result.to_block,
        )
    }
    assert names >= EVERY_EVENT
    assert rows > result.events // 2

    state = result.state
    client = scenario.env.client
    p1, p2, _p3, _p4 = scenario.passes
    # the recomputation is the contract's own figures
    for (sid, pid), balance in state.balances.items():
        assert client.balance_of(sid, pid) == balance
    assert state.balances[(scenario.discount, p1)] == UNLIMITED
    assert state.balances[(scenario.budget, p2)] == 3_000  # 500 redeemed, reversed
    assert state.balances[(scenario.short, p2)] == 0  # expired
    merchant = state.merchants[scenario.env.merchant.address]
    totals = client.merchant_totals(scenario.env.merchant.address)
    assert (merchant.redeemed, merchant.reversed, merchant.settled) == (
        totals.redeemed,
        totals.reversed,
        totals.settled,
    )
    assert merchant.settled == 1_000
    budget = state.schemes[scenario.budget]
    assert budget.committed == client.scheme_of(scenario.budget).committed == 14_000
    assert budget.claimed == 4_000
    assert budget.reversed == 500
    short = state.schemes[scenario.short]
    assert short.expired == 700 + 300
    assert short.remaining_expected == 0
    assert state.used_ids == {1, 2, 3, 5, 6, 7, 8, 10}
    assert state.rejected_ids == {4}
    assert state.reversed_ids == {2}

    code, output = _cli(cli_files, url_of(migrated_store))
    assert code == 0, output
    assert "clean" in output


def test_audit_without_a_database_checks_the_chain_only(scenario: Scenario) -> None:
    result = scenario.audit(None)
    assert result.ok
    assert result.checked == ["contract views"]
    assert any("index not compared" in note for note in result.notes)


# ---------------------------------------------------------------- tampering


def _tamper(kind: str, store: Store) -> tuple[str, str]:
    """Change one index row; return the Difference kind and a fragment of its key expected."""
    with store.engine.begin() as conn:
        if kind == "amount":
            table = _table(IndexedRedemption)
            row = conn.execute(
                select(table.c.id, table.c.block_hash, table.c.log_index).where(
                    table.c.redemption_id == "1"
                )
            ).one()
            conn.execute(
                update(table).where(table.c.id == row.id).values(credited=table.c.credited + 1)
            )
            return (
                "index.value",
                f"index_redemption block={row.block_hash.lower()} log={row.log_index} credited",
            )
        if kind == "delete":
            table = _table(IndexedSettlement)
            deleted = conn.execute(select(table.c.id, table.c.log_index)).one()
            conn.execute(delete(table).where(table.c.id == deleted.id))
            return "index.missing", "index_settlement block="
        table = _table(IndexedReversal)
        original = conn.execute(select(table)).mappings().one()
        copy = {k: v for k, v in original.items() if k != "id"} | {"log_index": 999}
        conn.execute(insert(table).values(**copy))
        return "index.extra", "index_reversal block="


@pytest.mark.parametrize("tamper", ["amount", "delete", "add"])
def test_tampered_index_row_is_reported_exactly(
    scenario: Scenario,
    migrated_store: Store,
    cli_files: dict[str, str],
    tamper: str,
) -> None:
    fill_index(scenario, migrated_store)
    kind, key = _tamper(tamper, migrated_store)

    result = scenario.audit(migrated_store)

    # exactly the tampered row in the index; the reports built on it are off accordingly
    index_differences = [d for d in result.differences if d.kind.startswith("index.")]
    assert len(index_differences) == 1, result.differences
    others = [d for d in result.differences if not d.kind.startswith("index.")]
    assert all(d.kind.startswith("report.") for d in others), others
    assert others, "the reports read the tampered index too"
    difference = index_differences[0]
    assert difference.kind == kind
    assert difference.key.startswith(key), difference.key
    if tamper == "amount":
        assert difference.actual == difference.expected + 1
    if tamper == "add":
        assert difference.key.endswith("log=999")
    code, output = _cli(cli_files, url_of(migrated_store))
    assert code == 1, output
    assert kind in output

    code, output = _cli(cli_files, url_of(migrated_store), "--json")
    assert code == 1
    payload = json.loads(output)
    assert [d["kind"] for d in payload["differences"] if d["kind"].startswith("index.")] == [kind]

    clear_index(migrated_store)
    fill_index(scenario, migrated_store)
    assert scenario.audit(migrated_store).ok
    assert _cli(cli_files, url_of(migrated_store))[0] == 0


# ---------------------------------------------------------------- bad input


def test_cli_bad_input_exits_2(cli_files: dict[str, str], tmp_path: Path) -> None:
    code, output = _cli(cli_files | {"rpc": "http://127.0.0.1:9"}, None)
    assert code == 2
    assert "cannot read the node" in output
    assert len(output.strip().splitlines()) == 1
    code, output = _cli(cli_files, "postgresql://nobody@127.0.0.1:9/none")
    assert code == 2
    assert "cannot reach the database" in output
    code, output = _cli(cli_files, f"sqlite:///{tmp_path / 'missing.db'}")
    assert code == 2
    assert "no SQLite database" in output
    code, output = _cli(cli_files | {"deployment": str(tmp_path / "none.json")}, None)
    assert code == 2
    assert "no deployment record" in output
