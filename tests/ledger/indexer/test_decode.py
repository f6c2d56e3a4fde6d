"""Pure decoding: every mirrored event, from synthetic logs, against ``EventDecoder``."""

from __future__ import annotations

from typing import Any

import pytest
from eth_abi import encode
from eth_utils import keccak, to_checksum_address

from ledger.abi import abi_type
from ledger.compiler import Artifacts
from ledger.events import EventDecoder
from ledger.indexer.decode import EVENT_SIGNATURES, GOVERNANCE_KINDS, UNLIMITED, ChunkDecoder
from ledger.indexer.errors import IndexerError
from ledger.indexer.fetch import Header
from ledger.store.index import (
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

CHAIN = 31337
CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
BLOCK_HASH = "0x" + "ab" * 32
TX = "0x" + "cd" * 32
HEADERS = {7: Header(7, BLOCK_HASH, "0x" + "00" * 32, 1_700_000_000)}
MERCHANT = to_checksum_address("0x" + "12" * 20)
PID = b"\x01" * 32
PID_HEX = "0x" + "01" * 32


@pytest.fixture(scope="module")
def abi(artifacts: Artifacts) -> list[dict[str, Any]]:
    return [dict(item) for item in artifacts.get("StadjerspasLedger").abi]


@pytest.fixture(scope="module")
def decoder(abi: list[dict[str, Any]]) -> ChunkDecoder:
    return ChunkDecoder(abi, chain_id=CHAIN)


def make_log(
    abi: list[dict[str, Any]], name: str, log_index: int = 0, **args: Any
) -> dict[str, Any]:
    """A log as ``eth_getLogs`` returns it, ABI-encoded from ``args``."""
    event = next(e for e in abi if e.get("type") == "event" and e["name"] == name)
    signature = f"{name}({','.join(abi_type(p) for p in event['inputs'])})"
    topics = ["0x" + keccak(text=signature).hex()]
    plain_types, plain_values = [], []
    for param in event["inputs"]:
        if param["indexed"]:
            topics.append("0x" + encode([abi_type(param)], [args[param["name"]]]).hex())
        else:
            plain_types.append(abi_type(param))
            plain_values.append(args[param["name"]])
    return {
        "address": CONTRACT.lower(),
        "topics": topics,
        "data": "0x" + encode(plain_types, plain_values).hex(),
        "blockNumber": "0x7",
        "blockHash": BLOCK_HASH,
        "transactionHash": TX,
        "transactionIndex": "0x0",
        "logIndex": hex(log_index),
        "removed": False,
    }


def one(decoder: ChunkDecoder, log: dict[str, Any], table: type) -> dict[str, Any]:
    decoded = decoder.decode([log], HEADERS)
    assert decoded.log_count == 1
    rows = decoded.rows[table]
    assert len(rows) == 1
    return rows[0]


def where(row: dict[str, Any], log_index: int = 0) -> None:
    assert row["chain_id"] == CHAIN
    assert row["block_number"] == 7
    assert row["block_hash"] == BLOCK_HASH
    assert row["block_time"] == 1_700_000_000
    assert row["transaction_hash"] == TX
    assert row["log_index"] == log_index


def test_every_event_of_the_contract_is_mirrored(
    abi: list[dict[str, Any]], decoder: ChunkDecoder
) -> None:
    events = {e["name"] for e in abi if e.get("type") == "event"}
    assert set(EVENT_SIGNATURES) == events
    assert len(decoder.topics) == len(EVENT_SIGNATURES) == 23


ROLE = "0x" + "ab" * 32
ADMIN_ROLE = "0x" + "00" * 32
SENDER = to_checksum_address("0x" + "34" * 20)


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        (
            "RoleGranted",
            {"role": bytes.fromhex(ROLE[2:]), "account": MERCHANT, "sender": SENDER},
            {"kind": "role_granted", "role": ROLE, "account": MERCHANT, "sender": SENDER},
        ),
        (
            "RoleRevoked",
            {"role": bytes.fromhex(ROLE[2:]), "account": MERCHANT, "sender": SENDER},
            {"kind": "role_revoked", "role": ROLE, "account": MERCHANT, "sender": SENDER},
        ),
        (
            "RoleAdminChanged",
            {
                "role": bytes.fromhex(ROLE[2:]),
                "previousAdminRole": bytes(32),
                "newAdminRole": bytes.fromhex(ROLE[2:]),
            },
            {
                "kind": "role_admin_changed",
                "role": ROLE,
                "previous_admin_role": ADMIN_ROLE,
                "new_admin_role": ROLE,
            },
        ),
        ("Paused", {"account": SENDER}, {"kind": "paused", "account": SENDER}),
        ("Unpaused", {"account": SENDER}, {"kind": "unpaused", "account": SENDER}),
        (
            "MerchantAllowanceChanged",
            {"schemeId": 4, "merchant": MERCHANT, "allowed": True},
            {
                "kind": "merchant_allowance_changed",
                "scheme_id": 4,
                "account": MERCHANT,
                "allowed": True,
            },
        ),
        (
            "ReversalWindowChanged",
            {"window": 86_400},
            {"kind": "reversal_window_changed", "window_s": 86_400},
        ),
        ("EIP712DomainChanged", {}, {"kind": "eip712_domain_changed"}),
    ],
)
def test_governance_events(
    abi: list[dict[str, Any]],
    decoder: ChunkDecoder,
    name: str,
    args: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    row = one(decoder, make_log(abi, name, **args), IndexedGovernance)
    where(row)
    empty = {
        "role": None,
        "previous_admin_role": None,
        "new_admin_role": None,
        "account": None,
        "sender": None,
        "scheme_id": None,
        "allowed": None,
        "window_s": None,
    }
    assert {k: row[k] for k in (*empty, "kind")} == empty | expected
    assert GOVERNANCE_KINDS[name] == expected["kind"]


def test_an_abi_with_another_signature_is_refused(abi: list[dict[str, Any]]) -> None:
    changed = [dict(e) for e in abi]
    for item in changed:
        if item.get("name") == "Settled":
            item["inputs"] = item["inputs"][:2]
    with pytest.raises(IndexerError, match="Settled"):
        ChunkDecoder(changed, chain_id=CHAIN)


def test_pass_registered(abi: list[dict[str, Any]], decoder: ChunkDecoder) -> None:
    log = make_log(abi, "PassRegistered", passId=PID, holderKey=MERCHANT, cardSerial=9)
    row = one(decoder, log, IndexedPass)
    where(row)
    assert (row["pass_id"], row["holder_key"], row["card_serial"]) == (PID_HEX, MERCHANT, 9)
    event = EventDecoder(abi).decode_log(log)
    assert event is not None
    assert event.args["holderKey"] == row["holder_key"]
    zero = make_log(abi, "PassRegistered", passId=PID, holderKey="0x" + "00" * 20, cardSerial=0)
    assert one(decoder, zero, IndexedPass)["holder_key"] is None


def test_holder_key_block_status_and_card(abi: list[dict[str, Any]], decoder: ChunkDecoder) -> None:
    row = one(
        decoder, make_log(abi, "HolderKeyChanged", passId=PID, holderKey=MERCHANT), IndexedPassBlock
    )
    assert (row["kind"], row["holder_key"], row["pass_id"]) == ("holder_key", MERCHANT, PID_HEX)
    cleared = make_log(abi, "HolderKeyChanged", passId=PID, holderKey="0x" + "00" * 20)
    assert one(decoder, cleared, IndexedPassBlock)["holder_key"] is None
    for blocked, kind in ((True, "blocked"), (False, "unblocked")):
        log = make_log(abi, "PassBlockStatusChanged", passId=PID, blocked=blocked)
        row = one(decoder, log, IndexedPassBlock)
        assert (row["kind"], row["holder_key"]) == (kind, None)
    log = make_log(abi, "CardReplaced", passId=PID, oldSerial=3, newSerial=2**64 - 2)
    row = one(decoder, log, IndexedCardChange)
    assert (row["old_serial"], row["new_serial"]) == (3, 2**64 - 2)


def test_scheme_created(abi: list[dict[str, Any]], decoder: ChunkDecoder) -> None:
    terms = (2, 1_000, 2**40 - 1, 500, 0, 2_500, 10_000, 0, 2**128 - 1, True)
    row = one(decoder, make_log(abi, "SchemeCreated", schemeId=4, terms=terms), IndexedScheme)
    where(row)
    assert row == row | {
        "scheme_id": 4,
        "kind": "discount",
        "valid_from": 1_000,
        "valid_until": 2**40 - 1,
        "per_redemption_cap": 500,
        "unit_value": 0,
        "discount_bps": 2_500,
        "reimburse_bps": 10_000,
        "discount_fixed": 0,
        "budget_cap": 2**128 - 1,
        "open_to_all_merchants": True,
    }


def test_entitlements(abi: list[dict[str, Any]], decoder: ChunkDecoder) -> None:
    row = one(
        decoder,
        make_log(abi, "EntitlementIssued", schemeId=2, passId=PID, amount=70),
        IndexedEntitlement,
    )
    assert row == row | {
        "scheme_id": 2,
        "pass_id": PID_HEX,
        "amount": 70,
        "unlimited": False,
        "source": "issue",
        "position": 0,
        "cohort_root": None,
    }
    unlimited = make_log(abi, "EntitlementIssued", schemeId=2, passId=PID, amount=UNLIMITED)
    row = one(decoder, unlimited, IndexedEntitlement)
    assert (row["amount"], row["unlimited"]) == (0, True)
    ids = [bytes([i]) * 32 for i in range(1, 4)]
    log = make_log(abi, "EntitlementsIssued", schemeId=5, passIds=ids, amounts=[1, UNLIMITED, 3])
    rows = decoder.decode([log], HEADERS).rows[IndexedEntitlement]
    assert [
        (r["position"], r["pass_id"], r["amount"], r["unlimited"], r["source"]) for r in rows
    ] == [
        (0, "0x" + ids[0].hex(), 1, False, "batch"),
        (1, "0x" + ids[1].hex(), 0, True, "batch"),
        (2, "0x" + ids[2].hex(), 3, False, "batch"),
    ]
    assert {r["log_index"] for r in rows} == {0}


def test_cohorts_claims_and_expiry(abi: list[dict[str, Any]], decoder: ChunkDecoder) -> None:
    root = b"\x0f" * 32
    issued = make_log(abi, "CohortIssued", schemeId=3, root=root, holderCount=2, totalAmount=2**100)
    claimed = make_log(abi, "CohortClaimed", 1, root=root, index=1, passId=PID, amount=250)
    decoded = decoder.decode([issued, claimed], HEADERS)
    cohort = decoded.rows[IndexedCohort][0]
    assert (
        cohort["scheme_id"],
        cohort["root"],
        cohort["holder_count"],
        cohort["total_amount"],
    ) == (3, "0x" + root.hex(), 2, 2**100)
    claim = decoded.rows[IndexedCohortClaim][0]
    assert (claim["root"], claim["leaf_index"], claim["pass_id"], claim["amount"]) == (
        "0x" + root.hex(),
        1,
        PID_HEX,
        250,
    )
    entitlement = decoded.rows[IndexedEntitlement][0]
    assert entitlement == entitlement | {
        "scheme_id": 3,
        "source": "claim",
        "amount": 250,
        "cohort_root": "0x" + root.hex(),
        "log_index": 1,
    }
    assert decoded.unresolved_roots == set()
    alone = decoder.decode([claimed], HEADERS)
    assert alone.unresolved_roots == {"0x" + root.hex()}
    assert alone.rows[IndexedEntitlement][0]["scheme_id"] is None
    known = decoder.decode([claimed], HEADERS, cohort_schemes={"0x" + root.hex(): 3})
    assert known.rows[IndexedEntitlement][0]["scheme_id"] == 3
    expired = one(
        decoder,
        make_log(abi, "EntitlementExpired", schemeId=3, passId=PID, amount=12),
        IndexedExpiry,
    )
    assert (expired["scheme_id"], expired["pass_id"], expired["amount"]) == (3, PID_HEX, 12)
    assert expired["unlimited"] is False
    unlimited = one(
        decoder,
        make_log(abi, "EntitlementExpired", schemeId=3, passId=PID, amount=UNLIMITED),
        IndexedExpiry,
    )
    assert (unlimited["amount"], unlimited["unlimited"]) == (0, True)


def test_redeemed_gets_root_and_position(abi: list[dict[str, Any]], decoder: ChunkDecoder) -> None:
    big_id = 2**255 + 12345
    logs = [
        make_log(
            abi,
            "Redeemed",
            0,
            redemptionId=big_id,
            passId=PID,
            schemeId=1,
            merchant=MERCHANT,
            amount=100,
            debited=100,
            discount=0,
            credited=100,
        ),
        make_log(
            abi,
            "RedemptionRejected",
            1,
            redemptionId=8,
            reason=keccak(text="RedemptionAmountOverBalance(uint256,uint256)")[:4],
            detail=(77).to_bytes(32, "big"),
        ),
        make_log(
            abi,
            "Redeemed",
            2,
            redemptionId=9,
            passId=PID,
            schemeId=2,
            merchant=MERCHANT,
            amount=2_000,
            debited=1,
            discount=1_000,
            credited=500,
        ),
        make_log(abi, "ReceiptsRecorded", 3, root=b"\xee" * 32, count=2),
    ]
    decoded = decoder.decode(logs, HEADERS)
    rows = decoded.rows[IndexedRedemption]
    assert [r["redemption_id"] for r in rows] == [str(big_id), "9"]
    assert [(r["receipt_root"], r["receipt_position"]) for r in rows] == [
        ("0x" + "ee" * 32, 0),
        ("0x" + "ee" * 32, 1),
    ]
    assert rows[1] == rows[1] | {
        "pass_id": PID_HEX,
        "scheme_id": 2,
        "merchant": MERCHANT,
        "amount": 2_000,
        "debited": 1,
        "discount": 1_000,
        "credited": 500,
    }
    rejected = decoded.rows[IndexedRejection][0]
    assert (rejected["redemption_id"], rejected["reason"], rejected["detail"]) == (
        "8",
        "RedemptionAmountOverBalance",
        "0x" + (77).to_bytes(32, "big").hex(),
    )
    assert decoded.log_count == 4


def test_unknown_selector_is_kept_as_hex(abi: list[dict[str, Any]], decoder: ChunkDecoder) -> None:
    log = make_log(
        abi, "RedemptionRejected", redemptionId=1, reason=b"\xde\xad\xbe\xef", detail=b"\x00" * 32
    )
    assert one(decoder, log, IndexedRejection)["reason"] == "0xdeadbeef"


def test_reversed_and_settled(abi: list[dict[str, Any]], decoder: ChunkDecoder) -> None:
    log = make_log(
        abi,
        "Reversed",
        redemptionId=5,
        passId=PID,
        schemeId=1,
        merchant=MERCHANT,
        debited=10,
        credited=10,
    )
    row = one(decoder, log, IndexedReversal)
    assert row == row | {
        "redemption_id": "5",
        "pass_id": PID_HEX,
        "scheme_id": 1,
        "merchant": MERCHANT,
        "debited": 10,
        "credited": 10,
    }
    ref = b"SEPA".ljust(32, b"\x00")
    log = make_log(abi, "Settled", merchant=MERCHANT, paymentReference=ref, amount=2**127)
    row = one(decoder, log, IndexedSettlement)
    assert (row["merchant"], row["payment_reference"], row["amount"]) == (
        MERCHANT,
        "0x" + ref.hex(),
        2**127,
    )


def test_logs_of_unknown_events_are_skipped(decoder: ChunkDecoder) -> None:
    foreign = {
        "address": CONTRACT.lower(),
        "topics": ["0x" + keccak(text="Transfer(address,address,uint256)").hex()],
        "data": "0x" + "00" * 32,
        "blockNumber": "0x7",
        "blockHash": BLOCK_HASH,
        "transactionHash": TX,
        "transactionIndex": "0x0",
        "logIndex": "0x0",
        "removed": False,
    }
    decoded = decoder.decode([foreign], HEADERS)
    assert decoded.rows == {}
    assert decoded.event_blocks == set()


def test_a_log_without_its_header_is_an_error(
    abi: list[dict[str, Any]], decoder: ChunkDecoder
) -> None:
    log = make_log(abi, "EntitlementIssued", schemeId=2, passId=PID, amount=70)
    with pytest.raises(IndexerError, match="no header"):
        decoder.decode([log], {})
