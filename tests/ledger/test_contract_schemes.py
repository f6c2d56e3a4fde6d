"""Schemes on the real contract: terms checked at creation, validity windows, merchants, expiry."""

from __future__ import annotations

import pytest
from web3.types import RPCEndpoint

from ledger import contract_errors as errors
from ledger.client import SchemeKind, SchemeTerms
from tests.ledger.conftest import LedgerEnv

DAY = 24 * 3600


def _advance(ledger: LedgerEnv, seconds: int) -> None:
    ledger.w3.provider.make_request(RPCEndpoint("evm_increaseTime"), [seconds])
    ledger.w3.provider.make_request(RPCEndpoint("evm_mine"), [])


def _terms(ledger: LedgerEnv, kind: SchemeKind, **overrides: int | bool) -> SchemeTerms:
    now = ledger.now()
    values: dict[str, int | bool] = {
        "valid_from": now - 60,
        "valid_until": now + 30 * DAY,
        "budget_cap": 1_000_000,
        "open_to_all_merchants": True,
    }
    if kind is SchemeKind.USES:
        values["unit_value"] = 350
    if kind is SchemeKind.DISCOUNT:
        values["discount_bps"] = 2_000
        values["reimburse_bps"] = 5_000
        values["per_redemption_cap"] = 1_000
    values.update(overrides)
    return SchemeTerms(kind=kind, **values)  # type: ignore[arg-type]


# ---------------------------------------------------------------- creation


@pytest.mark.parametrize("kind", list(SchemeKind))
def test_create_scheme_stores_the_terms(ledger: LedgerEnv, kind: SchemeKind) -> None:
    terms = _terms(ledger, kind, per_redemption_cap=900, open_to_all_merchants=False)
    before = ledger.client.scheme_count()

    result = ledger.client.transact(ledger.issuer, "createScheme", terms.as_tuple())

    (event,) = result.named("SchemeCreated")
    scheme_id = event.args["schemeId"]
    assert scheme_id == before + 1 == ledger.client.scheme_count()
    assert tuple(event.args["terms"]) == terms.as_tuple()
    state = ledger.client.scheme_of(scheme_id)
    assert state.terms == terms
    assert state.committed == 0


def test_scheme_ids_run_from_one(ledger: LedgerEnv) -> None:
    first = ledger.new_scheme()
    second = ledger.new_scheme(SchemeKind.USES)
    assert second == first + 1
    assert ledger.client.scheme_count() == second


def test_unknown_scheme_is_refused_on_read(ledger: LedgerEnv) -> None:
    unknown = ledger.client.scheme_count() + 1
    with pytest.raises(errors.SchemeUnknown) as refused:
        ledger.client.scheme_of(unknown)
    assert refused.value.values == {"schemeId": unknown}
    with pytest.raises(errors.SchemeUnknown):
        ledger.client.scheme_of(0)


WINDOW = "validUntil must be after validFrom"
BUDGET = "budgetCap must be positive"
BPS = "basis points must be at most 10000"
ONE_OF = "a discount needs exactly one of discountBps and discountFixed"
NOT_DISCOUNT = "only a Discount scheme takes discount terms"
NEEDS_UNIT = "a Uses scheme needs a unitValue"
NOT_USES = "only a Uses scheme takes a unitValue"
B, U, D = SchemeKind.BUDGET, SchemeKind.USES, SchemeKind.DISCOUNT

# One case per rule of `_checkTerms`, with the reason the contract gives.
INVALID_TERMS: list[tuple[str, SchemeKind, dict[str, int | bool], str]] = [
    ("until_equals_from", B, {"valid_from": 10, "valid_until": 10}, WINDOW),
    ("until_before_from", B, {"valid_from": 10, "valid_until": 9}, WINDOW),
    ("until_zero", B, {"valid_from": 0, "valid_until": 0}, WINDOW),
    ("budget_zero", B, {"budget_cap": 0}, BUDGET),
    ("discount_bps_over_100pct", D, {"discount_bps": 10_001}, BPS),
    ("reimburse_bps_over_100pct", D, {"reimburse_bps": 10_001}, BPS),
    ("discount_neither", D, {"discount_bps": 0, "discount_fixed": 0}, ONE_OF),
    ("discount_both", D, {"discount_bps": 100, "discount_fixed": 100}, ONE_OF),
    (
        "percentage_discount_without_cap",
        D,
        {"discount_bps": 100, "per_redemption_cap": 0},
        "a percentage discount needs a perRedemptionCap",
    ),
    ("budget_with_discount_bps", B, {"discount_bps": 100}, NOT_DISCOUNT),
    ("budget_with_discount_fixed", B, {"discount_fixed": 100}, NOT_DISCOUNT),
    ("uses_with_reimburse_bps", U, {"reimburse_bps": 100}, NOT_DISCOUNT),
    ("uses_without_unit_value", U, {"unit_value": 0}, NEEDS_UNIT),
    ("budget_with_unit_value", B, {"unit_value": 1}, NOT_USES),
    ("discount_with_unit_value", D, {"unit_value": 1}, NOT_USES),
]


@pytest.mark.parametrize(
    ("kind", "overrides", "reason"),
    [case[1:] for case in INVALID_TERMS],
    ids=[case[0] for case in INVALID_TERMS],
)
def test_invalid_terms_are_refused(
    ledger: LedgerEnv, kind: SchemeKind, overrides: dict[str, int | bool], reason: str
) -> None:
    before = ledger.client.scheme_count()
    terms = _terms(ledger, kind, **overrides)

    with pytest.raises(errors.SchemeTermsInvalid) as refused:
        ledger.client.transact(ledger.issuer, "createScheme", terms.as_tuple())

    assert refused.value.values == {"reason": reason}
    assert ledger.client.scheme_count() == before


@pytest.mark.parametrize(
    ("kind", "overrides"),
    [
        (SchemeKind.DISCOUNT, {"discount_bps": 10_000, "reimburse_bps": 10_000}),
        (SchemeKind.DISCOUNT, {"discount_bps": 0, "discount_fixed": 500, "reimburse_bps": 0}),
        (SchemeKind.BUDGET, {"budget_cap": 1, "valid_from": 0, "valid_until": 1}),
    ],
    ids=["bps_at_100pct", "fixed_no_reimburse", "smallest"],
)
def test_boundary_terms_are_accepted(
    ledger: LedgerEnv, kind: SchemeKind, overrides: dict[str, int | bool]
) -> None:
    terms = _terms(ledger, kind, **overrides)
    result = ledger.client.transact(ledger.issuer, "createScheme", terms.as_tuple())
    assert ledger.client.scheme_of(result.named("SchemeCreated")[0].args["schemeId"]).terms == terms


# ---------------------------------------------------------------- validity window


def test_scheme_not_yet_valid_refuses_redemption_until_it_starts(ledger: LedgerEnv) -> None:
    now = ledger.now()
    scheme = ledger.new_scheme(valid_from=now + DAY, valid_until=now + 2 * DAY)
    pid = ledger.new_pass()
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, 1_000)  # issuing ahead is allowed
    early = ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=1)

    with pytest.raises(errors.RedemptionSchemeNotStarted) as refused:
        ledger.client.transact(ledger.merchant, "redeem", early.as_tuple())
    assert refused.value.values == {"redemptionId": 1, "validFrom": now + DAY}
    assert ledger.client.balance_of(scheme, pid) == 1_000
    assert not ledger.client.is_redemption_used(1)

    _advance(ledger, DAY + 1)
    on_time = ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=1)
    ledger.client.transact(ledger.merchant, "redeem", on_time.as_tuple())
    assert ledger.client.balance_of(scheme, pid) == 900


def test_ended_scheme_refuses_redemption_and_issuance(ledger: LedgerEnv) -> None:
    now = ledger.now()
    scheme = ledger.new_scheme(valid_until=now + DAY)
    pid = ledger.new_pass()
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, 1_000)
    committed = ledger.client.scheme_of(scheme).committed
    _advance(ledger, DAY + 1)

    late = ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=2)
    with pytest.raises(errors.RedemptionSchemeEnded) as refused:
        ledger.client.transact(ledger.merchant, "redeem", late.as_tuple())
    assert refused.value.values == {"redemptionId": 2, "validUntil": now + DAY}

    with pytest.raises(errors.SchemeEnded) as ended:
        ledger.client.transact(ledger.issuer, "issue", scheme, pid, 1)
    assert ended.value.values == {"schemeId": scheme, "validUntil": now + DAY}
    with pytest.raises(errors.SchemeEnded):
        ledger.client.transact(ledger.issuer, "issueBatch", scheme, [pid], [1])
    with pytest.raises(errors.SchemeEnded):
        ledger.client.transact(ledger.issuer, "issueCohort", scheme, b"\x01" * 32, 1, 1)

    assert ledger.client.balance_of(scheme, pid) == 1_000
    assert ledger.client.scheme_of(scheme).committed == committed
    assert not ledger.client.is_redemption_used(2)


def test_last_valid_second_still_redeems(ledger: LedgerEnv) -> None:
    now = ledger.now()
    scheme = ledger.new_scheme(valid_until=now + 100)
    pid = ledger.new_pass()
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, 1_000)
    request = ledger.redemption(
        pid, scheme_id=scheme, amount=100, redemption_id=3, expiry=now + 500
    )
    ledger.w3.provider.make_request(RPCEndpoint("evm_setNextBlockTimestamp"), [now + 100])
    ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())
    assert ledger.client.balance_of(scheme, pid) == 900


# ---------------------------------------------------------------- merchants


def test_closed_scheme_accepts_only_allowed_merchants(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme(open_to_all_merchants=False)
    pid = ledger.new_pass()
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, 1_000)
    request = ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=5)

    with pytest.raises(errors.RedemptionMerchantNotAllowed) as refused:
        ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())
    assert refused.value.values == {"redemptionId": 5, "merchant": ledger.merchant.address}
    assert ledger.client.balance_of(scheme, pid) == 1_000

    result = ledger.client.transact(
        ledger.issuer, "setMerchantAllowed", scheme, ledger.merchant.address, True
    )
    assert result.named("MerchantAllowanceChanged")[0].args == {
        "schemeId": scheme,
        "merchant": ledger.merchant.address,
        "allowed": True,
    }
    assert ledger.client.contract.functions.isMerchantAllowed(
        scheme, ledger.merchant.address
    ).call()
    ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())
    assert ledger.client.balance_of(scheme, pid) == 900

    # Allowing one merchant does not allow another.
    other = ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=6)
    with pytest.raises(errors.RedemptionMerchantNotAllowed):
        ledger.client.transact(ledger.other_merchant, "redeem", other.as_tuple())

    ledger.client.transact(
        ledger.issuer, "setMerchantAllowed", scheme, ledger.merchant.address, False
    )
    again = ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=7)
    with pytest.raises(errors.RedemptionMerchantNotAllowed):
        ledger.client.transact(ledger.merchant, "redeem", again.as_tuple())
    assert ledger.client.balance_of(scheme, pid) == 900


def test_set_merchant_allowed_on_unknown_scheme_is_refused(ledger: LedgerEnv) -> None:
    unknown = ledger.client.scheme_count() + 1
    with pytest.raises(errors.SchemeUnknown) as refused:
        ledger.client.transact(
            ledger.issuer, "setMerchantAllowed", unknown, ledger.merchant.address, True
        )
    assert refused.value.values == {"schemeId": unknown}
    assert not ledger.client.contract.functions.isMerchantAllowed(
        unknown, ledger.merchant.address
    ).call()


# ---------------------------------------------------------------- expiry


def test_expire_before_the_end_is_refused(ledger: LedgerEnv) -> None:
    now = ledger.now()
    scheme = ledger.new_scheme(valid_until=now + DAY)
    pid = ledger.new_pass()
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, 1_000)

    with pytest.raises(errors.SchemeStillValid) as refused:
        ledger.client.transact(ledger.issuer, "expire", scheme, [pid])
    assert refused.value.values == {"schemeId": scheme, "validUntil": now + DAY}
    assert ledger.client.balance_of(scheme, pid) == 1_000


def test_expire_after_the_end_writes_off_what_is_left(ledger: LedgerEnv) -> None:
    now = ledger.now()
    scheme = ledger.new_scheme(valid_until=now + DAY)
    spent, partly, untouched = ledger.new_pass(), ledger.new_pass(), ledger.new_pass()
    ledger.client.transact(ledger.issuer, "issueBatch", scheme, [spent, partly], [300, 1_000])
    for rid, (pid, amount) in enumerate([(spent, 300), (partly, 400)], start=1):
        request = ledger.redemption(pid, scheme_id=scheme, amount=amount, redemption_id=rid)
        ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())
    _advance(ledger, DAY + 1)

    result = ledger.client.transact(ledger.issuer, "expire", scheme, [spent, partly, untouched])

    assert [(e.args["passId"], e.args["amount"]) for e in result.named("EntitlementExpired")] == [
        (partly, 600)
    ]
    for pid in (spent, partly, untouched):
        assert ledger.client.balance_of(scheme, pid) == 0
    # Expiry does not release the committed budget and is idempotent.
    assert ledger.client.scheme_of(scheme).committed == 1_300
    again = ledger.client.transact(ledger.issuer, "expire", scheme, [partly])
    assert again.named("EntitlementExpired") == []


def test_expire_unknown_scheme_is_refused(ledger: LedgerEnv) -> None:
    unknown = ledger.client.scheme_count() + 1
    with pytest.raises(errors.SchemeUnknown):
        ledger.client.transact(ledger.issuer, "expire", unknown, [b"\x01" * 32])
