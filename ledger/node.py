"""Run a local anvil node (from the npm package ``@foundry-rs/anvil``) as a child process.

This is the embedded default chain (DESIGN.md, "Runtime defaults"): state is persisted under a
state directory so a restart keeps every transaction, and nothing grows without bound on disk.

Flags used (verified against anvil 1.7.1 ``--help``):

- ``--state FILE --state-interval N``: load the state at start, dump it every N seconds (default
  1: anvil takes whole seconds and panics on 0) and when the node is stopped with SIGINT/SIGTERM.
  anvil writes the dump in place (``open(O_TRUNC)`` and write, no temporary file, no fsync), every
  interval even when nothing changed, so a node killed mid-dump leaves a half-written file, which
  anvil then refuses to load (it exits with code 2: ``invalid value '<FILE>' for '--state <PATH>':
  failed to parse json file``). See "Supervision" below for the backup that makes this safe;
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

Supervision (:meth:`AnvilNode.supervise`): a daemon thread polls the child process every
``check_interval_s``. When it has died (not through :meth:`AnvilNode.stop`), or stopped answering
``eth_chainId`` for ``unresponsive_s``, it is restarted on the same port with the same state file,
with back-off (0.2 s doubling to 5 s) while restarts fail; then ``restarts`` is incremented and the
:meth:`AnvilNode.on_restart` callbacks run. Write safety: after every successful check, when the
state file changed and parses as JSON (a complete dump), it is copied atomically to
``anvil-state.json.bak``. When anvil refuses its state file at start (supervised or not), the file
is moved aside as ``anvil-state.json.corrupt-<n>`` and the backup is restored; without a usable
backup the chain starts from genesis (logged as an error; nothing is deleted).

Production code never depends on anvil: this module is only the embedded and test chain.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Mapping
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
BACKUP_SUFFIX = ".bak"
CORRUPT_SUFFIX = ".corrupt-"
LOG_FILE = "anvil.log"

log = logging.getLogger(__name__)

#: back-off between failed supervised restarts: from the first value, doubling, up to the second
RESTART_BACKOFF_S = (0.2, 5.0)
#: a hung node (alive, not answering) gets this long to dump its state on SIGINT before SIGKILL
HUNG_STOP_GRACE_S = 2.0


class _StateRejected(NodeError):
    """anvil exited while starting because it could not load its state file."""


class _Aborted(NodeError):
    """A supervised restart was abandoned because :meth:`AnvilNode.stop` was called."""


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
    state_interval_s: int = 1
    startup_timeout_s: float = 30.0
    stop_timeout_s: float = 15.0
    binary: Path | None = None
    project_root: Path | None = None
    extra_args: tuple[str, ...] = field(default_factory=tuple)


class AnvilNode:
    """A managed anvil child process.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. ``rpc_url`` is valid
    while the node runs. :meth:`supervise` restarts it when it dies; ``restarts`` counts those
    automatic restarts.
    """

    def __init__(self, config: AnvilConfig) -> None:
        self.config = config
        # anvil runs with the state dir as its working directory, so every path it gets is absolute
        self.state_dir = config.state_dir.resolve()
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._port: int | None = None
        # start/stop/restart and the supervisor's restarts take turns on this lock
        self._lock = threading.RLock()
        # the supervisor's thread, stop flag and callbacks (never held while waiting for _lock)
        self._watch_lock = threading.Lock()
        self._supervisor: threading.Thread | None = None
        self._supervisor_stop: threading.Event | None = None
        self._callbacks: list[Callable[[], None]] = []
        self._backup_seen: tuple[int, int] | None = None  # (mtime_ns, size) last looked at
        self._backup_digest: bytes | None = None  # of the state last copied to the backup
        #: automatic restarts by the supervisor since this object was made
        self.restarts: int = 0
        self._last_restart_at: float | None = None

    # -- paths -------------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE

    @property
    def backup_file(self) -> Path:
        """The last complete state dump the supervisor saw (see :meth:`supervise`)."""
        return self.state_dir / (STATE_FILE + BACKUP_SUFFIX)

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
        proc = self._process
        return proc.pid if proc is not None else None

    @property
    def last_restart_at(self) -> float | None:
        """``time.monotonic()`` when the supervisor last restarted the node (None: never)."""
        return self._last_restart_at

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
            # first come, first mined (as Besu's sequenced pool): transactions the reconciler
            # replays land in the order they were first signed, not by fee
            "--order",
            "fifo",
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
            if cfg.state_interval_s < 1:  # anvil takes whole seconds and panics on 0
                raise NodeError(f"state_interval_s must be at least 1, not {cfg.state_interval_s}")
            cmd += ["--state", str(self.state_file), "--state-interval", str(cfg.state_interval_s)]
        cmd += list(cfg.extra_args)
        return cmd

    def start(self) -> Self:
        """Start anvil and wait until it answers ``eth_chainId``.

        A state file anvil refuses (e.g. half-written when anvil was killed mid-dump) is moved
        aside and the backup restored (see :meth:`supervise`)."""
        with self._lock:
            if self.is_running():
                return self
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            binary = self.binary  # raise NodeError early if missing
            if self.config.port != 0:
                self._check_port_free(self.config.port)
                self._launch_recovering(self.config.port)
                return self
            last: NodeError | None = None
            for _ in range(3):  # a port picked by us may be taken before anvil binds it
                port = _free_port(self.config.host)
                try:
                    self._launch_recovering(port)
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

    def _launch_recovering(self, port: int, abort: threading.Event | None = None) -> None:
        """:meth:`_launch`; if anvil refuses its state file, move it aside and retry with the
        backup, then (no usable backup) from genesis."""
        restored = False
        while True:
            if self.config.persist_state and not self.state_file.exists():
                # a backup without its state file belongs to a chain that was deleted on purpose
                with contextlib.suppress(FileNotFoundError):
                    self.backup_file.unlink()
                self._backup_seen = self._backup_digest = None
            try:
                if not restored:
                    self._refuse_inconsistent_state()
                self._launch(port, abort)
                return
            except _StateRejected as exc:
                if not self.state_file.exists():  # anvil named the path for another reason
                    raise
                aside = self._set_aside_state()
                reason = str(exc).splitlines()[-1]
                if not restored and self.backup_file.is_file():
                    shutil.copyfile(self.backup_file, self._tmp_path(self.state_file))
                    os.replace(self._tmp_path(self.state_file), self.state_file)
                    restored = True
                    log.error(
                        "anvil could not load its state file (%s); kept it as %s and restored "
                        "the backup %s",
                        reason,
                        aside.name,
                        self.backup_file.name,
                    )
                else:
                    log.error(
                        "anvil could not load its state file (%s) and there is no usable backup; "
                        "kept it as %s, the chain starts again from genesis",
                        reason,
                        aside.name,
                    )

    def _refuse_inconsistent_state(self) -> None:
        """:class:`_StateRejected` when the state file is a complete dump whose account state is
        ahead of its blocks (:func:`state_inconsistency`); the backup is then loaded instead, and
        the outbox replays what the older chain lacks."""
        if not self.config.persist_state or not self.state_file.is_file():
            return
        try:
            dump = json.loads(self.state_file.read_bytes())
        except ValueError:
            return  # anvil itself refuses a truncated file, with its own message
        reason = state_inconsistency(dump)
        if reason is None:
            return
        if not self.backup_file.is_file():
            log.error(
                "anvil's state file is ahead of its blocks (%s) and there is no backup: loading "
                "it anyway (the audit lists what it lacks)",
                reason,
            )
            return
        raise _StateRejected(f"inconsistent state dump\n{reason}")

    def _set_aside_state(self) -> Path:
        taken = [
            int(suffix)
            for p in self.state_dir.glob(STATE_FILE + CORRUPT_SUFFIX + "*")
            if (suffix := p.name.rpartition(CORRUPT_SUFFIX)[2]).isdigit()
        ]
        aside = self.state_dir / f"{STATE_FILE}{CORRUPT_SUFFIX}{max(taken, default=0) + 1}"
        os.replace(self.state_file, aside)
        return aside

    @staticmethod
    def _tmp_path(path: Path) -> Path:
        return path.with_name(path.name + ".tmp")

    def _launch(self, port: int, abort: threading.Event | None = None) -> None:
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
                message = f"anvil exited with code {code} while starting; log:\n{tail}"
                if self.config.persist_state and str(self.state_file) in tail:
                    raise _StateRejected(message)
                raise NodeError(message)
            if abort is not None and abort.is_set():
                self._terminate(kill_only=True)
                raise _Aborted("the node was stopped while it was being restarted")
            try:
                chain_id = self._rpc("eth_chainId", [], 1.0)
            except (OSError, ValueError, NodeError):
                chain_id = None
            if chain_id is not None:
                if chain_id != hex(self.config.chain_id):
                    self._terminate(kill_only=False)
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
        """Stop supervising (if :meth:`supervise` was called), then stop the node; anvil dumps its
        state on SIGINT. Kills it after ``stop_timeout_s``."""
        self._stop_supervising()
        with self._lock:
            self._terminate(kill_only=False)

    def _terminate(self, *, kill_only: bool, grace_s: float | None = None) -> None:
        proc = self._process
        if proc is not None and proc.poll() is None:
            if not kill_only:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=self.config.stop_timeout_s if grace_s is None else grace_s)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=10)
        self._process = None
        self._close_log()

    def restart(self) -> Self:
        """Stop and start the node, on the same port if it is still free. Supervision (if any)
        goes on; this restart is not counted in ``restarts``."""
        with self._lock:
            port = self._port
            self._terminate(kill_only=False)
            if self.config.port == 0 and port is not None:
                with contextlib.suppress(NodeError):
                    self._check_port_free(port)
                    self._launch_recovering(port)
                    return self
            return self.start()

    # -- supervision -------------------------------------------------------------------------

    def supervise(
        self, *, check_interval_s: float = 0.5, unresponsive_s: float | None = 10.0
    ) -> None:
        """Watch the node from a daemon thread and restart it when it dies.

        Every ``check_interval_s`` the thread polls the child process and asks ``eth_chainId``.
        When the process has exited (and :meth:`stop` was not called), or has been running
        without answering for ``unresponsive_s`` (None: never judged hung; a hung node gets
        SIGINT, then SIGKILL after 2 s), it logs a warning and restarts anvil on the same port
        with the same state file, waits for ``eth_chainId``, increments ``restarts``, sets
        ``last_restart_at`` and calls every :meth:`on_restart` callback on this thread
        (exceptions are logged). A failing restart is retried after 0.2 s, doubling to 5 s.

        After each check that got an answer, a changed state file that parses as JSON is copied
        atomically to :attr:`backup_file`, so there is always a complete dump to fall back to
        when anvil was killed while writing its state file.

        The node must have been started. Calling it again while supervising does nothing;
        :meth:`stop` ends supervision (call this again after the next :meth:`start`).
        """
        if check_interval_s <= 0:
            raise ValueError("check_interval_s must be positive")
        if self._port is None:
            raise NodeError("the node has not been started")
        with self._watch_lock:
            if self._supervisor is not None and self._supervisor.is_alive():
                return
            stop = threading.Event()
            thread = threading.Thread(
                target=_supervise,
                args=(weakref.ref(self), stop, check_interval_s, unresponsive_s),
                name=f"anvil-supervisor-{self._port}",
                daemon=True,
            )
            self._supervisor, self._supervisor_stop = thread, stop
            thread.start()

    def on_restart(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every automatic restart (on the supervisor thread, after the
        node answers again; an exception is logged and does not stop supervision)."""
        with self._watch_lock:
            self._callbacks.append(callback)

    def _stop_supervising(self) -> None:
        with self._watch_lock:  # not _lock: a restart in progress holds it until it sees the flag
            thread, stop = self._supervisor, self._supervisor_stop
            self._supervisor = self._supervisor_stop = None
        if stop is not None:
            stop.set()  # the supervisor checks it under the lock before it restarts anything
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.config.startup_timeout_s + 5)

    def _check(self, watch: _Watch, stop: threading.Event) -> float:
        """One supervisor round; returns how long to wait before the next."""
        proc = self._process
        hung, silent = False, 0.0
        if proc is not None and proc.poll() is None:
            timeout_s = min(2.0, watch.unresponsive_s or 2.0)
            answered = self._answers(timeout_s)
            now = time.monotonic()
            if answered:
                watch.last_answer = now
                try:
                    self._backup_state()
                except OSError as exc:
                    log.warning("could not back up the anvil state file: %s", exc)
                return watch.interval_s
            silent = now - watch.last_answer
            if watch.unresponsive_s is None or silent < watch.unresponsive_s:
                return watch.interval_s
            hung = True
        with self._lock:
            if stop.is_set():
                return 0.0
            if self._process is not proc:  # start()/restart() replaced it meanwhile
                watch.last_answer = time.monotonic()
                return watch.interval_s
            port = self.port
            if proc is not None:
                if hung:
                    log.warning(
                        "anvil (pid %d) has not answered eth_chainId for %.1f s; restarting it "
                        "on port %d",
                        proc.pid,
                        silent,
                        port,
                    )
                    self._terminate(kill_only=False, grace_s=HUNG_STOP_GRACE_S)
                else:
                    log.warning(
                        "anvil (pid %d) exited with code %s; restarting it on port %d",
                        proc.pid,
                        proc.returncode,
                        port,
                    )
                    self._process = None
                    self._close_log()
            try:
                self._check_port_free(port)
                self._launch_recovering(port, abort=stop)
            except _Aborted:
                log.info("anvil restart abandoned: the node is being stopped")
                return 0.0
            except (NodeError, OSError) as exc:
                delay = watch.backoff_s
                watch.backoff_s = min(delay * 2, RESTART_BACKOFF_S[1])
                log.warning(
                    "restarting anvil on port %d failed (retry in %.1f s): %s",
                    port,
                    delay,
                    str(exc).splitlines()[0],
                )
                return delay
            watch.backoff_s = RESTART_BACKOFF_S[0]
            watch.last_answer = time.monotonic()
            self.restarts += 1
            self._last_restart_at = watch.last_answer
            with self._watch_lock:
                callbacks = list(self._callbacks)
        log.warning("anvil restarted on %s (restart %d)", self.rpc_url, self.restarts)
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("an anvil on_restart callback failed")
        return watch.interval_s

    def wait_persisted(self, nonces: Mapping[str, int], *, timeout_s: float = 10.0) -> bool:
        """Wait until the state file is a complete dump in which each account of ``nonces``
        (address -> nonce) has sent at least that many transactions; False after
        ``timeout_s``. For the first start, whose deployment is not in the outbox: a node
        killed right after it then comes back with the contract. Correctness does not depend
        on it (the outbox replays every later transaction); False only means it is not yet."""
        if not self.config.persist_state:
            return False
        wanted = {address.lower(): nonce for address, nonce in nonces.items()}
        deadline = time.monotonic() + timeout_s
        while True:
            if self._dump_holds(wanted):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def _dump_holds(self, wanted: Mapping[str, int]) -> bool:
        try:
            dump = json.loads(self.state_file.read_bytes())
        except (OSError, ValueError):
            return False  # not written yet, or read while anvil was writing it
        if state_inconsistency(dump) is not None:
            return False
        accounts = {str(a).lower(): v for a, v in dict(dump.get("accounts") or {}).items()}
        for address, nonce in wanted.items():
            account = accounts.get(address)
            if not isinstance(account, dict) or int(account.get("nonce", 0)) < nonce:
                return False
        return True

    def _answers(self, timeout_s: float) -> bool:
        try:
            return bool(self._rpc("eth_chainId", [], timeout_s) == hex(self.config.chain_id))
        except (OSError, ValueError, NodeError):
            return False

    def _backup_state(self) -> None:
        """Copy the state file to the backup when it changed and is a complete dump."""
        if not self.config.persist_state:
            return
        try:
            st = self.state_file.stat()
        except FileNotFoundError:
            return
        seen = (st.st_mtime_ns, st.st_size)
        if seen == self._backup_seen:
            return
        data = self.state_file.read_bytes()
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if digest == self._backup_digest:  # anvil rewrites the same dump every interval
            self._backup_seen = seen
            return
        try:
            dump = json.loads(data)
        except ValueError:
            return  # read while anvil was writing it: next round
        if state_inconsistency(dump) is not None:
            return  # state and blocks of two moments: the next dump

        tmp = self._tmp_path(self.backup_file)
        with tmp.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.backup_file)
        self._backup_seen, self._backup_digest = seen, digest

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


@dataclass
class _Watch:
    """What the supervisor thread remembers between rounds."""

    interval_s: float
    unresponsive_s: float | None
    last_answer: float = field(default_factory=time.monotonic)
    backoff_s: float = RESTART_BACKOFF_S[0]


def _supervise(
    ref: weakref.ref[AnvilNode],
    stop: threading.Event,
    interval_s: float,
    unresponsive_s: float | None,
) -> None:
    # a weak reference: an unreferenced node is still collected (and its __del__ kills anvil)
    watch = _Watch(interval_s, unresponsive_s)
    delay = interval_s
    while not stop.wait(delay):
        node = ref()
        if node is None:
            return
        try:
            delay = node._check(watch, stop)
        except Exception:
            log.exception("the anvil supervisor failed a round; it goes on")
            delay = interval_s
        del node


def state_inconsistency(dump: Any) -> str | None:
    """Why an anvil state dump cannot be trusted, or None.

    anvil writes its account state and its block history separately, so a dump taken while a
    block was being mined can hold the state after a block that its history lacks: an account
    whose nonce counts a transaction no dumped block contains. Loaded, that chain has the
    effects of transactions without their receipts or logs, and their nonces are spent, so the
    outbox cannot replay them. Checked here for every externally owned account: its nonce must
    be one more than the highest nonce it sent in the dumped transactions (0 if none)."""
    if not isinstance(dump, dict):
        return "not a JSON object"
    accounts, transactions = dump.get("accounts"), dump.get("transactions")
    if not isinstance(accounts, dict) or not isinstance(transactions, list):
        return "no accounts or transactions"
    sent: dict[str, int] = {}
    for tx in transactions:
        info = tx.get("info") if isinstance(tx, dict) else None
        if not isinstance(info, dict) or not isinstance(info.get("nonce"), int):
            return "a transaction without sender or nonce"
        sender = str(info.get("from", "")).lower()
        sent[sender] = max(sent.get(sender, -1), int(info["nonce"]))
    for address, account in accounts.items():
        if not isinstance(account, dict) or account.get("code") not in (None, "", "0x"):
            continue  # a contract: its nonce counts creations, not transactions
        nonce = account.get("nonce", 0)
        expected = sent.get(str(address).lower(), -1) + 1
        if isinstance(nonce, int) and nonce != expected:
            return (
                f"account {address} has nonce {nonce}, but its dumped transactions end at "
                f"nonce {expected - 1}: the state is not that of the dumped blocks"
            )
    return None


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
