"""Scenarios of :mod:`bench.faults` that put a TCP proxy, PostgreSQL or a separate indexer beside
the service:

- ``postgres-restart``: the service on a fresh PostgreSQL database; PostgreSQL is restarted
  (``pg_ctlcluster ... restart``: a fast shutdown, every connection is cut) mid-load;
- ``proxy-node``: anvil runs on its own (:class:`ledger.node.AnvilNode`, not the service's child);
  the service reaches it through :class:`TcpProxy`, which cuts every connection and refuses new
  ones for 1-2 s;
- ``proxy-db``: the same between the service and PostgreSQL;
- ``indexer-kill``: the service runs without its in-process indexer (``STADJERSPAS_RUN_INDEXER=
  false``) and ``stadjerspas index`` follows the chain into the same database as a process of its
  own; it is SIGKILLed mid-load and started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from api.settings import PROJECT_ROOT
from bench.api import BenchError, _executable, _free_port
from bench.faults import ServiceProcess, Setup

__all__ = ["POSTGRES_ADMIN_URL", "SETUPS", "TcpProxy"]

#: The local PostgreSQL server (``STADJERSPAS_BENCH_POSTGRES_URL`` overrides it).
POSTGRES_ADMIN_URL = os.environ.get(
    "STADJERSPAS_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PG_HOST, PG_PORT = "127.0.0.1", 5432


class TcpProxy:
    """A loopback TCP proxy on its own event loop thread; :meth:`cut` closes every connection
    through it and refuses new ones for a while."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = _free_port()
        self.cuts = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self._listen())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._writers.discard(writer)
            self._writers.discard(up_writer)

    async def _cut(self, pause_s: float) -> int:
        assert self._server is not None
        self._server.close()  # refuse new connections from now on
        cut = len(self._writers)
        for writer in list(self._writers):
            transport = writer.transport
            with contextlib.suppress(OSError, AttributeError):
                transport.abort()  # RST, no goodbye
        self._writers.clear()
        await asyncio.sleep(pause_s)
        await self._listen()
        return cut // 2

    def cut(self, pause_s: float) -> int:
        """Cut every connection, refuse new ones for ``pause_s``; returns how many were cut."""
        self.cuts += 1
        count: int = self._call(self._cut(pause_s))
        return count

    def close(self) -> None:
        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                with contextlib.suppress(OSError, AttributeError):
                    writer.transport.abort()

        with contextlib.suppress(Exception):
            self._call(shut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


# ================================================================== PostgreSQL


def _pg_connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=3)


def _fresh_database(setup: Setup, name: str) -> str:
    """Create a fresh database (dropped at clean-up); returns its name."""
    database = f"faults_{name.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    with _pg_connect(POSTGRES_ADMIN_URL) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')

    def drop() -> None:
        for _ in range(20):
            try:
                with _pg_connect(POSTGRES_ADMIN_URL) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
                return
            except Exception:
                time.sleep(0.5)

    setup.cleanup.append(drop)
    return database


def _pg_url(database: str, port: int = PG_PORT) -> str:
    return f"postgresql://postgres@{PG_HOST}:{port}/{database}"


def _wait_postgres(timeout_s: float = 60.0) -> float:
    started = time.monotonic()
    while True:
        try:
            with _pg_connect(POSTGRES_ADMIN_URL) as conn:
                conn.execute("SELECT 1")
            return time.monotonic() - started
        except Exception as exc:
            if time.monotonic() - started > timeout_s:
                raise BenchError(f"PostgreSQL did not come back within {timeout_s:.0f} s") from exc
            time.sleep(0.1)


def _restart_postgres() -> str:
    versions = sorted(os.listdir("/etc/postgresql"))
    if not versions:
        raise BenchError("no PostgreSQL cluster under /etc/postgresql")
    started = time.monotonic()
    done = subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "restart"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"pg_ctlcluster restart failed: {done.stderr.strip()[-300:]}")
    back = _wait_postgres()
    took = time.monotonic() - started
    return f"PostgreSQL {versions[-1]} restarted in {took:.1f} s (accepting after +{back:.1f} s)"


def _wait_service(svc: ServiceProcess, timeout_s: float = 90.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        health = svc.health(timeout=2.0)
        if health is not None and health.get("status") == "ok":
            return time.monotonic() - started
        time.sleep(0.1)
    raise BenchError(f"the service stayed degraded for {timeout_s:.0f} s after the fault")


def setup_postgres_restart(name: str, tmp: Path) -> Setup:
    setup = Setup()
    database = _fresh_database(setup, name)
    setup.extra_env["STADJERSPAS_DATABASE_URL"] = setup.database_url = _pg_url(database)

    def fault(svc: ServiceProcess) -> str:
        said = _restart_postgres()
        return f"{said}; service ok again after {_wait_service(svc):.1f} s"

    setup.fault = fault
    return setup


def setup_proxy_db(name: str, tmp: Path) -> Setup:
    setup = Setup()
    database = _fresh_database(setup, name)
    proxy = TcpProxy(PG_HOST, PG_PORT)
    setup.cleanup.insert(0, proxy.close)  # closed after the database is dropped: keep order
    setup.extra_env["STADJERSPAS_DATABASE_URL"] = _pg_url(database, proxy.port)
    setup.database_url = _pg_url(database)
    rng = random.Random(f"{name}/{tmp.name}")  # noqa: S311 (pause length, not a secret)

    def fault(svc: ServiceProcess) -> str:
        pause = rng.uniform(1.0, 2.0)
        cut = proxy.cut(pause)
        back = _wait_service(svc)
        return (
            f"cut {cut} database connections, refused new ones {pause:.1f} s; ok after {back:.1f} s"
        )

    setup.fault = fault
    return setup


def setup_proxy_node(name: str, tmp: Path) -> Setup:
    from ledger.node import AnvilConfig, AnvilNode

    setup = Setup()
    node = AnvilNode(AnvilConfig(state_dir=tmp / "chain", port=0, project_root=PROJECT_ROOT))
    node.start()
    setup.cleanup.append(node.stop)
    proxy = TcpProxy("127.0.0.1", node.port)
    setup.cleanup.append(proxy.close)
    setup.extra_env["STADJERSPAS_RPC_URL"] = f"http://127.0.0.1:{proxy.port}"
    setup.extra_env["STADJERSPAS_AUTO_DEPLOY"] = "true"
    setup.rpc_url = node.rpc_url
    rng = random.Random(f"{name}/{tmp.name}")  # noqa: S311 (pause length, not a secret)

    def fault(svc: ServiceProcess) -> str:
        pause = rng.uniform(1.0, 2.0)
        cut = proxy.cut(pause)
        back = _wait_service(svc)
        return f"cut {cut} node connections, refused new ones {pause:.1f} s; ok after {back:.1f} s"

    setup.fault = fault
    return setup


# ================================================================== a separate indexer


def setup_indexer_kill(name: str, tmp: Path) -> Setup:
    setup = Setup(extra_env={"STADJERSPAS_RUN_INDEXER": "false"})
    holder: dict[str, Any] = {}

    def start_indexer(svc: ServiceProcess) -> None:
        if "cmd" not in holder:
            from ledger.compiler import compile_contracts
            from ledger.deploy import load_deployment

            deployment = load_deployment(svc.var_dir / "deployment.json")
            assert deployment is not None
            artifacts = compile_contracts(
                project_root=PROJECT_ROOT, cache_dir=svc.var_dir / "build"
            )
            abi_file = tmp / "ledger-abi.json"
            abi_file.write_text(json.dumps(list(artifacts.get("StadjerspasLedger").abi)))
            holder["cmd"] = [
                *_executable(),
                "index",
                "--rpc-url",
                svc.rpc_url,
                "--database-url",
                f"sqlite:///{svc.var_dir / 'stadjerspas.db'}",
                "--contract",
                deployment.ledger_address,
                "--abi-file",
                str(abi_file),
                "--start-block",
                str(deployment.deployed_block),
                "--no-progress",
            ]
        with (tmp / "indexer.log").open("ab") as out:
            holder["proc"] = subprocess.Popen(
                holder["cmd"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop_indexer() -> None:
        proc: subprocess.Popen[bytes] | None = holder.get("proc")
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def fault(svc: ServiceProcess) -> str:
        proc: subprocess.Popen[bytes] = holder["proc"]
        if proc.poll() is not None:
            raise BenchError(f"the indexer had exited with {proc.returncode} before the fault")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        time.sleep(0.5)
        start_indexer(svc)
        return f"SIGKILL indexer (pid {proc.pid}); started again (pid {holder['proc'].pid})"

    setup.after_start = start_indexer
    setup.cleanup.append(stop_indexer)
    setup.fault = fault
    return setup


SETUPS: dict[str, Callable[[str, Path], Setup]] = {
    "postgres-restart": setup_postgres_restart,
    "proxy-node": setup_proxy_node,
    "proxy-db": setup_proxy_db,
    "indexer-kill": setup_indexer_kill,
}
