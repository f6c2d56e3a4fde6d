"""``bench.golive`` end to end with a few hundred holders: anvil with 2 s blocks, the service,
holders with their pass numbers, cards and addresses, opening balances, activation letters; the
figures it reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.golive import holders_csv, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_the_csv_has_unique_people_and_pass_numbers() -> None:
    data, references = holders_csv(300)
    lines = data.decode().splitlines()
    assert len(lines) == 301
    assert len(set(references)) == 300
    assert len({line.split(";")[7] for line in lines[1:]}) == 300


def test_a_few_hundred_holders_go_live(tmp_path: Path) -> None:
    figures = run(300, tmp=tmp_path, say=lambda _message: None)

    assert figures["holders"] == 300
    assert set(figures["phases"]) == {
        "holders_checked_and_written",
        "passes_on_chain",
        "balances",
        "letters",
    }
    # 300 passes in 2 registerPasses batches of 250, 300 balances in 2 issueBatch transactions
    assert figures["transactions"] == 4
    assert 40_000 < figures["gas_per_holder"] < 60_000
    # a letter for every imported holder (they carry an address) and the demo holders without one
    # are not counted; the PDF was downloaded
    assert figures["letters"] >= 300
    assert figures["letters_pdf_mb"] > 0
    assert figures["notes"] == []
