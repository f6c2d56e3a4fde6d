"""Pure decoding of the ledger contract's logs: no node, no I/O.

The indexer and the client both go fetch -> :func:`decode_log` -> apply. A log of another contract
or an unknown event decodes to ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from eth_abi import decode
from eth_utils import event_abi_to_log_topic, to_checksum_address

from ledger.abi import abi_type

__all__ = ["DecodedEvent", "EventDecoder"]


@dataclass(frozen=True, slots=True)
class DecodedEvent:
    """One decoded log with where it happened on chain."""

    name: str
    args: dict[str, Any]
    address: str
    block_number: int
    block_hash: bytes
    transaction_hash: bytes
    log_index: int


def _hex_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    text = str(value)
    return bytes.fromhex(text[2:] if text.startswith("0x") else text)


def _int(value: Any) -> int:
    return value if isinstance(value, int) else int(str(value), 16)


class EventDecoder:
    """Decodes the events named in an ABI."""

    def __init__(self, abi: Sequence[Mapping[str, Any]]) -> None:
        self._events: dict[bytes, Mapping[str, Any]] = {}
        for item in abi:
            if item.get("type") == "event" and not item.get("anonymous"):
                self._events[bytes(event_abi_to_log_topic(cast(Any, item)))] = item

    @property
    def topics(self) -> list[bytes]:
        return list(self._events)

    def decode_log(self, log: Mapping[str, Any]) -> DecodedEvent | None:
        """Decode a log as returned by ``eth_getLogs`` or a receipt (hex strings or bytes)."""
        topics = [_hex_bytes(t) for t in log["topics"]]
        if not topics or topics[0] not in self._events:
            return None
        abi = self._events[topics[0]]
        indexed = [p for p in abi["inputs"] if p["indexed"]]
        plain = [p for p in abi["inputs"] if not p["indexed"]]
        values: dict[str, Any] = {}
        for param, topic in zip(indexed, topics[1:], strict=True):
            (values[param["name"]],) = decode([abi_type(param)], topic)
        data = _hex_bytes(log["data"])
        for param, value in zip(plain, decode([abi_type(p) for p in plain], data), strict=True):
            values[param["name"]] = value
        for param in abi["inputs"]:
            if param["type"] == "address":
                values[param["name"]] = to_checksum_address(values[param["name"]])
        return DecodedEvent(
            name=str(abi["name"]),
            args=values,
            address=to_checksum_address(str(log["address"])),
            block_number=_int(log["blockNumber"]),
            block_hash=_hex_bytes(log["blockHash"]),
            transaction_hash=_hex_bytes(log["transactionHash"]),
            log_index=_int(log["logIndex"]),
        )
