"""Reversals (receipt + Merkle proof, once, within the window) and settlements on the contract."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from eth_account.signers.local import LocalAccount
from web3.types import RPCEndpoint

from ledger import contract_errors as errors
from ledger.client import UNLIMITED, MerchantTotals, SchemeKind, TxResult
from ledger.merkle import ReceiptLeaf
from tests.ledger.conftest import REVERSAL_WINDOW_S, LedgerEnv

REF_A = b"SEPA-2025-0001".ljust(32, b"\x00")
REF_B = b"SEPA-2025-0002".ljust(32, b"\x00")


def _advance(ledger: LedgerEnv, seconds: int) -> None:
    ledger.w3.provider.make_request(RPCEndpoint("evm_increaseTime"), [seconds])
    ledger.w3.provider.make_request(RPCEndpoint("evm_mine"), [])


@dataclass(frozen=True)
class Redeemed:
    scheme: int
    pid: bytes
    result: TxResult
    receipt: ReceiptLeaf
    root: bytes
    proof: list[bytes]

    def args(self, receipt: ReceiptLeaf | None = None) -> tuple[object, ...]:
        return ((receipt or self.receipt).as_tuple(), self.root, self.proof)


def _redeemed(
    ledger: LedgerEnv,
    *,
    kind: SchemeKind = SchemeKind.BUDGET,
    issue: int = 10_000,
    amount: int = 1_000,
    redemption_id: int = 1,
    merchant: LocalAccount | None = None,
    **terms: int | bool,
) -> Redeemed:
    scheme = ledger.new_scheme(kind, **terms)
    pid = ledger.new_pass()
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, issue)
    request = ledger.redemption(pid, scheme_id=scheme, amount=amount, redemption_id=redemption_id)
    result = ledger.client.transact(merchant or ledger.merchant, "redeem", request.as_tuple())
    receipt, root, proof = ledger.client.reversal_proof(result.events, redemption_id)
    return Redeemed(scheme, pid, result, receipt, root, proof)


@dataclass(frozen=True)
class State:
    balance: int
    merchant: MerchantTotals
    committed: int
    reversed: bool


def _state(ledger: LedgerEnv, r: Redeemed) -> State:
    return State(
        balance=ledger.client.balance_of(r.scheme, r.pid),
        merchant=ledger.client.merchant_totals(r.receipt.merchant),
        committed=ledger.client.scheme_of(r.scheme).committed,
        reversed=ledger.client.is_reversed(r.receipt.redemption_id),
    )


def _refused_reversal(
    ledger: LedgerEnv,
    r: Redeemed,
    error: type[errors.ContractRevert],
    *,
    caller: LocalAccount | None = None,
    args: tuple[object, ...] | None = None,
) -> errors.ContractRevert:
    before = _state(ledger, r)
    with pytest.raises(error) as refused:
        ledger.client.transact(caller or ledger.merchant, "reverse", *(args or r.args()))
    assert _state(ledger, r) == before
    return refused.value


# ---------------------------------------------------------------- reversal accepted


def test_reversal_restores_exactly_what_was_redeemed(ledger: LedgerEnv) -> None:
    r = _redeemed(ledger, amount=1_250, redemption_id=9)
    assert ledger.client.balance_of(r.scheme, r.pid) == 8_750

    result = ledger.client.transact(ledger.merchant, "reverse", *r.args())

    assert result.named("Reversed")[0].args == {
        "redemptionId": 9,
        "passId": r.pid,
        "schemeId": r.scheme,
        "merchant": ledger.merchant.address,
        "debited": 1_250,
        "credited": 1_250,
    }
    assert ledger.client.balance_of(r.scheme, r.pid) == 10_000
    assert ledger.client.merchant_totals(ledger.merchant.address) == MerchantTotals(1_250, 1_250, 0)
    assert ledger.client.is_reversed(9)
    # The id stays used: the same redemption cannot be submitted again after its reversal.
    assert ledger.client.is_redemption_used(9)
    again = ledger.redemption(r.pid, scheme_id=r.scheme, amount=1_250, redemption_id=9)
    with pytest.raises(errors.RedemptionIdUsed):
        ledger.client.transact(ledger.merchant, "redeem", again.as_tuple())


def test_reversal_by_an_issuer_is_allowed(ledger: LedgerEnv) -> None:
    r = _redeemed(ledger)
    ledger.client.transact(ledger.issuer, "reverse", *r.args())
    assert ledger.client.balance_of(r.scheme, r.pid) == 10_000
    assert ledger.client.merchant_totals(ledger.merchant.address).owed == 0


def test_reversal_of_one_batch_item(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme()
    pids = [ledger.new_pass() for _ in range(5)]
    ledger.client.transact(ledger.issuer, "issueBatch", scheme, pids, [1_000] * 5)
    requests = [
        ledger.redemption(pid, scheme_id=scheme, amount=100 * (i + 1), redemption_id=i + 1)
        for i, pid in enumerate(pids)
    ]
    result = ledger.client.transact(
        ledger.merchant, "redeemBatch", [q.as_tuple() for q in requests]
    )

    for rid in (3, 5):
        receipt, root, proof = ledger.client.reversal_proof(result.events, rid)
        assert proof != []
        ledger.client.transact(ledger.merchant, "reverse", receipt.as_tuple(), root, proof)
    balances = [ledger.client.balance_of(scheme, pid) for pid in pids]
    assert balances == [900, 800, 1_000, 600, 1_000]
    assert ledger.client.merchant_totals(ledger.merchant.address) == MerchantTotals(1_500, 800, 0)


def test_reversal_of_a_uses_redemption(ledger: LedgerEnv) -> None:
    r = _redeemed(ledger, kind=SchemeKind.USES, issue=10, amount=4, unit_value=250)
    assert r.receipt.debited == 4
    assert r.receipt.credited == 1_000
    ledger.client.transact(ledger.merchant, "reverse", *r.args())
    assert ledger.client.balance_of(r.scheme, r.pid) == 10
    assert ledger.client.merchant_totals(ledger.merchant.address).owed == 0
    assert ledger.client.scheme_of(r.scheme).committed == 2_500  # issued value stays committed


def test_reversal_of_a_discount_releases_the_reimbursement(ledger: LedgerEnv) -> None:
    r = _redeemed(
        ledger,
        kind=SchemeKind.DISCOUNT,
        issue=2,
        amount=2_000,
        discount_bps=2_500,
        reimburse_bps=10_000,
    )
    assert (r.receipt.debited, r.receipt.credited) == (1, 500)
    assert ledger.client.scheme_of(r.scheme).committed == 500

    ledger.client.transact(ledger.merchant, "reverse", *r.args())

    assert ledger.client.balance_of(r.scheme, r.pid) == 2
    assert ledger.client.scheme_of(r.scheme).committed == 0
    assert ledger.client.merchant_totals(ledger.merchant.address).owed == 0


def test_reversal_of_an_unlimited_discount_keeps_it_unlimited(ledger: LedgerEnv) -> None:
    r = _redeemed(ledger, kind=SchemeKind.DISCOUNT, issue=UNLIMITED, amount=1_000)
    assert r.receipt.debited == 0
    ledger.client.transact(ledger.merchant, "reverse", *r.args())
    assert ledger.client.balance_of(r.scheme, r.pid) == UNLIMITED
    assert ledger.client.scheme_of(r.scheme).committed == 0


def test_reversal_on_the_last_second_of_the_window(ledger: LedgerEnv) -> None:
    r = _redeemed(ledger)
    recorded = ledger.client.contract.functions.receiptRecordedAt(r.root).call()
    ledger.w3.provider.make_request(
        RPCEndpoint("evm_setNextBlockTimestamp"), [recorded + REVERSAL_WINDOW_S]
    )
    ledger.client.transact(ledger.merchant, "reverse", *r.args())
    assert ledger.client.is_reversed(r.receipt.redemption_id)


# ---------------------------------------------------------------- reversal refused


def test_reversal_twice_is_refused(ledger: LedgerEnv) -> None:
    r = _redeemed(ledger)
    ledger.client.transact(ledger.merchant, "reverse", *r.args())
    refused = _refused_reversal(ledger, r, errors.ReversalAlreadyDone)
    assert refused.values == {"redemptionId": r.receipt.redemption_id}
    _refused_reversal(ledger, r, errors.ReversalAlreadyDone, caller=ledger.issuer)


def test_reversal_after_the_window_is_refused(ledger: LedgerEnv) -> None:
    r = _redeemed(ledger)
    recorded = ledger.client.contract.functions.receiptRecordedAt(r.root).call()
    _advance(ledger, REVERSAL_WINDOW_S + 1)

    refused = _refused_reversal(ledger, r, errors.ReversalWindowClosed)

    assert refused.values == {
        "redemptionId": r.receipt.redemption_id,
        "deadline": recorded + REVERSAL_WINDOW_S,
    }
    _refused_reversal(ledger, r, errors.ReversalWindowClosed, caller=ledger.issuer)


def test_reversal_window_can_be_changed_by_the_admin(ledger: LedgerEnv) -> None:
    r = _redeemed(ledger)
    result = ledger.client.transact(ledger.admin, "setReversalWindow", 10 * REVERSAL_WINDOW_S)
    assert result.named("ReversalWindowChanged")[0].args == {"window": 10 * REVERSAL_WINDOW_S}
    assert ledger.client.reversal_window() == 10 * REVERSAL_WINDOW_S
    _advance(ledger, REVERSAL_WINDOW_S + 1)
    ledger.client.transact(ledger.merchant, "reverse", *r.args())
    assert ledger.client.is_reversed(r.receipt.redemption_id)


def test_reversal_of_unknown_id_is_refused(ledger: LedgerEnv) -> None:
    r = _redeemed(ledger)
    forged = replace(r.receipt, redemption_id=404)
    refused = _refused_reversal(ledger, r, errors.ReversalUnknownRedemption, args=r.args(forged))
    assert refused.values == {"redemptionId": 404}


@pytest.mark.parametrize(
    "field", ["debited", "credited", "pass_id", "scheme_id", "merchant", "root", "proof"]
)
def test_forged_receipt_is_refused(ledger: LedgerEnv, field: str) -> None:
    r = _redeemed(ledger, amount=1_000)
    other_scheme = ledger.new_scheme()
    receipt, root, proof = r.receipt, r.root, list(r.proof)
    if field == "debited":
        receipt = replace(receipt, debited=receipt.debited + 1)
    elif field == "credited":
        receipt = replace(receipt, credited=receipt.credited - 1)
    elif field == "pass_id":
        receipt = replace(receipt, pass_id=ledger.new_pass())
    elif field == "scheme_id":
        receipt = replace(receipt, scheme_id=other_scheme)
    elif field == "merchant":
        # The other merchant presents the receipt as its own (it passes the caller check).
        receipt = replace(receipt, merchant=ledger.other_merchant.address)
    elif field == "root":
        root = b"\x13" * 32
    else:
        proof = [b"\x14" * 32]
    caller = ledger.other_merchant if field == "merchant" else ledger.merchant

    refused = _refused_reversal(
        ledger,
        r,
        errors.ReversalReceiptInvalid,
        caller=caller,
        args=(receipt.as_tuple(), root, proof),
    )

    assert refused.values == {"redemptionId": r.receipt.redemption_id, "root": root}
    assert ledger.client.merchant_totals(ledger.other_merchant.address) == MerchantTotals(0, 0, 0)
    assert ledger.client.balance_of(other_scheme, r.pid) == 0


@pytest.mark.parametrize("caller_name", ["other_merchant", "outsider", "settler", "pass_signer"])
def test_reversal_by_someone_else_is_refused(ledger: LedgerEnv, caller_name: str) -> None:
    r = _redeemed(ledger)
    caller: LocalAccount = getattr(ledger, caller_name)
    refused = _refused_reversal(ledger, r, errors.ReversalNotMerchant, caller=caller)
    assert refused.values == {"redemptionId": r.receipt.redemption_id, "caller": caller.address}


def test_reversal_after_settlement_took_the_owed_is_refused(ledger: LedgerEnv) -> None:
    r = _redeemed(ledger, amount=1_000)
    ledger.client.transact(ledger.settler, "settle", ledger.merchant.address, 700, REF_A)

    refused = _refused_reversal(ledger, r, errors.ReversalExceedsOwed)

    assert refused.values == {"redemptionId": r.receipt.redemption_id, "owed": 300}
    assert ledger.client.merchant_totals(ledger.merchant.address) == MerchantTotals(1_000, 0, 700)


def test_reversal_within_what_is_still_owed_is_allowed_after_a_settlement(
    ledger: LedgerEnv,
) -> None:
    scheme = ledger.new_scheme()
    pid = ledger.new_pass()
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, 10_000)
    results = []
    for rid, amount in ((1, 1_000), (2, 300)):
        request = ledger.redemption(pid, scheme_id=scheme, amount=amount, redemption_id=rid)
        results.append(ledger.client.transact(ledger.merchant, "redeem", request.as_tuple()))
    ledger.client.transact(ledger.settler, "settle", ledger.merchant.address, 1_000, REF_A)

    receipt, root, proof = ledger.client.reversal_proof(results[1].events, 2)
    ledger.client.transact(ledger.merchant, "reverse", receipt.as_tuple(), root, proof)

    assert ledger.client.merchant_totals(ledger.merchant.address) == MerchantTotals(
        1_300, 300, 1_000
    )
    assert ledger.client.contract.functions.owedTo(ledger.merchant.address).call() == 0


# ---------------------------------------------------------------- settlement


def _owed(ledger: LedgerEnv, amount: int = 1_000) -> None:
    scheme = ledger.new_scheme()
    pid = ledger.new_pass()
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, amount)
    request = ledger.redemption(pid, scheme_id=scheme, amount=amount, redemption_id=amount)
    ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())


def test_settlement_records_the_payment(ledger: LedgerEnv) -> None:
    _owed(ledger, 1_000)

    result = ledger.client.transact(ledger.settler, "settle", ledger.merchant.address, 600, REF_A)
    ledger.client.transact(ledger.settler, "settle", ledger.merchant.address, 400, REF_B)

    assert result.named("Settled")[0].args == {
        "merchant": ledger.merchant.address,
        "paymentReference": REF_A,
        "amount": 600,
    }
    assert ledger.client.merchant_totals(ledger.merchant.address) == MerchantTotals(1_000, 0, 1_000)
    assert ledger.client.contract.functions.owedTo(ledger.merchant.address).call() == 0
    used = ledger.client.contract.functions.isSettlementReferenceUsed
    assert used(ledger.merchant.address, REF_A).call()
    assert not used(ledger.other_merchant.address, REF_A).call()


def test_settlement_over_owed_is_refused(ledger: LedgerEnv) -> None:
    _owed(ledger, 1_000)
    with pytest.raises(errors.SettlementExceedsOwed) as refused:
        ledger.client.transact(ledger.settler, "settle", ledger.merchant.address, 1_001, REF_A)
    assert refused.value.values == {
        "merchant": ledger.merchant.address,
        "amount": 1_001,
        "owed": 1_000,
    }
    assert ledger.client.merchant_totals(ledger.merchant.address).settled == 0
    assert not ledger.client.contract.functions.isSettlementReferenceUsed(
        ledger.merchant.address, REF_A
    ).call()


def test_settlement_of_a_merchant_owed_nothing_is_refused(ledger: LedgerEnv) -> None:
    with pytest.raises(errors.SettlementExceedsOwed):
        ledger.client.transact(ledger.settler, "settle", ledger.outsider.address, 1, REF_A)
    assert ledger.client.merchant_totals(ledger.outsider.address) == MerchantTotals(0, 0, 0)


def test_settlement_of_zero_is_refused(ledger: LedgerEnv) -> None:
    _owed(ledger)
    with pytest.raises(errors.SettlementAmountZero) as refused:
        ledger.client.transact(ledger.settler, "settle", ledger.merchant.address, 0, REF_A)
    assert refused.value.values == {"merchant": ledger.merchant.address}
    assert ledger.client.merchant_totals(ledger.merchant.address).settled == 0


def test_settlement_reference_reused_is_refused(ledger: LedgerEnv) -> None:
    _owed(ledger, 1_000)
    ledger.client.transact(ledger.settler, "settle", ledger.merchant.address, 100, REF_A)
    with pytest.raises(errors.SettlementReferenceUsed) as refused:
        ledger.client.transact(ledger.settler, "settle", ledger.merchant.address, 100, REF_A)
    assert refused.value.values == {"merchant": ledger.merchant.address, "paymentReference": REF_A}
    assert ledger.client.merchant_totals(ledger.merchant.address).settled == 100


def test_settlement_reference_is_per_merchant(ledger: LedgerEnv) -> None:
    _owed(ledger, 1_000)
    r = _redeemed(ledger, amount=500, redemption_id=77, merchant=ledger.other_merchant)
    ledger.client.transact(ledger.settler, "settle", ledger.merchant.address, 100, REF_A)
    ledger.client.transact(ledger.settler, "settle", r.receipt.merchant, 100, REF_A)
    assert ledger.client.merchant_totals(ledger.other_merchant.address).settled == 100


def test_settlement_after_reversal_is_limited_to_what_remains(ledger: LedgerEnv) -> None:
    r = _redeemed(ledger, amount=1_000)
    ledger.client.transact(ledger.merchant, "reverse", *r.args())
    with pytest.raises(errors.SettlementExceedsOwed) as refused:
        ledger.client.transact(ledger.settler, "settle", ledger.merchant.address, 1, REF_A)
    assert refused.value.values["owed"] == 0
