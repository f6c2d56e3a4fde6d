"""Redemption on the real contract: every check of `_tryRedeem`, single and batched, per kind.

A refusal raises the typed exception of ``ledger.contract_errors`` and leaves the balance, the
merchant's account, the scheme's committed budget and the redemption id's used bit as they were.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from web3.types import RPCEndpoint

from ledger import contract_errors as errors
from ledger.client import UNLIMITED, MerchantTotals, RedemptionRequest, SchemeKind
from ledger.merkle import MerkleTree, ReceiptLeaf, receipt_leaf_hash
from tests.ledger.conftest import LedgerEnv
from wallet.eip712 import Domain, PassToken, sign_pass_token


@dataclass(frozen=True)
class Snapshot:
    balance: int
    merchant: MerchantTotals
    committed: int
    used: bool


def _state(ledger: LedgerEnv, scheme: int, pid: bytes, redemption_id: int) -> Snapshot:
    return Snapshot(
        balance=ledger.client.balance_of(scheme, pid),
        merchant=ledger.client.merchant_totals(ledger.merchant.address),
        committed=ledger.client.scheme_of(scheme).committed
        if scheme <= ledger.client.scheme_count()
        else 0,
        used=ledger.client.is_redemption_used(redemption_id),
    )


def _refused(
    ledger: LedgerEnv,
    request: RedemptionRequest | tuple[object, ...],
    error: type[errors.ContractRevert],
    *,
    scheme: int,
    pid: bytes,
) -> errors.ContractRevert:
    """Submit a redemption that must be refused with ``error``; check that nothing changed."""
    data = request.as_tuple() if isinstance(request, RedemptionRequest) else request
    redemption_id = int(data[0])  # type: ignore[call-overload]
    before = _state(ledger, scheme, pid, redemption_id)
    with pytest.raises(error) as refused:
        ledger.client.transact(ledger.merchant, "redeem", data)
    assert _state(ledger, scheme, pid, redemption_id) == before
    assert refused.value.values["redemptionId"] == redemption_id
    return refused.value


def _funded(
    ledger: LedgerEnv,
    kind: SchemeKind = SchemeKind.BUDGET,
    amount: int = 10_000,
    **terms: int | bool,
) -> tuple[int, bytes]:
    scheme = ledger.new_scheme(kind, **terms)
    pid = ledger.new_pass(holder_key=ledger.holder.address, card_serial=1)
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, amount)
    return scheme, pid


def word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _selector(ledger: LedgerEnv, name: str) -> bytes:
    return next(
        sel for sel, (n, _, _) in errors.error_selectors(ledger.client.abi).items() if n == name
    )


# ---------------------------------------------------------------- accepted


def test_budget_redemption_debits_and_credits_the_merchant(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger)
    request = ledger.redemption(pid, scheme_id=scheme, amount=1_250, redemption_id=77)

    result = ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())

    (redeemed,) = result.named("Redeemed")
    assert redeemed.args == {
        "redemptionId": 77,
        "passId": pid,
        "schemeId": scheme,
        "merchant": ledger.merchant.address,
        "amount": 1_250,
        "debited": 1_250,
        "discount": 0,
        "credited": 1_250,
    }
    leaf = ReceiptLeaf(77, pid, scheme, ledger.merchant.address, 1_250, 1_250)
    (recorded,) = result.named("ReceiptsRecorded")
    assert recorded.args == {"root": receipt_leaf_hash(leaf), "count": 1}
    assert ledger.client.contract.functions.receiptRecordedAt(receipt_leaf_hash(leaf)).call() > 0
    assert ledger.client.balance_of(scheme, pid) == 8_750
    assert ledger.client.merchant_totals(ledger.merchant.address) == MerchantTotals(1_250, 0, 0)
    assert ledger.client.is_redemption_used(77)
    assert not ledger.client.is_redemption_used(76)
    assert not ledger.client.is_redemption_used(78)


def test_whole_balance_can_be_redeemed(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger, amount=500)
    request = ledger.redemption(pid, scheme_id=scheme, amount=500, redemption_id=1)
    ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())
    assert ledger.client.balance_of(scheme, pid) == 0


def test_token_signed_by_the_holder_key_is_accepted(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger)
    request = ledger.redemption(
        pid, scheme_id=scheme, amount=300, redemption_id=2, signer=ledger.holder
    )
    ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())
    assert ledger.client.balance_of(scheme, pid) == 9_700


def test_token_expiring_this_second_is_accepted(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger)
    expiry = ledger.now() + 30
    request = ledger.redemption(pid, scheme_id=scheme, amount=300, redemption_id=3, expiry=expiry)
    ledger.w3.provider.make_request(RPCEndpoint("evm_setNextBlockTimestamp"), [expiry])
    ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())
    assert ledger.client.balance_of(scheme, pid) == 9_700


def test_amount_at_the_token_cap_is_accepted(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger)
    request = ledger.redemption(pid, scheme_id=scheme, amount=400, redemption_id=4, amount_cap=400)
    ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())
    assert ledger.client.balance_of(scheme, pid) == 9_600


def test_preflight_refusal_sends_nothing(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger)
    request = ledger.redemption(pid, scheme_id=scheme, amount=10_001, redemption_id=5)
    nonce = ledger.w3.eth.get_transaction_count(ledger.merchant.address)
    with pytest.raises(errors.RedemptionAmountOverBalance):
        ledger.client.preflight(
            sender=ledger.merchant.address, data=ledger.client.redeem_data(request)
        )
    assert ledger.w3.eth.get_transaction_count(ledger.merchant.address) == nonce


# ---------------------------------------------------------------- signatures and tokens


def test_token_signed_by_an_outsider_is_refused(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger)
    request = ledger.redemption(
        pid, scheme_id=scheme, amount=100, redemption_id=10, signer=ledger.outsider
    )
    refused = _refused(ledger, request, errors.RedemptionSignerNotAllowed, scheme=scheme, pid=pid)
    assert refused.values["signer"] == ledger.outsider.address


@pytest.mark.parametrize("which", ["chain_id", "contract"])
def test_token_for_another_domain_is_refused(ledger: LedgerEnv, which: str) -> None:
    scheme, pid = _funded(ledger)
    domain = ledger.client.domain
    if which == "chain_id":
        foreign = Domain(chain_id=domain.chain_id + 1, verifying_contract=domain.verifying_contract)
    else:
        foreign = Domain(chain_id=domain.chain_id, verifying_contract="0x" + "11" * 20)
    for signer in (ledger.pass_signer, ledger.holder):
        token = PassToken(pass_id=pid, serial=0, expiry=ledger.now() + 300)
        signed = sign_pass_token(token, domain=foreign, private_key=signer.key)
        request = RedemptionRequest(redemption_id=11, scheme_id=scheme, amount=100, token=signed)
        refused = _refused(
            ledger, request, errors.RedemptionSignerNotAllowed, scheme=scheme, pid=pid
        )
        assert refused.values["signer"] not in (ledger.pass_signer.address, ledger.holder.address)


def test_token_of_another_pass_is_refused(ledger: LedgerEnv) -> None:
    scheme, pass_a = _funded(ledger)
    pass_b = ledger.new_pass(holder_key=ledger.holder.address)
    ledger.client.transact(ledger.issuer, "issue", scheme, pass_b, 10_000)
    signed_for_a = ledger.redemption(pass_a, scheme_id=scheme, amount=100, redemption_id=12)
    data = list(signed_for_a.as_tuple())
    data[1] = pass_b  # pass A's signature presented with pass B's id

    _refused(ledger, tuple(data), errors.RedemptionSignerNotAllowed, scheme=scheme, pid=pass_b)
    assert ledger.client.balance_of(scheme, pass_a) == 10_000


@pytest.mark.parametrize("field", ["expiry", "amount_cap", "serial"])
def test_token_fields_are_covered_by_the_signature(ledger: LedgerEnv, field: str) -> None:
    scheme, pid = _funded(ledger)
    request = ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=13, amount_cap=200)
    token = request.token.token
    data: list[object] = list(request.as_tuple())
    position = {"serial": 4, "expiry": 5, "amount_cap": 6}[field]
    data[position] = {"serial": 1, "expiry": token.expiry + 3_600, "amount_cap": 0}[field]
    _refused(ledger, tuple(data), errors.RedemptionSignerNotAllowed, scheme=scheme, pid=pid)


@pytest.mark.parametrize("fault", ["zero_r", "high_s"])
def test_malformed_signature_is_refused(ledger: LedgerEnv, fault: str) -> None:
    scheme, pid = _funded(ledger)
    request = ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=14)
    data = list(request.as_tuple())
    if fault == "zero_r":
        data[7] = bytes(32)
    else:
        # An s above n/2 (EIP-2 malleability) that still fits the compact form's 255 bits.
        data[8] = (2**255 - 1).to_bytes(32, "big")
    refused = _refused(
        ledger, tuple(data), errors.RedemptionSignatureInvalid, scheme=scheme, pid=pid
    )
    assert refused.values["passId"] == pid


def test_expired_token_is_refused(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger)
    expiry = ledger.now() - 1
    request = ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=15, expiry=expiry)
    refused = _refused(ledger, request, errors.RedemptionTokenExpired, scheme=scheme, pid=pid)
    assert refused.values["expiry"] == expiry


def test_revoked_card_token_is_refused(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger)
    ledger.client.transact(ledger.issuer, "replaceCard", pid, 2)
    request = ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=16, serial=1)
    refused = _refused(ledger, request, errors.RedemptionCardRevoked, scheme=scheme, pid=pid)
    assert refused.values["serial"] == 1


def test_unknown_pass_is_refused(ledger: LedgerEnv) -> None:
    scheme, _ = _funded(ledger)
    unknown = b"\x66" * 32
    request = ledger.redemption(unknown, scheme_id=scheme, amount=100, redemption_id=17)
    refused = _refused(ledger, request, errors.RedemptionPassUnknown, scheme=scheme, pid=unknown)
    assert refused.values["passId"] == unknown


def test_blocked_pass_is_refused(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger)
    ledger.client.transact(ledger.issuer, "blockPass", pid)
    request = ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=18)
    _refused(ledger, request, errors.RedemptionPassBlocked, scheme=scheme, pid=pid)


def test_unknown_scheme_is_refused(ledger: LedgerEnv) -> None:
    _, pid = _funded(ledger)
    unknown = ledger.client.scheme_count() + 1
    request = ledger.redemption(pid, scheme_id=unknown, amount=100, redemption_id=19)
    refused = _refused(ledger, request, errors.RedemptionSchemeUnknown, scheme=unknown, pid=pid)
    assert refused.values["schemeId"] == unknown


# ---------------------------------------------------------------- amounts


def test_amount_zero_is_refused(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger)
    request = ledger.redemption(pid, scheme_id=scheme, amount=0, redemption_id=20)
    refused = _refused(ledger, request, errors.RedemptionAmountZero, scheme=scheme, pid=pid)
    assert refused.values == {"redemptionId": 20, "amount": 0}


def test_amount_over_balance_is_refused(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger, amount=1_000)
    request = ledger.redemption(pid, scheme_id=scheme, amount=1_001, redemption_id=21)
    refused = _refused(ledger, request, errors.RedemptionAmountOverBalance, scheme=scheme, pid=pid)
    assert refused.values["available"] == 1_000


def test_amount_over_token_cap_is_refused(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger)
    request = ledger.redemption(pid, scheme_id=scheme, amount=401, redemption_id=22, amount_cap=400)
    refused = _refused(ledger, request, errors.RedemptionAmountOverTokenCap, scheme=scheme, pid=pid)
    assert refused.values["amountCap"] == 400


@pytest.mark.parametrize("kind", [SchemeKind.BUDGET, SchemeKind.USES])
def test_amount_over_scheme_cap_is_refused(ledger: LedgerEnv, kind: SchemeKind) -> None:
    scheme, pid = _funded(ledger, kind, amount=100, per_redemption_cap=5)
    request = ledger.redemption(pid, scheme_id=scheme, amount=6, redemption_id=23)
    refused = _refused(
        ledger, request, errors.RedemptionAmountOverSchemeCap, scheme=scheme, pid=pid
    )
    assert refused.values["perRedemptionCap"] == 5
    at_cap = ledger.redemption(pid, scheme_id=scheme, amount=5, redemption_id=23)
    ledger.client.transact(ledger.merchant, "redeem", at_cap.as_tuple())
    assert ledger.client.balance_of(scheme, pid) == 95


def test_uses_value_overflowing_uint64_is_refused(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger, SchemeKind.USES, amount=2**62, unit_value=4, budget_cap=2**100)
    request = ledger.redemption(pid, scheme_id=scheme, amount=2**62, redemption_id=24)
    refused = _refused(
        ledger, request, errors.RedemptionAmountOverSchemeCap, scheme=scheme, pid=pid
    )
    assert refused.values["perRedemptionCap"] == 2**63 - 1


# ---------------------------------------------------------------- redemption ids


def test_reused_redemption_id_is_refused(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger)
    first = ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=2**200 + 5)
    ledger.client.transact(ledger.merchant, "redeem", first.as_tuple())
    # Another amount, token and merchant: the id alone decides.
    again = ledger.redemption(pid, scheme_id=scheme, amount=50, redemption_id=2**200 + 5)
    refused = _refused(ledger, again, errors.RedemptionIdUsed, scheme=scheme, pid=pid)
    assert refused.values == {"redemptionId": 2**200 + 5, "redemptionIdAgain": 2**200 + 5}
    with pytest.raises(errors.RedemptionIdUsed):
        ledger.client.transact(ledger.other_merchant, "redeem", again.as_tuple())
    assert ledger.client.balance_of(scheme, pid) == 9_900


def test_extreme_redemption_ids(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger)
    for rid in (0, 255, 256, 2**256 - 1):
        request = ledger.redemption(pid, scheme_id=scheme, amount=1, redemption_id=rid)
        ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())
        assert ledger.client.is_redemption_used(rid)
    assert not ledger.client.is_redemption_used(1)
    assert not ledger.client.is_redemption_used(257)
    assert ledger.client.balance_of(scheme, pid) == 9_996


# ---------------------------------------------------------------- batches


def test_batch_applies_good_items_and_rejects_bad_ones(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger, amount=1_000)
    now = ledger.now()
    items = [
        ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=1),
        ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=2, expiry=now - 1),
        ledger.redemption(pid, scheme_id=scheme, amount=200, redemption_id=3),
        ledger.redemption(pid, scheme_id=scheme, amount=50, redemption_id=1),  # same id again
        ledger.redemption(
            pid, scheme_id=scheme, amount=10, redemption_id=4, signer=ledger.outsider
        ),
        ledger.redemption(pid, scheme_id=scheme, amount=5_000, redemption_id=5),
        ledger.redemption(pid, scheme_id=scheme, amount=300, redemption_id=6),
    ]

    result = ledger.client.transact(ledger.merchant, "redeemBatch", [i.as_tuple() for i in items])

    redeemed = result.named("Redeemed")
    assert [e.args["redemptionId"] for e in redeemed] == [1, 3, 6]
    rejected = [
        (e.args["redemptionId"], e.args["reason"], e.args["detail"])
        for e in result.named("RedemptionRejected")
    ]
    assert rejected == [
        (2, _selector(ledger, "RedemptionTokenExpired"), word(now - 1)),
        (1, _selector(ledger, "RedemptionIdUsed"), word(1)),
        (
            4,
            _selector(ledger, "RedemptionSignerNotAllowed"),
            bytes(12) + bytes.fromhex(ledger.outsider.address[2:]),
        ),
        (5, _selector(ledger, "RedemptionAmountOverBalance"), word(700)),
    ]
    assert ledger.client.balance_of(scheme, pid) == 400
    assert ledger.client.merchant_totals(ledger.merchant.address).redeemed == 600
    assert [ledger.client.is_redemption_used(i) for i in range(1, 7)] == [
        True,
        False,
        True,
        False,
        False,
        True,
    ]

    leaves = [
        ReceiptLeaf(
            e.args["redemptionId"],
            pid,
            scheme,
            ledger.merchant.address,
            e.args["debited"],
            e.args["credited"],
        )
        for e in redeemed
    ]
    (recorded,) = result.named("ReceiptsRecorded")
    assert recorded.args == {
        "root": MerkleTree([receipt_leaf_hash(x) for x in leaves]).root,
        "count": 3,
    }


def test_batch_of_only_bad_items_changes_nothing(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger, amount=1_000)
    items = [
        ledger.redemption(pid, scheme_id=scheme, amount=0, redemption_id=1),
        ledger.redemption(pid, scheme_id=scheme, amount=1_001, redemption_id=2),
    ]
    before = _state(ledger, scheme, pid, 1)

    result = ledger.client.transact(ledger.merchant, "redeemBatch", [i.as_tuple() for i in items])

    assert [e.name for e in result.events] == ["RedemptionRejected", "RedemptionRejected"]
    assert result.named("RedemptionRejected")[0].args["reason"] == _selector(
        ledger, "RedemptionAmountZero"
    )
    assert _state(ledger, scheme, pid, 1) == before
    assert not ledger.client.is_redemption_used(2)


def test_batch_rejection_reasons_match_single_redemption_errors(ledger: LedgerEnv) -> None:
    """Every refusal a single redeem raises is reported by a batch with the same selector."""
    scheme, pid = _funded(ledger, amount=1_000, per_redemption_cap=600)
    closed = ledger.new_scheme(open_to_all_merchants=False)
    blocked = ledger.new_pass()
    ledger.client.transact(ledger.issuer, "blockPass", blocked)
    now = ledger.now()
    later = ledger.new_scheme(valid_from=now + 3_600, valid_until=now + 7_200)
    unknown_scheme = ledger.client.scheme_count() + 1
    cases: list[tuple[str, RedemptionRequest]] = [
        (
            "RedemptionSchemeUnknown",
            ledger.redemption(pid, scheme_id=unknown_scheme, amount=1, redemption_id=101),
        ),
        (
            "RedemptionSchemeNotStarted",
            ledger.redemption(pid, scheme_id=later, amount=1, redemption_id=102),
        ),
        (
            "RedemptionMerchantNotAllowed",
            ledger.redemption(pid, scheme_id=closed, amount=1, redemption_id=103),
        ),
        (
            "RedemptionPassUnknown",
            ledger.redemption(b"\x01" * 32, scheme_id=scheme, amount=1, redemption_id=104),
        ),
        (
            "RedemptionPassBlocked",
            ledger.redemption(blocked, scheme_id=scheme, amount=1, redemption_id=105),
        ),
        (
            "RedemptionCardRevoked",
            ledger.redemption(pid, scheme_id=scheme, amount=1, redemption_id=106, serial=9),
        ),
        (
            "RedemptionAmountOverTokenCap",
            ledger.redemption(pid, scheme_id=scheme, amount=3, redemption_id=107, amount_cap=2),
        ),
        (
            "RedemptionAmountOverSchemeCap",
            ledger.redemption(pid, scheme_id=scheme, amount=601, redemption_id=108),
        ),
    ]
    for name, request in cases:
        with pytest.raises(errors.error_classes()[name]):
            ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())
    result = ledger.client.transact(
        ledger.merchant, "redeemBatch", [request.as_tuple() for _, request in cases]
    )
    reasons = [e.args["reason"] for e in result.named("RedemptionRejected")]
    assert reasons == [_selector(ledger, name) for name, _ in cases]
    assert result.named("ReceiptsRecorded") == []
    assert ledger.client.balance_of(scheme, pid) == 1_000


# ---------------------------------------------------------------- Uses schemes


def test_uses_redemption_credits_uses_times_unit_value(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger, SchemeKind.USES, amount=10, unit_value=350)
    request = ledger.redemption(pid, scheme_id=scheme, amount=3, redemption_id=30)

    result = ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())

    args = result.named("Redeemed")[0].args
    assert (args["amount"], args["debited"], args["discount"], args["credited"]) == (3, 3, 0, 1_050)
    assert ledger.client.balance_of(scheme, pid) == 7
    assert ledger.client.merchant_totals(ledger.merchant.address).redeemed == 1_050
    over = ledger.redemption(pid, scheme_id=scheme, amount=8, redemption_id=31)
    refused = _refused(ledger, over, errors.RedemptionAmountOverBalance, scheme=scheme, pid=pid)
    assert refused.values["available"] == 7


# ---------------------------------------------------------------- Discount schemes


def _discount(result_args: dict[str, int]) -> tuple[int, int, int, int]:
    return (
        result_args["amount"],
        result_args["debited"],
        result_args["discount"],
        result_args["credited"],
    )


def test_discount_bps_with_reimburse_share(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(
        ledger, SchemeKind.DISCOUNT, amount=3, discount_bps=2_500, reimburse_bps=6_000
    )
    request = ledger.redemption(pid, scheme_id=scheme, amount=2_000, redemption_id=40)

    result = ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())

    # 25% of 20.00 = 5.00 off, of which 60% = 3.00 reimbursed; one use taken.
    assert _discount(result.named("Redeemed")[0].args) == (2_000, 1, 500, 300)
    assert ledger.client.balance_of(scheme, pid) == 2
    assert ledger.client.scheme_of(scheme).committed == 300
    assert ledger.client.merchant_totals(ledger.merchant.address).redeemed == 300


def test_discount_per_redemption_cap_caps_the_discount(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(
        ledger,
        SchemeKind.DISCOUNT,
        amount=3,
        discount_bps=5_000,
        reimburse_bps=10_000,
        per_redemption_cap=700,
    )
    request = ledger.redemption(pid, scheme_id=scheme, amount=10_000, redemption_id=41)
    result = ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())
    assert _discount(result.named("Redeemed")[0].args) == (10_000, 1, 700, 700)


def test_discount_fixed_is_capped_at_the_price(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(
        ledger,
        SchemeKind.DISCOUNT,
        amount=3,
        discount_bps=0,
        discount_fixed=500,
        reimburse_bps=5_000,
    )
    cheap = ledger.redemption(pid, scheme_id=scheme, amount=300, redemption_id=42)
    dear = ledger.redemption(pid, scheme_id=scheme, amount=2_000, redemption_id=43)
    first = ledger.client.transact(ledger.merchant, "redeem", cheap.as_tuple())
    second = ledger.client.transact(ledger.merchant, "redeem", dear.as_tuple())
    assert _discount(first.named("Redeemed")[0].args) == (300, 1, 300, 150)
    assert _discount(second.named("Redeemed")[0].args) == (2_000, 1, 500, 250)
    assert ledger.client.balance_of(scheme, pid) == 1


def test_discount_unlimited_uses_never_run_out(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger, SchemeKind.DISCOUNT, amount=UNLIMITED, discount_bps=1_000)
    for rid in range(50, 55):
        request = ledger.redemption(pid, scheme_id=scheme, amount=1_000, redemption_id=rid)
        result = ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())
        assert _discount(result.named("Redeemed")[0].args) == (1_000, 0, 100, 100)
    assert ledger.client.balance_of(scheme, pid) == UNLIMITED
    assert ledger.client.scheme_of(scheme).committed == 500


def test_discount_uses_run_out(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(ledger, SchemeKind.DISCOUNT, amount=1)
    ledger.client.transact(
        ledger.merchant,
        "redeem",
        ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=60).as_tuple(),
    )
    again = ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=61)
    refused = _refused(ledger, again, errors.RedemptionAmountOverBalance, scheme=scheme, pid=pid)
    assert refused.values["available"] == 0


def test_discount_without_entitlement_is_refused(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme(SchemeKind.DISCOUNT)
    pid = ledger.new_pass()
    request = ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=62)
    _refused(ledger, request, errors.RedemptionAmountOverBalance, scheme=scheme, pid=pid)


def test_discount_budget_exhausted_is_refused(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(
        ledger,
        SchemeKind.DISCOUNT,
        amount=UNLIMITED,
        discount_bps=5_000,
        reimburse_bps=10_000,
        budget_cap=100,
    )
    ledger.client.transact(
        ledger.merchant,
        "redeem",
        ledger.redemption(pid, scheme_id=scheme, amount=150, redemption_id=70).as_tuple(),
    )
    assert ledger.client.scheme_of(scheme).committed == 75

    over = ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=71)
    refused = _refused(ledger, over, errors.RedemptionBudgetExhausted, scheme=scheme, pid=pid)
    assert refused.values["available"] == 0  # a terminal is not told what is left (25)

    exact = ledger.redemption(pid, scheme_id=scheme, amount=50, redemption_id=71)
    ledger.client.transact(ledger.merchant, "redeem", exact.as_tuple())
    assert ledger.client.scheme_of(scheme).committed == 100


def test_discount_without_reimbursement_commits_nothing(ledger: LedgerEnv) -> None:
    scheme, pid = _funded(
        ledger, SchemeKind.DISCOUNT, amount=2, discount_bps=3_000, reimburse_bps=0, budget_cap=1
    )
    request = ledger.redemption(pid, scheme_id=scheme, amount=1_000, redemption_id=72)
    result = ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())
    assert _discount(result.named("Redeemed")[0].args) == (1_000, 1, 300, 0)
    assert ledger.client.scheme_of(scheme).committed == 0


def test_request_tuple_matches_the_signed_token(ledger: LedgerEnv) -> None:
    """Sanity check of the test helper: the tuple carries the token's own fields."""
    scheme, pid = _funded(ledger)
    request = ledger.redemption(
        pid, scheme_id=scheme, amount=1, redemption_id=1, serial=1, amount_cap=9
    )
    data = request.as_tuple()
    token = request.token.token
    assert data[1:7] == (pid, scheme, 1, token.serial, token.expiry, token.amount_cap)
