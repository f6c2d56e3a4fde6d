"""``EventDecoder``: the word reader agrees with ``eth_abi`` on every event of the ledger's ABI,
and a log that breaks the padding rules is refused exactly as ``eth_abi`` refuses it."""

from __future__ import annotations

import random
from typing import Any

import pytest
from eth_abi import decode, encode
from eth_abi.exceptions import NonEmptyPaddingBytes
from eth_utils import event_abi_to_log_topic, to_checksum_address

from ledger.abi import abi_type
from ledger.compiler import Artifacts
from ledger.events import EventDecoder, checksummed

CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


@pytest.fixture(scope="module")
def abi(artifacts: Artifacts) -> list[dict[str, Any]]:
    return [dict(item) for item in artifacts.get("StadjerspasLedger").abi]


def _events(abi: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in abi if e.get("type") == "event"]


def _components(kind: str) -> list[str]:
    """``(a,(b,c)[],d)`` -> ``["a", "(b,c)[]", "d"]``."""
    parts, depth, current = [], 0, ""
    for char in kind[1:-1]:
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        current += char
    return [*parts, current] if current else parts


def _value(kind: str, rng: random.Random) -> Any:
    if kind.startswith("(") and kind.endswith(")"):
        return tuple(_value(part, rng) for part in _components(kind))
    if kind.endswith("[]"):
        return [_value(kind[:-2], rng) for _ in range(rng.randint(0, 3))]
    if kind == "address":
        return to_checksum_address(rng.randbytes(20))
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "bytes":
        return rng.randbytes(rng.randint(0, 40))
    if kind.startswith("uint"):
        bits = int(kind[4:])
        return rng.choice([0, 1, (1 << bits) - 1, rng.getrandbits(bits)])
    if kind.startswith("int"):
        bits = int(kind[3:])
        return rng.randint(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    if kind.startswith("bytes"):
        return rng.randbytes(int(kind[5:]))
    raise AssertionError(f"no generator for {kind}")


def _log(event: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    topics = ["0x" + bytes(event_abi_to_log_topic(event)).hex()]  # type: ignore[arg-type]
    plain_types, plain_values = [], []
    for param in event["inputs"]:
        if param["indexed"]:
            topics.append("0x" + encode([abi_type(param)], [values[param["name"]]]).hex())
        else:
            plain_types.append(abi_type(param))
            plain_values.append(values[param["name"]])
    return {
        "address": CONTRACT.lower(),
        "topics": topics,
        "data": "0x" + encode(plain_types, plain_values).hex(),
        "blockNumber": "0x7",
        "blockHash": "0x" + "ab" * 32,
        "transactionHash": "0x" + "cd" * 32,
        "logIndex": "0x3",
    }


def _reference(event: dict[str, Any], log: dict[str, Any]) -> dict[str, Any]:
    """The arguments as plain ``eth_abi`` decodes them, addresses checksummed."""
    indexed = [p for p in event["inputs"] if p["indexed"]]
    plain = [p for p in event["inputs"] if not p["indexed"]]
    values: dict[str, Any] = {}
    for param, topic in zip(indexed, log["topics"][1:], strict=True):
        (values[param["name"]],) = decode([abi_type(param)], bytes.fromhex(topic[2:]))
    decoded = decode([abi_type(p) for p in plain], bytes.fromhex(log["data"][2:]))
    values.update({p["name"]: v for p, v in zip(plain, decoded, strict=True)})
    for param in event["inputs"]:
        if param["type"] == "address":
            values[param["name"]] = to_checksum_address(values[param["name"]])
    return values


def test_every_event_decodes_as_eth_abi_decodes_it(abi: list[dict[str, Any]]) -> None:
    decoder = EventDecoder(abi)
    rng = random.Random(4)
    events = _events(abi)
    assert len(events) >= 15
    for event in events:
        for _ in range(25):
            values = {p["name"]: _value(abi_type(p), rng) for p in event["inputs"]}
            log = _log(event, values)
            decoded = decoder.decode_log(log)
            assert decoded is not None
            assert decoded.name == event["name"]
            assert decoded.args == _reference(event, log)
            assert decoded.address == CONTRACT
            assert (decoded.block_number, decoded.log_index) == (7, 3)
            assert decoded.transaction_hash == b"\xcd" * 32


def test_bytes_input_decodes_like_hex_input(abi: list[dict[str, Any]]) -> None:
    decoder = EventDecoder(abi)
    event = next(e for e in _events(abi) if e["name"] == "Redeemed")
    values = {p["name"]: _value(abi_type(p), random.Random(1)) for p in event["inputs"]}
    log = _log(event, values)
    as_bytes = {
        **log,
        "topics": [bytes.fromhex(t[2:]) for t in log["topics"]],
        "data": bytes.fromhex(log["data"][2:]),
    }
    assert decoder.decode_log(as_bytes) == decoder.decode_log(log)


def test_an_address_word_with_dirty_padding_is_refused_like_eth_abi(
    abi: list[dict[str, Any]],
) -> None:
    decoder = EventDecoder(abi)
    settled = next(e for e in _events(abi) if e["name"] == "Settled")  # merchant in a topic
    values = {p["name"]: _value(abi_type(p), random.Random(2)) for p in settled["inputs"]}
    log = _log(settled, values)
    topic = bytearray.fromhex(log["topics"][1][2:])
    topic[0] = 0xFF
    log["topics"][1] = "0x" + topic.hex()
    with pytest.raises(NonEmptyPaddingBytes):
        decoder.decode_log(log)
    redeemed = next(e for e in _events(abi) if e["name"] == "Redeemed")  # merchant in the data
    values = {p["name"]: _value(abi_type(p), random.Random(2)) for p in redeemed["inputs"]}
    log = _log(redeemed, values)
    data = bytearray.fromhex(log["data"][2:])
    data[0] = 0xFF
    log["data"] = "0x" + data.hex()
    with pytest.raises(NonEmptyPaddingBytes):
        decoder.decode_log(log)


def test_a_bool_word_above_one_is_refused_like_eth_abi(abi: list[dict[str, Any]]) -> None:
    decoder = EventDecoder(abi)
    event = next(e for e in _events(abi) if e["name"] == "PassBlockStatusChanged")
    log = _log(event, {"passId": b"\x01" * 32, "blocked": True})
    log["data"] = "0x" + (2).to_bytes(32, "big").hex()
    with pytest.raises(NonEmptyPaddingBytes, match="Boolean must be either 0x0 or 0x1"):
        decoder.decode_log(log)


def test_a_log_with_the_wrong_topic_count_is_refused(abi: list[dict[str, Any]]) -> None:
    decoder = EventDecoder(abi)
    event = next(e for e in _events(abi) if e["name"] == "Redeemed")
    values = {p["name"]: _value(abi_type(p), random.Random(3)) for p in event["inputs"]}
    log = _log(event, values)
    log["topics"] = log["topics"][:-1]
    with pytest.raises(ValueError, match="Redeemed log has"):
        decoder.decode_log(log)


def test_unknown_topics_and_empty_topics_decode_to_none(abi: list[dict[str, Any]]) -> None:
    decoder = EventDecoder(abi)
    base = {"address": CONTRACT, "data": "0x", "blockNumber": 1, "blockHash": "0x00"}
    base |= {"transactionHash": "0x00", "logIndex": 0}
    assert decoder.decode_log({**base, "topics": []}) is None
    assert decoder.decode_log({**base, "topics": ["0x" + "11" * 32]}) is None


def test_checksummed_is_eip55() -> None:
    raw = "0x" + "ab" * 20
    assert checksummed(raw) == to_checksum_address(raw)
    assert checksummed(raw.upper().replace("0X", "0x")) == to_checksum_address(raw)
