"""Pinned gas of every ledger operation (``bench.gas``) on a fresh deployment.

Gas is deterministic here (fixed accounts, addresses, pass ids, token expiry and so signatures), so
each figure is pinned with a 1 % margin: any regression, and any improvement, must update the pin
below together with ``docs/gas.md``. The DESIGN.md quality bars (some of which are missed today,
see ``docs/gas.md``) are reported by ``python -m bench.gas``, not asserted here.

The large cohort has 1,000 leaves instead of the benchmark's 100,000 to keep the test fast: a root
costs the same whatever the cohort's size (asserted below), and ``first_use_claim_redeem`` is
pinned for a 1,000-leaf proof (10 siblings; the benchmark's 100,000-leaf proof has 17).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench._chain import bench_chain
from bench.gas import GasRun, run

LARGE_COHORT = 1_000
MARGIN = 0.01

PINNED: dict[str, int] = {
    # a pass's next checkout (its token record exists) on a reused receipt slot: at most the
    # 84,753 that redeem_single cost before tokens were single-use
    "redeem_single": 76_867,
    "redeem_first_of_pass": 108_863,
    "redeem_batched_per_item_100": 29_599,
    "issue_single": 59_303,
    "issue_batched_per_holder_100": 24_872,
    "register_passes_batched_per_pass_100": 25_517,
    "cohort_root_100": 59_996,
    "cohort_root_1000": 60_008,
    "first_use_claim_redeem": 150_899,
    "reverse": 63_375,
    "settle": 58_413,
    "erc20_transfer": 34_104,
}


@pytest.fixture(scope="module")
def gas_run() -> Iterator[GasRun]:
    with bench_chain(steps_tracing=False) as chain:
        yield run(chain, large_cohort=LARGE_COHORT)


def test_every_operation_is_measured(gas_run: GasRun) -> None:
    assert set(gas_run.figures()) == set(PINNED)


@pytest.mark.parametrize("key", sorted(PINNED))
def test_gas_is_pinned(gas_run: GasRun, key: str) -> None:
    measured = gas_run.figures()[key]
    pinned = PINNED[key]
    assert abs(measured - pinned) <= pinned * MARGIN, (
        f"{key}: measured {measured:,} gas, pinned {pinned:,} (diff {measured - pinned:+,}); "
        "if the change is intended, update PINNED and docs/gas.md"
    )


def test_single_use_tokens_keep_redeem_single_below_its_old_cost(gas_run: GasRun) -> None:
    assert gas_run.figures()["redeem_single"] <= 84_753


def test_cohort_root_cost_does_not_depend_on_cohort_size(gas_run: GasRun) -> None:
    small = gas_run.measurements["cohort_root_100"]
    large = gas_run.measurements[f"cohort_root_{LARGE_COHORT}"]
    # The contract does the same work; only the call data differs (holderCount and totalAmount
    # take more non-zero bytes for the larger cohort, 12 gas each).
    assert small.execution_gas == large.execution_gas
    assert abs(large.tx_gas - small.tx_gas) <= 16 * 8
