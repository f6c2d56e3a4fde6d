"""End-to-end API benchmark: QR scan verification and confirmed redemptions per second.

``python -m bench.api`` starts the service as a subprocess (``stadjerspas up`` on the embedded
anvil, in a temporary state directory, on free loopback ports), waits for ``/health`` and runs
the load from a separate process (:mod:`bench._load`, httpx + asyncio):

- ``POST /merchant/scan`` back to back at a fixed concurrency: client-side p50/p99 latency and
  achieved requests/s; plus in-process ``decode_token_uri`` + ``verify_pass_token`` for
  comparison;
- budget redemptions of 1 euro from many concurrent terminals of every merchant, each a
  checkout with a pass token of its own (a token serves one checkout: the service is seeded
  with ``--holders`` demo holders, 1,000 by default, and a pass serves one checkout at a time):
  only HTTP 201 with a transaction hash counts; afterwards the merchants' on-chain totals and
  the holders' balances must have moved by exactly the confirmed amount.

Prints a table; ``--json`` prints one JSON object as the last line. Stops the service with
SIGINT and removes the temporary directory. See ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench._load import BENCH_HOLDERS, DEFAULTS, LoadConfig

__all__ = ["FIGURE_KEYS", "TARGETS", "Service", "main", "run", "service", "service_env"]

#: The keys every run reports, in table order (more figures follow them in the JSON).
FIGURE_KEYS = ("verify_p99_ms", "verify_rps", "redemptions_per_s")
#: Targets from DESIGN.md / issue 4: (bound, "max" or "min").
TARGETS: dict[str, tuple[float, str]] = {
    "verify_p99_ms": (5.0, "max"),
    "verify_rps": (400.0, "min"),
    "verify_inprocess_p99_ms": (1.0, "max"),
    "redemptions_per_s": (300.0, "min"),
}
STARTUP_TIMEOUT_S = 180.0  # the first start seeds BENCH_HOLDERS demo holders
LOAD_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0


class BenchError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class Service:
    base_url: str
    rpc_url: str
    database_url: str  # the service's registry (SQLite in its state directory)
    var_dir: Path
    log: Path
    startup_s: float
    pid: int


def _executable() -> list[str]:
    script = Path(sys.executable).with_name("stadjerspas")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from api.cli import app; app()"]


def service_env(
    *,
    var_dir: Path,
    api_port: int,
    anvil_port: int,
    holders: int = BENCH_HOLDERS,
    extra_env: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment of the benchmark's service: development defaults, its own state
    directory and ports, ``holders`` demo holders, no per-client rate limit. Pass tokens keep
    the service's default lifetime (at most 120 s): the load signs a fresh one per checkout."""
    inherited = dict(os.environ)
    # the service's own node and database; the lifetime stays the default (an inherited value
    # above 120 s would stop the service)
    for name in ("STADJERSPAS_RPC_URL", "STADJERSPAS_DATABASE_URL", "STADJERSPAS_TOKEN_LIFETIME_S"):
        inherited.pop(name, None)
    env = {
        **inherited,
        "STADJERSPAS_ENV": "development",
        "STADJERSPAS_VAR_DIR": str(var_dir),
        "STADJERSPAS_HOST": "127.0.0.1",
        "STADJERSPAS_PORT": str(api_port),
        "STADJERSPAS_ANVIL_PORT": str(anvil_port),
        # a pass token serves one checkout: every redemption needs a pass of its own for a
        # second, so the run enrols enough holders for the target rate (bench._tokens)
        "STADJERSPAS_DEMO_HOLDERS": str(holders),
        # a few terminal logins carry all the load: per-client rate limiting would measure itself
        "STADJERSPAS_RATE_LIMIT_PER_S": "0",
        **(extra_env or {}),
    }
    env.pop("STADJERSPAS_RPC_URL", None)
    env.pop("STADJERSPAS_DATABASE_URL", None)
    return env


@contextlib.contextmanager
def service(
    extra_env: dict[str, str] | None = None, *, holders: int = BENCH_HOLDERS
) -> Iterator[Service]:
    """Run ``stadjerspas up`` in a temporary state directory, seeded with ``holders`` demo
    holders; stop it with SIGINT on exit."""
    tmp = Path(tempfile.mkdtemp(prefix="stadjerspas-bench-api-"))
    var_dir, log = tmp / "var", tmp / "service.log"
    api_port, anvil_port = _free_port(), _free_port()
    env = service_env(
        var_dir=var_dir,
        api_port=api_port,
        anvil_port=anvil_port,
        holders=holders,
        extra_env=extra_env,
    )
    base_url = f"http://127.0.0.1:{api_port}"
    started = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*_executable(), "up", "--log-level", "warning"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = started + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise BenchError(f"the service exited with {proc.returncode}: {_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base_url}/health", timeout=2.0).status_code == 200:
                    break
            if time.perf_counter() > deadline:
                raise BenchError(f"no /health within {STARTUP_TIMEOUT_S:.0f} s: {_tail(log)}")
            time.sleep(0.25)
        yield Service(
            base_url=base_url,
            rpc_url=f"http://127.0.0.1:{anvil_port}",
            database_url=f"sqlite:///{var_dir / 'stadjerspas.db'}",
            var_dir=var_dir,
            log=log,
            startup_s=time.perf_counter() - started,
            pid=proc.pid,
        )
    finally:
        _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _tail(log: Path, lines: int = 8) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _load(svc: Service, cfg: LoadConfig) -> dict[str, Any]:
    """Run :mod:`bench._load` in its own process; return its JSON figures."""
    cmd = [
        sys.executable,
        "-m",
        "bench._load",
        "--base-url",
        svc.base_url,
        "--rpc-url",
        svc.rpc_url,
        "--database-url",
        svc.database_url,
        "--holders",
        str(cfg.holders),
        "--scan-seconds",
        str(cfg.scan_seconds),
        "--scan-rps",
        str(cfg.scan_rps),
        "--scan-connections",
        str(cfg.scan_connections),
        "--scan-max-seconds",
        str(cfg.scan_max_seconds),
        "--scan-concurrency",
        str(cfg.scan_concurrency),
        "--redeem-seconds",
        str(cfg.redeem_seconds),
        "--redeem-count",
        str(cfg.redeem_count),
        "--terminals-per-merchant",
        str(cfg.terminals_per_merchant),
        "--server-pid",
        str(svc.pid),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=LOAD_TIMEOUT_S, check=False)
    if done.returncode != 0 or not done.stdout.strip():
        raise BenchError(f"the load process failed ({done.returncode}): {done.stderr[-2000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def run(
    cfg: LoadConfig | None = None, *, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Start the service, run the load, stop the service; return the figures."""
    base = cfg or LoadConfig(base_url="", rpc_url="")
    with service(extra_env, holders=base.holders) as svc:
        figures = _load(svc, base)
        figures["startup_s"] = round(svc.startup_s, 1)
    return figures


def _meets(key: str, value: float) -> str:
    target = TARGETS.get(key)
    if target is None:
        return ""
    bound, kind = target
    ok = value <= bound if kind == "max" else value >= bound
    return f"{'<=' if kind == 'max' else '>='} {bound:g}  {'ok' if ok else 'MISSED'}"


def _optional(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def table(figures: dict[str, Any]) -> str:
    per_merchant = figures["concurrent_terminals"] // max(1, figures["merchants"])
    rows: list[tuple[str, str, str]] = [
        ("scan p50 (ms, HTTP)", f"{figures['verify_p50_ms']:.2f}", ""),
        (
            "scan p99 (ms, HTTP)",
            f"{figures['verify_p99_ms']:.2f}",
            _meets("verify_p99_ms", figures["verify_p99_ms"]),
        ),
        (
            "scan requests/s",
            f"{figures['verify_rps']:.0f}",
            _meets("verify_rps", figures["verify_rps"]),
        ),
        (
            "scan offered rate (open loop)",
            f"{figures['verify_offered_rps']:.0f}/s on {figures['verify_connections']} conns",
            "",
        ),
        (
            "scan capacity (closed loop)",
            f"{figures['verify_max_rps']:.0f}/s, p99 {figures['verify_max_p99_ms']:.1f} ms "
            f"at concurrency {figures['verify_concurrency']}",
            "",
        ),
        ("server CPU per scan (ms)", _optional(figures.get("verify_server_cpu_ms")), ""),
        (
            "verify p99 in-process (ms)",
            f"{figures['verify_inprocess_p99_ms']:.3f}",
            _meets("verify_inprocess_p99_ms", figures["verify_inprocess_p99_ms"]),
        ),
        (
            "confirmed redemptions/s",
            f"{figures['redemptions_per_s']:.0f}",
            _meets("redemptions_per_s", figures["redemptions_per_s"]),
        ),
        (
            "confirmed / sent",
            f"{figures['redemptions_confirmed']} / {figures['redemptions_sent']}",
            "",
        ),
        (
            "redemption p50 / p99 (ms)",
            f"{figures['redemption_p50_ms']:.0f} / {figures['redemption_p99_ms']:.0f}",
            "",
        ),
        ("redemptions per transaction", f"{figures['redemptions_per_transaction']:.1f}", ""),
        (
            "passes (one token per checkout)",
            f"{figures['redemption_passes_used']} of {figures['redemption_passes']} used",
            "",
        ),
        ("server CPU per redemption (ms)", _optional(figures.get("redemption_server_cpu_ms")), ""),
        (
            "merchants x terminals",
            f"{figures['merchants']} x {per_merchant}",
            "",
        ),
        (
            "on chain = confirmed",
            f"{figures['onchain_redeemed_delta']} = {figures['confirmed_amount']} cents",
            "ok" if figures["onchain_matches"] else "MISMATCH",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    lines = [f"{'figure':<{width}}  {'value':>{vwidth}}  target", "-" * (width + vwidth + 20)]
    lines += [f"{name:<{width}}  {value:>{vwidth}}  {note}".rstrip() for name, value, note in rows]
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(figures["redemption_statuses"].items()))
    lines.append(f"redemption responses: {statuses}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__)
    parser.add_argument("--json", action="store_true", help="one JSON object as the last line")
    parser.add_argument("--scan-seconds", type=float, default=DEFAULTS.scan_seconds)
    parser.add_argument(
        "--scan-rps", type=float, default=DEFAULTS.scan_rps, help="open-loop scan rate"
    )
    parser.add_argument("--scan-connections", type=int, default=DEFAULTS.scan_connections)
    parser.add_argument("--scan-max-seconds", type=float, default=DEFAULTS.scan_max_seconds)
    parser.add_argument("--scan-concurrency", type=int, default=DEFAULTS.scan_concurrency)
    parser.add_argument("--redeem-seconds", type=float, default=DEFAULTS.redeem_seconds)
    parser.add_argument("--redeem-count", type=int, default=DEFAULTS.redeem_count)
    parser.add_argument(
        "--terminals-per-merchant", type=int, default=DEFAULTS.terminals_per_merchant
    )
    parser.add_argument(
        "--holders",
        type=int,
        default=DEFAULTS.holders,
        help="demo holders to seed; each redemption is a checkout of one of their passes",
    )
    args = parser.parse_args(argv)
    cfg = LoadConfig(
        base_url="",
        rpc_url="",
        holders=args.holders,
        scan_seconds=args.scan_seconds,
        scan_rps=args.scan_rps,
        scan_connections=args.scan_connections,
        scan_max_seconds=args.scan_max_seconds,
        scan_concurrency=args.scan_concurrency,
        redeem_seconds=args.redeem_seconds,
        redeem_count=args.redeem_count,
        terminals_per_merchant=args.terminals_per_merchant,
    )
    try:
        figures = run(cfg)
    except (BenchError, subprocess.TimeoutExpired, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    else:
        print(table(figures))
    return 0 if figures["onchain_matches"] else 1


if __name__ == "__main__":
    sys.exit(main())
