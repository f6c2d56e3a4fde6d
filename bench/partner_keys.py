"""Partner keystore benchmark: what opening every partner's key costs at start.

``.venv/bin/python -m bench.partner_keys --json`` creates ``--partners`` keys in a partner
keystore (:mod:`api.partner_keystore`, SQLite in a temporary directory), then times what a
service start does: a new keystore object opens all of them (one scrypt derivation of the
key-encryption key, then AES-GCM per key). For comparison it times one Web3 Secret Storage
decrypt with eth-account's default scrypt parameters (what one keystore file per partner would
cost per partner). The last line is one JSON object with ``partners``, ``create_ms_per_key``,
``open_all_ms``, ``kek_ms`` and ``web3_keystore_decrypt_ms``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from eth_account import Account

from api.partner_keystore import PartnerKeystore
from api.store import ApiStore

__all__ = ["main"]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.partner_keys", description=__doc__)
    parser.add_argument("--partners", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store = ApiStore.open(f"sqlite:///{Path(tmp) / 'keys.db'}")
        try:
            password = "benchmark keystore password"  # noqa: S105 - a throwaway store
            keystore = PartnerKeystore(store.db, password=password)
            started = time.perf_counter()
            created = [keystore.create().address for _ in range(args.partners)]
            create_s = time.perf_counter() - started

            fresh = PartnerKeystore(store.db, password=password)  # as at a service start
            started = time.perf_counter()
            opened = fresh.load()
            open_s = time.perf_counter() - started
            assert sorted(opened) == sorted(created)

            salt = next(iter(fresh._keks))
            started = time.perf_counter()
            PartnerKeystore(store.db, password=password)._kek(salt)
            kek_s = time.perf_counter() - started
        finally:
            store.close()

    account = Account.create()
    sealed = Account.encrypt(account.key, "benchmark keystore password")
    started = time.perf_counter()
    Account.decrypt(sealed, "benchmark keystore password")
    web3_s = time.perf_counter() - started

    result = {
        "partners": args.partners,
        "create_ms_per_key": round(create_s * 1000 / max(1, args.partners), 2),
        "open_all_ms": round(open_s * 1000, 1),
        "kek_ms": round(kek_s * 1000, 1),
        "web3_keystore_decrypt_ms": round(web3_s * 1000, 1),
    }
    say(
        f"{args.partners} partner keys: created {result['create_ms_per_key']} ms each; all "
        f"opened in {result['open_all_ms']} ms (KEK {result['kek_ms']} ms); one Web3 Secret "
        f"Storage decrypt {result['web3_keystore_decrypt_ms']} ms"
    )
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
