"""Typed errors of settlement (statements, payout runs, recording on chain)."""

from __future__ import annotations

from ledger.errors import LedgerError

__all__ = [
    "DebtorAccountInvalid",
    "OverlappingSettledPeriod",
    "RunNotFound",
    "RunStateError",
    "SettlementError",
]


class SettlementError(LedgerError):
    """Root of the settlement errors."""


class OverlappingSettledPeriod(SettlementError):
    """A payout run was asked for a period that overlaps an already confirmed (settled) run."""

    def __init__(self, message: str, *, runs: tuple[str, ...]) -> None:
        super().__init__(message)
        self.runs = runs


class RunNotFound(SettlementError):
    """No payout run has that reference."""


class RunStateError(SettlementError):
    """The run is in a state that does not allow this (e.g. confirming a cancelled run)."""


class DebtorAccountInvalid(SettlementError):
    """The municipality's own account (IBAN/BIC) in the payout configuration is not valid."""
