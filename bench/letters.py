"""Benchmark of activation letters: N holders, one letter each, with and without the card QR.

``python -m bench.letters [--json] [--holders N] [--skip-qr]``

1. migrate a temporary SQLite database and bulk-load N holders with an address and one pass
   each (and, for the card-QR run, a printed card per pass);
2. time :func:`api.letters.produce` for "everyone not yet activated": select, make N codes
   (HMAC-SHA256 under a key), render the A4 PDF and the CSV, store the N hashes in one bulk
   statement; then the same with the card QR (each card's token signed as the service does).

The last line with ``--json`` is one JSON object: ``holders``, ``letters_s``,
``letters_per_s``, ``pdf_mb`` and, unless ``--skip-qr``, ``letters_qr_s``, ``pdf_qr_mb``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from api.letters import produce
from ledger.registry import Registry
from ledger.store.base import metadata
from ledger.store.db import StoreConfig, open_store, upgrade
from ledger.store.registry import PassRecord, PrintedCard
from wallet import Amount, Domain, PassToken, encode_token_uri, sign_pass_token

KEY = secrets.token_bytes(32)
DOMAIN = Domain(chain_id=31337, verifying_contract="0x" + "11" * 20)
SIGNER = secrets.token_bytes(32)


def _load(url: str, holders: int) -> None:
    now = datetime.now(UTC)
    store = open_store(StoreConfig(url))
    upgrade(store)
    rows_h: list[dict[str, Any]] = []
    rows_p: list[dict[str, Any]] = []
    rows_c: list[dict[str, Any]] = []
    for n in range(1, holders + 1):
        rows_h.append(
            {
                "id": n,
                "first_name": f"Voornaam{n}",
                "last_name": "van der Achternaam-Groningen",
                "birth_date": date(1970, 1, 1),
                "postcode": f"97{11 + n % 30}AB",
                "district_code": None,
                "household_role": "other",
                "created_at": now,
                "street": f"Herestraat {n}",
                "town": "Groningen",
            }
        )
        rows_p.append(
            {
                "id": n,
                "holder_id": n,
                "pass_number": f"GR{n:07d}",
                "pass_secret": secrets.token_bytes(32),
                "pass_id": "0x" + secrets.token_bytes(32).hex(),
                "status": "active",
                "created_at": now,
            }
        )
        rows_c.append(
            {
                "pass_record_id": n,
                "serial": secrets.randbelow(2**62) + 1,
                "status": "active",
                "issued_at": now,
            }
        )
    with store.engine.begin() as conn:
        conn.execute(insert(metadata.tables["registry_holder"]), rows_h)
        conn.execute(insert(metadata.tables["registry_pass"]), rows_p)
        conn.execute(insert(metadata.tables["registry_card"]), rows_c)
    store.close()


def _card_token(record: PassRecord, card: PrintedCard) -> str:
    """As :func:`api.admin_services._card_token`: the card's token signed by the pass signer."""
    signed = sign_pass_token(
        PassToken(
            pass_id=bytes.fromhex(record.pass_id[2:]),
            serial=card.serial,
            expiry=int(time.time()) + 5 * 365 * 86_400,
            amount_cap=Amount(2_500),
        ),
        domain=DOMAIN,
        private_key=SIGNER,
    )
    return encode_token_uri(signed)


def _run(url: str, *, qr: bool) -> tuple[float, int, int]:
    store = open_store(StoreConfig(url))
    try:
        registry = Registry(store, code_key=KEY)
        from ledger.activation import NotActivated

        started = time.perf_counter()
        produced = produce(
            registry,
            NotActivated(),
            key=KEY,
            login_url="https://stadjerspas.groningen.nl/holder/login",
            today=datetime.now(UTC).date(),
            card_token=_card_token if qr else None,
        )
        return time.perf_counter() - started, produced.letters, len(produced.pdf)
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.letters", description=__doc__)
    parser.add_argument("--holders", type=int, default=2_000)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--skip-qr", action="store_true", help="only letters without card QR")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-letters-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'letters.db'}"
        _load(url, args.holders)
        seconds, letters, pdf_bytes = _run(url, qr=False)
        result: dict[str, Any] = {
            "holders": args.holders,
            "letters": letters,
            "letters_s": round(seconds, 2),
            "letters_per_s": round(letters / seconds, 1),
            "pdf_mb": round(pdf_bytes / 2**20, 1),
        }
        print(f"{letters} letters without card QR in {seconds:.1f} s", flush=True)
        if not args.skip_qr:
            seconds, letters, pdf_bytes = _run(url, qr=True)
            result["letters_qr_s"] = round(seconds, 2)
            result["pdf_qr_mb"] = round(pdf_bytes / 2**20, 1)
            print(f"{letters} letters with card QR in {seconds:.1f} s", flush=True)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
