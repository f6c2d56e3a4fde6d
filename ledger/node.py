"""Run a local anvil node (from the npm package ``@foundry-rs/anvil``) as a child process.

This is the embedded default chain (DESIGN.md, "Runtime defaults"): state is persisted under a
state directory so a restart keeps every transaction, and nothing grows without bound on disk.

Flags used (verified against anvil 1.7.1 ``--help``):

- ``--state FILE --state-interval N``: load the state at start, dump it every N seconds and when
  the node is stopped with SIGINT/SIGTERM;
- ``--max-persisted-states 0`` and ``--cache-path DIR``: anvil keeps recent historical states in
  memory and would otherwise spill older ones to ``~/.foundry/anvil/tmp`` (hundreds of MB per
  thousand blocks); with 0 nothing is spilled, and anything anvil still writes lands in the state
  directory rather than the user's home;
- ``--gas-price 0 --base-fee 0`` by default, as on the production Besu network (gas price zero):
  transactions with a zero gas price are mined, and accounts need no funds. Both are configurable
  (``None`` leaves anvil's default). anvil still *suggests* a 1 gwei priority fee
  (``eth_gasPrice``/``eth_maxPriorityFeePerGas``); clients should set ``gasPrice: 0`` explicitly.
  ``--disable-min-priority-fee`` is deliberately not used: with it, anvil 1.7.1 rejects an
  ``eth_sendTransaction`` without fee fields ("max priority fee per gas higher than max fee");
- ``--hardfork prague`` to match the compiler's ``evmVersion``;
- ``--quiet`` by default: anvil otherwise logs one line per JSON-RPC request, so the log file would
  grow without bound under load (start-up errors are still logged).

Production code never depends on anvil: this module is only the embedded and test chain.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from ledger.errors import NodeError

__all__ = [
    "DEV_MNEMONIC",
    "AnvilConfig",
    "AnvilNode",
    "find_anvil_binary",
]

# The well-known Hardhat/Foundry test mnemonic. Development and tests only: never a real key.
DEV_MNEMONIC = "test test test test test test test test test test test junk"

STATE_FILE = "anvil-state.json"
LOG_FILE = "anvil.log"


def _platform_package() -> str:
    system = {"linux": "linux", "darwin": "darwin", "windows": "win32"}.get(
        platform.system().lower(), platform.system().lower()
    )
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        machine, machine
    )
    return f"anvil-{system}-{arch}"


def find_anvil_binary(project_root: Path) -> Path:
    """Locate anvil: the native binary of ``@foundry-rs/anvil-<platform>``, else the npm wrapper
    ``node_modules/.bin/anvil``, else ``anvil`` on PATH."""
    exe = "anvil.exe" if os.name == "nt" else "anvil"
    modules = project_root / "node_modules"
    candidates = [modules / "@foundry-rs" / _platform_package() / "bin" / exe]
    candidates += sorted((modules / "@foundry-rs").glob(f"anvil-*/bin/{exe}"))
    candidates.append(modules / ".bin" / exe)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which(exe)
    if on_path:
        return Path(on_path)
    raise NodeError(
        f"anvil not found under {modules} (npm package @foundry-rs/anvil); run `make setup`"
    )


def _default_project_root() -> Path:
    return Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class AnvilConfig:
    """How to run the local node. ``port=0`` picks a free port."""

    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    chain_id: int = 31337
    accounts: int = 10
    mnemonic: str | None = DEV_MNEMONIC
    balance_ether: int | None = None
    gas_price: int | None = 0
    base_fee: int | None = 0
    gas_limit: int | None = None
    block_time: float | None = None
    hardfork: str = "prague"
    quiet: bool = True
    persist_state: bool = True
    state_interval_s: int = 5
    startup_timeout_s: float = 30.0
    stop_timeout_s: float = 15.0
    binary: Path | None = None
    project_root: Path | None = None
    extra_args: tuple[str, ...] = field(default_factory=tuple)


class AnvilNode:
    """A managed anvil child process.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. ``rpc_url`` is valid
    while the node runs.
    """

    def __init__(self, config: AnvilConfig) -> None:
        self.config = config
        # anvil runs with the state dir as its working directory, so every path it gets is absolute
        self.state_dir = config.state_dir.resolve()
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._port: int | None = None

    # -- paths -------------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE

    @property
    def log_file(self) -> Path:
        return self.state_dir / LOG_FILE

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache"

    @property
    def binary(self) -> Path:
        if self.config.binary is not None:
            return self.config.binary
        return find_anvil_binary(self.config.project_root or _default_project_root())

    # -- state -------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise NodeError("the node has not been started")
        return self._port

    @property
    def rpc_url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def is_healthy(self, timeout_s: float = 2.0) -> bool:
        """True when the process runs and answers ``eth_chainId`` with the configured id."""
        if not self.is_running():
            return False
        try:
            return bool(self._rpc("eth_chainId", [], timeout_s) == hex(self.config.chain_id))
        except (OSError, ValueError, NodeError):
            return False

    # -- lifecycle ---------------------------------------------------------------------------

    def command(self, port: int) -> list[str]:
        cfg = self.config
        cmd = [
            str(self.binary),
            "--host",
            cfg.host,
            "--port",
            str(port),
            "--chain-id",
            str(cfg.chain_id),
            "--accounts",
            str(cfg.accounts),
            "--hardfork",
            cfg.hardfork,
            "--max-persisted-states",
            "0",
            "--cache-path",
            str(self.cache_dir),
        ]
        if cfg.mnemonic is not None:
            cmd += ["--mnemonic", cfg.mnemonic]
        if cfg.balance_ether is not None:
            cmd += ["--balance", str(cfg.balance_ether)]
        if cfg.gas_price is not None:
            cmd += ["--gas-price", str(cfg.gas_price)]
        if cfg.base_fee is not None:
            cmd += ["--base-fee", str(cfg.base_fee)]
        if cfg.gas_limit is not None:
            cmd += ["--gas-limit", str(cfg.gas_limit)]
        if cfg.block_time is not None:
            cmd += ["--block-time", f"{cfg.block_time:g}"]
        if cfg.quiet:
            cmd.append("--quiet")  # errors are still logged; per-request lines are not
        if cfg.persist_state:
            cmd += ["--state", str(self.state_file), "--state-interval", str(cfg.state_interval_s)]
        cmd += list(cfg.extra_args)
        return cmd

    def start(self) -> Self:
        """Start anvil and wait until it answers ``eth_chainId``."""
        if self.is_running():
            return self
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        binary = self.binary  # raise NodeError early if missing
        if self.config.port != 0:
            self._check_port_free(self.config.port)
            self._launch(self.config.port)
            return self
        last: NodeError | None = None
        for _ in range(3):  # a port picked by us may be taken before anvil binds it
            port = _free_port(self.config.host)
            try:
                self._launch(port)
                return self
            except NodeError as exc:
                last = exc
                if "in use" not in str(exc):
                    raise
        assert last is not None
        raise NodeError(f"could not start {binary} on a free port: {last}") from last

    def _check_port_free(self, port: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # as anvil binds: SO_REUSEADDR, so closed connections in TIME_WAIT do not count
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.config.host, port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    raise NodeError(
                        f"cannot start anvil: port {port} on {self.config.host} is already in use "
                        "(another node or service is listening there; choose another port or 0)"
                    ) from exc
                raise NodeError(f"cannot bind {self.config.host}:{port}: {exc}") from exc

    def _launch(self, port: int) -> None:
        cmd = self.command(port)
        self._log = self.log_file.open("ab")
        self._log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: ".encode())
        self._log.write(" ".join(_redact(cmd)).encode() + b"\n")
        self._log.flush()
        log_offset = self._log.tell()
        try:
            self._process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
            )
        except OSError as exc:
            self._close_log()
            raise NodeError(f"could not execute {cmd[0]}: {exc}") from exc
        self._port = port
        deadline = time.monotonic() + self.config.startup_timeout_s
        while True:
            code = self._process.poll()
            if code is not None:
                tail = self._log_tail(log_offset)
                self._process = None
                self._close_log()
                if "in use" in tail.lower():
                    raise NodeError(f"port {port} is already in use; anvil said:\n{tail}")
                raise NodeError(f"anvil exited with code {code} while starting; log:\n{tail}")
            try:
                chain_id = self._rpc("eth_chainId", [], 1.0)
            except (OSError, ValueError, NodeError):
                chain_id = None
            if chain_id is not None:
                if chain_id != hex(self.config.chain_id):
                    self.stop()
                    raise NodeError(
                        f"anvil answered chain id {chain_id}, expected {hex(self.config.chain_id)}"
                    )
                return
            if time.monotonic() > deadline:
                tail = self._log_tail(log_offset)
                self._terminate(kill_only=True)
                raise NodeError(
                    f"anvil did not answer eth_chainId on {self.rpc_url} within "
                    f"{self.config.startup_timeout_s:g}s; log:\n{tail}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the node; anvil dumps its state on SIGINT. Kills it after ``stop_timeout_s``."""
        self._terminate(kill_only=False)

    def _terminate(self, *, kill_only: bool) -> None:
        proc = self._process
        if proc is not None and proc.poll() is None:
            if not kill_only:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=self.config.stop_timeout_s)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=10)
        self._process = None
        self._close_log()

    def restart(self) -> Self:
        port = self._port
        self.stop()
        if self.config.port == 0 and port is not None:
            with contextlib.suppress(NodeError):
                self._check_port_free(port)
                self._launch(port)
                return self
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:
        proc = getattr(self, "_process", None)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(Exception):
                proc.kill()

    # -- helpers -----------------------------------------------------------------------------

    def rpc(self, method: str, params: list[Any] | None = None, timeout_s: float = 10.0) -> Any:
        """One raw JSON-RPC call (handy for anvil-only methods in tests)."""
        return self._rpc(method, params or [], timeout_s)

    def _rpc(self, method: str, params: list[Any], timeout_s: float) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        request = urllib.request.Request(  # noqa: S310 -- always http://host:port of our node
            self.rpc_url,
            data=body.encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
                reply = json.loads(response.read())
        except urllib.error.URLError as exc:
            raise NodeError(f"{method} to {self.rpc_url} failed: {exc.reason}") from exc
        if "error" in reply:
            raise NodeError(f"{method} failed: {reply['error']}")
        return reply.get("result")

    def _close_log(self) -> None:
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None

    def _log_tail(self, offset: int = 0, limit: int = 4000) -> str:
        try:
            data = self.log_file.read_bytes()[offset:]
        except OSError:
            return "(no log)"
        return data[-limit:].decode("utf-8", "replace").strip() or "(empty log)"

    def log_tail(self, limit: int = 4000) -> str:
        """The last ``limit`` characters of the node's log file."""
        return self._log_tail(0, limit)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _redact(cmd: list[str]) -> list[str]:
    out = list(cmd)
    for i, arg in enumerate(out[:-1]):
        if arg == "--mnemonic" and out[i + 1] != DEV_MNEMONIC:
            out[i + 1] = "<redacted>"
    return out
