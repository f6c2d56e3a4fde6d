"""Configuration of payouts: the municipality's account and the SEPA message variant."""

from __future__ import annotations

from dataclasses import dataclass

from schwifty import BIC, IBAN
from schwifty.exceptions import SchwiftyException

from ledger.settlement.errors import DebtorAccountInvalid

__all__ = ["SCHEMAS", "DebtorAccount", "PayoutConfig"]

SCHEMAS = ("pain.001.001.03", "pain.001.001.09")


@dataclass(frozen=True, slots=True)
class DebtorAccount:
    """The account the municipality pays from."""

    name: str
    iban: str
    bic: str | None = None
    currency: str = "EUR"

    def validated(self) -> DebtorAccount:
        try:
            iban = IBAN(self.iban).compact
            bic = None if self.bic is None else str(BIC(self.bic))
        except SchwiftyException as exc:
            raise DebtorAccountInvalid(f"the debtor account is not valid: {exc}") from None
        return DebtorAccount(self.name, iban, bic, self.currency)


@dataclass(frozen=True, slots=True)
class PayoutConfig:
    debtor: DebtorAccount
    schema: str = "pain.001.001.03"
    #: start of every batch reference (``<prefix>-<YYYYMMDD>-<nnnn>``), at most 12 characters
    reference_prefix: str = "STADJERSPAS"
    #: remittance text of each transfer; ``{period}`` and ``{reference}`` are filled in
    remittance: str = "Stadjerspas {period} {reference}"

    def __post_init__(self) -> None:
        if self.schema not in SCHEMAS:
            raise ValueError(f"schema must be one of {SCHEMAS}, not {self.schema!r}")
        if not self.reference_prefix.isalnum() or len(self.reference_prefix) > 12:
            raise ValueError("reference_prefix: up to 12 letters or digits")
