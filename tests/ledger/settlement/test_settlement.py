"""Statements, payout runs (pain.001), and recording settlements on chain."""

from __future__ import annotations

from datetime import date

import pytest
import xmlschema

from ledger import contract_errors
from ledger.reports.periods import Period
from ledger.settlement import (
    ClientSettlementChain,
    DebtorAccount,
    DebtorAccountInvalid,
    OverlappingSettledPeriod,
    PayoutConfig,
    RunStateError,
    cancel_run,
    confirm_run,
    create_run,
    payment_reference,
    run_lines,
    statement,
)
from ledger.settlement.pain001 import schema_path
from ledger.store.db import Store
from ledger.store.payouts import LineStatus
from tests.ledger.conftest import LedgerEnv
from tests.ledger.reports.helpers import Rows, merchant, ts

CHAIN = 31337
CONTRACT = "0x" + "11" * 20
DEBTOR = DebtorAccount("Gemeente Groningen", "NL91ABNA0417164300", "ABNANL2A")
CONFIG = PayoutConfig(debtor=DEBTOR)
JAN = Period.month(2025, 1)
FEB = Period.month(2025, 2)
GOOD_IBAN = "NL02ABNA0123456789"
BAD_IBAN = "NL03ABNA0123456789"  # right shape, wrong mod-97 checksum


def _run(store: Store, period: Period, config: PayoutConfig = CONFIG, contract: str = CONTRACT):
    return create_run(
        store.engine,
        period=period,
        config=config,
        chain_id=CHAIN,
        contract=contract,
        execution_date=date(2025, 3, 3),
    )


def test_statement_math(migrated_store: Store) -> None:
    rows = Rows(migrated_store.engine)
    rows.redeem(1, 1, 1_000, ts("2024-12-20"), merchant_n=1)  # before: opening balance
    rows.settle(1, 600, ts("2024-12-30"), "0x" + "01" * 32)
    rows.redeem(1, 2, 700, ts("2025-01-05"), merchant_n=1)
    rows.redeem(1, 3, 300, ts("2025-01-06"), merchant_n=1)
    rows.reverse(1, 3, 300, ts("2025-01-07"), merchant_n=1)
    rows.settle(1, 400, ts("2025-01-20"), "0x" + "02" * 32)
    rows.redeem(1, 4, 999, ts("2025-02-01"), merchant_n=1)  # after: not in January

    s = statement(migrated_store.engine, merchant(1), JAN)

    assert (s.opening, s.redeemed, s.reversed, s.settled) == (400, 1_000, 300, 400)
    assert s.closing == 700
    assert [(line.kind, line.amount) for line in s.lines] == [
        ("redemption", 700),
        ("redemption", 300),
        ("reversal", -300),
        ("settlement", -400),
    ]
    assert statement(migrated_store.engine, merchant(9), JAN).closing == 0


@pytest.mark.parametrize("schema", ["pain.001.001.03", "pain.001.001.09"])
def test_run_produces_a_valid_pain001(migrated_store: Store, schema: str) -> None:
    rows = Rows(migrated_store.engine)
    rows.merchant(1, iban=GOOD_IBAN, bic="ABNANL2A")
    rows.merchant(2, iban="NL91 ABNA 0417 1643 00")
    rows.redeem(1, 1, 1_234, ts("2025-01-05"), merchant_n=1)
    rows.redeem(1, 2, 5, ts("2025-01-06"), merchant_n=2)

    result = _run(migrated_store, JAN, PayoutConfig(debtor=DEBTOR, schema=schema))

    assert result.reference == "STADJERSPAS-20241231-0001"  # the period starts 23:00 UTC
    assert result.document is not None
    # validated here with the XSD sepaxml ships, independently of sepaxml's own check
    xsd = xmlschema.XMLSchema(str(schema_path(schema)))
    xsd.validate(result.document.decode())
    doc = xsd.to_dict(result.document.decode())
    initiation = doc["CstmrCdtTrfInitn"]
    assert initiation["GrpHdr"]["MsgId"] == result.reference
    assert initiation["GrpHdr"]["NbOfTxs"] == "2"
    txs = initiation["PmtInf"][0]["CdtTrfTxInf"]
    assert sorted(float(tx["Amt"]["InstdAmt"]["$"]) for tx in txs) == [0.05, 12.34]
    assert {tx["PmtId"]["EndToEndId"] for tx in txs} == {
        f"{result.reference}-00001",
        f"{result.reference}-00002",
    }
    assert {tx["CdtrAcct"]["Id"]["IBAN"] for tx in txs} == {GOOD_IBAN, "NL91ABNA0417164300"}
    assert result.total == 1_239
    assert not result.reported


def test_invalid_iban_is_reported_not_skipped(migrated_store: Store) -> None:
    rows = Rows(migrated_store.engine)
    rows.merchant(1, iban=GOOD_IBAN)
    rows.merchant(2, iban=BAD_IBAN)
    rows.merchant(3, iban=None)
    for n in (1, 2, 3, 4):  # merchant 4 is not in the registry at all
        rows.redeem(1, n, 100 * n, ts("2025-01-05"), merchant_n=n)

    result = _run(migrated_store, JAN)

    assert [line.merchant for line in result.included] == [merchant(1)]
    reported = {line.merchant: line for line in result.reported}
    assert set(reported) == {merchant(2), merchant(3), merchant(4)}
    assert all(line.status is LineStatus.INVALID_IBAN for line in reported.values())
    assert "checksum" in (reported[merchant(2)].error or "").lower()
    assert reported[merchant(3)].error == "no IBAN in the registry"
    assert reported[merchant(4)].error == "not in the merchant registry"
    assert reported[merchant(2)].amount == 200
    _, stored = run_lines(migrated_store.engine, result.reference or "")
    assert {line.status for line in stored} == {LineStatus.INCLUDED, LineStatus.INVALID_IBAN}


def test_invalid_debtor_account_is_refused(migrated_store: Store) -> None:
    with pytest.raises(DebtorAccountInvalid):
        _run(migrated_store, JAN, PayoutConfig(debtor=DebtorAccount("G", BAD_IBAN)))


def test_rerun_pays_nothing_twice(migrated_store: Store) -> None:
    rows = Rows(migrated_store.engine)
    rows.merchant(1, iban=GOOD_IBAN)
    rows.redeem(1, 1, 1_000, ts("2025-01-05"), merchant_n=1)
    first = _run(migrated_store, JAN)
    assert first.total == 1_000

    again = _run(migrated_store, JAN)  # the first run is still pending
    assert again.reference is None
    assert again.total == 0

    rows.redeem(1, 2, 300, ts("2025-01-20"), merchant_n=1)  # indexed late, still January
    late = _run(migrated_store, JAN)
    assert late.reference is None
    assert [(line.status, line.amount) for line in late.reported] == [
        (LineStatus.IN_PENDING_RUN, 300)
    ]
    assert first.reference in (late.reported[0].error or "")

    # February: only what was not in any run yet (the 300), never the 1,000 again
    rows.redeem(1, 3, 50, ts("2025-02-03"), merchant_n=1)
    feb = _run(migrated_store, FEB)
    assert feb.total == 350

    # once the first run's settlement is indexed it is not counted twice either
    rows.settle(
        1,
        1_000,
        ts("2025-03-01"),
        "0x" + payment_reference(first.reference or "", merchant(1)).hex(),
    )
    assert _run(migrated_store, Period.month(2025, 3)).total == 0


def test_cancelled_run_frees_its_merchants(migrated_store: Store) -> None:
    rows = Rows(migrated_store.engine)
    rows.merchant(1, iban=GOOD_IBAN)
    rows.redeem(1, 1, 1_000, ts("2025-01-05"), merchant_n=1)
    first = _run(migrated_store, JAN)
    cancel_run(migrated_store.engine, first.reference or "", note="bank refused the file")
    second = _run(migrated_store, JAN)
    assert second.total == 1_000
    assert second.reference != first.reference
    with pytest.raises(RunStateError):
        cancel_run(migrated_store.engine, first.reference or "")


class _FakeChain:
    """Settles in memory (for the refusal test without a node)."""

    chain_id = CHAIN
    contract = CONTRACT

    def __init__(self) -> None:
        self.done: set[tuple[str, bytes]] = set()

    def is_settled(self, merchant: str, reference: bytes) -> bool:
        return (merchant, reference) in self.done

    def owed(self, merchant: str) -> int:
        return 10**9

    def settle(self, merchant: str, amount: int, reference: bytes) -> str:
        self.done.add((merchant, reference))
        return "0x" + "00" * 32


def test_overlapping_settled_period_is_refused(migrated_store: Store) -> None:
    rows = Rows(migrated_store.engine)
    rows.merchant(1, iban=GOOD_IBAN)
    rows.redeem(1, 1, 1_000, ts("2025-01-05"), merchant_n=1)
    first = _run(migrated_store, JAN)
    confirm_run(migrated_store.engine, first.reference or "", _FakeChain())

    with pytest.raises(OverlappingSettledPeriod) as refused:
        _run(migrated_store, Period.parse("2025-01-15..2025-02-15"))
    assert refused.value.runs == (first.reference,)
    assert "overlaps the settled payout run" in str(refused.value)
    # the next period is fine, and pays nothing again
    assert _run(migrated_store, FEB).total == 0


# ---------------------------------------------------------------- on chain (anvil)


def _mirror(rows: Rows, ledger: LedgerEnv, result, when: int) -> None:
    """Index rows from the events of a transaction (what the indexer writes)."""
    for event in result.events:
        if event.name == "Redeemed":
            a = event.args
            rows._event(
                "index_redemption",
                when,
                redemption_id=str(a["redemptionId"]),
                pass_id="0x" + a["passId"].hex(),
                scheme_id=a["schemeId"],
                merchant=a["merchant"],
                amount=a["amount"],
                debited=a["debited"],
                discount=a["discount"],
                credited=a["credited"],
            )


def test_confirm_records_on_chain_and_is_idempotent(
    migrated_store: Store, ledger: LedgerEnv
) -> None:
    rows = Rows(migrated_store.engine, chain_id=ledger.client.chain_id)
    rows.merchant_at(ledger.merchant.address, name="Zwembad", iban=GOOD_IBAN)
    rows.merchant_at(ledger.other_merchant.address, name="Museum", iban="NL91ABNA0417164300")
    scheme = ledger.new_scheme()
    pid = ledger.new_pass()
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, 10_000)
    for rid, (who, amount) in enumerate(
        [(ledger.merchant, 1_200), (ledger.merchant, 300), (ledger.other_merchant, 450)], start=1
    ):
        request = ledger.redemption(pid, scheme_id=scheme, amount=amount, redemption_id=rid)
        _mirror(
            rows,
            ledger,
            ledger.client.transact(who, "redeem", request.as_tuple()),
            ts("2025-01-10"),
        )
    chain = ClientSettlementChain(ledger.client, ledger.settler)
    run = create_run(
        migrated_store.engine,
        period=JAN,
        config=CONFIG,
        chain_id=chain.chain_id,
        contract=chain.contract,
        execution_date=date(2025, 2, 3),
    )
    assert {line.merchant: line.amount for line in run.included} == {
        ledger.merchant.address: 1_500,
        ledger.other_merchant.address: 450,
    }
    reference = run.reference or ""

    # a crash after the first settle was mined but before the database noted it
    first_ref = payment_reference(reference, ledger.merchant.address)
    chain.settle(ledger.merchant.address, 1_500, first_ref)

    done = confirm_run(migrated_store.engine, reference, chain)

    assert [line.merchant for line in done.already] == [ledger.merchant.address]
    assert [line.merchant for line in done.settled] == [ledger.other_merchant.address]
    assert done.complete
    for account in (ledger.merchant, ledger.other_merchant):
        assert ledger.client.merchant_totals(account.address).owed == 0
    assert ledger.client.merchant_totals(ledger.merchant.address).settled == 1_500
    assert chain.is_settled(
        ledger.other_merchant.address, payment_reference(reference, ledger.other_merchant.address)
    )

    again = confirm_run(migrated_store.engine, reference, chain)  # nothing is sent twice
    assert not again.settled
    assert len(again.already) == 2
    assert ledger.client.merchant_totals(ledger.merchant.address).settled == 1_500
    _, lines = run_lines(migrated_store.engine, reference)
    assert {line.status for line in lines} == {LineStatus.SETTLED}


def test_confirm_reports_a_refusal_and_retries(migrated_store: Store, ledger: LedgerEnv) -> None:
    rows = Rows(migrated_store.engine, chain_id=ledger.client.chain_id)
    rows.merchant_at(ledger.merchant.address, name="Zwembad", iban=GOOD_IBAN)
    # the index claims more than the chain owes (e.g. a redemption the chain does not have)
    rows._event(
        "index_redemption",
        ts("2025-01-10"),
        redemption_id="77",
        pass_id="0x" + "07" * 32,
        scheme_id=1,
        merchant=ledger.merchant.address,
        amount=500,
        debited=500,
        discount=0,
        credited=500,
    )
    chain = ClientSettlementChain(ledger.client, ledger.settler)
    run = create_run(
        migrated_store.engine,
        period=JAN,
        config=CONFIG,
        chain_id=chain.chain_id,
        contract=chain.contract,
        execution_date=date(2025, 2, 3),
    )
    done = confirm_run(migrated_store.engine, run.reference or "", chain)
    assert not done.complete
    assert "SettlementExceedsOwed" in (done.failed[0].error or "")
    _, lines = run_lines(migrated_store.engine, run.reference or "")
    assert lines[0].status is LineStatus.FAILED
    assert issubclass(contract_errors.SettlementExceedsOwed, contract_errors.ContractRevert)
