"""Decode: ledger logs -> rows of the index tables. Pure: no node, no database.

:class:`ChunkDecoder` turns the raw logs of ``eth_getLogs`` (hex strings, in block and log order)
plus the headers of their blocks into one list of row mappings per table of
:mod:`ledger.store.index`, ready for a bulk ``INSERT``:

- every row carries ``chain_id``, ``block_number``, ``block_hash``, ``block_time``,
  ``transaction_hash`` and ``log_index`` (hashes and ``bytes32`` as lower-case ``0x`` hex,
  addresses checksummed, ``uint256`` redemption ids as decimal text);
- ``Redeemed`` rows get ``receipt_root``/``receipt_position`` from the ``ReceiptsRecorded``
  event that follows them in the same transaction (the contract emits the accepted redemptions,
  then the root of their receipt tree; the position is the order of the ``Redeemed`` events);
- ``EntitlementsIssued`` becomes one entitlement row per pass (``position`` = index in the batch),
  ``CohortClaimed`` a cohort-claim row and an entitlement row (``source="claim"``) whose scheme
  comes from the cohort (from this chunk or ``cohort_schemes``; otherwise the writer looks it up);
- the contract's ``UNLIMITED`` amount (``2**64 - 1``, discount entitlements only) becomes
  ``unlimited=True, amount=0``;
- ``RedemptionRejected`` carries the error selector; the row names the error (``reason``) from
  the ABI, or keeps the selector as hex if the ABI does not know it.

Static words are sliced out of the hex data directly (``int(word, 16)``) rather than through
``eth_abi``, which is ~20x slower per log; only ``EntitlementsIssued`` (dynamic arrays) uses
``eth_abi``. The decoder checks at construction that the ABI's events have exactly the signatures
decoded here, and tests compare every event with :class:`ledger.events.EventDecoder`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import keccak, to_checksum_address
from sqlmodel import SQLModel

from ledger.abi import abi_type
from ledger.indexer.errors import IndexerError
from ledger.indexer.fetch import Header
from ledger.store.index import (
    GOVERNANCE_KINDS,
    GOVERNANCE_VALUES,
    IndexedCardChange,
    IndexedCohort,
    IndexedCohortClaim,
    IndexedEntitlement,
    IndexedExpiry,
    IndexedGovernance,
    IndexedPass,
    IndexedPassBlock,
    IndexedRedemption,
    IndexedRejection,
    IndexedReversal,
    IndexedScheme,
    IndexedSettlement,
)

__all__ = [
    "EVENT_SIGNATURES",
    "GOVERNANCE_KINDS",
    "UNLIMITED",
    "ChunkDecoder",
    "DecodedChunk",
    "Row",
]

UNLIMITED = 2**64 - 1
_ZERO_ADDRESS = "0x" + "0" * 40
_SCHEME_KINDS = ("budget", "uses", "discount")

Row = dict[str, Any]

#: The events the index mirrors (every event of the contract), with the exact signatures
#: decoded here.
EVENT_SIGNATURES: dict[str, str] = {
    "PassRegistered": "PassRegistered(bytes32,address,uint64)",
    "HolderKeyChanged": "HolderKeyChanged(bytes32,address)",
    "CardReplaced": "CardReplaced(bytes32,uint64,uint64)",
    "PassBlockStatusChanged": "PassBlockStatusChanged(bytes32,bool)",
    "SchemeCreated": (
        "SchemeCreated(uint256,(uint8,uint40,uint40,uint64,uint64,uint16,uint16,uint64,uint128,bool))"
    ),
    "EntitlementIssued": "EntitlementIssued(uint256,bytes32,uint64)",
    "EntitlementsIssued": "EntitlementsIssued(uint256,bytes32[],uint64[])",
    "CohortIssued": "CohortIssued(uint256,bytes32,uint64,uint128)",
    "CohortClaimed": "CohortClaimed(bytes32,uint256,bytes32,uint64)",
    "EntitlementExpired": "EntitlementExpired(uint256,bytes32,uint64)",
    "Redeemed": "Redeemed(uint256,bytes32,uint256,address,uint64,uint64,uint64,uint64)",
    "RedemptionRejected": "RedemptionRejected(uint256,bytes4,bytes32)",
    "ReceiptsRecorded": "ReceiptsRecorded(bytes32,uint256)",
    "Reversed": "Reversed(uint256,bytes32,uint256,address,uint64,uint64)",
    "Settled": "Settled(address,bytes32,uint128)",
    "RoleGranted": "RoleGranted(bytes32,address,address)",
    "RoleRevoked": "RoleRevoked(bytes32,address,address)",
    "RoleAdminChanged": "RoleAdminChanged(bytes32,bytes32,bytes32)",
    "Paused": "Paused(address)",
    "Unpaused": "Unpaused(address)",
    "MerchantAllowanceChanged": "MerchantAllowanceChanged(uint256,address,bool)",
    "ReversalWindowChanged": "ReversalWindowChanged(uint64)",
    "EIP712DomainChanged": "EIP712DomainChanged()",
}


@lru_cache(maxsize=4096)
def _address(word: str) -> str:
    """A checksummed address from a 64-hex-digit ABI word."""
    return to_checksum_address("0x" + word[24:])


def _words(data: str) -> list[str]:
    body = data[2:] if data.startswith("0x") else data
    return [body[i : i + 64] for i in range(0, len(body), 64)]


def _amount(value: int) -> tuple[int, bool]:
    return (0, True) if value == UNLIMITED else (value, False)


@dataclass(slots=True)
class DecodedChunk:
    """Rows per table (keyed by the table's model class) and the logs they came from."""

    rows: dict[type[SQLModel], list[Row]] = field(default_factory=dict)
    log_count: int = 0
    #: Cohort roots of claim entitlements whose scheme is not in this chunk (``scheme_id`` None).
    unresolved_roots: set[str] = field(default_factory=set)
    #: Blocks that have at least one mirrored event.
    event_blocks: set[int] = field(default_factory=set)

    def add(self, table: type[SQLModel], row: Row) -> None:
        rows = self.rows.get(table)
        if rows is None:
            rows = self.rows[table] = []
        rows.append(row)

    @property
    def row_count(self) -> int:
        return sum(len(rows) for rows in self.rows.values())


class ChunkDecoder:
    """Decodes the ledger's logs of one chain into index rows."""

    def __init__(self, abi: Sequence[Mapping[str, Any]], *, chain_id: int) -> None:
        self.chain_id = chain_id
        by_name: dict[str, str] = {}
        for item in abi:
            if item.get("type") == "event" and not item.get("anonymous"):
                signature = f"{item['name']}({','.join(abi_type(p) for p in item['inputs'])})"
                by_name[str(item["name"])] = signature
        self._handlers: dict[str, Callable[[DecodedChunk, Mapping[str, Any], Row], None]] = {}
        handlers: dict[str, Callable[[DecodedChunk, Mapping[str, Any], Row], None]] = {
            "PassRegistered": self._pass_registered,
            "HolderKeyChanged": self._holder_key_changed,
            "CardReplaced": self._card_replaced,
            "PassBlockStatusChanged": self._pass_block_status,
            "SchemeCreated": self._scheme_created,
            "EntitlementIssued": self._entitlement_issued,
            "EntitlementsIssued": self._entitlements_issued,
            "CohortIssued": self._cohort_issued,
            "CohortClaimed": self._cohort_claimed,
            "EntitlementExpired": self._entitlement_expired,
            "Redeemed": self._redeemed,
            "RedemptionRejected": self._rejected,
            "ReceiptsRecorded": self._receipts_recorded,
            "Reversed": self._reversed,
            "Settled": self._settled,
            "RoleGranted": partial(self._role_changed, GOVERNANCE_KINDS["RoleGranted"]),
            "RoleRevoked": partial(self._role_changed, GOVERNANCE_KINDS["RoleRevoked"]),
            "RoleAdminChanged": self._role_admin_changed,
            "Paused": partial(self._pause_changed, GOVERNANCE_KINDS["Paused"]),
            "Unpaused": partial(self._pause_changed, GOVERNANCE_KINDS["Unpaused"]),
            "MerchantAllowanceChanged": self._allowance_changed,
            "ReversalWindowChanged": self._window_changed,
            "EIP712DomainChanged": self._domain_changed,
        }
        for name, signature in EVENT_SIGNATURES.items():
            if by_name.get(name) != signature:
                raise IndexerError(
                    f"the ABI's event {name} is {by_name.get(name)!r}, but the indexer decodes "
                    f"{signature!r}: update ledger/indexer/decode.py with the contract"
                )
            topic = "0x" + keccak(text=signature).hex()
            self._handlers[topic] = handlers[name]
        self.error_names: dict[str, str] = {}
        for item in abi:
            if item.get("type") == "error":
                signature = f"{item['name']}({','.join(abi_type(p) for p in item['inputs'])})"
                self.error_names["0x" + keccak(text=signature)[:4].hex()] = str(item["name"])
        # per-chunk state: the Redeemed rows of the current transaction awaiting their root
        self._pending_tx = ""
        self._pending: list[Row] = []
        self._cohorts: dict[str, int] = {}

    @property
    def topics(self) -> list[str]:
        """``topic0`` of every event the index mirrors (for the ``eth_getLogs`` filter)."""
        return list(self._handlers)

    def decode(
        self,
        logs: Sequence[Mapping[str, Any]],
        headers: Mapping[int, Header],
        *,
        cohort_schemes: Mapping[str, int] | None = None,
    ) -> DecodedChunk:
        """Rows for ``logs`` (one chunk, in block and log order; ``headers`` has their blocks)."""
        out = DecodedChunk(log_count=len(logs))
        self._pending_tx = ""
        self._pending = []
        self._cohorts = dict(cohort_schemes or {})
        times: dict[str, int] = {h.hash: h.timestamp for h in headers.values()}
        chain_id = self.chain_id
        handlers = self._handlers
        for entry in logs:
            topics = entry["topics"]
            handler = handlers.get(str(topics[0]).lower()) if topics else None
            if handler is None:
                continue
            block_hash = str(entry["blockHash"]).lower()
            block_number = int(entry["blockNumber"], 16)
            time_ = times.get(block_hash)
            if time_ is None:
                raise IndexerError(f"no header for block {block_number} ({block_hash})")
            base: Row = {
                "chain_id": chain_id,
                "block_number": block_number,
                "block_hash": block_hash,
                "block_time": time_,
                "transaction_hash": str(entry["transactionHash"]).lower(),
                "log_index": int(entry["logIndex"], 16),
            }
            handler(out, entry, base)
            out.event_blocks.add(block_number)
        return out

    # ------------------------------------------------------------------ passes

    def _pass_registered(self, out: DecodedChunk, entry: Mapping[str, Any], base: Row) -> None:
        w = _words(entry["data"])
        key = _address(w[0])
        base["pass_id"] = entry["topics"][1].lower()
        base["holder_key"] = None if key == _ZERO_ADDRESS else key
        base["card_serial"] = int(w[1], 16)
        out.add(IndexedPass, base)

    def _holder_key_changed(self, out: DecodedChunk, entry: Mapping[str, Any], base: Row) -> None:
        key = _address(_words(entry["data"])[0])
        base["pass_id"] = entry["topics"][1].lower()
        base["kind"] = "holder_key"
        base["holder_key"] = None if key == _ZERO_ADDRESS else key
        out.add(IndexedPassBlock, base)

    def _pass_block_status(self, out: DecodedChunk, entry: Mapping[str, Any], base: Row) -> None:
        blocked = int(_words(entry["data"])[0], 16) != 0
        base["pass_id"] = entry["topics"][1].lower()
        base["kind"] = "blocked" if blocked else "unblocked"
        base["holder_key"] = None
        out.add(IndexedPassBlock, base)

    def _card_replaced(self, out: DecodedChunk, entry: Mapping[str, Any], base: Row) -> None:
        w = _words(entry["data"])
        base["pass_id"] = entry["topics"][1].lower()
        base["old_serial"] = int(w[0], 16)
        base["new_serial"] = int(w[1], 16)
        out.add(IndexedCardChange, base)

    # ------------------------------------------------------------------ schemes and issuance

    def _scheme_created(self, out: DecodedChunk, entry: Mapping[str, Any], base: Row) -> None:
        w = [int(word, 16) for word in _words(entry["data"])]
        kind = w[0]
        base["scheme_id"] = int(entry["topics"][1], 16)
        base["kind"] = _SCHEME_KINDS[kind] if kind < len(_SCHEME_KINDS) else str(kind)
        base["valid_from"] = w[1]
        base["valid_until"] = w[2]
        base["per_redemption_cap"] = w[3]
        base["unit_value"] = w[4]
        base["discount_bps"] = w[5]
        base["reimburse_bps"] = w[6]
        base["discount_fixed"] = w[7]
        base["budget_cap"] = w[8]
        base["open_to_all_merchants"] = w[9] != 0
        out.add(IndexedScheme, base)

    @staticmethod
    def _entitlement(
        base: Row, *, scheme_id: int | None, pass_id: str, value: int, source: str, position: int
    ) -> Row:
        amount, unlimited = _amount(value)
        row = dict(base)
        row["position"] = position
        row["scheme_id"] = scheme_id
        row["pass_id"] = pass_id
        row["amount"] = amount
        row["unlimited"] = unlimited
        row["source"] = source
        row["cohort_root"] = None
        return row

    def _entitlement_issued(self, out: DecodedChunk, entry: Mapping[str, Any], base: Row) -> None:
        topics = entry["topics"]
        row = self._entitlement(
            base,
            scheme_id=int(topics[1], 16),
            pass_id=topics[2].lower(),
            value=int(_words(entry["data"])[0], 16),
            source="issue",
            position=0,
        )
        out.add(IndexedEntitlement, row)

    def _entitlements_issued(self, out: DecodedChunk, entry: Mapping[str, Any], base: Row) -> None:
        scheme_id = int(entry["topics"][1], 16)
        data = bytes.fromhex(entry["data"][2:])
        pass_ids, amounts = abi_decode(["bytes32[]", "uint64[]"], data)
        for position, (pid, value) in enumerate(zip(pass_ids, amounts, strict=True)):
            row = self._entitlement(
                base,
                scheme_id=scheme_id,
                pass_id="0x" + bytes(pid).hex(),
                value=int(value),
                source="batch",
                position=position,
            )
            out.add(IndexedEntitlement, row)

    def _cohort_issued(self, out: DecodedChunk, entry: Mapping[str, Any], base: Row) -> None:
        w = _words(entry["data"])
        root = entry["topics"][2].lower()
        base["scheme_id"] = int(entry["topics"][1], 16)
        base["root"] = root
        base["holder_count"] = int(w[0], 16)
        base["total_amount"] = int(w[1], 16)
        self._cohorts[root] = base["scheme_id"]
        out.add(IndexedCohort, base)

    def _cohort_claimed(self, out: DecodedChunk, entry: Mapping[str, Any], base: Row) -> None:
        topics = entry["topics"]
        root = topics[1].lower()
        pass_id = topics[3].lower()
        value = int(_words(entry["data"])[0], 16)
        scheme_id = self._cohorts.get(root)
        entitlement = self._entitlement(
            base, scheme_id=scheme_id, pass_id=pass_id, value=value, source="claim", position=0
        )
        entitlement["cohort_root"] = root
        if scheme_id is None:
            out.unresolved_roots.add(root)
        out.add(IndexedEntitlement, entitlement)
        amount, unlimited = _amount(value)
        base["root"] = root
        base["leaf_index"] = int(topics[2], 16)
        base["pass_id"] = pass_id
        base["amount"] = amount
        base["unlimited"] = unlimited
        out.add(IndexedCohortClaim, base)

    def _entitlement_expired(self, out: DecodedChunk, entry: Mapping[str, Any], base: Row) -> None:
        topics = entry["topics"]
        base["scheme_id"] = int(topics[1], 16)
        base["pass_id"] = topics[2].lower()
        # an unlimited discount entitlement has no countable value to write off: a flag
        base["amount"], base["unlimited"] = _amount(int(_words(entry["data"])[0], 16))
        out.add(IndexedExpiry, base)

    # ------------------------------------------------------------------ redemption

    def _redeemed(self, out: DecodedChunk, entry: Mapping[str, Any], base: Row) -> None:
        topics = entry["topics"]
        w = _words(entry["data"])
        base["redemption_id"] = str(int(topics[1], 16))
        base["pass_id"] = topics[2].lower()
        base["scheme_id"] = int(topics[3], 16)
        base["merchant"] = _address(w[0])
        base["amount"] = int(w[1], 16)
        base["debited"] = int(w[2], 16)
        base["discount"] = int(w[3], 16)
        base["credited"] = int(w[4], 16)
        base["receipt_root"] = None
        base["receipt_position"] = None
        if base["transaction_hash"] != self._pending_tx:
            self._pending_tx = base["transaction_hash"]
            self._pending = []
        self._pending.append(base)
        out.add(IndexedRedemption, base)

    def _receipts_recorded(self, out: DecodedChunk, entry: Mapping[str, Any], base: Row) -> None:
        root = entry["topics"][1].lower()
        if base["transaction_hash"] == self._pending_tx:
            for position, row in enumerate(self._pending):
                row["receipt_root"] = root
                row["receipt_position"] = position
        self._pending = []

    def _rejected(self, out: DecodedChunk, entry: Mapping[str, Any], base: Row) -> None:
        w = _words(entry["data"])
        selector = "0x" + w[0][:8].lower()
        base["redemption_id"] = str(int(entry["topics"][1], 16))
        base["reason"] = self.error_names.get(selector, selector)
        base["detail"] = "0x" + w[1].lower()
        out.add(IndexedRejection, base)

    def _reversed(self, out: DecodedChunk, entry: Mapping[str, Any], base: Row) -> None:
        topics = entry["topics"]
        w = _words(entry["data"])
        base["redemption_id"] = str(int(topics[1], 16))
        base["pass_id"] = topics[2].lower()
        base["scheme_id"] = int(topics[3], 16)
        base["merchant"] = _address(w[0])
        base["debited"] = int(w[1], 16)
        base["credited"] = int(w[2], 16)
        out.add(IndexedReversal, base)

    def _settled(self, out: DecodedChunk, entry: Mapping[str, Any], base: Row) -> None:
        topics = entry["topics"]
        base["merchant"] = _address(topics[1][2:])
        base["payment_reference"] = topics[2].lower()
        base["amount"] = int(_words(entry["data"])[0], 16)
        out.add(IndexedSettlement, base)

    # ------------------------------------------------------------------ governance

    @staticmethod
    def _governance(out: DecodedChunk, base: Row, kind: str, **values: Any) -> None:
        row = base | dict.fromkeys(GOVERNANCE_VALUES) | values
        row["kind"] = kind
        out.add(IndexedGovernance, row)

    def _role_changed(
        self, kind: str, out: DecodedChunk, entry: Mapping[str, Any], base: Row
    ) -> None:
        topics = entry["topics"]
        self._governance(
            out,
            base,
            kind,
            role=topics[1].lower(),
            account=_address(topics[2][2:]),
            sender=_address(topics[3][2:]),
        )

    def _role_admin_changed(self, out: DecodedChunk, entry: Mapping[str, Any], base: Row) -> None:
        topics = entry["topics"]
        self._governance(
            out,
            base,
            GOVERNANCE_KINDS["RoleAdminChanged"],
            role=topics[1].lower(),
            previous_admin_role=topics[2].lower(),
            new_admin_role=topics[3].lower(),
        )

    def _pause_changed(
        self, kind: str, out: DecodedChunk, entry: Mapping[str, Any], base: Row
    ) -> None:
        self._governance(out, base, kind, account=_address(_words(entry["data"])[0]))

    def _allowance_changed(self, out: DecodedChunk, entry: Mapping[str, Any], base: Row) -> None:
        topics = entry["topics"]
        self._governance(
            out,
            base,
            GOVERNANCE_KINDS["MerchantAllowanceChanged"],
            scheme_id=int(topics[1], 16),
            account=_address(topics[2][2:]),
            allowed=int(_words(entry["data"])[0], 16) != 0,
        )

    def _window_changed(self, out: DecodedChunk, entry: Mapping[str, Any], base: Row) -> None:
        window = int(_words(entry["data"])[0], 16)
        self._governance(out, base, GOVERNANCE_KINDS["ReversalWindowChanged"], window_s=window)

    def _domain_changed(self, out: DecodedChunk, entry: Mapping[str, Any], base: Row) -> None:
        self._governance(out, base, GOVERNANCE_KINDS["EIP712DomainChanged"])
