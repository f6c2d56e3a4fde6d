"""JSON-RPC client benchmark: the per-call cost of :class:`ledger.rpc.RpcClient` against anvil.

``.venv/bin/python -m bench.rpc`` prints a table; ``--json`` prints, as its last line, one JSON
object with ``us_per_call`` (wall-clock microseconds per call) and ``cpu_us_per_call`` (this
process's CPU time per call: the client's own cost, which is what holds the GIL) per client.

Set-up (not timed): a private anvil (:class:`ledger.node.AnvilNode`, port 0, state in a temporary
directory) and ``--warmup`` calls per client. Timed: ``--calls`` sequential ``eth_blockNumber``
calls from one thread over one keep-alive connection.

``--baseline PATH`` also times the ``RpcClient`` of another copy of ``ledger/rpc.py`` (e.g. the
committed one: ``git show HEAD:ledger/rpc.py > /tmp/rpc_old.py``), loaded as a module of its own,
in alternating rounds with the current one so that both see the same machine load.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.node import AnvilConfig, AnvilNode
from ledger.rpc import RpcClient

__all__ = ["Timing", "main", "time_calls"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Timing:
    client: str
    calls: int
    seconds: float
    cpu_seconds: float

    @property
    def us_per_call(self) -> float:
        return self.seconds / self.calls * 1e6

    @property
    def cpu_us_per_call(self) -> float:
        return self.cpu_seconds / self.calls * 1e6


def load_client_class(path: Path) -> Callable[..., Any]:
    """``RpcClient`` from the Python file ``path``, imported as a module of its own."""
    spec = importlib.util.spec_from_file_location("_bench_rpc_baseline", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    cls: Callable[..., Any] = module.RpcClient
    return cls


def time_calls(name: str, client: Any, *, calls: int, warmup: int) -> Timing:
    """Time ``calls`` sequential ``eth_blockNumber`` calls on ``client``."""
    for _ in range(warmup):
        client.call("eth_blockNumber")
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for _ in range(calls):
        client.call("eth_blockNumber")
    seconds = time.perf_counter() - t0
    return Timing(name, calls, seconds, time.process_time() - cpu0)


def best(timings: Sequence[Timing]) -> Timing:
    return min(timings, key=lambda t: t.seconds)


def run(*, calls: int, warmup: int, rounds: int, baseline: Path | None) -> list[Timing]:
    factories: dict[str, Callable[..., Any]] = {"current": RpcClient}
    if baseline is not None:
        factories["baseline"] = load_client_class(baseline)
    with tempfile.TemporaryDirectory(prefix="stadjerspas-bench-rpc-") as tmp:
        config = AnvilConfig(state_dir=Path(tmp), port=0, project_root=PROJECT_ROOT)
        with AnvilNode(config) as node:
            say(f"anvil at {node.rpc_url}; {rounds} round(s) of {calls:,} calls per client")
            results: dict[str, list[Timing]] = {name: [] for name in factories}
            for _ in range(rounds):
                for name, factory in factories.items():
                    with factory(node.rpc_url) as client:
                        results[name].append(time_calls(name, client, calls=calls, warmup=warmup))
    return [best(results[name]) for name in factories]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rpc", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print JSON as the last line")
    parser.add_argument("--calls", type=int, default=5_000, help="timed calls per round")
    parser.add_argument("--warmup", type=int, default=200, help="untimed calls per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per client (best is kept)")
    parser.add_argument("--baseline", type=Path, help="another ledger/rpc.py to compare with")
    args = parser.parse_args(argv)
    timings = run(calls=args.calls, warmup=args.warmup, rounds=args.rounds, baseline=args.baseline)
    figures: dict[str, object] = {"calls": args.calls, "rounds": args.rounds}
    for t in timings:
        figures[f"us_per_call_{t.client}"] = round(t.us_per_call, 1)
        figures[f"cpu_us_per_call_{t.client}"] = round(t.cpu_us_per_call, 1)
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"{args.calls:,} sequential eth_blockNumber calls (best of {args.rounds})")
    print(f"{'client':<10} {'seconds':>8} {'us/call':>9} {'cpu us/call':>12}")
    for t in timings:
        print(f"{t.client:<10} {t.seconds:>8.3f} {t.us_per_call:>9.1f} {t.cpu_us_per_call:>12.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
