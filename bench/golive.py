"""Go-live benchmark: a city's holders, their passes and balances migrated on 2 s blocks.

``python -m bench.golive`` starts anvil with ``--block-time 2`` (as a QBFT network) and the
service (``stadjerspas up``, auto-deployed onto that node, SQLite, free loopback ports, a
temporary state directory), then runs, through the API as an operator would:

1. ``holders``: a CSV of ``--holders`` synthetic holders (fictional names, the sample
   postcodes, households of up to four, existing pass numbers and card serials) posted to
   ``POST /admin/imports/holders``: the request checks every line and writes the registry;
   the job registers the passes on chain in batches (``registerPasses``);
2. ``balances``: an opening balance per holder in a new budget scheme
   (``POST /admin/imports/balances``, ``issueBatch`` in batches, marked as migrated);
3. ``letters``: ``POST /admin/letters`` for everyone not yet activated (the imported holders and
   the three demo holders): a new activation code per pass, one A4 PDF and the print house's
   CSV, both downloaded (without the printed-card QR; ``bench.letters`` measures that).

Prints a table of the phases; ``--json`` prints one JSON object as the last line with
``holders``, ``total_s``, ``phases`` (seconds per phase), ``transactions`` and
``gas_per_holder`` (gas of the registration and issuance transactions per holder). Target:
20,000 holders end to end in at most 600 s. Figures in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.faults import ServiceProcess
from ledger.node import AnvilConfig, AnvilNode
from ledger.registry import SAMPLE_POSTCODES_CSV

__all__ = ["TARGET_S", "holders_csv", "main", "run"]

TARGET_S = 600.0
DEFAULT_HOLDERS = 20_000
BLOCK_TIME_S = 2.0
PASSWORD = "development-only-admin-password"  # noqa: S105 - the development login
_FIRST = ("Anna", "Bram", "Chantal", "Daan", "Eva", "Fenna", "Gijs", "Hanna", "Iris", "Joris")
_LAST = ("de Vries", "Bakker", "Jansen", "Visser", "Smit", "Meijer", "Mulder", "de Boer", "Bos")
_FIRST_NUMBER = 3_000_000
_STREETS = ("Oosterstraat", "Nieuwe Ebbingestraat", "Paterswoldseweg", "Korreweg", "Helperzoom")


def holders_csv(count: int, *, seed: int = 11) -> tuple[bytes, list[str]]:
    """A holders CSV of ``count`` fictional people and their external references."""
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not a secret
    with SAMPLE_POSTCODES_CSV.open(encoding="utf-8") as handle:
        postcodes = [row["postcode"] for row in csv.DictReader(handle)]
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\r\n")
    writer.writerow(
        [
            "external_reference",
            "first_name",
            "last_name",
            "birth_date",
            "postcode",
            "household_reference",
            "household_role",
            "pass_number",
            "card_serial",
            "street",
            "town",
        ]
    )
    references = []
    for i in range(count):
        reference = f"OUD-{i:06d}"
        references.append(reference)
        household = i // 4
        writer.writerow(
            [
                reference,
                f"{_FIRST[i % len(_FIRST)]}{i}",  # unique: no two lines are one person
                _LAST[rng.randrange(len(_LAST))],
                f"{rng.randint(1940, 2020)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                postcodes[household % len(postcodes)],
                f"HH-{household:06d}",
                "parent" if i % 4 == 0 else "child",
                f"GR{_FIRST_NUMBER + i:07d}",
                str(10**11 + i) if i % 5 else "",
                f"{_STREETS[household % len(_STREETS)]} {1 + household % 180}",
                "Groningen",
            ]
        )
    return out.getvalue().encode("utf-8"), references


def _wait_job(
    http: httpx.Client, job_id: str, timeout: float, *, path: str = "/admin/imports/jobs"
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = http.get(f"{path}/{job_id}").json()
        if job["status"] == "done":
            return job
        if job["status"] == "failed":
            raise RuntimeError(f"job {job_id} failed: {job['problem']}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} not done after {timeout:.0f} s: {job}")
        time.sleep(0.25)


def _gas(rpc_url: str, tx_hashes: Sequence[str]) -> int:
    total = 0
    with httpx.Client(timeout=30) as rpc:
        for start in range(0, len(tx_hashes), 100):
            batch = [
                {"jsonrpc": "2.0", "id": i, "method": "eth_getTransactionReceipt", "params": [h]}
                for i, h in enumerate(tx_hashes[start : start + 100])
            ]
            for answer in rpc.post(rpc_url, json=batch).json():
                total += int(answer["result"]["gasUsed"], 16)
    return total


def run(holders: int, *, tmp: Path, say: Any = print) -> dict[str, Any]:
    """Run the phases on a fresh node and service under ``tmp``; returns the figures."""
    phases: dict[str, float] = {}
    notes: list[str] = []
    data, references = holders_csv(holders)
    with AnvilNode(AnvilConfig(state_dir=tmp / "anvil", block_time=BLOCK_TIME_S)) as node:
        svc = ServiceProcess(
            tmp,
            {
                "STADJERSPAS_RPC_URL": node.rpc_url,
                "STADJERSPAS_AUTO_DEPLOY": "true",
                "STADJERSPAS_DEMO_HOLDERS": "3",
                "STADJERSPAS_RECEIPT_TIMEOUT_S": "120",
            },
        )
        try:
            say(f"starting the service on anvil with {BLOCK_TIME_S:g} s blocks")
            svc.start()
            with httpx.Client(base_url=svc.base_url, timeout=600) as http:
                token = http.post(
                    "/auth/token",
                    json={"kind": "staff", "username": "admin", "password": PASSWORD},
                ).json()["access_token"]
                http.headers["Authorization"] = f"Bearer {token}"
                started = time.perf_counter()

                say(f"holders: importing {holders:,} holders ({len(data) / 1e6:.1f} MB)")
                t0 = time.perf_counter()
                response = http.post(
                    "/admin/imports/holders", content=data, headers={"Content-Type": "text/csv"}
                )
                if response.status_code != 202:
                    raise RuntimeError(f"holders import refused: {response.text[:500]}")
                phases["holders_checked_and_written"] = time.perf_counter() - t0
                t1 = time.perf_counter()
                holders_job = _wait_job(http, response.json()["id"], 1800)
                phases["passes_on_chain"] = time.perf_counter() - t1

                say("balances: one opening balance per holder in a new scheme")
                now = int(time.time())
                scheme = http.post(
                    "/admin/schemes",
                    json={
                        "name": "Kindpakket (overgezet)",
                        "kind": "budget",
                        "valid_from": now - 3600,
                        "valid_until": now + 365 * 24 * 3600,
                        "budget_cap": holders * 10_000,
                        "open_to_all_merchants": True,
                    },
                )
                if scheme.status_code != 201:
                    raise RuntimeError(f"scheme refused: {scheme.text[:300]}")
                scheme_id = scheme.json()["scheme_id"]
                balances = "external_reference,amount\n" + "".join(
                    f"{ref},{1000 + i % 5000}\n" for i, ref in enumerate(references)
                )
                t2 = time.perf_counter()
                response = http.post(
                    "/admin/imports/balances",
                    content=balances.encode(),
                    params={"scheme_id": scheme_id},
                    headers={"Content-Type": "text/csv"},
                )
                if response.status_code != 202:
                    raise RuntimeError(f"balances import refused: {response.text[:500]}")
                balances_job = _wait_job(http, response.json()["id"], 1800)
                phases["balances"] = time.perf_counter() - t2

                say("letters: POST /admin/letters")
                t3 = time.perf_counter()
                response = http.post(
                    "/admin/letters",
                    json={"selection": {"kind": "not_activated"}, "with_card_qr": False},
                )
                if response.status_code != 202:
                    raise RuntimeError(f"letters refused: {response.text[:500]}")
                letters_job = _wait_job(http, response.json()["id"], 1800, path="/admin/jobs")
                result = letters_job["result"]
                pdf = http.get(result["pdf"])
                sheet = http.get(result["csv"])
                if pdf.status_code != 200 or not pdf.content.startswith(b"%PDF"):
                    raise RuntimeError(f"letters PDF not downloaded: {pdf.status_code}")
                if sheet.status_code != 200:
                    raise RuntimeError(f"letters CSV not downloaded: {sheet.status_code}")
                phases["letters"] = time.perf_counter() - t3
                letters = int(result["letters"])
                if letters < holders:
                    raise RuntimeError(f"{letters} letters for {holders} imported holders")
                letters_mb = round(len(pdf.content) / 1e6, 1)
                total = time.perf_counter() - started
        finally:
            svc.stop()
        transactions = [
            *holders_job["result"]["transactions"],
            *balances_job["result"]["transactions"],
        ]
        gas = _gas(node.rpc_url, transactions)
    return {
        "holders": holders,
        "total_s": round(total, 1),
        "phases": {name: round(seconds, 1) for name, seconds in phases.items()},
        "transactions": len(transactions),
        "gas_per_holder": round(gas / holders),
        "block_time_s": BLOCK_TIME_S,
        "target_s": TARGET_S,
        "met": total <= TARGET_S,
        "letters": letters,
        "letters_pdf_mb": letters_mb,
        "notes": notes,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.golive", description=__doc__)
    parser.add_argument("--holders", type=int, default=DEFAULT_HOLDERS)
    parser.add_argument("--json", action="store_true", help="one JSON object as the last line")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="golive-") as tmp:
        figures = run(args.holders, tmp=Path(tmp))
    print(f"{'phase':<30} {'seconds':>10}")
    for name, seconds in figures["phases"].items():
        print(f"{name:<30} {seconds:>10.1f}")
    print(f"{'total':<30} {figures['total_s']:>10.1f}  (target <= {TARGET_S:.0f} s)")
    print(f"transactions: {figures['transactions']}, gas per holder: {figures['gas_per_holder']:,}")
    for note in figures["notes"]:
        print(f"note: {note}")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
