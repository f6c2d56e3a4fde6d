"""The holders import against the real service (``stadjerspas up``) on anvil with 2 s blocks:
SIGKILLed mid-registration, started again (it finishes the registration itself, and the import's
job answers ``job_interrupted``), the same file
imported again through the CLI (nothing twice); a streamed 100 MB upload refused before it is
read; the CLI's answers to bad input."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_utils import keccak
from sqlalchemy import func
from sqlmodel import select

from bench.faults import ServiceProcess
from ledger.node import AnvilConfig, AnvilNode
from ledger.store.db import StoreConfig, default_sqlite_url, open_store
from ledger.store.imports import ChainState, MigratedHolder
from ledger.store.registry import PassRecord

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

HOLDERS = 3_000
PASSWORD = "development-only-admin-password"
PASS_REGISTERED = "0x" + keccak(text="PassRegistered(bytes32,address,uint64)").hex()


def _csv(path: Path) -> Path:
    lines = ["external_reference,first_name,last_name,birth_date,postcode,pass_number,card_serial"]
    lines += [
        f"K-{i},Voornaam{i},Achternaam,{1940 + i % 60}-0{1 + i % 9}-1{i % 9},9712AB,"
        f"GR{7000000 + i:07d},{i + 1 if i % 2 else ''}"
        for i in range(HOLDERS)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[AnvilNode]:
    with AnvilNode(AnvilConfig(state_dir=tmp_path / "anvil", block_time=2)) as node:
        yield node


def _token(base: str) -> dict[str, str]:
    response = httpx.post(
        f"{base}/auth/token",
        json={"kind": "staff", "username": "admin", "password": PASSWORD},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return {"Authorization": "Bearer " + response.json()["access_token"]}


def _job(base: str, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{base}/admin/imports/jobs/{job_id}", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def test_a_killed_import_is_finished_by_running_it_again(tmp_path: Path, chain: AnvilNode) -> None:
    data = _csv(tmp_path / "holders.csv")
    svc = ServiceProcess(
        tmp_path,
        {
            "STADJERSPAS_RPC_URL": chain.rpc_url,
            "STADJERSPAS_AUTO_DEPLOY": "true",
            "STADJERSPAS_DEMO_HOLDERS": "3",
        },
    )
    try:
        svc.start()
        headers = _token(svc.base_url)
        response = httpx.post(
            f"{svc.base_url}/admin/imports/holders",
            content=data.read_bytes(),
            headers={**headers, "Content-Type": "text/csv"},
            timeout=120,
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        deadline = time.monotonic() + 60
        while True:  # kill once some but not all batches are mined
            job = _job(svc.base_url, headers, job_id)
            if 0 < job["done"] < job["total"]:
                break
            assert job["status"] in ("queued", "running"), job
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
        svc.kill(group=True)

        svc.start()  # it finishes the registration on its own (api.imports.resume_unfinished)
        # the job's answer survived the kill: failed, interrupted, never a 404
        interrupted = _job(svc.base_url, _token(svc.base_url), job_id)
        assert interrupted["status"] == "failed", interrupted
        assert interrupted["problem"]["code"] == "job_interrupted", interrupted
        assert "finished by the service at start" in interrupted["problem"]["detail"]
        store = open_store(StoreConfig(default_sqlite_url(svc.var_dir)))
        try:
            deadline = time.monotonic() + 180
            while True:
                with store.session() as session:
                    left = session.exec(
                        select(func.count())
                        .select_from(MigratedHolder)
                        .where(MigratedHolder.chain_state != ChainState.DONE)
                    ).one()
                if left == 0:
                    break
                assert time.monotonic() < deadline, f"{left} passes still not on chain"
                time.sleep(0.5)
        finally:
            store.close()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("STADJERSPAS_")},
            "STADJERSPAS_API_URL": svc.base_url,
            "STADJERSPAS_IMPORT_USERNAME": "admin",
            "STADJERSPAS_IMPORT_PASSWORD": PASSWORD,
        }
        cli = subprocess.run(
            [sys.executable, "-m", "api.cli", "import", "holders", str(data)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert cli.returncode == 0, cli.stderr
        summary = cli.stdout.strip()
        assert summary.count("\n") == 0
        assert f"0 holders imported, {HOLDERS} already there; 0 passes registered" in summary

        store = open_store(StoreConfig(default_sqlite_url(svc.var_dir)))
        try:
            with store.session() as session:
                assert session.exec(select(func.count()).select_from(MigratedHolder)).one() == (
                    HOLDERS
                )
                states = session.exec(select(MigratedHolder.chain_state).distinct()).all()
                assert list(states) == [ChainState.DONE]
                pass_ids = {
                    pid
                    for pid, number in session.exec(
                        select(PassRecord.pass_id, PassRecord.pass_number)
                    ).all()
                    if number.startswith("GR7")
                }
                numbers = session.exec(
                    select(func.count(func.distinct(PassRecord.pass_number))).where(
                        PassRecord.pass_number.like("GR7%")  # type: ignore[attr-defined]
                    )
                ).one()
        finally:
            store.close()
        assert len(pass_ids) == numbers == HOLDERS

        logs = httpx.post(
            chain.rpc_url,
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "eth_getLogs",
                "params": [{"fromBlock": "0x0", "toBlock": "latest", "topics": [PASS_REGISTERED]}],
            },
            timeout=60,
        ).json()["result"]
        assert isinstance(logs, list)
        registered = Counter(str(log["topics"][1]) for log in logs)
        assert all(registered[pid] == 1 for pid in pass_ids), "a pass registered twice or never"
    finally:
        svc.stop()


def test_a_streamed_100_mb_upload_is_cut_off_at_the_limit(tmp_path: Path, chain: AnvilNode) -> None:
    svc = ServiceProcess(
        tmp_path,
        {
            "STADJERSPAS_RPC_URL": chain.rpc_url,
            "STADJERSPAS_AUTO_DEPLOY": "true",
            "STADJERSPAS_DEMO_HOLDERS": "3",
            "STADJERSPAS_IMPORT_MAX_BYTES": str(1024 * 1024),
        },
    )
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(100):
            sent += 1
            yield b"x" * (1024 * 1024)

    try:
        svc.start()
        headers = _token(svc.base_url)
        connection = http.client.HTTPConnection("127.0.0.1", svc.api_port, timeout=30)
        status = None
        try:
            connection.request(
                "POST",
                "/admin/imports/holders",
                body=body(),
                headers={**headers, "Content-Type": "text/csv"},
                encode_chunked=True,
            )
            status = connection.getresponse().status
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered 413 and closed while we were still sending
        finally:
            connection.close()
        assert status in (None, 413)
        assert sent < 50, f"{sent} MB went out before the server refused the upload"

        # the CLI: one line per bad CSV line, one line otherwise; exit 2 for bad input
        bad = tmp_path / "bad.csv"
        bad.write_text(
            "external_reference,first_name,last_name,birth_date,postcode,pass_number\n"
            "B-1,Ans,Kok,1980-01-01,9712AB,GR7999999\n"
            "B-1,Bas,Kok,1981-01-01,9712AB,XX\n"
            "B-3,Cor,Kok,1982-13-01,9712AB,\n",
            encoding="utf-8",
        )
        refused = _cli(svc, "holders", str(bad))
        assert refused.returncode == 2
        assert refused.stderr.splitlines() == [
            "line 3, pass_number: pass number 'XX' must be GR followed by 7 digits",
            "line 3, external_reference: 'B-1' is also on line 2",
            refused.stderr.splitlines()[2],
        ]
        assert refused.stderr.splitlines()[2].startswith("line 4: ")
        big = tmp_path / "big.csv"
        big.write_bytes(b"x" * (2 * 1024 * 1024))
        too_big = _cli(svc, "holders", str(big))
        assert too_big.returncode == 2
        assert too_big.stderr.count("\n") == 1
        assert "body_too_large" in too_big.stderr
        no_password = _cli(svc, "holders", str(bad), password=None)
        assert no_password.returncode == 2
        assert no_password.stderr == "error: no password: set STADJERSPAS_IMPORT_PASSWORD\n"
    finally:
        svc.stop()


def _cli(
    svc: ServiceProcess, *args: str, password: str | None = PASSWORD
) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STADJERSPAS_")},
        "STADJERSPAS_API_URL": svc.base_url,
        "STADJERSPAS_IMPORT_USERNAME": "admin",
    }
    if password is not None:
        env["STADJERSPAS_IMPORT_PASSWORD"] = password
    return subprocess.run(
        [sys.executable, "-m", "api.cli", "import", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
