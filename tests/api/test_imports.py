"""``/admin/imports``: holders and opening balances from an old system, on the real chain."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, update
from sqlmodel import col, select

from api import imports as import_services
from api.main import create_app
from api.runtime import Runtime
from ledger import imports
from ledger.store.imports import ChainState, MigratedBalance, MigratedHolder
from ledger.store.registry import Holder
from tests.api.conftest import dev_settings, logins

PROBLEM = "application/problem+json"
HEADER = (
    "external_reference;first_name;last_name;birth_date;postcode;household_reference;"
    "household_role;pass_number;card_serial"
)


@pytest.fixture(scope="module")
def runtime(
    module_database: str | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runtime]:
    """A service of this module's own (SQLite, then PostgreSQL): the audit below must be clean."""
    settings = dev_settings(
        tmp_path_factory.mktemp("imports-var"), database_url=module_database, rate_limit_per_s=0
    )
    with Runtime.start(settings) as rt:
        yield rt


@pytest.fixture(scope="module")
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime.settings, runtime), raise_server_exceptions=False) as tc:
        yield tc


def _admin(client: TestClient) -> dict[str, str]:
    return logins(client).staff("admin")


def _lines(prefix: str, count: int, *, first_number: int) -> list[str]:
    return [
        f"{prefix}-{i};Naam{prefix}{i};Testpersoon;19{50 + i % 40}-0{1 + i % 9}-1{i % 9};9712AB;"
        f"{prefix}-HH{i // 3};{'parent' if i % 3 == 0 else 'child'};"
        f"GR{first_number + i:07d};{(10**12 + first_number + i) if i % 2 == 0 else ''}"
        for i in range(count)
    ]


def _csv(
    lines: list[str], *, end: str = "\r\n", bom: bool = True, encoding: str = "utf-8"
) -> bytes:
    text = end.join([HEADER, *lines]) + end
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode(encoding)


def _post(client: TestClient, path: str, data: bytes, **params: Any) -> Any:
    headers = {**_admin(client), "Content-Type": "text/csv"}
    return client.post(f"/admin/imports/{path}", content=data, headers=headers, params=params)


def _wait(client: TestClient, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/admin/imports/jobs/{job_id}", headers=_admin(client))
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if job["status"] in {"done", "failed"}:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def _count(runtime: Runtime, table: type) -> int:
    with runtime.store.db.session() as session:
        return int(session.exec(select(func.count()).select_from(table)).one())


def test_holders_are_imported_once_with_their_passes_and_cards_on_chain(
    client: TestClient, runtime: Runtime
) -> None:
    lines = _lines("IMP", 30, first_number=8100000)
    holders_before = _count(runtime, Holder)

    response = _post(client, "holders", _csv(lines))
    assert response.status_code == 202, response.text
    job = _wait(client, response.json()["id"])
    assert job["status"] == "done", job
    result = job["result"]
    assert (result["imported"], result["skipped"], result["registered"]) == (30, 0, 30)
    assert result["encoding"] == "utf-8"
    assert result["delimiter"] == ";"
    assert 1 <= len(result["transactions"]) < 30
    assert _count(runtime, Holder) == holders_before + 30
    for i in (0, 1):
        record = runtime.store.registry.pass_by_number(f"GR{8100000 + i:07d}")
        state = runtime.client.pass_of(bytes.fromhex(record.pass_id[2:]))
        assert state.registered
        assert state.card_serial == (10**12 + 8100000 if i == 0 else 0)

    again = _post(client, "holders", _csv(lines, end="\n", bom=False))
    assert again.status_code == 202, again.text
    rerun = _wait(client, again.json()["id"])["result"]
    assert (rerun["imported"], rerun["skipped"], rerun["registered"]) == (0, 30, 0)
    assert rerun["transactions"] == []
    assert _count(runtime, Holder) == holders_before + 30


def test_latin1_export_is_read(client: TestClient, runtime: Runtime) -> None:
    lines = [
        line.replace("Testpersoon", "Çelik-Öztürk")
        for line in _lines("LAT", 2, first_number=8200000)
    ]
    response = _post(client, "holders", _csv(lines, bom=False, encoding="cp1252"))
    assert response.status_code == 202, response.text
    result = _wait(client, response.json()["id"])["result"]
    assert result["encoding"] == "cp1252"
    holder = runtime.store.registry.holder(
        runtime.store.registry.pass_by_number("GR8200000").holder_id
    )
    assert holder.last_name == "Çelik-Öztürk"


def test_a_bad_file_is_refused_by_line_and_changes_nothing(
    client: TestClient, runtime: Runtime
) -> None:
    good = _lines("BAD", 3, first_number=8300000)
    taken = runtime.store.registry.pass_holders()[0][0].pass_number
    bad = [
        *good,
        good[0].replace("BAD-0;", "BAD-9;"),  # the same person again, and its pass number
        f"BAD-10;Els;Kok;1990-01-01;9712AB;;;{taken};",  # a pass number already issued
        "BAD-11;Els;Kok;1990-01-02;9712AB;;;;-5",  # a bad card serial
    ]
    holders, migrated = _count(runtime, Holder), _count(runtime, MigratedHolder)

    response = _post(client, "holders", _csv(bad))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["code"] == "csv_lines_invalid"
    errors = {(e["line"], e["column"]) for e in body["errors"]}
    assert {(5, None), (5, "pass_number"), (6, "pass_number"), (7, "card_serial")} <= errors
    assert all(set(e) == {"line", "column", "message"} for e in body["errors"])
    assert (_count(runtime, Holder), _count(runtime, MigratedHolder)) == (holders, migrated)

    wrong = _post(client, "holders", _csv(good).replace(b";", b"|"))
    assert wrong.status_code == 422
    assert "missing column" in wrong.json()["errors"][0]["message"]


def test_a_100_mb_upload_is_refused_before_it_is_read(client: TestClient, runtime: Runtime) -> None:
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(100):
            sent += 1
            yield b"x" * (1024 * 1024)

    holders = _count(runtime, Holder)
    started = time.monotonic()
    declared = client.post(
        "/admin/imports/holders",
        content=body(),
        headers={**_admin(client), "Content-Length": str(100 * 1024 * 1024)},
    )
    assert declared.status_code == 413, declared.text
    assert declared.json()["code"] == "body_too_large"
    assert sent <= 1
    assert time.monotonic() - started < 5

    # without a Content-Length: refused once past the limit (the test client buffers what it
    # sends; tests/api/test_imports_service.py streams to the real server)
    streamed = client.post("/admin/imports/holders", content=body(), headers=_admin(client))
    assert streamed.status_code == 413
    assert streamed.json()["code"] == "body_too_large"
    assert _count(runtime, Holder) == holders


def test_opening_balances_are_issued_once_and_marked_migrated(
    client: TestClient, runtime: Runtime
) -> None:
    lines = _lines("BAL", 6, first_number=8400000)
    job = _wait(client, _post(client, "holders", _csv(lines)).json()["id"])
    assert job["status"] == "done", job
    scheme = 1
    pids = [
        bytes.fromhex(runtime.store.registry.pass_by_number(f"GR{8400000 + i:07d}").pass_id[2:])
        for i in range(6)
    ]
    before = [runtime.client.balance_of(scheme, pid) for pid in pids]
    data = (
        "external_reference,pass_number,amount\n"
        + "".join(f"BAL-{i},,{1000 + i}\n" for i in range(5))
        + "\nGR8400005,x,5\n"
    ).encode()
    bad = _post(client, "balances", data, scheme_id=scheme)
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["line"] == 8
    data = data.replace(b"\nGR8400005,x,5\n", b",GR8400005,5\n")

    response = _post(client, "balances", data, scheme_id=scheme)
    assert response.status_code == 202, response.text
    done = _wait(client, response.json()["id"])
    assert done["status"] == "done", done
    assert (done["result"]["imported"], done["result"]["issued"]) == (6, 6)
    after = [runtime.client.balance_of(scheme, pid) for pid in pids]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1000, 1001, 1002, 1003, 1004, 5]
    balance_rows = _count(runtime, MigratedBalance)

    again = _wait(client, _post(client, "balances", data, scheme_id=scheme).json()["id"])
    assert (again["result"]["imported"], again["result"]["skipped"]) == (0, 6)
    assert [runtime.client.balance_of(scheme, pid) for pid in pids] == after
    assert _count(runtime, MigratedBalance) == balance_rows

    changed = _post(
        client, "balances", data.replace(b"BAL-0,,1000", b"BAL-0,,999"), scheme_id=scheme
    )
    assert changed.status_code == 422
    assert changed.json()["errors"][0]["column"] == "amount"

    # the scheme report tells the migrated balances apart; the audit still reconciles
    deadline = time.monotonic() + 30
    while runtime.index_lag() != 0:
        assert time.monotonic() < deadline, "the index did not catch up"
        time.sleep(0.1)
    time.sleep(0.3)  # the indexer commits the block it has reached
    auditor = logins(client).staff("auditor")
    report = client.get("/admin/reports/schemes", params={"scheme": scheme}, headers=auditor)
    assert report.status_code == 200, report.text
    rows = [row for row in report.json()["rows"] if row["scheme_id"] == scheme]
    migrated = sum(row["migrated"] for row in rows)
    assert migrated == 1000 + 1001 + 1002 + 1003 + 1004 + 5
    assert sum(row["issued"] for row in rows) > migrated  # the demo's issuance is new issuance
    audit = client.post("/admin/audit", json={}, headers=auditor)
    assert audit.status_code == 200, audit.text
    assert audit.json()["differences"] == []
    assert audit.json()["ok"] is True


def test_work_left_sent_by_a_crash_is_settled_from_the_chain_not_sent_again(
    client: TestClient, runtime: Runtime
) -> None:
    """As after a kill between sending and recording: rows still ``sent`` whose transactions
    were mined are found on chain (passes) or in the outbox (balances), and nothing is sent
    twice; ``sent`` rows whose batch never reached the relayer are sent."""
    store = runtime.store.db
    lines = _lines("CRASH", 4, first_number=8500000)
    assert _wait(client, _post(client, "holders", _csv(lines)).json()["id"])["status"] == "done"
    refs = [f"CRASH-{i}" for i in range(4)]
    imports.mark_passes(store, refs, ChainState.SENT)  # mined, but not recorded as such
    result = import_services.register_pending_passes(runtime)
    assert (result["registered"], result["transactions"]) == (0, [])
    assert imports.migrated_counts(store).get("passes_sent", 0) == 0

    data = "".join(f"CRASH-{i},{300 + i}\n" for i in range(4)).encode()
    job = _wait(
        client,
        _post(client, "balances", b"external_reference,amount\n" + data, scheme_id=1).json()["id"],
    )
    assert job["status"] == "done", job
    pids = [
        bytes.fromhex(runtime.store.registry.pass_by_number(f"GR{8500000 + i:07d}").pass_id[2:])
        for i in range(4)
    ]
    balances = [runtime.client.balance_of(1, pid) for pid in pids]
    rows = [
        row
        for row in imports.balances_in_state(store, ChainState.DONE)
        if row.reference.startswith("CRASH-")
    ]
    assert len(rows) == 4
    issued_by = {row.transaction_hash for row in rows}
    keys = [(row.scheme_id, row.pass_id) for row in rows]
    imports.mark_balances(store, keys, ChainState.SENT)  # mined, not recorded
    settled = import_services.issue_pending_balances(runtime)
    assert settled["transactions"] == []
    assert [runtime.client.balance_of(1, pid) for pid in pids] == balances
    again = [
        r
        for r in imports.balances_in_state(store, ChainState.DONE)
        if r.reference.startswith("CRASH-")
    ]
    assert {row.transaction_hash for row in again} == issued_by

    # two balances marked sent in a batch that never reached the relayer (no outbox row, as
    # when the service died between the two): they are sent now, once
    with store.session() as session:
        session.execute(
            update(MigratedBalance)
            .where(col(MigratedBalance.pass_id).in_([k[1] for k in keys[:2]]))
            .values(chain_state=ChainState.SENT, amount=7, batch=10**9, transaction_hash=None)
        )
        session.commit()
    resent = import_services.issue_pending_balances(runtime)
    assert len(resent["transactions"]) == 1
    assert resent["issued"] == 2
    after = [runtime.client.balance_of(1, pid) for pid in pids]
    assert sum(after) - sum(balances) == 14
