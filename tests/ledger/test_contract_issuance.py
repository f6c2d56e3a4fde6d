"""Issuance on the real contract: one pass, a batch, a cohort by Merkle root, claims and budgets."""

from __future__ import annotations

import pytest

from ledger import contract_errors as errors
from ledger.client import UNLIMITED, SchemeKind
from ledger.events import DecodedEvent
from ledger.merkle import CohortLeaf, MerkleTree, cohort_leaf_hash
from tests.ledger.conftest import LedgerEnv


class Cohort:
    """A cohort tree built with ``ledger.merkle`` and the claims its holders present."""

    def __init__(self, leaves: list[CohortLeaf]) -> None:
        self.leaves = leaves
        self.tree = MerkleTree([cohort_leaf_hash(leaf) for leaf in leaves])
        self.root = self.tree.root
        self.total = sum(leaf.amount for leaf in leaves)

    def claim(self, index: int) -> tuple[bytes, int, bytes, int, list[bytes]]:
        leaf = self.leaves[index]
        return (self.root, leaf.index, leaf.pass_id, leaf.amount, self.tree.proof(index))


def _issued(events: list[DecodedEvent]) -> list[tuple[int, bytes, int]]:
    """(scheme, pass, amount) of every issuance, whether logged one by one or as one batch event."""
    issued: list[tuple[int, bytes, int]] = []
    for event in events:
        if event.name == "EntitlementIssued":
            issued.append((event.args["schemeId"], event.args["passId"], event.args["amount"]))
        elif event.name == "EntitlementsIssued":
            scheme = event.args["schemeId"]
            pairs = zip(event.args["passIds"], event.args["amounts"], strict=True)
            issued += [(scheme, pid, amount) for pid, amount in pairs]
    return issued


def _cohort(ledger: LedgerEnv, amounts: list[int]) -> Cohort:
    return Cohort([CohortLeaf(i, ledger.new_pass(), amount) for i, amount in enumerate(amounts)])


def _issue_cohort(ledger: LedgerEnv, scheme: int, cohort: Cohort) -> None:
    ledger.client.transact(
        ledger.issuer, "issueCohort", scheme, cohort.root, len(cohort.leaves), cohort.total
    )


# ---------------------------------------------------------------- one pass


def test_issue_credits_the_pass_and_commits_the_budget(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme(budget_cap=10_000)
    pid = ledger.new_pass()

    result = ledger.client.transact(ledger.issuer, "issue", scheme, pid, 4_000)
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, 1_000)

    assert result.named("EntitlementIssued")[0].args == {
        "schemeId": scheme,
        "passId": pid,
        "amount": 4_000,
    }
    assert ledger.client.balance_of(scheme, pid) == 5_000
    assert ledger.client.scheme_of(scheme).committed == 5_000


def test_issue_uses_commits_uses_times_unit_value(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme(SchemeKind.USES, unit_value=350, budget_cap=3_500)
    pid = ledger.new_pass()
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, 10)
    assert ledger.client.balance_of(scheme, pid) == 10
    assert ledger.client.scheme_of(scheme).committed == 3_500

    with pytest.raises(errors.SchemeBudgetExceeded) as refused:
        ledger.client.transact(ledger.issuer, "issue", scheme, pid, 1)
    assert refused.value.values == {"schemeId": scheme, "requested": 350, "available": 0}
    assert ledger.client.balance_of(scheme, pid) == 10


def test_issue_discount_commits_nothing_up_front(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme(SchemeKind.DISCOUNT, budget_cap=1)
    pid = ledger.new_pass()
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, UNLIMITED)
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, 5)  # stays unlimited
    assert ledger.client.balance_of(scheme, pid) == UNLIMITED
    assert ledger.client.scheme_of(scheme).committed == 0


def test_issue_over_budget_cap_is_refused(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme(budget_cap=10_000)
    pid = ledger.new_pass()
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, 9_000)

    with pytest.raises(errors.SchemeBudgetExceeded) as refused:
        ledger.client.transact(ledger.issuer, "issue", scheme, pid, 1_001)

    assert refused.value.values == {"schemeId": scheme, "requested": 1_001, "available": 1_000}
    assert ledger.client.balance_of(scheme, pid) == 9_000
    assert ledger.client.scheme_of(scheme).committed == 9_000
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, 1_000)  # exactly the cap is fine
    assert ledger.client.scheme_of(scheme).committed == 10_000


def test_issue_zero_is_refused(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme()
    pid = ledger.new_pass()
    with pytest.raises(errors.IssuanceAmountZero) as refused:
        ledger.client.transact(ledger.issuer, "issue", scheme, pid, 0)
    assert refused.value.values == {"passId": pid}
    assert ledger.client.balance_of(scheme, pid) == 0
    assert ledger.client.scheme_of(scheme).committed == 0


def test_issue_to_unknown_scheme_is_refused(ledger: LedgerEnv) -> None:
    pid = ledger.new_pass()
    unknown = ledger.client.scheme_count() + 1
    with pytest.raises(errors.SchemeUnknown):
        ledger.client.transact(ledger.issuer, "issue", unknown, pid, 10)
    with pytest.raises(errors.SchemeUnknown):
        ledger.client.transact(ledger.issuer, "issueBatch", unknown, [pid], [10])
    with pytest.raises(errors.SchemeUnknown):
        ledger.client.transact(ledger.issuer, "issueCohort", unknown, b"\x01" * 32, 1, 10)
    assert ledger.client.balance_of(unknown, pid) == 0


# ---------------------------------------------------------------- batch


def test_issue_batch_credits_every_pass(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme()
    pids = [ledger.new_pass() for _ in range(4)]
    amounts = [100, 200, 300, 400]

    result = ledger.client.transact(ledger.issuer, "issueBatch", scheme, pids, amounts)

    assert _issued(result.events) == [(scheme, p, a) for p, a in zip(pids, amounts, strict=True)]
    assert [ledger.client.balance_of(scheme, pid) for pid in pids] == amounts
    assert ledger.client.scheme_of(scheme).committed == 1_000


def test_issue_batch_same_pass_twice_adds_up(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme()
    pid = ledger.new_pass()
    result = ledger.client.transact(ledger.issuer, "issueBatch", scheme, [pid, pid], [100, 250])
    assert _issued(result.events) == [(scheme, pid, 100), (scheme, pid, 250)]
    assert ledger.client.balance_of(scheme, pid) == 350


def test_issue_batch_length_mismatch_is_refused(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme()
    pids = [ledger.new_pass() for _ in range(2)]
    with pytest.raises(errors.IssuanceLengthMismatch) as refused:
        ledger.client.transact(ledger.issuer, "issueBatch", scheme, pids, [100])
    assert refused.value.values == {"passIds": 2, "amounts": 1}
    assert [ledger.client.balance_of(scheme, pid) for pid in pids] == [0, 0]
    assert ledger.client.scheme_of(scheme).committed == 0


def test_issue_batch_with_a_zero_amount_changes_nothing(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme()
    pids = [ledger.new_pass() for _ in range(3)]
    with pytest.raises(errors.IssuanceAmountZero) as refused:
        ledger.client.transact(ledger.issuer, "issueBatch", scheme, pids, [100, 0, 100])
    assert refused.value.values == {"passId": pids[1]}
    assert [ledger.client.balance_of(scheme, pid) for pid in pids] == [0, 0, 0]
    assert ledger.client.scheme_of(scheme).committed == 0


def test_issue_batch_over_budget_cap_changes_nothing(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme(budget_cap=1_000)
    pids = [ledger.new_pass() for _ in range(3)]
    with pytest.raises(errors.SchemeBudgetExceeded) as refused:
        ledger.client.transact(ledger.issuer, "issueBatch", scheme, pids, [400, 400, 201])
    assert refused.value.values == {"schemeId": scheme, "requested": 1_001, "available": 1_000}
    assert [ledger.client.balance_of(scheme, pid) for pid in pids] == [0, 0, 0]
    assert ledger.client.scheme_of(scheme).committed == 0


def test_issue_batch_uses_over_budget_cap_is_refused(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme(SchemeKind.USES, unit_value=100, budget_cap=1_000)
    pids = [ledger.new_pass() for _ in range(2)]
    with pytest.raises(errors.SchemeBudgetExceeded) as refused:
        ledger.client.transact(ledger.issuer, "issueBatch", scheme, pids, [5, 6])
    assert refused.value.values["requested"] == 1_100
    ledger.client.transact(ledger.issuer, "issueBatch", scheme, pids, [5, 5])
    assert ledger.client.scheme_of(scheme).committed == 1_000


def test_issue_empty_batch_is_a_no_op(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme()
    result = ledger.client.transact(ledger.issuer, "issueBatch", scheme, [], [])
    assert _issued(result.events) == []
    assert ledger.client.scheme_of(scheme).committed == 0


# ---------------------------------------------------------------- cohorts


def test_issue_cohort_commits_the_total_and_holders_claim(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme(budget_cap=10_000)
    cohort = _cohort(ledger, [1_000, 2_000, 500, 1_500, 750])

    result = ledger.client.transact(
        ledger.issuer, "issueCohort", scheme, cohort.root, len(cohort.leaves), cohort.total
    )

    assert result.named("CohortIssued")[0].args == {
        "schemeId": scheme,
        "root": cohort.root,
        "holderCount": 5,
        "totalAmount": 5_750,
    }
    assert ledger.client.scheme_of(scheme).committed == 5_750
    assert ledger.client.contract.functions.cohortScheme(cohort.root).call() == scheme
    for index, leaf in enumerate(cohort.leaves):
        assert ledger.client.balance_of(scheme, leaf.pass_id) == 0
        # Anyone may submit a valid proof: here an account with no role at all.
        claimed = ledger.client.transact(ledger.outsider, "claim", cohort.claim(index))
        assert claimed.named("CohortClaimed")[0].args == {
            "root": cohort.root,
            "index": index,
            "passId": leaf.pass_id,
            "amount": leaf.amount,
        }
        assert ledger.client.balance_of(scheme, leaf.pass_id) == leaf.amount
        assert ledger.client.is_claimed(cohort.root, index)
    assert ledger.client.scheme_of(scheme).committed == 5_750


def test_cohort_of_one(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme()
    cohort = _cohort(ledger, [1_234])
    _issue_cohort(ledger, scheme, cohort)
    assert cohort.claim(0)[4] == []
    ledger.client.transact(ledger.outsider, "claim", cohort.claim(0))
    assert ledger.client.balance_of(scheme, cohort.leaves[0].pass_id) == 1_234


def test_claim_twice_is_refused(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme()
    cohort = _cohort(ledger, [100, 200, 300])
    _issue_cohort(ledger, scheme, cohort)
    ledger.client.transact(ledger.holder, "claim", cohort.claim(1))

    with pytest.raises(errors.CohortAlreadyClaimed) as refused:
        ledger.client.transact(ledger.holder, "claim", cohort.claim(1))

    assert refused.value.values == {"root": cohort.root, "index": 1}
    assert ledger.client.balance_of(scheme, cohort.leaves[1].pass_id) == 200


@pytest.mark.parametrize("tamper", ["amount", "index", "pass", "proof", "empty_proof"])
def test_claim_with_invalid_proof_is_refused(ledger: LedgerEnv, tamper: str) -> None:
    scheme = ledger.new_scheme()
    cohort = _cohort(ledger, [100, 200, 300, 400])
    _issue_cohort(ledger, scheme, cohort)
    root, index, pid, amount, proof = cohort.claim(2)
    if tamper == "amount":
        amount += 1
    elif tamper == "index":
        index = 3
    elif tamper == "pass":
        pid = cohort.leaves[0].pass_id
    elif tamper == "proof":
        proof = [bytes(32), *proof[1:]]
    else:
        proof = []

    with pytest.raises(errors.CohortProofInvalid) as refused:
        ledger.client.transact(ledger.holder, "claim", (root, index, pid, amount, proof))

    assert refused.value.values == {"root": root, "index": index}
    for position, leaf in enumerate(cohort.leaves):
        assert ledger.client.balance_of(scheme, leaf.pass_id) == 0
        assert not ledger.client.is_claimed(root, position)


def test_claim_of_unknown_cohort_is_refused(ledger: LedgerEnv) -> None:
    cohort = _cohort(ledger, [100, 200])
    with pytest.raises(errors.CohortUnknown) as refused:
        ledger.client.transact(ledger.holder, "claim", cohort.claim(0))
    assert refused.value.values == {"root": cohort.root}
    assert not ledger.client.is_claimed(cohort.root, 0)


def test_issue_cohort_twice_is_refused(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme()
    cohort = _cohort(ledger, [100, 200])
    _issue_cohort(ledger, scheme, cohort)
    other = ledger.new_scheme()

    with pytest.raises(errors.CohortExists) as refused:
        ledger.client.transact(ledger.issuer, "issueCohort", other, cohort.root, 2, 300)

    assert refused.value.values == {"root": cohort.root}
    assert ledger.client.contract.functions.cohortScheme(cohort.root).call() == scheme
    assert ledger.client.scheme_of(other).committed == 0


def test_issue_cohort_zero_total_is_refused(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme()
    root = b"\x09" * 32
    with pytest.raises(errors.IssuanceAmountZero) as refused:
        ledger.client.transact(ledger.issuer, "issueCohort", scheme, root, 3, 0)
    assert refused.value.values == {"passId": root}
    assert ledger.client.contract.functions.cohortScheme(root).call() == 0


def test_issue_cohort_over_budget_cap_is_refused(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme(budget_cap=1_000)
    cohort = _cohort(ledger, [600, 401])
    with pytest.raises(errors.SchemeBudgetExceeded) as refused:
        _issue_cohort(ledger, scheme, cohort)
    assert refused.value.values == {"schemeId": scheme, "requested": 1_001, "available": 1_000}
    assert ledger.client.contract.functions.cohortScheme(cohort.root).call() == 0
    assert ledger.client.scheme_of(scheme).committed == 0
    with pytest.raises(errors.CohortUnknown):
        ledger.client.transact(ledger.holder, "claim", cohort.claim(0))


def test_issue_cohort_uses_commits_total_times_unit_value(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme(SchemeKind.USES, unit_value=250, budget_cap=10_000)
    cohort = _cohort(ledger, [10, 20])
    _issue_cohort(ledger, scheme, cohort)
    assert ledger.client.scheme_of(scheme).committed == 7_500
    with pytest.raises(errors.SchemeBudgetExceeded):
        ledger.client.transact(ledger.issuer, "issueCohort", scheme, b"\x05" * 32, 1, 11)


# ---------------------------------------------------------------- claim and redeem


def test_claim_and_redeem_claims_on_first_use_only(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme()
    cohort = _cohort(ledger, [1_000, 2_000, 3_000])
    _issue_cohort(ledger, scheme, cohort)
    pid = cohort.leaves[1].pass_id

    first = ledger.redemption(pid, scheme_id=scheme, amount=400, redemption_id=1)
    result = ledger.client.transact(
        ledger.merchant, "claimAndRedeem", cohort.claim(1), first.as_tuple()
    )
    assert [e.name for e in result.events] == ["CohortClaimed", "Redeemed", "ReceiptsRecorded"]
    assert ledger.client.balance_of(scheme, pid) == 1_600

    # Already claimed: the claim is skipped, not refused, and not credited twice.
    second = ledger.redemption(pid, scheme_id=scheme, amount=600, redemption_id=2)
    result = ledger.client.transact(
        ledger.merchant, "claimAndRedeem", cohort.claim(1), second.as_tuple()
    )
    assert [e.name for e in result.events] == ["Redeemed", "ReceiptsRecorded"]
    assert ledger.client.balance_of(scheme, pid) == 1_000
    assert ledger.client.merchant_totals(ledger.merchant.address).owed == 1_000


def test_claim_and_redeem_with_invalid_proof_changes_nothing(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme()
    cohort = _cohort(ledger, [1_000, 2_000])
    _issue_cohort(ledger, scheme, cohort)
    root, index, pid, _amount, proof = cohort.claim(0)
    request = ledger.redemption(pid, scheme_id=scheme, amount=400, redemption_id=3)

    with pytest.raises(errors.CohortProofInvalid):
        ledger.client.transact(
            ledger.merchant, "claimAndRedeem", (root, index, pid, 5_000, proof), request.as_tuple()
        )

    assert ledger.client.balance_of(scheme, pid) == 0
    assert not ledger.client.is_claimed(root, 0)
    assert not ledger.client.is_redemption_used(3)


def test_claim_and_redeem_refused_redemption_undoes_the_claim(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme()
    cohort = _cohort(ledger, [1_000, 2_000])
    _issue_cohort(ledger, scheme, cohort)
    pid = cohort.leaves[0].pass_id
    request = ledger.redemption(pid, scheme_id=scheme, amount=1_001, redemption_id=4)

    with pytest.raises(errors.RedemptionAmountOverBalance) as refused:
        ledger.client.transact(
            ledger.merchant, "claimAndRedeem", cohort.claim(0), request.as_tuple()
        )

    assert refused.value.values == {"redemptionId": 4, "available": 1_000}
    assert not ledger.client.is_claimed(cohort.root, 0)
    assert ledger.client.balance_of(scheme, pid) == 0


# ---------------------------------------------------------------- findings


def test_cohort_claims_cannot_exceed_the_committed_total(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme(budget_cap=1_000)
    cohort = _cohort(ledger, [1_000, 1_000])  # the tree holds 2,000
    ledger.client.transact(ledger.issuer, "issueCohort", scheme, cohort.root, 2, 1_000)
    assert ledger.client.scheme_of(scheme).committed == 1_000
    ledger.client.transact(ledger.outsider, "claim", cohort.claim(0))

    with pytest.raises(errors.CohortTotalExceeded):
        ledger.client.transact(ledger.outsider, "claim", cohort.claim(1))

    credited = sum(ledger.client.balance_of(scheme, leaf.pass_id) for leaf in cohort.leaves)
    assert credited <= ledger.client.scheme_of(scheme).terms.budget_cap


def test_budget_balance_cannot_exceed_max_amount(ledger: LedgerEnv) -> None:
    max_amount = 2**63 - 1
    scheme = ledger.new_scheme(budget_cap=2**65)
    pid = ledger.new_pass()
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, max_amount)
    with pytest.raises(errors.EntitlementOverflow):
        ledger.client.transact(ledger.issuer, "issue", scheme, pid, 1)
    assert ledger.client.balance_of(scheme, pid) == max_amount
    request = ledger.redemption(pid, scheme_id=scheme, amount=1_000, redemption_id=1)

    result = ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())

    assert result.named("Redeemed")[0].args["debited"] == 1_000
    assert ledger.client.balance_of(scheme, pid) == max_amount - 1_000


def test_redemption_amount_and_card_serial_above_max_amount_are_refused(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme(kind=SchemeKind.DISCOUNT)
    pid = ledger.new_pass()
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, 5)
    request = ledger.redemption(pid, scheme_id=scheme, amount=2**63, redemption_id=1)
    with pytest.raises(errors.RedemptionAmountOverSchemeCap):
        ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())
    with pytest.raises(errors.CardSerialInvalid):
        ledger.client.transact(ledger.issuer, "replaceCard", pid, 2**63)
    assert ledger.client.balance_of(scheme, pid) == 5
