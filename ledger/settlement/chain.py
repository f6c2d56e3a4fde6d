"""Recording settlements on chain: ``settle(merchant, amount, paymentReference)``."""

from __future__ import annotations

from typing import Protocol

from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

from ledger.client import LedgerClient

__all__ = ["ClientSettlementChain", "SettlementChain", "payment_reference"]


def payment_reference(run_reference: str, merchant: str) -> bytes:
    """The on-chain ``paymentReference`` of a merchant's line in a run: a bytes32 keccak."""
    return bytes(keccak(text=f"{run_reference}:{to_checksum_address(merchant)}"))


class SettlementChain(Protocol):
    """What confirming a run needs from the chain (a client with a settler key, or a relayer)."""

    @property
    def chain_id(self) -> int: ...

    @property
    def contract(self) -> str: ...

    def is_settled(self, merchant: str, reference: bytes) -> bool:
        """Whether ``settle`` already ran for this merchant and reference."""
        ...

    def owed(self, merchant: str) -> int:
        """What the contract says is owed to ``merchant`` now (cents)."""
        ...

    def settle(self, merchant: str, amount: int, reference: bytes) -> str:
        """Record the settlement; the transaction hash (0x hex). Raises the contract's errors."""
        ...


class ClientSettlementChain:
    """:class:`SettlementChain` through :meth:`LedgerClient.transact` with a settler account."""

    def __init__(self, client: LedgerClient, settler: LocalAccount) -> None:
        self.client = client
        self.settler = settler

    @property
    def chain_id(self) -> int:
        return self.client.chain_id

    @property
    def contract(self) -> str:
        return str(self.client.address)

    def is_settled(self, merchant: str, reference: bytes) -> bool:
        used = self.client.contract.functions.isSettlementReferenceUsed(
            to_checksum_address(merchant), reference
        ).call()
        return bool(used)

    def owed(self, merchant: str) -> int:
        return self.client.merchant_totals(merchant).owed

    def settle(self, merchant: str, amount: int, reference: bytes) -> str:
        result = self.client.transact(
            self.settler, "settle", to_checksum_address(merchant), amount, reference
        )
        return "0x" + result.transaction_hash.hex()
