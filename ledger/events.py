"""Pure decoding of the ledger contract's logs: no node, no I/O.

The indexer and the client both go fetch -> :func:`decode_log` -> apply. A log of another contract
or an unknown event decodes to ``None``.

Most of the ledger's events carry only static elementary values (``uint``/``int``, ``address``,
``bool``, ``bytesN``), one 32-byte word each. Those are read straight from the words, with the
same padding rules as ``eth_abi`` (a word that breaks them goes to ``eth_abi``, which raises its
own error); events with dynamic values (arrays, ``bytes``) go to ``eth_abi``. The service decodes
every receipt of its redemption batches, so this path is hot: the word reader is ~10x faster.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from eth_abi import decode
from eth_utils import event_abi_to_log_topic, to_checksum_address

from ledger.abi import abi_type

__all__ = ["DecodedEvent", "EventDecoder", "checksummed"]


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


@functools.lru_cache(maxsize=65_536)
def checksummed(address: str) -> str:
    """EIP-55 form of ``address`` (cached: logs name the same few contracts, merchants and
    holder keys again and again, and each checksum costs a keccak)."""
    return to_checksum_address(address)


def _hex_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    text = str(value)
    return bytes.fromhex(text[2:] if text.startswith("0x") else text)


def _int(value: Any) -> int:
    return value if isinstance(value, int) else int(str(value), 16)


class _Irregular(Exception):
    """A word breaks the ABI's padding rules: let ``eth_abi`` decode (and refuse) it."""


WordReader = Callable[[bytes], Any]


def _uint_reader(bits: int) -> WordReader:
    bound = 1 << bits

    def read(word: bytes) -> int:
        value = int.from_bytes(word, "big")
        if value >= bound:
            raise _Irregular
        return value

    return read


def _int_reader(bits: int) -> WordReader:
    low, high = -(1 << (bits - 1)), 1 << (bits - 1)

    def read(word: bytes) -> int:
        value = int.from_bytes(word, "big", signed=True)
        if not low <= value < high:
            raise _Irregular
        return value

    return read


def _address(word: bytes) -> str:
    if any(word[:12]):
        raise _Irregular
    return checksummed("0x" + word[12:].hex())


def _bool(word: bytes) -> bool:
    value = int.from_bytes(word, "big")
    if value > 1:
        raise _Irregular
    return value == 1


def _fixed_bytes_reader(size: int) -> WordReader:
    def read(word: bytes) -> bytes:
        if any(word[size:]):
            raise _Irregular
        return word[:size]

    return read


def _word_reader(kind: str) -> WordReader | None:
    """A reader for one static elementary ABI type, or None (decode with ``eth_abi``)."""
    if kind == "address":
        return _address
    if kind == "bool":
        return _bool
    for prefix, make in (("uint", _uint_reader), ("int", _int_reader)):
        if kind.startswith(prefix) and kind[len(prefix) :].isdigit():
            bits = int(kind[len(prefix) :])
            return make(bits) if 8 <= bits <= 256 and bits % 8 == 0 else None
    if kind.startswith("bytes") and kind[5:].isdigit():
        size = int(kind[5:])
        return _fixed_bytes_reader(size) if 1 <= size <= 32 else None
    return None


@dataclass(frozen=True, slots=True)
class _EventShape:
    name: str
    indexed: tuple[tuple[str, str], ...]  # (name, type) in topic order
    plain: tuple[tuple[str, str], ...]  # (name, type) in data order
    indexed_readers: tuple[WordReader, ...] | None  # None: some topic needs eth_abi
    plain_readers: tuple[WordReader, ...] | None  # None: the data needs eth_abi


def _shape(abi: Mapping[str, Any]) -> _EventShape:
    indexed = tuple((str(p["name"]), abi_type(p)) for p in abi["inputs"] if p["indexed"])
    plain = tuple((str(p["name"]), abi_type(p)) for p in abi["inputs"] if not p["indexed"])

    def readers(params: tuple[tuple[str, str], ...]) -> tuple[WordReader, ...] | None:
        found = [_word_reader(kind) for _, kind in params]
        return None if any(r is None for r in found) else tuple(cast(list[WordReader], found))

    return _EventShape(str(abi["name"]), indexed, plain, readers(indexed), readers(plain))


def _read_words(
    params: tuple[tuple[str, str], ...], readers: tuple[WordReader, ...], words: Sequence[bytes]
) -> dict[str, Any]:
    return {name: read(word) for (name, _), read, word in zip(params, readers, words, strict=True)}


def _checksum_addresses(params: tuple[tuple[str, str], ...], values: dict[str, Any]) -> None:
    for name, kind in params:
        if kind == "address":
            values[name] = checksummed(values[name])


class EventDecoder:
    """Decodes the events named in an ABI."""

    def __init__(self, abi: Sequence[Mapping[str, Any]]) -> None:
        self._events: dict[bytes, _EventShape] = {}
        for item in abi:
            if item.get("type") == "event" and not item.get("anonymous"):
                self._events[bytes(event_abi_to_log_topic(cast(Any, item)))] = _shape(item)

    @property
    def topics(self) -> list[bytes]:
        return list(self._events)

    def decode_log(self, log: Mapping[str, Any]) -> DecodedEvent | None:
        """Decode a log as returned by ``eth_getLogs`` or a receipt (hex strings or bytes)."""
        topics = [_hex_bytes(t) for t in log["topics"]]
        if not topics or topics[0] not in self._events:
            return None
        shape = self._events[topics[0]]
        if len(topics) - 1 != len(shape.indexed):
            raise ValueError(
                f"a {shape.name} log has {len(topics) - 1} indexed topics; its ABI has "
                f"{len(shape.indexed)}"
            )
        values = self._decode_topics(shape, topics[1:])
        values.update(self._decode_data(shape, _hex_bytes(log["data"])))
        return DecodedEvent(
            name=shape.name,
            args=values,
            address=checksummed(str(log["address"])),
            block_number=_int(log["blockNumber"]),
            block_hash=_hex_bytes(log["blockHash"]),
            transaction_hash=_hex_bytes(log["transactionHash"]),
            log_index=_int(log["logIndex"]),
        )

    @staticmethod
    def _decode_topics(shape: _EventShape, topics: Sequence[bytes]) -> dict[str, Any]:
        if shape.indexed_readers is not None and all(len(t) == 32 for t in topics):
            try:
                return _read_words(shape.indexed, shape.indexed_readers, topics)
            except _Irregular:
                pass
        values: dict[str, Any] = {}
        for (name, kind), topic in zip(shape.indexed, topics, strict=True):
            (values[name],) = decode([kind], topic)
        _checksum_addresses(shape.indexed, values)
        return values

    @staticmethod
    def _decode_data(shape: _EventShape, data: bytes) -> dict[str, Any]:
        if shape.plain_readers is not None and len(data) == 32 * len(shape.plain):
            words = [data[i : i + 32] for i in range(0, len(data), 32)]
            try:
                return _read_words(shape.plain, shape.plain_readers, words)
            except _Irregular:
                pass
        decoded = decode([kind for _, kind in shape.plain], data)
        values = {name: value for (name, _), value in zip(shape.plain, decoded, strict=True)}
        _checksum_addresses(shape.plain, values)
        return values
