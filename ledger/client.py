"""Typed access to a deployed ledger contract: reads, call data, preflight and decoded reverts.

Writes go through :class:`ledger.relayer.Relayer` (one signer, safe nonces, batching); this module
builds their call data and turns revert data into the typed exceptions of
:mod:`ledger.contract_errors`. Only standard JSON-RPC methods are used, so it runs against anvil
and against a Besu network alike.
"""

from __future__ import annotations

import enum
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from eth_abi import encode
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils import function_abi_to_4byte_selector, keccak, to_checksum_address
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError, ContractPanicError
from web3.types import BlockIdentifier

from ledger.abi import abi_type
from ledger.contract_errors import ContractRevert, decode_revert
from ledger.events import DecodedEvent, EventDecoder
from ledger.merkle import MerkleTree, ReceiptLeaf, receipt_leaf_hash
from ledger.relayer import TxReceipt
from wallet.eip712 import Domain, SignedPassToken

__all__ = [
    "ROLES",
    "LedgerClient",
    "MerchantTotals",
    "PassState",
    "RedemptionRequest",
    "SchemeKind",
    "SchemeState",
    "SchemeTerms",
    "TxResult",
    "receipts_in",
]

#: Receipts whose decoded events :meth:`LedgerClient.receipt_events` keeps.
_RECEIPTS_KEPT = 64

ROLES: dict[str, bytes] = {
    "admin": b"\x00" * 32,
    "issuer": keccak(text="ISSUER_ROLE"),
    "merchant": keccak(text="MERCHANT_ROLE"),
    "pass_signer": keccak(text="PASS_SIGNER_ROLE"),
    "pauser": keccak(text="PAUSER_ROLE"),
    "settler": keccak(text="SETTLER_ROLE"),
}

UNLIMITED = 2**64 - 1


class SchemeKind(enum.IntEnum):
    BUDGET = 0
    USES = 1
    DISCOUNT = 2


@dataclass(frozen=True, slots=True)
class SchemeTerms:
    """``SchemeTerms`` of the contract. Amounts in cents, windows in unix seconds."""

    kind: SchemeKind
    valid_from: int
    valid_until: int
    budget_cap: int
    per_redemption_cap: int = 0
    unit_value: int = 0
    discount_bps: int = 0
    reimburse_bps: int = 0
    discount_fixed: int = 0
    open_to_all_merchants: bool = False

    def as_tuple(self) -> tuple[int, int, int, int, int, int, int, int, int, bool]:
        return (
            int(self.kind),
            self.valid_from,
            self.valid_until,
            self.per_redemption_cap,
            self.unit_value,
            self.discount_bps,
            self.reimburse_bps,
            self.discount_fixed,
            self.budget_cap,
            self.open_to_all_merchants,
        )


@dataclass(frozen=True, slots=True)
class SchemeState:
    terms: SchemeTerms
    committed: int


@dataclass(frozen=True, slots=True)
class PassState:
    registered: bool
    blocked: bool
    holder_key: ChecksumAddress
    card_serial: int


@dataclass(frozen=True, slots=True)
class MerchantTotals:
    redeemed: int
    reversed: int
    settled: int

    @property
    def owed(self) -> int:
        return self.redeemed - self.reversed - self.settled


@dataclass(frozen=True, slots=True)
class RedemptionRequest:
    """A redemption against a signed pass token: ``amount`` cents, uses, or a purchase price."""

    redemption_id: int
    scheme_id: int
    amount: int
    token: SignedPassToken

    def as_tuple(self) -> tuple[int, bytes, int, int, int, int, int, bytes, bytes]:
        token = self.token.token
        signature = self.token.signature
        r, s, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
        vs = (s | ((v - 27) << 255)).to_bytes(32, "big")
        return (
            self.redemption_id,
            token.pass_id,
            self.scheme_id,
            self.amount,
            token.serial,
            token.expiry,
            token.amount_cap,
            r,
            vs,
        )


_REDEMPTION_TYPE = "(uint256,bytes32,uint256,uint64,uint64,uint64,uint64,bytes32,bytes32)"


def receipts_in(
    events: Sequence[DecodedEvent],
) -> dict[bytes, list[tuple[ReceiptLeaf, DecodedEvent]]]:
    """Group the ``Redeemed`` events of transactions into receipt trees, keyed by transaction hash.

    Within a transaction the accepted redemptions are the leaves in log order, exactly as the
    contract built its receipt root.
    """
    trees: dict[bytes, list[tuple[ReceiptLeaf, DecodedEvent]]] = {}
    for event in sorted(events, key=lambda e: (e.block_number, e.log_index)):
        if event.name != "Redeemed":
            continue
        args = event.args
        leaf = ReceiptLeaf(
            redemption_id=args["redemptionId"],
            pass_id=args["passId"],
            scheme_id=args["schemeId"],
            merchant=args["merchant"],
            debited=args["debited"],
            credited=args["credited"],
        )
        trees.setdefault(event.transaction_hash, []).append((leaf, event))
    return trees


@dataclass(frozen=True, slots=True)
class TxResult:
    """A mined, successful transaction and the ledger events it emitted."""

    transaction_hash: bytes
    block_number: int
    gas_used: int
    events: list[DecodedEvent]

    def named(self, name: str) -> list[DecodedEvent]:
        return [event for event in self.events if event.name == name]


class LedgerClient:
    """Reads and call data for one deployed ledger contract."""

    def __init__(self, w3: Web3, *, address: str, abi: Sequence[Mapping[str, Any]]) -> None:
        self.w3 = w3
        self.address: ChecksumAddress = to_checksum_address(address)
        self.abi: list[dict[str, Any]] = [dict(item) for item in abi]
        self.contract = w3.eth.contract(address=self.address, abi=self.abi)
        self.events = EventDecoder(self.abi)
        self._functions = {str(f["name"]): f for f in self.abi if f.get("type") == "function"}
        #: function name -> (selector, argument types): hashed once, not per call
        self._encoders: dict[str, tuple[bytes, list[str]]] = {}
        self._chain_id: int | None = None
        self._domain: Domain | None = None
        self._address_lower = self.address.lower()
        self._receipt_events: OrderedDict[tuple[bytes, bytes], tuple[DecodedEvent, ...]] = (
            OrderedDict()
        )
        self._receipt_lock = threading.Lock()

    # ------------------------------------------------------------ identity

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self.w3.eth.chain_id)
        return self._chain_id

    @property
    def domain(self) -> Domain:
        """The EIP-712 domain pass tokens for this contract are signed under (built once)."""
        if self._domain is None:
            self._domain = Domain(chain_id=self.chain_id, verifying_contract=self.address)
        return self._domain

    # ------------------------------------------------------------ call data

    def call_data(self, function: str, *args: Any) -> bytes:
        """ABI-encoded call data of ``function(*args)``."""
        encoder = self._encoders.get(function)
        if encoder is None:
            abi = self._functions.get(function)
            if abi is None:
                raise KeyError(f"the ledger contract has no function {function!r}")
            selector = bytes(function_abi_to_4byte_selector(cast(Any, abi)))
            encoder = self._encoders[function] = (selector, [abi_type(p) for p in abi["inputs"]])
        selector, types = encoder
        return selector + encode(types, list(args))

    def redeem_data(self, request: RedemptionRequest) -> bytes:
        return self.call_data("redeem", request.as_tuple())

    def redeem_batch_data(self, requests: Sequence[RedemptionRequest]) -> bytes:
        return self.call_data("redeemBatch", [r.as_tuple() for r in requests])

    # ------------------------------------------------------------ preflight

    def preflight(self, *, sender: str, data: bytes, block: BlockIdentifier = "pending") -> int:
        """Estimate gas; a refusal raises the contract's typed error and sends nothing."""
        tx = {"from": to_checksum_address(sender), "to": self.address, "data": "0x" + data.hex()}
        try:
            return int(self.w3.eth.estimate_gas(cast(Any, tx), block))
        except (ContractCustomError, ContractLogicError, ContractPanicError) as exc:
            raise self.decode_error(exc) from None

    def decode_error(self, exc: BaseException) -> ContractRevert:
        data = getattr(exc, "data", None)
        if isinstance(data, str) and data.startswith("0x"):
            return decode_revert(bytes.fromhex(data[2:]), self.abi)
        if isinstance(data, bytes):
            return decode_revert(data, self.abi)
        return decode_revert(b"", self.abi)

    def revert_of(self, data: bytes) -> ContractRevert:
        return decode_revert(data, self.abi)

    # ------------------------------------------------------------ single transactions

    def transact(
        self, account: LocalAccount, function: str, *args: Any, gas: int | None = None
    ) -> TxResult:
        """Preflight, sign, send and wait for one call from ``account``.

        For administration and tests, where one thread owns the account; services send through
        the relayer. A refusal at preflight raises the contract's typed error and sends nothing;
        a transaction that still reverts on chain raises the same typed error (by replay).
        """
        data = self.call_data(function, *args)
        estimate = self.preflight(sender=account.address, data=data)
        tx = {
            "from": account.address,
            "to": self.address,
            "data": data,
            "nonce": int(self.w3.eth.get_transaction_count(account.address, "pending")),
            "gas": gas if gas is not None else estimate + estimate // 5 + 10_000,
            "gasPrice": int(self.w3.eth.gas_price),
            "chainId": self.chain_id,
        }
        signed = account.sign_transaction(cast(Any, tx))
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.02)
        if receipt["status"] != 1:
            raise self.replay_error(tx, int(receipt["blockNumber"]))
        return TxResult(
            transaction_hash=bytes(receipt["transactionHash"]),
            block_number=int(receipt["blockNumber"]),
            gas_used=int(receipt["gasUsed"]),
            events=self.decode_logs([dict(log) for log in receipt["logs"]]),
        )

    def replay_error(self, tx: Mapping[str, Any], block_number: int) -> ContractRevert:
        """Decode why a mined transaction reverted by replaying it on chain state."""
        call = {
            "from": tx["from"],
            "to": tx["to"],
            "data": "0x" + bytes(tx["data"]).hex(),
            "gas": tx["gas"],
        }
        # After the block first: a transaction that lost to an earlier one in the same block (a
        # duplicate redemption id) fails only on that state; then the state before the block.
        for state in (block_number, block_number - 1):
            try:
                self.w3.eth.call(cast(Any, call), state)
            except (ContractCustomError, ContractLogicError, ContractPanicError) as exc:
                return self.decode_error(exc)
        return decode_revert(b"", self.abi)

    # ------------------------------------------------------------ reads

    def has_role(self, role: str, account: str) -> bool:
        return bool(
            self.contract.functions.hasRole(ROLES[role], to_checksum_address(account)).call()
        )

    def paused(self) -> bool:
        return bool(self.contract.functions.paused().call())

    def pass_of(self, pass_id: bytes) -> PassState:
        registered, blocked, holder_key, serial = self.contract.functions.passOf(pass_id).call()
        return PassState(
            bool(registered), bool(blocked), to_checksum_address(holder_key), int(serial)
        )

    def scheme_of(self, scheme_id: int) -> SchemeState:
        try:
            raw, committed = self.contract.functions.schemeOf(scheme_id).call()
        except (ContractCustomError, ContractLogicError) as exc:
            raise self.decode_error(exc) from None
        terms = SchemeTerms(
            kind=SchemeKind(raw[0]),
            valid_from=raw[1],
            valid_until=raw[2],
            per_redemption_cap=raw[3],
            unit_value=raw[4],
            discount_bps=raw[5],
            reimburse_bps=raw[6],
            discount_fixed=raw[7],
            budget_cap=raw[8],
            open_to_all_merchants=raw[9],
        )
        return SchemeState(terms=terms, committed=int(committed))

    def scheme_count(self) -> int:
        return int(self.contract.functions.schemeCount().call())

    def schemes(self) -> list[tuple[int, SchemeTerms]]:
        """Every scheme's id and terms, in id order."""
        return [(i, self.scheme_of(i).terms) for i in range(1, self.scheme_count() + 1)]

    def balance_of(self, scheme_id: int, pass_id: bytes) -> int:
        return int(self.contract.functions.balanceOf(scheme_id, pass_id).call())

    def merchant_totals(self, merchant: str) -> MerchantTotals:
        redeemed, reversed_, settled = self.contract.functions.merchantAccount(
            to_checksum_address(merchant)
        ).call()
        return MerchantTotals(int(redeemed), int(reversed_), int(settled))

    def is_redemption_used(self, redemption_id: int) -> bool:
        return bool(self.contract.functions.isRedemptionUsed(redemption_id).call())

    def is_reversed(self, redemption_id: int) -> bool:
        return bool(self.contract.functions.isReversed(redemption_id).call())

    def is_claimed(self, root: bytes, index: int) -> bool:
        return bool(self.contract.functions.isClaimed(root, index).call())

    def reversal_window(self) -> int:
        return int(self.contract.functions.reversalWindow().call())

    # ------------------------------------------------------------ logs

    def decode_logs(self, logs: Sequence[Mapping[str, Any]]) -> list[DecodedEvent]:
        """Decode the ledger's own logs (others are skipped)."""
        decoded = []
        for log in logs:
            address = log["address"]
            text = "0x" + bytes(address).hex() if isinstance(address, bytes) else str(address)
            if text.lower() != self._address_lower:
                continue
            event = self.events.decode_log(log)
            if event is not None:
                decoded.append(event)
        return decoded

    def receipt_events(self, receipt: TxReceipt) -> list[DecodedEvent]:
        """Decode the ledger events of a relayer receipt.

        The last few receipts' events are kept: the state cache and the batcher each read the
        same receipt of a redemption batch. Treat the returned events as read-only."""
        key = (bytes(receipt.tx_hash), bytes(receipt.block_hash))
        with self._receipt_lock:
            cached = self._receipt_events.get(key)
        if cached is not None:
            return list(cached)
        events = self.decode_logs(
            [
                {
                    "address": log.address,
                    "topics": list(log.topics),
                    "data": log.data,
                    "blockNumber": log.block_number,
                    "blockHash": receipt.block_hash,
                    "transactionHash": log.tx_hash,
                    "logIndex": log.log_index,
                }
                for log in receipt.logs
            ]
        )
        with self._receipt_lock:
            self._receipt_events[key] = tuple(events)
            while len(self._receipt_events) > _RECEIPTS_KEPT:
                self._receipt_events.popitem(last=False)
        return events

    def reversal_proof(
        self, events: Sequence[DecodedEvent], redemption_id: int
    ) -> tuple[ReceiptLeaf, bytes, list[bytes]]:
        """The receipt, root and proof a reversal of ``redemption_id`` presents.

        ``events`` are the decoded logs of the transaction that redeemed it (at least its
        ``Redeemed`` events). Raises ``LookupError`` if none of them redeemed ``redemption_id``.
        """
        for receipts in receipts_in(events).values():
            leaves = [leaf for leaf, _ in receipts]
            for position, leaf in enumerate(leaves):
                if leaf.redemption_id == redemption_id:
                    tree = MerkleTree([receipt_leaf_hash(item) for item in leaves])
                    return leaf, tree.root, tree.proof(position)
        raise LookupError(f"no Redeemed event for redemption id {redemption_id} in the given logs")
