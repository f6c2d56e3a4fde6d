"""Crash safety: the indexer process is SIGKILLed at random points and restarted.

The chain holds every event kind and a few hundred redemptions; the index is built by
``python -m ledger.indexer`` with one-block chunks (one transaction each), killed at random
moments at least 20 times while it works, restarted each time, and must end with exactly the
rows (checksummed) of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import delete

from ledger.indexer.checkpoint import load_checkpoint
from ledger.store.db import Store
from ledger.store.index import EVENT_TABLES, IndexBlock, IndexCheckpoint
from tests.ledger.conftest import LedgerEnv
from tests.ledger.indexer.conftest import checksum, counts, every_event, make_indexer, redemptions

ROOT = Path(__file__).resolve().parents[3]
KILLS = 20


def wipe(store: Store) -> None:
    with store.engine.begin() as conn:
        for model in [*EVENT_TABLES, IndexBlock, IndexCheckpoint]:
            conn.execute(delete(model.__table__))  # type: ignore[attr-defined]


def indexed_to(store: Store, chain_id: int) -> int | None:
    with store.engine.connect() as conn:
        cp = load_checkpoint(conn, chain_id=chain_id, contract=None)
    return None if cp is None else cp.number


@pytest.mark.slow  # ~20-50 s per database on a busy 2-core machine (20+ process starts)
def test_killed_at_random_points_it_ends_with_the_same_rows(
    ledger: LedgerEnv, migrated_store: Store, tmp_path: Path
) -> None:
    s = every_event(ledger)
    redemptions(ledger, s.budget, s.passes[1], range(1_000, 1_240), per_tx=4)  # 60 blocks
    head = ledger.w3.eth.block_number
    make_indexer(migrated_store, ledger).sync(until=head)
    reference = checksum(migrated_store.engine)
    assert counts(migrated_store.engine)["index_redemption"] >= 240
    wipe(migrated_store)

    database_url = migrated_store.engine.url.render_as_string(hide_password=False)
    abi_file = tmp_path / "abi.json"
    abi_file.write_text(json.dumps(ledger.client.abi))

    def command(until: int) -> list[str]:
        return [
            sys.executable, "-m", "ledger.indexer",
            "--rpc-url", ledger.w3.provider.endpoint_uri,  # type: ignore[attr-defined]
            "--database-url", database_url,
            "--contract", ledger.client.address,
            "--abi-file", str(abi_file),
            "--start-block", str(ledger.deployment.deployed_block),
            "--until", str(until),
            "--initial-range", "1",
            "--max-range", "1",
            "--no-progress",
        ]  # fmt: skip

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            command(head), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    rng = random.Random(os.environ.get("STADJERSPAS_CRASH_SEED", "indexer-crash"))
    chain_id = ledger.client.chain_id
    kills = partial = completed = 0
    work_s = 0.3  # learnt from the runs that complete
    # at least KILLS kills, and until half that many landed mid-work (how many do depends on the
    # machine's speed; a cap keeps a machine where none land from looping forever)
    while kills < KILLS or (partial < KILLS // 2 and kills < 3 * KILLS):
        before = indexed_to(migrated_store, chain_id)
        began = time.monotonic()
        proc = start()
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.0, 1.0))  # sometimes during start-up
        else:
            # wait for the first committed chunk, then kill at a random moment of the work
            while proc.poll() is None and indexed_to(migrated_store, chain_id) == before:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, work_s))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=10)
            kills += 1
            done = indexed_to(migrated_store, chain_id)
            if done is not None and done < head and done != before:
                partial += 1
        else:
            _, err = proc.communicate()
            assert proc.returncode == 0, err.decode()
            completed += 1
            if before is None:
                work_s = max(0.05, time.monotonic() - began - 0.5)
            assert checksum(migrated_store.engine) == reference
            wipe(migrated_store)  # start over, so that later kills land mid-work again
    proc = start()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert indexed_to(migrated_store, chain_id) == head
    assert checksum(migrated_store.engine) == reference
    assert partial >= KILLS // 2, f"only {partial} of {kills} kills landed mid-work"
