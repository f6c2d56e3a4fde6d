"""Passes on the real contract: registration, holder keys, printed cards, blocking.

Every refusal is checked through the typed exception of ``ledger.contract_errors`` and followed by
a check that nothing changed.
"""

from __future__ import annotations

import pytest
from eth_utils import to_checksum_address

from ledger import contract_errors as errors
from ledger.client import PassState
from tests.ledger.conftest import LedgerEnv

ZERO_ADDRESS = to_checksum_address("0x0000000000000000000000000000000000000000")
UNKNOWN_PASS = b"\x42" * 32


def _issued_pass(
    ledger: LedgerEnv, *, holder_key: str | None = None, card_serial: int = 0
) -> tuple[bytes, int]:
    """A registered pass holding 10,000 cents in a fresh open Budget scheme."""
    scheme = ledger.new_scheme()
    pid = ledger.new_pass(holder_key=holder_key, card_serial=card_serial)
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, 10_000)
    return pid, scheme


# ---------------------------------------------------------------- registration


def test_register_pass_records_key_and_serial(ledger: LedgerEnv) -> None:
    pid = b"\x01" * 32
    result = ledger.client.transact(ledger.issuer, "registerPass", pid, ledger.holder.address, 7)

    assert ledger.client.pass_of(pid) == PassState(True, False, ledger.holder.address, 7)
    (event,) = result.named("PassRegistered")
    assert event.args == {"passId": pid, "holderKey": ledger.holder.address, "cardSerial": 7}


def test_unregistered_pass_reads_as_empty(ledger: LedgerEnv) -> None:
    assert ledger.client.pass_of(UNKNOWN_PASS) == PassState(False, False, ZERO_ADDRESS, 0)


def test_register_pass_twice_is_refused_and_keeps_the_record(ledger: LedgerEnv) -> None:
    pid = ledger.new_pass(holder_key=ledger.holder.address, card_serial=3)
    before = ledger.client.pass_of(pid)

    with pytest.raises(errors.PassAlreadyRegistered) as refused:
        ledger.client.transact(ledger.issuer, "registerPass", pid, ledger.outsider.address, 9)

    assert refused.value.values == {"passId": pid}
    assert ledger.client.pass_of(pid) == before


def test_register_passes_in_bulk(ledger: LedgerEnv) -> None:
    pids = [bytes([i]) * 32 for i in range(1, 6)]
    result = ledger.client.transact(ledger.issuer, "registerPasses", pids, [])

    assert [e.args["passId"] for e in result.named("PassRegistered")] == pids
    for pid in pids:
        assert ledger.client.pass_of(pid) == PassState(True, False, ZERO_ADDRESS, 0)


def test_register_passes_is_all_or_nothing(ledger: LedgerEnv) -> None:
    existing = ledger.new_pass()
    fresh = b"\x77" * 32

    with pytest.raises(errors.PassAlreadyRegistered) as refused:
        ledger.client.transact(ledger.issuer, "registerPasses", [fresh, existing], [])
    assert refused.value.values == {"passId": existing}
    assert not ledger.client.pass_of(fresh).registered

    with pytest.raises(errors.PassAlreadyRegistered):
        ledger.client.transact(ledger.issuer, "registerPasses", [fresh, fresh], [])
    assert not ledger.client.pass_of(fresh).registered


def test_register_passes_with_card_serials(ledger: LedgerEnv) -> None:
    pids = [bytes([0x60 + i]) * 32 for i in range(3)]
    serials = [12345, 0, 2**63 - 1]
    result = ledger.client.transact(ledger.issuer, "registerPasses", pids, serials)

    assert [e.args["cardSerial"] for e in result.named("PassRegistered")] == serials
    for pid, serial in zip(pids, serials, strict=True):
        assert ledger.client.pass_of(pid) == PassState(True, False, ZERO_ADDRESS, serial)


def test_register_passes_needs_one_serial_per_pass(ledger: LedgerEnv) -> None:
    pids = [b"\x81" * 32, b"\x82" * 32]

    with pytest.raises(errors.PassesLengthMismatch) as refused:
        ledger.client.transact(ledger.issuer, "registerPasses", pids, [7])
    assert refused.value.values == {"passIds": 2, "cardSerials": 1}
    with pytest.raises(errors.CardSerialInvalid) as too_big:
        ledger.client.transact(ledger.issuer, "registerPasses", pids, [7, 2**63])
    assert too_big.value.values == {"passId": pids[1], "serial": 2**63}
    assert not any(ledger.client.pass_of(pid).registered for pid in pids)


# ---------------------------------------------------------------- holder keys


def test_set_holder_key_lets_the_holder_sign(ledger: LedgerEnv) -> None:
    pid, scheme = _issued_pass(ledger)
    request = ledger.redemption(
        pid, scheme_id=scheme, amount=100, redemption_id=1, signer=ledger.holder
    )
    with pytest.raises(errors.RedemptionSignerNotAllowed) as refused:
        ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())
    assert refused.value.values["signer"] == ledger.holder.address
    assert ledger.client.balance_of(scheme, pid) == 10_000

    result = ledger.client.transact(ledger.issuer, "setHolderKey", pid, ledger.holder.address)
    assert result.named("HolderKeyChanged")[0].args == {
        "passId": pid,
        "holderKey": ledger.holder.address,
    }
    ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())
    assert ledger.client.balance_of(scheme, pid) == 9_900


def test_clearing_the_holder_key_stops_its_tokens(ledger: LedgerEnv) -> None:
    pid, scheme = _issued_pass(ledger, holder_key=ledger.holder.address)
    ledger.client.transact(ledger.issuer, "setHolderKey", pid, ZERO_ADDRESS)
    assert ledger.client.pass_of(pid).holder_key == ZERO_ADDRESS

    request = ledger.redemption(
        pid, scheme_id=scheme, amount=100, redemption_id=2, signer=ledger.holder
    )
    with pytest.raises(errors.RedemptionSignerNotAllowed):
        ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())
    assert ledger.client.balance_of(scheme, pid) == 10_000
    assert not ledger.client.is_redemption_used(2)


def test_set_holder_key_of_unknown_pass_is_refused(ledger: LedgerEnv) -> None:
    with pytest.raises(errors.PassUnknown) as refused:
        ledger.client.transact(ledger.issuer, "setHolderKey", UNKNOWN_PASS, ledger.holder.address)
    assert refused.value.values == {"passId": UNKNOWN_PASS}
    assert not ledger.client.pass_of(UNKNOWN_PASS).registered


# ---------------------------------------------------------------- printed cards


def test_card_token_accepted_while_its_serial_is_current(ledger: LedgerEnv) -> None:
    pid, scheme = _issued_pass(ledger, card_serial=11)
    request = ledger.redemption(pid, scheme_id=scheme, amount=250, redemption_id=10, serial=11)

    ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())

    assert ledger.client.balance_of(scheme, pid) == 9_750


def test_replaced_card_revokes_the_old_serial(ledger: LedgerEnv) -> None:
    pid, scheme = _issued_pass(ledger, card_serial=11)
    old = ledger.redemption(pid, scheme_id=scheme, amount=250, redemption_id=20, serial=11)

    result = ledger.client.transact(ledger.issuer, "replaceCard", pid, 12)
    assert result.named("CardReplaced")[0].args == {"passId": pid, "oldSerial": 11, "newSerial": 12}

    with pytest.raises(errors.RedemptionCardRevoked) as refused:
        ledger.client.transact(ledger.merchant, "redeem", old.as_tuple())
    assert refused.value.values == {"redemptionId": 20, "serial": 11}
    assert ledger.client.balance_of(scheme, pid) == 10_000
    assert not ledger.client.is_redemption_used(20)

    new = ledger.redemption(pid, scheme_id=scheme, amount=250, redemption_id=21, serial=12)
    ledger.client.transact(ledger.merchant, "redeem", new.as_tuple())
    assert ledger.client.balance_of(scheme, pid) == 9_750


def test_replace_card_with_zero_revokes_every_card_but_not_app_tokens(ledger: LedgerEnv) -> None:
    pid, scheme = _issued_pass(ledger, card_serial=5)
    ledger.client.transact(ledger.issuer, "replaceCard", pid, 0)

    card = ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=30, serial=5)
    with pytest.raises(errors.RedemptionCardRevoked):
        ledger.client.transact(ledger.merchant, "redeem", card.as_tuple())
    app = ledger.redemption(pid, scheme_id=scheme, amount=100, redemption_id=31, serial=0)
    ledger.client.transact(ledger.merchant, "redeem", app.as_tuple())
    assert ledger.client.balance_of(scheme, pid) == 9_900


def test_replace_card_with_the_same_serial_is_refused(ledger: LedgerEnv) -> None:
    pid = ledger.new_pass(card_serial=4)
    with pytest.raises(errors.CardSerialInvalid) as refused:
        ledger.client.transact(ledger.issuer, "replaceCard", pid, 4)
    assert refused.value.values == {"passId": pid, "serial": 4}
    assert ledger.client.pass_of(pid).card_serial == 4


def test_replace_card_of_unknown_pass_is_refused(ledger: LedgerEnv) -> None:
    with pytest.raises(errors.PassUnknown):
        ledger.client.transact(ledger.issuer, "replaceCard", UNKNOWN_PASS, 1)
    assert ledger.client.pass_of(UNKNOWN_PASS) == PassState(False, False, ZERO_ADDRESS, 0)


# ---------------------------------------------------------------- blocking


def test_blocked_pass_cannot_redeem_until_unblocked(ledger: LedgerEnv) -> None:
    pid, scheme = _issued_pass(ledger)
    result = ledger.client.transact(ledger.issuer, "blockPass", pid)
    assert result.named("PassBlockStatusChanged")[0].args == {"passId": pid, "blocked": True}
    assert ledger.client.pass_of(pid).blocked

    request = ledger.redemption(pid, scheme_id=scheme, amount=500, redemption_id=40)
    with pytest.raises(errors.RedemptionPassBlocked) as refused:
        ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())
    assert refused.value.values == {"redemptionId": 40, "passId": pid}
    assert ledger.client.balance_of(scheme, pid) == 10_000
    assert not ledger.client.is_redemption_used(40)
    assert ledger.client.merchant_totals(ledger.merchant.address).redeemed == 0

    ledger.client.transact(ledger.issuer, "unblockPass", pid)
    assert not ledger.client.pass_of(pid).blocked
    ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())
    assert ledger.client.balance_of(scheme, pid) == 9_500


def test_block_status_must_change(ledger: LedgerEnv) -> None:
    pid = ledger.new_pass()
    with pytest.raises(errors.PassBlockStatusUnchanged) as refused:
        ledger.client.transact(ledger.issuer, "unblockPass", pid)
    assert refused.value.values == {"passId": pid, "blocked": False}

    ledger.client.transact(ledger.issuer, "blockPass", pid)
    with pytest.raises(errors.PassBlockStatusUnchanged) as refused:
        ledger.client.transact(ledger.issuer, "blockPass", pid)
    assert refused.value.values == {"passId": pid, "blocked": True}
    assert ledger.client.pass_of(pid).blocked


@pytest.mark.parametrize("function", ["blockPass", "unblockPass"])
def test_block_of_unknown_pass_is_refused(ledger: LedgerEnv, function: str) -> None:
    with pytest.raises(errors.PassUnknown):
        ledger.client.transact(ledger.issuer, function, UNKNOWN_PASS)
    assert ledger.client.pass_of(UNKNOWN_PASS) == PassState(False, False, ZERO_ADDRESS, 0)


def test_issuing_to_a_blocked_pass_still_works(ledger: LedgerEnv) -> None:
    """Blocking stops redemptions, not issuance: a found pass keeps what was issued meanwhile."""
    pid, scheme = _issued_pass(ledger)
    ledger.client.transact(ledger.issuer, "blockPass", pid)
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, 500)
    assert ledger.client.balance_of(scheme, pid) == 10_500
