"""Settlement: per-merchant statements, payout runs with a SEPA pain.001 file, and recording the
payment on chain (``settle``) once the municipality confirms the bank paid it."""

from ledger.settlement.chain import ClientSettlementChain, SettlementChain, payment_reference
from ledger.settlement.config import DebtorAccount, PayoutConfig
from ledger.settlement.errors import (
    DebtorAccountInvalid,
    OverlappingSettledPeriod,
    RunNotFound,
    RunStateError,
    SettlementError,
)
from ledger.settlement.runs import (
    ConfirmResult,
    RunLine,
    RunResult,
    cancel_run,
    confirm_run,
    create_run,
    payable,
    run_lines,
)
from ledger.settlement.statements import Statement, StatementLine, statement, statements

__all__ = [
    "ClientSettlementChain",
    "ConfirmResult",
    "DebtorAccount",
    "DebtorAccountInvalid",
    "OverlappingSettledPeriod",
    "PayoutConfig",
    "RunLine",
    "RunNotFound",
    "RunResult",
    "RunStateError",
    "SettlementChain",
    "SettlementError",
    "Statement",
    "StatementLine",
    "cancel_run",
    "confirm_run",
    "create_run",
    "payable",
    "payment_reference",
    "run_lines",
    "statement",
    "statements",
]
