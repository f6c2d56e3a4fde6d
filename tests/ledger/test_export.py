"""Exit from a vendor: the export of the index and the registry, scopes, secrets and checksums."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import Table, func, select
from typer.testing import CliRunner

from ledger.audit_cli import app
from ledger.export import AUDITOR_COLUMNS, ExportError, Scope, export, verify_export
from ledger.passid import new_pass_secret, pass_id
from ledger.store.db import Store
from ledger.store.index import IndexCheckpoint
from ledger.store.registry import (
    District,
    Holder,
    Household,
    HouseholdRole,
    Merchant,
    PassRecord,
    PostcodeDistrict,
    PrintedCard,
)
from tests.ledger.conftest import LedgerEnv
from tests.ledger.test_audit import Scenario, build_scenario, fill_index, url_of

LAST_NAME = "Zwartjesvaart"
IBAN = "NL91ABNA0417164300"
#: Public reference data (CBS districts and the postcode table), not about any person.
PUBLIC_REFERENCE_TABLES = {"registry_district", "registry_postcode_district"}
#: Columns that hold personal data (or secrets), per table.
PERSONAL_COLUMNS = {
    "registry_holder": {"first_name", "last_name", "birth_date", "postcode"},
    "registry_household": {"reference"},
    "registry_pass": {"pass_number", "pass_secret", "activation_code_hash"},
    "registry_merchant": {"name", "iban", "bic"},
    "payout_run": {"document", "note"},
    "payout_line": {"merchant_name", "iban", "bic", "error"},
}


@pytest.fixture
def scenario(ledger: LedgerEnv) -> Iterator[Scenario]:
    built = build_scenario(ledger)
    yield built
    built.rpc.close()


def _table(model: type) -> Table:
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table


def fill_registry(store: Store) -> dict[str, object]:
    """A small registry: district, postcode, household, two holders with passes and a card, a
    merchant. Returns the secrets and numbers to look for in exports."""
    secret = new_pass_secret()
    now = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
    with store.session() as session:
        session.add(District(code="WK001400", name="Centrum", municipality="Groningen"))
        session.flush()
        session.add(PostcodeDistrict(postcode="9711AB", district_code="WK001400"))
        household = Household(reference="HH-2025-0001")
        session.add(household)
        session.flush()
        parent = Holder(
            first_name="Anne",
            last_name=LAST_NAME,
            birth_date=date(1984, 5, 17),
            postcode="9711AB",
            district_code="WK001400",
            household_id=household.id,
            household_role=HouseholdRole.PARENT,
            created_at=now,
        )
        child = Holder(
            first_name="Bram",
            last_name=LAST_NAME,
            birth_date=date(2015, 1, 2),
            postcode="9711AB",
            district_code="WK001400",
            household_id=household.id,
            household_role=HouseholdRole.CHILD,
            created_at=now,
        )
        session.add_all([parent, child])
        session.flush()
        assert parent.id is not None
        assert child.id is not None
        passes = []
        for holder, number, key in ((parent, "P0000001", secret), (child, "P0000002", None)):
            pass_secret = key or new_pass_secret()
            assert holder.id is not None
            record = PassRecord(
                holder_id=holder.id,
                pass_number=number,
                pass_secret=pass_secret,
                pass_id="0x" + pass_id(pass_secret=pass_secret, pass_number=number).hex(),
                activation_code_hash="argon2$secret-activation",
                created_at=now,
            )
            session.add(record)
            passes.append(record)
        session.flush()
        assert passes[0].id is not None
        session.add(PrintedCard(pass_record_id=passes[0].id, serial=3, issued_at=now))
        session.add(
            Merchant(
                name="Zwembad De Parrel",
                kvk_number="01234567",
                iban=IBAN,
                bic="ABNANL2A",
                category="sport",
                address="0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
            )
        )
        session.commit()
        return {"secret": secret, "pass_id": passes[0].pass_id, "number": "P0000001"}


def _count(store: Store, table: Table) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _read_csv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------- admin: everything


def test_export_writes_every_table_with_counts_and_checksums(
    scenario: Scenario, migrated_store: Store, tmp_path: Path
) -> None:
    fill_index(scenario, migrated_store)
    fill_registry(migrated_store)
    client = scenario.env.client
    out = tmp_path / "export"

    result = export(migrated_store, out, scope=Scope.ADMIN)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["scope"] == "admin"
    assert manifest["include_secrets"] is False
    assert manifest["chain_id"] == client.chain_id
    assert str(manifest["contract"]).lower() == client.address.lower()
    assert manifest["schema_revision"]  # migrated by Alembic
    assert manifest["withheld"] == {"registry_pass": ["pass_secret"]}
    from ledger.store.tables import ledger_table_names

    assert set(manifest["tables"]) == set(ledger_table_names())
    for name in manifest["tables"]:
        table = next(t for t in _all_tables() if t.name == name)
        expected_rows = _count(migrated_store, table)
        csv_rows = _read_csv(out / f"{name}.csv")
        jsonl_rows = _read_jsonl(out / f"{name}.jsonl")
        columns = [c.name for c in table.columns if c.name != "pass_secret"]
        assert csv_rows[0] == columns  # stable column order: the table's own
        assert len(csv_rows) - 1 == len(jsonl_rows) == expected_rows == result.rows(name)
        assert all(list(row) == columns for row in jsonl_rows)
    assert _count(migrated_store, _table(IndexCheckpoint)) == 1
    assert result.rows("index_redemption") == 8
    assert verify_export(out).ok

    # open-format values: integers as integers, booleans, ISO dates, hex bytes
    schemes = _read_jsonl(out / "index_scheme.jsonl")
    assert all(isinstance(s["budget_cap"], int) for s in schemes)
    assert all(isinstance(s["open_to_all_merchants"], bool) for s in schemes)
    assert _read_csv(out / "index_scheme.csv")[1][-1] in {"true", "false"}
    holders = _read_jsonl(out / "registry_holder.jsonl")
    assert holders[0]["birth_date"] == "1984-05-17"
    assert str(holders[0]["created_at"]).startswith("2025-03-01T09:30:00")
    redemptions = _read_jsonl(out / "index_redemption.jsonl")
    assert all(
        str(r["pass_id"]).startswith("0x") and len(str(r["pass_id"])) == 66 for r in redemptions
    )


def _all_tables() -> list[Table]:
    from ledger.store.base import metadata

    return list(metadata.sorted_tables)


# ---------------------------------------------------------------- auditor: no personal data


def test_auditor_scope_contains_no_personal_data(
    scenario: Scenario, migrated_store: Store, tmp_path: Path
) -> None:
    fill_index(scenario, migrated_store)
    secrets = fill_registry(migrated_store)
    out = tmp_path / "auditor"

    result = export(migrated_store, out, scope="auditor")

    assert verify_export(out).ok
    assert result.manifest["withheld"]["registry_household"] == ["(table)"]
    for path in out.glob("*.csv"):
        header = set(_read_csv(path)[0])
        if path.stem in PUBLIC_REFERENCE_TABLES:
            continue
        personal = PERSONAL_COLUMNS.get(path.stem, set())
        assert not header & personal, (path.name, header & personal)
        if not path.stem.startswith("index_"):
            assert header <= AUDITOR_COLUMNS[path.stem]
    blob = b"".join(p.read_bytes() for p in sorted(out.iterdir()))
    secret = secrets["secret"]
    assert isinstance(secret, bytes)
    for needle in (
        LAST_NAME,
        "Anne",
        IBAN,
        "1984-05-17",
        str(secrets["number"]),
        secret.hex(),
        "Zwembad",
        "argon2",
        "HH-2025",
    ):
        assert needle.encode() not in blob, needle
    # what an auditor needs is there: index rows and the pseudonymous pass ids by district
    assert result.rows("index_redemption") == 8
    passes = _read_jsonl(out / "registry_pass.jsonl")
    assert secrets["pass_id"] in {p["pass_id"] for p in passes}
    assert {h["district_code"] for h in _read_jsonl(out / "registry_holder.jsonl")} == {"WK001400"}


# ---------------------------------------------------------------- secrets


def test_pass_secrets_only_in_admin_scope_on_request(migrated_store: Store, tmp_path: Path) -> None:
    secrets = fill_registry(migrated_store)
    with pytest.raises(ExportError, match="admin scope"):
        export(migrated_store, tmp_path / "a", scope=Scope.AUDITOR, include_secrets=True)

    out = tmp_path / "move"
    result = export(migrated_store, out, scope=Scope.ADMIN, include_secrets=True)

    assert result.manifest["include_secrets"] is True
    assert "registry_pass" not in result.manifest["withheld"]
    assert (out / "registry_pass.csv").stat().st_mode & 0o777 == 0o600
    rows = _read_jsonl(out / "registry_pass.jsonl")
    row = next(r for r in rows if r["pass_number"] == secrets["number"])
    # the reason to export secrets: the new system recomputes the same on-chain pass ids
    recomputed = pass_id(
        pass_secret=bytes.fromhex(str(row["pass_secret"])[2:]), pass_number=str(row["pass_number"])
    )
    assert "0x" + recomputed.hex() == row["pass_id"] == secrets["pass_id"]


def test_export_refuses_a_non_empty_directory(migrated_store: Store, tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(ExportError, match="not an empty directory"):
        export(migrated_store, tmp_path, scope=Scope.ADMIN)
    with pytest.raises(ExportError, match="unknown scope"):
        export(migrated_store, tmp_path / "new", scope="everyone")


# ---------------------------------------------------------------- verification


@pytest.mark.parametrize("tamper", ["modify", "append", "delete", "add"])
def test_verify_export_detects_tampering(
    migrated_store: Store, tmp_path: Path, tamper: str
) -> None:
    fill_registry(migrated_store)
    database_url = url_of(migrated_store)
    out = tmp_path / "export"
    runner = CliRunner()
    done = runner.invoke(
        app, ["export", "--out", str(out), "--database-url", database_url, "--scope", "admin"]
    )
    assert done.exit_code == 0, done.output
    assert "registry_holder" in done.output
    assert runner.invoke(app, ["verify-export", str(out)]).exit_code == 0

    target = out / "registry_holder.csv"
    if tamper == "modify":
        target.write_text(target.read_text().replace("Anne", "Anna"))
    elif tamper == "append":
        with (out / "registry_holder.jsonl").open("a") as handle:
            handle.write('{"id": 99}\n')
    elif tamper == "delete":
        target.unlink()
    else:
        (out / "extra.csv").write_text("a\n1\n")

    result = verify_export(out)
    assert not result.ok
    assert len(result.problems) >= 1
    expected = {
        "modify": "registry_holder.csv: SHA-256 differs",
        "append": "registry_holder.jsonl: SHA-256 differs",
        "delete": "registry_holder.csv: missing",
        "add": "extra.csv: not in the manifest",
    }[tamper]
    assert any(p.startswith(expected) for p in result.problems), result.problems
    if tamper == "append":
        assert any("2 rows" not in p and "3 rows" in p for p in result.problems), result.problems
    verified = runner.invoke(app, ["verify-export", str(out)])
    assert verified.exit_code == 1


def test_cli_export_bad_input_exits_2(tmp_path: Path, database_url: str) -> None:
    runner = CliRunner()
    bad_scope = runner.invoke(
        app,
        [
            "export",
            "--out",
            str(tmp_path / "x"),
            "--database-url",
            database_url,
            "--scope",
            "everyone",
        ],
    )
    assert bad_scope.exit_code == 2
    unreachable = runner.invoke(
        app,
        [
            "export",
            "--out",
            str(tmp_path / "y"),
            "--database-url",
            "postgresql://nobody@127.0.0.1:9/none",
        ],
    )
    assert unreachable.exit_code == 2
    assert "cannot reach the database" in unreachable.output
