"""The audit on a real anvil chain and both databases.

A scenario with every event kind (passes and their changes, schemes of each kind, issue, batch,
cohort by Merkle root with a claim and a claim-and-redeem, single and batched redemptions with a
rejected item, a reversal, a settlement, an expiry) is mirrored into the index tables; the audit
of the clean index finds nothing; one tampered row (an amount changed, a row deleted, a row added)
is reported exactly, and the CLI exits 1; re-indexing makes it clean again.

The service's promises (what it answered about each redemption id) are compared with the
chain's own ``Redeemed``/``Reversed`` logs: promises that match are clean, and each kind of
broken promise is reported by its redemption id; the outbox's failed and stuck transactions too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, Table, delete, insert, select, update
from typer.testing import CliRunner

from ledger.audit import (
    AuditResult,
    PromiseStatus,
    ServicePromise,
    _block_times,
    audit,
    expected_index_rows,
    fetch_events,
)
from ledger.audit_cli import app
from ledger.client import UNLIMITED
from ledger.deploy import save_deployment
from ledger.outbox import SqlOutbox, open_outbox
from ledger.relayer import SignedTx
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
from ledger.store.outbox import OutboxState, OutboxTx
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
    # PostgreSQL keeps the outbox in the store; SQLite in a file of its own, made by the service
    has_outbox = migrated_store.dialect == "postgresql"
    assert result.checked == ["contract views", "index rows", "reports"] + ["outbox"] * has_outbox
    if not has_outbox:
        assert "outbox not compared: the database has no outbox" in result.notes
    assert "service promises not compared: none given" in result.notes
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
    assert any("outbox not compared" in note for note in result.notes)


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


# ---------------------------------------------------------------- service promises


def kept_promises(scenario: Scenario) -> list[ServicePromise]:
    """What a service that sent the scenario's redemptions would have recorded: every
    ``Redeemed`` confirmed with its figures, the rejected id refused, the reversal recorded."""
    events = fetch_events(
        scenario.rpc,
        scenario.env.client,
        from_block=scenario.from_block,
        to_block=int(scenario.rpc.call("eth_blockNumber"), 16),
    )
    reversals = {
        int(e.args["redemptionId"]): "0x" + e.transaction_hash.hex()
        for e in events
        if e.name == "Reversed"
    }
    promises = [
        ServicePromise(
            redemption_id=int(e.args["redemptionId"]),
            status=PromiseStatus.SUCCEEDED,
            scheme_id=int(e.args["schemeId"]),
            merchant=str(e.args["merchant"]).lower(),  # the case is not compared
            debited=int(e.args["debited"]),
            credited=int(e.args["credited"]),
            tx_hash="0x" + e.transaction_hash.hex(),
            block_number=e.block_number,
            reversal_tx_hash=reversals.get(int(e.args["redemptionId"])),
            reference=f"key-{int(e.args['redemptionId'])}",
        )
        for e in events
        if e.name == "Redeemed"
    ]
    rejected = [int(e.args["redemptionId"]) for e in events if e.name == "RedemptionRejected"]
    promises += [
        ServicePromise(
            redemption_id=rid, status=PromiseStatus.FAILED, problem_code="insufficient_balance"
        )
        for rid in rejected
    ]
    promises.append(ServicePromise(redemption_id=777, status=PromiseStatus.PENDING))
    return promises


def _promise_kinds(result: AuditResult) -> list[tuple[str, str]]:
    return [(d.kind, d.key) for d in result.differences if d.about_promises]


def test_kept_promises_are_clean(scenario: Scenario) -> None:
    promises = kept_promises(scenario)
    result = scenario.audit(None, promises=lambda: promises)
    assert result.differences == []
    assert "service promises" in result.checked


def test_broken_promises_are_listed_by_redemption_id(scenario: Scenario) -> None:
    kept = {p.redemption_id: p for p in kept_promises(scenario)}
    broken_at = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
    other = scenario.env.other_merchant.address
    changed = dict(kept)
    changed[9_999] = ServicePromise(  # confirmed, never on chain (a node that lost it)
        redemption_id=9_999,
        status=PromiseStatus.SUCCEEDED,
        scheme_id=scenario.budget,
        debited=100,
        credited=100,
        tx_hash="0x" + "ab" * 32,
        block_number=3,
    )
    del changed[1]  # on chain, unknown here
    changed[3] = replace(kept[3], status=PromiseStatus.FAILED, problem_code="pass_blocked")
    changed[5] = replace(kept[5], credited=(kept[5].credited or 0) + 1)
    changed[7] = replace(kept[7], merchant=other)
    changed[2] = replace(kept[2], reversal_tx_hash=None)  # reversed on chain, not here
    changed[8] = replace(kept[8], reversal_tx_hash="0x" + "cd" * 32)  # reversed here only
    # the service marked these broken itself: a confirmation the chain lost (now failed), and a
    # refusal that landed after all (now succeeded, agreeing with the chain)
    changed[9_998] = ServicePromise(
        redemption_id=9_998,
        status=PromiseStatus.FAILED,
        problem_code="confirmation_lost",
        promise_broken_at=broken_at,
    )
    changed[6] = replace(kept[6], promise_broken_at=broken_at)

    result = scenario.audit(None, promises=list(changed.values()))

    assert not result.ok
    assert _promise_kinds(result) == [
        ("promise.unknown_here", "redemption=1"),
        ("promise.reversal_unknown", "redemption=2"),
        ("promise.refused_on_chain", "redemption=3"),
        ("promise.amounts", "redemption=5"),
        ("promise.refused_on_chain", "redemption=6"),
        ("promise.merchant", "redemption=7"),
        ("promise.reversal_missing", "redemption=8"),
        ("promise.missing_on_chain", "redemption=9998"),
        ("promise.missing_on_chain", "redemption=9999"),
    ]
    assert [d for d in result.differences if not d.about_promises] == []
    by_key = {(d.kind, d.key): d for d in result.differences}
    missing = by_key[("promise.missing_on_chain", "redemption=9999")]
    assert missing.detail.startswith("confirmed here, missing on chain: ")
    assert missing.expected is None
    assert missing.actual["status"] == "succeeded"
    lost = by_key[("promise.missing_on_chain", "redemption=9998")]
    assert "confirmation_lost" in lost.detail
    assert "2026-12-04 10:00:00" in lost.detail
    amounts = by_key[("promise.amounts", "redemption=5")]
    assert amounts.actual["credited"] == amounts.expected["credited"] + 1
    merchant = by_key[("promise.merchant", "redemption=7")]
    assert merchant.actual == other
    assert merchant.expected == scenario.env.merchant.address
    assert "landed on chain" in by_key[("promise.refused_on_chain", "redemption=6")].detail
    for d in result.differences:  # one line each
        assert d.detail
        assert "\n" not in d.detail
        assert d.to_json()["detail"] == d.detail


def test_a_broken_mark_is_always_reported(scenario: Scenario) -> None:
    """A record the service marked broken is listed even when it now agrees with the chain:
    the merchant was given an answer the chain contradicted."""
    at = datetime.now(UTC)
    marked = [
        replace(p, promise_broken_at=at, problem_code="confirmation_lost")
        if p.redemption_id in (4, 777)  # refused / pending now, and the chain agrees
        else p
        for p in kept_promises(scenario)
    ]
    result = scenario.audit(None, promises=marked)
    assert _promise_kinds(result) == [
        ("promise.missing_on_chain", "redemption=4"),  # failed + broken: it had been confirmed
        ("promise.broken", "redemption=777"),
    ]
    for d in result.differences:
        assert "marked this promise broken" in d.detail


def test_promises_are_compared_up_to_the_head_not_the_audited_block(scenario: Scenario) -> None:
    promises = kept_promises(scenario)
    last = max(p.block_number or 0 for p in promises)
    # the audit stops before the last redemptions; the promises are still checked against them
    result = scenario.audit(None, to_block=last - 1, promises=promises)
    assert _promise_kinds(result) == []
    assert any("compared with the chain up to block" in note for note in result.notes)


# ---------------------------------------------------------------- the outbox


def _set_row(outbox: SqlOutbox, tx_hash: str, **values: object) -> None:
    with outbox.db.engine.begin() as conn:
        table = _table(OutboxTx)
        conn.execute(update(table).where(table.c.tx_hash == tx_hash).values(**values))


@pytest.fixture
def outbox(migrated_store: Store) -> Iterator[SqlOutbox]:
    """The store's outbox as the service opens it (SQLite: a file of its own beside it)."""
    opened = open_outbox(migrated_store)
    yield opened
    opened.close()


def test_failed_and_stuck_outbox_rows(
    scenario: Scenario, migrated_store: Store, outbox: SqlOutbox
) -> None:
    fill_index(scenario, migrated_store)
    promises = kept_promises(scenario)
    events = fetch_events(
        scenario.rpc,
        scenario.env.client,
        from_block=scenario.from_block,
        to_block=int(scenario.rpc.call("eth_blockNumber"), 16),
    )
    batch = next(e for e in events if e.name == "Redeemed" and int(e.args["redemptionId"]) == 5)
    batch_hash = "0x" + batch.transaction_hash.hex()
    merchant = scenario.env.merchant.address

    def signed(tx_hash: str, nonce: int, refs: tuple[int, ...]) -> SignedTx:
        return SignedTx(
            tx_hash=tx_hash,
            sender=merchant,
            nonce=nonce,
            raw=b"\x01",
            label="redeemBatch",
            refs=refs,
        )

    lost, superseded, variant, waiting = ("0x" + c * 64 for c in "1234")
    outbox.signed(
        [
            signed(batch_hash, 1, (2, 3, 4, 5, 6, 7)),  # mined where the chain has it
            signed(lost, 2, (1,)),  # failed, yet redemption 1 is confirmed here
            signed(superseded, 3, (6,)),  # failed, but a variant of it carries 6 and was mined
            signed(variant, 3, (6,)),
            signed(waiting, 4, (777,)),  # sent long ago, never mined
        ],
    )
    _set_row(
        outbox,
        batch_hash,
        state=OutboxState.MINED.value,
        block_number=batch.block_number,
        block_hash="0x" + batch.block_hash.hex(),
    )
    _set_row(outbox, lost, state=OutboxState.FAILED.value, reason="nonce taken")
    _set_row(outbox, superseded, state=OutboxState.FAILED.value, reason="superseded")
    _set_row(outbox, variant, state=OutboxState.FINAL.value)
    _set_row(outbox, waiting, state=OutboxState.SENT.value)

    fresh = scenario.audit(migrated_store, promises=promises, compare_reports=False)
    assert [(d.kind, d.key) for d in fresh.differences if d.about_promises] == [
        ("outbox.failed", "redemption=1")
    ]
    assert "outbox" in fresh.checked

    later = datetime.now(UTC) + timedelta(minutes=11)
    old = scenario.audit(migrated_store, promises=promises, compare_reports=False, now=later)
    kinds = [(d.kind, d.key) for d in old.differences if d.about_promises]
    assert kinds == [("outbox.failed", "redemption=1"), ("outbox.stuck", f"tx={waiting}")]
    stuck = old.differences[-1]
    assert "still sent after 11 min" in stuck.detail
    assert "777" in stuck.detail
    assert "the chain has no receipt" in stuck.detail
    # a mined row the chain does not have where the outbox says is stuck too
    _set_row(outbox, batch_hash, block_hash="0x" + "ee" * 32)
    moved = scenario.audit(migrated_store, promises=promises, compare_reports=False, now=later)
    assert ("outbox.stuck", f"tx={batch_hash}") in [(d.kind, d.key) for d in moved.differences]
    # the stuck threshold is a parameter
    patient = scenario.audit(
        migrated_store, promises=promises, compare_reports=False, now=later, stuck_after_s=3600
    )
    assert [d.kind for d in patient.differences if d.about_promises] == ["outbox.failed"]


def test_an_index_ahead_of_the_node_is_a_difference(
    scenario: Scenario, migrated_store: Store
) -> None:
    """A node restarted from an older state is behind the index: the audit says so and audits
    up to the node's head instead of refusing to run."""
    fill_index(scenario, migrated_store)
    head = int(scenario.rpc.call("eth_blockNumber"), 16)
    with migrated_store.engine.begin() as conn:
        table = _table(IndexCheckpoint)
        conn.execute(update(table).values(block_number=head + 50))
    result = scenario.audit(migrated_store, compare_reports=False)
    assert result.to_block == head
    ahead = [d for d in result.differences if d.kind == "index.checkpoint"]
    assert [d.key for d in ahead] == [f"block={head + 50}"]
    assert "beyond the node's head" in ahead[0].detail
