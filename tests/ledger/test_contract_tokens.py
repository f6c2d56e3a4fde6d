"""Pass tokens on the real contract: a short-lived token serves one checkout, a printed card
moves at most its cap, and receipt slots are reused once their reversal window has passed.

The adversary here is another operator's relayer (another merchant account) replaying a token it
saw, photographed or received in a screenshot: the contract itself must refuse it.
"""

from __future__ import annotations

import pytest
from web3.types import RPCEndpoint

from ledger import contract_errors as errors
from ledger.client import RedemptionRequest, SchemeKind
from ledger.merkle import RECEIPT_SLOTS, ReceiptLeaf, receipt_leaf_hash
from tests.ledger.conftest import LedgerEnv
from tests.ledger.test_contract_redemption import _funded, _refused, _selector, _state


def _advance(ledger: LedgerEnv, seconds: int) -> None:
    for method, params in (("evm_increaseTime", [seconds]), ("evm_mine", [])):
        assert "error" not in ledger.w3.provider.make_request(RPCEndpoint(method), params)


def _redeem(ledger: LedgerEnv, request: RedemptionRequest, *, other: bool = False) -> None:
    account = ledger.other_merchant if other else ledger.merchant
    ledger.client.transact(account, "redeem", request.as_tuple())


def _refused_at_other_merchant(
    ledger: LedgerEnv, request: RedemptionRequest, *, scheme: int, pid: bytes
) -> None:
    before = _state(ledger, scheme, pid, request.redemption_id)
    other_before = ledger.client.merchant_totals(ledger.other_merchant.address)
    with pytest.raises(errors.RedemptionTokenUsed) as refused:
        _redeem(ledger, request, other=True)
    assert refused.value.values == {"redemptionId": request.redemption_id, "passId": pid}
    assert _state(ledger, scheme, pid, request.redemption_id) == before
    assert ledger.client.merchant_totals(ledger.other_merchant.address) == other_before


# ---------------------------------------------------------------- short-lived tokens


def test_a_redeemed_app_token_is_refused_at_another_merchant(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger)
    expiry = ledger.now() + 120
    _redeem(
        ledger, ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=1, expiry=expiry)
    )

    replay = ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=2, expiry=expiry)
    _refused_at_other_merchant(ledger, replay, scheme=scheme, pid=pid)


def test_a_token_signed_by_the_holder_key_is_spent_the_same_way(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger)
    expiry = ledger.now() + 120

    def request(redemption_id: int) -> RedemptionRequest:
        return ledger.redemption(
            pid,
            scheme_id=scheme,
            amount=100,
            redemption_id=redemption_id,
            expiry=expiry,
            signer=ledger.holder,
        )

    _redeem(ledger, request(1))
    _refused_at_other_merchant(ledger, request(2), scheme=scheme, pid=pid)


def test_one_checkout_redeems_several_schemes_with_one_scan(ledger: LedgerEnv) -> None:
    budget, pid = _funded(ledger)
    uses = ledger.new_scheme(SchemeKind.USES)
    ledger.client.transact(ledger.issuer, "issue", uses, pid, 5)
    expiry = ledger.now() + 120

    _redeem(
        ledger, ledger.redemption(pid, scheme_id=budget, amount=300, redemption_id=1, expiry=expiry)
    )
    _redeem(
        ledger, ledger.redemption(pid, scheme_id=uses, amount=2, redemption_id=2, expiry=expiry)
    )

    assert ledger.client.balance_of(budget, pid) == 9_700
    assert ledger.client.balance_of(uses, pid) == 3
    replay = ledger.redemption(pid, scheme_id=uses, amount=1, redemption_id=3, expiry=expiry)
    _refused_at_other_merchant(ledger, replay, scheme=uses, pid=pid)


def test_an_older_token_is_refused_once_a_newer_one_was_redeemed(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger)
    now = ledger.now()
    older = ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=1, expiry=now + 60)
    _redeem(
        ledger,
        ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=2, expiry=now + 120),
    )

    refused = _refused(ledger, older, errors.RedemptionTokenUsed, scheme=scheme, pid=pid)
    assert refused.values["passId"] == pid
    # and a newer one still works, anywhere
    newer = ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=3, expiry=now + 121)
    _redeem(ledger, newer, other=True)
    assert ledger.client.balance_of(scheme, pid) == 9_800


def test_a_sibling_token_of_the_same_expiry_is_refused(ledger: LedgerEnv) -> None:
    """Two tokens that expire in the same second differ in their digest (here the cap)."""
    scheme, pid = _funded(ledger)
    expiry = ledger.now() + 120
    _redeem(
        ledger, ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=1, expiry=expiry)
    )
    sibling = ledger.redemption(
        pid, scheme_id=scheme, amount=100, redemption_id=2, expiry=expiry, amount_cap=500
    )
    _refused(ledger, sibling, errors.RedemptionTokenUsed, scheme=scheme, pid=pid)


def test_a_refused_redemption_does_not_spend_the_token(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger, amount=1_000)
    expiry = ledger.now() + 120
    too_much = ledger.redemption(
        pid, scheme_id=scheme, amount=5_000, redemption_id=1, expiry=expiry
    )
    _refused(ledger, too_much, errors.RedemptionAmountOverBalance, scheme=scheme, pid=pid)

    _redeem(
        ledger,
        ledger.redemption(pid, scheme_id=scheme, amount=400, redemption_id=2, expiry=expiry),
        other=True,
    )
    assert ledger.client.balance_of(scheme, pid) == 600


def test_another_operators_batch_cannot_replay_a_token(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger)
    fresh = ledger.new_pass()
    ledger.client.transact(ledger.issuer, "issue", scheme, fresh, 1_000)
    expiry = ledger.now() + 120
    _redeem(
        ledger, ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=1, expiry=expiry)
    )

    batch = [
        ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=2, expiry=expiry),
        ledger.redemption(fresh, scheme_id=scheme, amount=100, redemption_id=3, expiry=expiry),
    ]
    result = ledger.client.transact(
        ledger.other_merchant, "redeemBatch", [r.as_tuple() for r in batch]
    )

    (rejected,) = result.named("RedemptionRejected")
    assert rejected.args["redemptionId"] == 2
    assert rejected.args["reason"] == _selector(ledger, "RedemptionTokenUsed")
    assert rejected.args["detail"] == pid
    assert [e.args["redemptionId"] for e in result.named("Redeemed")] == [3]
    assert ledger.client.balance_of(scheme, pid) == 9_900
    assert not ledger.client.is_redemption_used(2)


# ---------------------------------------------------------------- printed cards


def test_a_card_token_without_a_cap_is_refused(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger)
    uncapped = ledger.redemption(
        pid, scheme_id=scheme, amount=100, redemption_id=1, serial=1, amount_cap=0
    )
    refused = _refused(ledger, uncapped, errors.RedemptionCardUncapped, scheme=scheme, pid=pid)
    assert refused.values["serial"] == 1


def test_a_card_moves_at_most_its_cap(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger)
    expiry = ledger.now() + 5 * 365 * 24 * 3600

    def card(redemption_id: int, amount: int) -> RedemptionRequest:
        return ledger.redemption(
            pid,
            scheme_id=scheme,
            amount=amount,
            redemption_id=redemption_id,
            serial=1,
            expiry=expiry,
            amount_cap=2_500,
        )

    refused = _refused(
        ledger, card(1, 2_501), errors.RedemptionAmountOverTokenCap, scheme=scheme, pid=pid
    )
    assert refused.values["amountCap"] == 2_500
    _redeem(ledger, card(2, 2_500))
    # a card is not spent by a checkout: it is bounded by its cap, at any merchant
    _redeem(ledger, card(3, 1_000), other=True)
    assert ledger.client.balance_of(scheme, pid) == 10_000 - 3_500


def test_a_card_cap_does_not_bound_a_discounts_purchase_price(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(
        ledger, SchemeKind.DISCOUNT, amount=3, discount_bps=2_500, per_redemption_cap=1_000
    )
    request = ledger.redemption(
        pid,
        scheme_id=scheme,
        amount=8_000,
        redemption_id=1,
        serial=1,
        expiry=ledger.now() + 3600,
        amount_cap=2_500,
    )
    result = ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())
    (redeemed,) = result.named("Redeemed")
    assert (redeemed.args["debited"], redeemed.args["discount"]) == (1, 1_000)  # capped grant


# ---------------------------------------------------------------- receipt slots


def _leaf(ledger: LedgerEnv, *, redemption_id: int, scheme: int, pid: bytes, amount: int) -> bytes:
    return receipt_leaf_hash(
        ReceiptLeaf(redemption_id, pid, scheme, ledger.merchant.address, amount, amount)
    )


def _same_slot(ledger: LedgerEnv, root: bytes, *, scheme: int, pid: bytes, amount: int) -> int:
    slot = int.from_bytes(root, "big") % RECEIPT_SLOTS
    for candidate in range(1_000, 1_000 + 64 * RECEIPT_SLOTS):
        leaf = _leaf(ledger, redemption_id=candidate, scheme=scheme, pid=pid, amount=amount)
        if int.from_bytes(leaf, "big") % RECEIPT_SLOTS == slot:
            return candidate
    raise AssertionError("no colliding redemption id")


def _recorded_at(ledger: LedgerEnv, root: bytes) -> int:
    return int(ledger.client.contract.functions.receiptRecordedAt(root).call())


def test_a_receipt_slot_holding_a_reversible_root_is_not_reused(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger)
    first = _leaf(ledger, redemption_id=1, scheme=scheme, pid=pid, amount=100)
    other_id = _same_slot(ledger, first, scheme=scheme, pid=pid, amount=100)
    second = _leaf(ledger, redemption_id=other_id, scheme=scheme, pid=pid, amount=100)
    expiry = ledger.now() + 120
    for redemption_id in (1, other_id):
        _redeem(
            ledger,
            ledger.redemption(
                pid, scheme_id=scheme, amount=100, redemption_id=redemption_id, expiry=expiry
            ),
        )

    assert _recorded_at(ledger, first) > 0
    assert _recorded_at(ledger, second) > 0
    for redemption_id, root in ((1, first), (other_id, second)):
        receipt = ReceiptLeaf(redemption_id, pid, scheme, ledger.merchant.address, 100, 100)
        ledger.client.transact(ledger.merchant, "reverse", receipt.as_tuple(), root, [])
    assert ledger.client.balance_of(scheme, pid) == 10_000


def test_a_receipt_slot_is_reused_once_its_window_has_passed(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger)
    first = _leaf(ledger, redemption_id=1, scheme=scheme, pid=pid, amount=100)
    other_id = _same_slot(ledger, first, scheme=scheme, pid=pid, amount=100)
    second = _leaf(ledger, redemption_id=other_id, scheme=scheme, pid=pid, amount=100)
    _redeem(ledger, ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=1))
    window = ledger.client.reversal_window()
    _advance(ledger, window + 1)

    _redeem(ledger, ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=other_id))

    assert _recorded_at(ledger, first) == 0  # its slot now holds the newer root
    assert _recorded_at(ledger, second) > 0
    old = ReceiptLeaf(1, pid, scheme, ledger.merchant.address, 100, 100)
    with pytest.raises(errors.ReversalReceiptInvalid):
        ledger.client.transact(ledger.merchant, "reverse", old.as_tuple(), first, [])
    new = ReceiptLeaf(other_id, pid, scheme, ledger.merchant.address, 100, 100)
    ledger.client.transact(ledger.merchant, "reverse", new.as_tuple(), second, [])
    assert ledger.client.balance_of(scheme, pid) == 9_900
