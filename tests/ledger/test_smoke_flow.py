"""The thin end-to-end slice on anvil: issue, redeem, balance drops, replay refused, reverse."""

from __future__ import annotations

import pytest

from ledger import contract_errors as errors
from tests.ledger.conftest import LedgerEnv


def test_issue_redeem_replay_reverse(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme()
    pid = ledger.new_pass()
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, 5_000)
    request = ledger.redemption(pid, scheme_id=scheme, amount=1_250, redemption_id=1)

    result = ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())

    assert ledger.client.balance_of(scheme, pid) == 3_750
    assert ledger.client.merchant_totals(ledger.merchant.address).owed == 1_250
    with pytest.raises(errors.RedemptionIdUsed):
        ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())
    receipt, root, proof = ledger.client.reversal_proof(result.events, 1)
    ledger.client.transact(ledger.merchant, "reverse", receipt.as_tuple(), root, proof)
    assert ledger.client.balance_of(scheme, pid) == 5_000
    assert ledger.client.merchant_totals(ledger.merchant.address).owed == 0
    with pytest.raises(errors.ReversalAlreadyDone):
        ledger.client.transact(ledger.merchant, "reverse", receipt.as_tuple(), root, proof)
