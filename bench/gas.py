"""Gas benchmark of the ledger's operations, side by side with an OpenZeppelin ERC-20 transfer.

Run ``python -m bench.gas`` for a table, ``--json`` for one JSON object on the last line, and
``--breakdown`` for where the gas of a single and of a batched redemption goes (from
``debug_traceTransaction``). It starts its own anvil in a temporary directory and cleans up.

Every figure is the ``gasUsed`` of one transaction receipt (21,000 base and call data included),
divided by the number of items for the batched ones, measured in *steady state*: a redemption id
whose bitmap word is already non-zero, an entitlement that already exists, a merchant whose account
is already non-zero, a cohort whose claim word is already non-zero, a settlement after an earlier
one. ``docs/gas.md`` lists exactly what each operation includes and the cost of the first time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_utils.crypto import keccak
from hexbytes import HexBytes

from bench._chain import (
    BENCH_EXPIRY,
    BenchChain,
    BenchError,
    SentTx,
    bench_chain,
    bench_pass_id,
    bench_pass_ids,
)
from ledger.client import ROLES, RedemptionRequest
from ledger.merkle import (
    RECEIPT_SLOTS,
    CohortLeaf,
    MerkleTree,
    ReceiptLeaf,
    cohort_leaf_hash,
    receipt_leaf_hash,
)

__all__ = [
    "BATCH_SIZE",
    "FIGURE_KEYS",
    "Breakdown",
    "CostLine",
    "GasRun",
    "Measurement",
    "analyse",
    "cohort_leaf_hashes",
    "intrinsic_gas",
    "main",
    "run",
]

BATCH_SIZE = 100
SMALL_COHORT = 100
LARGE_COHORT = 100_000
COHORT_AMOUNT = 5_000  # cents per holder (a 50-euro budget)
REDEEM_AMOUNT = 1_250  # cents per redemption
ISSUE_AMOUNT = 5_000
ERC20_AMOUNT = 125 * 10**17  # 12.50 "euro" with 18 decimals

#: The keys of the JSON object, in table order (with the default cohort sizes).
FIGURE_KEYS = (
    "redeem_single",
    "redeem_first_of_pass",
    "redeem_batched_per_item_100",
    "issue_single",
    "issue_batched_per_holder_100",
    "register_passes_batched_per_pass_100",
    "cohort_root_100",
    "cohort_root_100000",
    "first_use_claim_redeem",
    "reverse",
    "settle",
    "erc20_transfer",
)

#: Upper bounds from DESIGN.md ("Quality bars").
TARGETS: dict[str, int] = {
    "redeem_single": 50_000,
    "redeem_batched_per_item_100": 15_000,
    "issue_batched_per_holder_100": 25_000,
}
#: Upper bound of a cohort issued by root, whatever its size; and it must not depend on the size.
COHORT_ROOT_TARGET = 50_000

TX_BASE_GAS = 21_000
CALLDATA_ZERO_GAS = 4
CALLDATA_NONZERO_GAS = 16
CALLDATA_FLOOR_PER_TOKEN = 10  # EIP-7623 (Prague): floor = 21,000 + 10 * (zero + 4 * non-zero)


def _calldata_bytes(data: bytes) -> tuple[int, int]:
    zero = data.count(0)
    return zero, len(data) - zero


def intrinsic_gas(data: bytes) -> int:
    """Base cost of a call carrying ``data`` before any opcode runs (no access list)."""
    zero, nonzero = _calldata_bytes(data)
    return TX_BASE_GAS + CALLDATA_ZERO_GAS * zero + CALLDATA_NONZERO_GAS * nonzero


def calldata_floor(data: bytes) -> int:
    """The EIP-7623 minimum a transaction carrying ``data`` is charged."""
    zero, nonzero = _calldata_bytes(data)
    return TX_BASE_GAS + CALLDATA_FLOOR_PER_TOKEN * (zero + 4 * nonzero)


# ================================================================================ measurements


@dataclass(frozen=True)
class Measurement:
    """One measured transaction: ``gas`` is its receipt ``gasUsed`` / ``items``, rounded."""

    key: str
    tx: SentTx
    items: int = 1

    @property
    def tx_gas(self) -> int:
        return self.tx.gas_used

    @property
    def gas(self) -> int:
        return round(self.tx.gas_used / self.items)

    @property
    def intrinsic(self) -> int:
        return intrinsic_gas(self.tx.input_data)

    @property
    def execution_gas(self) -> int:
        """What the opcodes cost: ``gasUsed`` minus 21,000 and the call data."""
        return self.tx.gas_used - self.intrinsic


@dataclass(frozen=True)
class Check:
    key: str
    gas: int
    target: str
    ok: bool | None  # None: reported only, no target


@dataclass
class GasRun:
    """All measurements of one run on one fresh deployment."""

    measurements: dict[str, Measurement] = field(default_factory=dict)
    small_cohort: int = SMALL_COHORT
    large_cohort: int = LARGE_COHORT
    seconds: float = 0.0
    context: dict[str, Any] = field(default_factory=dict)

    def add(self, key: str, tx: SentTx, items: int = 1) -> Measurement:
        measurement = Measurement(key=key, tx=tx, items=items)
        self.measurements[key] = measurement
        return measurement

    def keys(self) -> list[str]:
        """Measured keys in table order (redemption first, the ERC-20 baseline last)."""
        order = {key: i for i, key in enumerate(FIGURE_KEYS)}
        sizes = {f"cohort_root_{self.small_cohort}": 5, f"cohort_root_{self.large_cohort}": 6}
        return sorted(self.measurements, key=lambda k: order.get(k, sizes.get(k, len(order))))

    def figures(self) -> dict[str, int]:
        return {key: self.measurements[key].gas for key in self.keys()}

    def checks(self) -> list[Check]:
        out: list[Check] = []
        small = self.measurements.get(f"cohort_root_{self.small_cohort}")
        for key in self.keys():
            m = self.measurements[key]
            bound = TARGETS.get(key)
            if key == f"cohort_root_{self.large_cohort}" and small is not None:
                same = m.execution_gas == small.execution_gas
                diff = m.tx_gas - small.tx_gas
                text = f"<= {COHORT_ROOT_TARGET:,}, execution == {self.small_cohort:,}-leaf root"
                if diff:
                    text += f" (call data {diff:+,})"
                out.append(Check(key, m.gas, text, m.gas <= COHORT_ROOT_TARGET and same))
            elif key == f"cohort_root_{self.small_cohort}":
                out.append(
                    Check(key, m.gas, f"<= {COHORT_ROOT_TARGET:,}", m.gas <= COHORT_ROOT_TARGET)
                )
            elif bound is not None:
                out.append(Check(key, m.gas, f"<= {bound:,}", m.gas <= bound))
            elif key == "erc20_transfer":
                out.append(Check(key, m.gas, "baseline", None))
            else:
                out.append(Check(key, m.gas, "-", None))
        return out


# ================================================================================ cohort trees


def cohort_leaf_hashes(pass_ids: Sequence[bytes], amount: int) -> list[bytes]:
    """Leaf hashes ``cohort_leaf_hash(CohortLeaf(i, pass_ids[i], amount))`` for every ``i``.

    Encodes ``abi.encode(uint256, bytes32, uint64)`` by hand (three 32-byte words), about twice as
    fast as going through ``eth_abi`` per leaf; leaves at regular positions are cross-checked
    against :func:`ledger.merkle.cohort_leaf_hash`.
    """
    amount_word = amount.to_bytes(32, "big")
    hashes = [
        keccak(keccak(i.to_bytes(32, "big") + pid + amount_word)) for i, pid in enumerate(pass_ids)
    ]
    step = max(1, len(hashes) // 16)
    for i in [*range(0, len(hashes), step), len(hashes) - 1]:
        if hashes[i] != cohort_leaf_hash(CohortLeaf(i, pass_ids[i], amount)):
            raise BenchError(f"fast cohort leaf {i} differs from ledger.merkle.cohort_leaf_hash")
    return hashes


@dataclass(frozen=True)
class Cohort:
    size: int
    pass_ids: list[bytes]
    amount: int
    tree: MerkleTree

    @property
    def root(self) -> bytes:
        return self.tree.root

    def claim(self, index: int) -> tuple[bytes, int, bytes, int, list[bytes]]:
        """The ``CohortClaim`` tuple of leaf ``index``."""
        return (self.root, index, self.pass_ids[index], self.amount, self.tree.proof(index))


def build_cohort(size: int, amount: int = COHORT_AMOUNT) -> Cohort:
    pass_ids = bench_pass_ids(f"C{size}X", size)
    tree = MerkleTree(cohort_leaf_hashes(pass_ids, amount))
    return Cohort(size=size, pass_ids=pass_ids, amount=amount, tree=tree)


# ================================================================================ the run


def receipt_slot(root: bytes) -> int:
    """The slot of the contract's receipt log (``ReceiptLog``) a receipt root falls on."""
    return int.from_bytes(root, "big") % RECEIPT_SLOTS


def _single_leaf(chain: BenchChain, scheme: int, pass_id: bytes, redemption_id: int) -> bytes:
    """The receipt root of a single Budget redemption of ``REDEEM_AMOUNT`` at the bench merchant."""
    return receipt_leaf_hash(
        ReceiptLeaf(
            redemption_id=redemption_id,
            pass_id=pass_id,
            scheme_id=scheme,
            merchant=chain.accounts.merchant.address,
            debited=REDEEM_AMOUNT,
            credited=REDEEM_AMOUNT,
        )
    )


def _same_receipt_slot(slot: int, root_of: Callable[[int], bytes], *, start: int) -> int:
    """The first redemption id from ``start`` whose receipt root falls on ``slot``."""
    for redemption_id in range(start, start + 64 * RECEIPT_SLOTS):
        if receipt_slot(root_of(redemption_id)) == slot:
            return redemption_id
    raise BenchError(f"no redemption id from {start} has a receipt root in slot {slot}")


def run(
    chain: BenchChain,
    *,
    small_cohort: int = SMALL_COHORT,
    large_cohort: int = LARGE_COHORT,
    progress: Callable[[str], None] | None = None,
) -> GasRun:
    """Measure every operation on ``chain`` (a fresh deployment from :func:`bench_chain`)."""
    say = progress or (lambda _message: None)
    started = time.perf_counter()
    result = GasRun(small_cohort=small_cohort, large_cohort=large_cohort)
    a = chain.accounts
    issuer, merchant = a.issuer, a.merchant

    def redeem_tuple(request: RedemptionRequest) -> tuple[Any, ...]:
        return request.as_tuple()

    say("set-up: scheme and passes")
    scheme = chain.create_scheme()
    single_pass = bench_pass_id("S", 0)
    batch_passes = bench_pass_ids("B", BATCH_SIZE)
    say(f"building the {small_cohort:,}- and {large_cohort:,}-leaf cohort trees")
    small = build_cohort(small_cohort)
    large = build_cohort(large_cohort)
    claim_passes = large.pass_ids[:2]
    chain.register_passes([single_pass, *batch_passes, *claim_passes])

    # ---- issuance: the first issuance of the scheme is a warm-up; then a pass with no balance
    say("issue")
    chain.ledger_tx(issuer, "issue", scheme, single_pass, 1_000_000)
    result.add(
        "issue_single", chain.ledger_tx(issuer, "issue", scheme, bench_pass_id("I", 0), 5_000)
    )
    result.add(
        f"issue_batched_per_holder_{BATCH_SIZE}",
        chain.ledger_tx(issuer, "issueBatch", scheme, batch_passes, [ISSUE_AMOUNT] * BATCH_SIZE),
        items=BATCH_SIZE,
    )

    # ---- migration: passes registered in a batch with the card serials of an old system
    say("registerPasses")
    result.add(
        f"register_passes_batched_per_pass_{BATCH_SIZE}",
        chain.ledger_tx(
            issuer,
            "registerPasses",
            bench_pass_ids("M", BATCH_SIZE),
            [10**12 + i for i in range(BATCH_SIZE)],
        ),
        items=BATCH_SIZE,
    )

    # ---- single redemption, in the steady state of a running ledger: id 0 makes word 0, the
    # merchant's account and the pass's token record non-zero; a filler redemption takes the
    # receipt slot that id 1's root falls on, and the reversal window passes; then measure id 1.
    # A short-lived token serves one checkout, so every redemption below has a newer token.
    say("redeem")
    expiries = itertools.count(BENCH_EXPIRY - 100_000)

    def single(redemption_id: int, pass_id: bytes = single_pass) -> tuple[Any, ...]:
        request = chain.redemption(
            pass_id,
            scheme_id=scheme,
            amount=REDEEM_AMOUNT,
            redemption_id=redemption_id,
            expiry=next(expiries),
        )
        return redeem_tuple(request)

    chain.ledger_tx(merchant, "redeem", single(0))
    first_of_pass = chain.ledger_tx(merchant, "redeem", single(5, batch_passes[0]))
    result.add("redeem_first_of_pass", first_of_pass)
    filler = _same_receipt_slot(
        receipt_slot(_single_leaf(chain, scheme, single_pass, 1)),
        lambda rid: _single_leaf(chain, scheme, single_pass, rid),
        start=2_000,
    )
    chain.ledger_tx(merchant, "redeem", single(filler))
    chain.advance(chain.client.reversal_window() + 1)
    result.add("redeem_single", chain.ledger_tx(merchant, "redeem", single(1)))

    # ---- batch: id 512 opens word 2, then ids 513..612 over 100 passes that each hold a balance
    # and redeemed before (ids 1,536.. in word 6, with older tokens)
    say("redeemBatch")
    first_id = 2 * 256

    def batch_of(first: int) -> list[tuple[Any, ...]]:
        expiry = next(expiries)
        return [
            redeem_tuple(
                chain.redemption(
                    pass_id,
                    scheme_id=scheme,
                    amount=REDEEM_AMOUNT,
                    redemption_id=first + i,
                    expiry=expiry,
                )
            )
            for i, pass_id in enumerate(batch_passes)
        ]

    chain.ledger_tx(merchant, "redeemBatch", batch_of(6 * 256))
    chain.ledger_tx(merchant, "redeem", single(first_id))
    batch_tx = chain.ledger_tx(merchant, "redeemBatch", batch_of(first_id + 1))
    events = chain.client.decode_logs(batch_tx.logs)
    if [e.name for e in events].count("Redeemed") != BATCH_SIZE:
        raise BenchError(f"the batch did not accept all {BATCH_SIZE} redemptions")
    result.add(f"redeem_batched_per_item_{BATCH_SIZE}", batch_tx, items=BATCH_SIZE)

    # ---- reversal from the batch: the first opens a word of the reversed-id bitmap
    say("reverse")
    for offset in (1, 2):
        receipt, root, proof = chain.client.reversal_proof(events, first_id + offset)
        reverse_tx = chain.ledger_tx(merchant, "reverse", receipt.as_tuple(), root, proof)
    result.add("reverse", reverse_tx)

    # ---- settlement: the first makes the merchant's settled total non-zero
    say("settle")
    for reference in (b"SEPA-BENCH-1", b"SEPA-BENCH-2"):
        settle_tx = chain.ledger_tx(
            a.settler, "settle", merchant.address, 10_000, reference.ljust(32, b"\0")
        )
    result.add("settle", settle_tx)

    # ---- cohorts by root, then first use of a leaf of the large one (leaf 0 opens its claim word)
    say("issueCohort")
    for cohort in (small, large):
        result.add(
            f"cohort_root_{cohort.size}",
            chain.ledger_tx(
                issuer, "issueCohort", scheme, cohort.root, cohort.size, cohort.size * cohort.amount
            ),
        )
    say("claimAndRedeem")
    for index, redemption_id in ((0, 3), (1, 4)):
        claim_tx = chain.ledger_tx(
            merchant,
            "claimAndRedeem",
            large.claim(index),
            single(redemption_id, claim_passes[index]),
        )
    result.add("first_use_claim_redeem", claim_tx)

    # ---- the baseline: an OpenZeppelin ERC-20 transfer to a holder that already has a balance
    say("ERC-20 transfer")
    token = chain.deploy("BenchToken", a.outsider.address, 10**27)
    token_abi = chain.artifacts.get("BenchToken").abi
    contract = chain.w3.eth.contract(address=token, abi=token_abi)
    transfer = bytes(HexBytes(contract.encode_abi("transfer", [a.holder.address, ERC20_AMOUNT])))
    chain.send(a.outsider, token, transfer)
    result.add("erc20_transfer", chain.send(a.outsider, token, transfer))

    result.seconds = time.perf_counter() - started
    result.context = {
        "scheme_id": scheme,
        "pass_ids": [single_pass, bench_pass_id("I", 0), *batch_passes, *claim_passes],
        "roots": [small.root, large.root],
        "token": token,
    }
    return result


# ================================================================================ breakdown


@dataclass(frozen=True)
class CostLine:
    category: str
    detail: str
    count: int
    gas: int


@dataclass(frozen=True)
class Breakdown:
    """Where the gas of one transaction went, from its struct-log trace."""

    key: str
    tx_gas: int
    items: int
    lines: list[CostLine]
    unaccounted: int
    floor_applied: bool

    def per_item(self, gas: int) -> float:
        return gas / self.items

    def by_category(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for line in self.lines:
            totals[line.category] = totals.get(line.category, 0) + line.gas
        return totals


_SSTORE_KINDS = {
    22_100: "cold, 0 -> non-zero",
    20_000: "warm, 0 -> non-zero",
    5_000: "cold, non-zero -> non-zero",
    2_900: "warm, non-zero -> non-zero",
    2_200: "cold, unchanged",
    100: "warm, slot already written in this tx",
}

_ROLE_NAMES = {value: name.upper() for name, value in ROLES.items()}


def _word(value: int | bytes) -> bytes:
    if isinstance(value, bytes):
        return value.rjust(32, b"\0")
    return value.to_bytes(32, "big")


def _mapping_slot(base: int | bytes, key: int | bytes) -> int:
    return int.from_bytes(keccak(_word(key) + _word(base)), "big")


class SlotLabels:
    """Names of the ledger's storage slots for the keys a benchmark used.

    Labels are generic (``_balances[scheme][pass]``), so a batch's 100 passes add up in one line.
    """

    def __init__(self, layout: Mapping[str, Any]) -> None:
        self._layout = layout
        self._base = {str(s["label"]): int(s["slot"]) for s in layout.get("storage", [])}
        self._labels: dict[int, str] = {}
        for name, slot in self._base.items():
            if not name.startswith("_") or "mapping" in _type_of(layout, name):
                continue
            self._labels[slot] = name

    def base(self, name: str) -> int:
        return self._base[name]

    def struct_slots(self, name: str) -> dict[int, str]:
        """Slot offset -> member names of the struct that mapping ``name`` holds (by layout)."""
        value_type = _type_of(self._layout, name).rsplit(",", 1)[-1].rstrip(")")
        types: Mapping[str, Any] = self._layout.get("types") or {}
        members = (types.get(value_type) or {}).get("members") or []
        slots: dict[int, list[str]] = {}
        for member in members:
            slots.setdefault(int(member["slot"]), []).append(str(member["label"]))
        return {
            slot: ", ".join(names if len(names) <= 3 else [names[0], "...", names[-1]])
            for slot, names in sorted(slots.items())
        }

    def add_erc20(self, holders: Mapping[str, str]) -> None:
        """Label ``BenchToken._balances[account]`` (OpenZeppelin ERC20: slot 0) for ``holders``."""
        for name, address in holders.items():
            self.add(_mapping_slot(0, bytes.fromhex(address[2:])), f"ERC20._balances[{name}]")

    def add(self, slot: int, label: str) -> None:
        self._labels.setdefault(slot, label)

    def label(self, slot: int) -> str:
        return self._labels.get(slot, f"unknown slot {slot:#x}")

    @classmethod
    def for_ledger(
        cls,
        chain: BenchChain,
        *,
        pass_ids: Iterable[bytes],
        scheme_ids: Iterable[int],
        redemption_ids: Iterable[int],
        roots: Iterable[bytes],
        references: Iterable[bytes] = (),
    ) -> SlotLabels:
        labels = cls(chain.artifacts.get("StadjerspasLedger").storage_layout)
        a = chain.accounts
        accounts = {
            "merchant": a.merchant.address,
            "other_merchant": a.other_merchant.address,
            "pass_signer": a.pass_signer.address,
            "issuer": a.issuer.address,
            "settler": a.settler.address,
        }
        account_words = {name: bytes.fromhex(addr[2:]) for name, addr in accounts.items()}
        for role, role_id in ROLES.items():
            role_slot = _mapping_slot(labels.base("_roles"), role_id)
            for name, word in account_words.items():
                labels.add(
                    _mapping_slot(role_slot, word), f"_roles[{role.upper()}].hasRole[{name}]"
                )
        for word in account_words.values():
            labels.add(
                _mapping_slot(labels.base("_merchantAccounts"), word), "_merchantAccounts[merchant]"
            )
            labels.add(_mapping_slot(labels.base("_settled"), word), "_settled[merchant]")
            refs = _mapping_slot(labels.base("_settlementReferences"), word)
            for reference in references:
                labels.add(_mapping_slot(refs, reference), "_settlementReferences[merchant][ref]")
        schemes = list(scheme_ids)
        passes = list(pass_ids)
        for scheme in schemes:
            record = _mapping_slot(labels.base("_schemes"), scheme)
            for offset, members in labels.struct_slots("_schemes").items():
                labels.add(record + offset, f"_schemes[scheme] slot {offset} ({members})")
            balances = _mapping_slot(labels.base("_balances"), scheme)
            allowed = _mapping_slot(labels.base("_allowedMerchants"), scheme)
            for pass_id in passes:
                labels.add(_mapping_slot(balances, pass_id), "_balances[scheme][pass]")
            for word in account_words.values():
                labels.add(_mapping_slot(allowed, word), "_allowedMerchants[scheme][merchant]")
        for pass_id in passes:
            labels.add(_mapping_slot(labels.base("_passes"), pass_id), "_passes[pass]")
        for word_index in {rid >> 8 for rid in redemption_ids}:
            labels.add(
                _mapping_slot(labels.base("_redemptionIds"), word_index),
                "_redemptionIds.words[id >> 8]",
            )
            labels.add(
                _mapping_slot(labels.base("_reversedIds"), word_index),
                "_reversedIds.words[id >> 8]",
            )
        for root in roots:
            labels.add(_mapping_slot(labels.base("_receiptRoots"), root), "_receiptRoots[root]")
            labels.add(_mapping_slot(labels.base("_cohorts"), root), "_cohorts[root]")
            claims = _mapping_slot(labels.base("_cohortClaims"), root)
            for word_index in range(4):
                labels.add(
                    _mapping_slot(claims, word_index), "_cohortClaims[root].words[index >> 8]"
                )
        return labels


def _type_of(layout: Mapping[str, Any], name: str) -> str:
    for entry in layout.get("storage", []):
        if entry["label"] == name:
            return str(entry["type"])
    return ""


def _event_names(abi: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    names: dict[int, str] = {}
    for item in abi:
        if item.get("type") != "event":
            continue
        signature = f"{item['name']}({','.join(_abi_type(p) for p in item['inputs'])})"
        names[int.from_bytes(keccak(text=signature), "big")] = str(item["name"])
    return names


def _abi_type(param: Mapping[str, Any]) -> str:
    kind = str(param["type"])
    if kind.startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in param["components"])
        return f"({inner}){kind[len('tuple') :]}"
    return kind


def analyse(chain: BenchChain, measurement: Measurement, labels: SlotLabels) -> Breakdown:
    """Attribute every unit of gas of ``measurement``'s transaction to a cost line.

    The cost of a step is the drop in remaining gas to the next step at the same depth (a call's
    ``gasCost`` would include the gas it forwards); intrinsic gas is computed from the call data.
    """
    trace = chain.trace(measurement.tx.transaction_hash)
    steps: list[dict[str, Any]] = trace["structLogs"]
    if not steps:
        raise BenchError("the trace has no steps; start anvil with --steps-tracing")
    events = _event_names(chain.client.abi)
    data = measurement.tx.input_data
    zero, nonzero = _calldata_bytes(data)
    tally: dict[tuple[str, str], list[int]] = {}

    def count(category: str, detail: str, gas: int) -> None:
        entry = tally.setdefault((category, detail), [0, 0])
        entry[0] += 1
        entry[1] += gas

    for i, step in enumerate(steps):
        following = steps[i + 1] if i + 1 < len(steps) else None
        if following is not None and following["depth"] == step["depth"]:
            cost = int(step["gas"]) - int(following["gas"])
        else:
            cost = int(step["gasCost"])
        op = str(step["op"])
        stack: list[str] = step.get("stack") or []
        if op == "SLOAD":
            warmth = "cold" if cost >= 2_100 else "warm"
            count("SLOAD", f"{labels.label(int(stack[-1], 16))} ({warmth})", cost)
        elif op == "SSTORE":
            kind = _SSTORE_KINDS.get(cost, f"{cost} gas")
            count("SSTORE", f"{labels.label(int(stack[-1], 16))} ({kind})", cost)
        elif op.startswith("LOG"):
            topics = int(op[3:])
            size = int(stack[-2], 16)
            name = events.get(int(stack[-3], 16), "event") if topics else "anonymous"
            count("LOG", f"{name} ({topics} topics, {size} data bytes)", cost)
        elif op == "KECCAK256":
            count("KECCAK256", "mapping slots, EIP-712 digest, receipt leaves/tree", cost)
        elif op in ("STATICCALL", "CALL") and int(stack[-2], 16) == 1:
            count("ecrecover", "STATICCALL to precompile 0x01 (100 + 3,000)", cost)
        else:
            count("other opcodes", "ABI decoding, checks, arithmetic, memory, jumps", cost)

    lines = [
        CostLine("intrinsic", "transaction base", 1, TX_BASE_GAS),
        CostLine("intrinsic", f"call data: {zero} zero bytes x 4", zero, CALLDATA_ZERO_GAS * zero),
        CostLine(
            "intrinsic",
            f"call data: {nonzero} non-zero bytes x 16",
            nonzero,
            CALLDATA_NONZERO_GAS * nonzero,
        ),
    ]
    order = ["SSTORE", "SLOAD", "LOG", "ecrecover", "KECCAK256", "other opcodes"]
    for category in order:
        rows = [(d, v) for (c, d), v in tally.items() if c == category]
        for detail, (n, gas) in sorted(rows, key=lambda r: -r[1][1]):
            lines.append(CostLine(category, detail, n, gas))
    accounted = sum(line.gas for line in lines)
    floor = calldata_floor(data)
    return Breakdown(
        key=measurement.key,
        tx_gas=measurement.tx_gas,
        items=measurement.items,
        lines=lines,
        unaccounted=measurement.tx_gas - accounted,
        floor_applied=measurement.tx_gas == floor and floor > accounted,
    )


def breakdowns(chain: BenchChain, result: GasRun, keys: Sequence[str]) -> list[Breakdown]:
    ctx = result.context
    redemption_ids = list(range(5)) + list(range(512, 512 + BATCH_SIZE + 1))
    roots = list(ctx["roots"])
    for m in result.measurements.values():
        roots += [bytes(t) for log in m.tx.logs for t in log["topics"][1:]]
    labels = SlotLabels.for_ledger(
        chain,
        pass_ids=ctx["pass_ids"],
        scheme_ids=[ctx["scheme_id"]],
        redemption_ids=redemption_ids,
        roots=roots,
        references=[b"SEPA-BENCH-1".ljust(32, b"\0"), b"SEPA-BENCH-2".ljust(32, b"\0")],
    )
    a = chain.accounts
    labels.add_erc20({"sender": a.outsider.address, "recipient": a.holder.address})
    return [analyse(chain, result.measurements[key], labels) for key in keys]


def format_breakdown(b: Breakdown) -> str:
    """A Markdown table of ``b``; per-item columns when the transaction carried several items."""
    per = b.items > 1
    head = f"### {b.key}: {b.tx_gas:,} gas" + (
        f" ({b.tx_gas / b.items:,.0f} per item)" if per else ""
    )
    out = [head, ""]
    cols = "| category | what | count | gas |" + (" per item |" if per else "")
    out += [cols, "|---|---|---:|---:|" + ("---:|" if per else "")]
    for line in b.lines:
        row = f"| {line.category} | {line.detail} | {line.count:,} | {line.gas:,} |"
        if per:
            row += f" {line.gas / b.items:,.1f} |"
        out.append(row)
    if b.unaccounted:
        out.append(f"| (refund / floor) | not attributed to a step | | {b.unaccounted:,} |")
    out.append("")
    totals = b.by_category()
    summary = ", ".join(f"{c} {g:,}" for c, g in totals.items())
    out.append(f"Totals: {summary}.")
    if b.floor_applied:
        out.append("The EIP-7623 call-data floor applied to this transaction.")
    return "\n".join(out)


# ================================================================================ output


def render_table(result: GasRun) -> str:
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="Stadjerspas ledger gas (receipt gasUsed; per item for batches)",
        caption=f"one fresh deployment on a private anvil, {result.seconds:.1f} s",
    )
    table.add_column("operation")
    table.add_column("gas", justify="right")
    table.add_column("target")
    table.add_column("ok/miss")
    for check in result.checks():
        verdict = "-" if check.ok is None else ("ok" if check.ok else "MISS")
        table.add_row(check.key, f"{check.gas:,}", check.target, verdict)
    buffer = StringIO()
    Console(file=buffer, width=110, color_system=None).print(table)
    return buffer.getvalue().rstrip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gas", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object (last line)")
    parser.add_argument(
        "--breakdown",
        nargs="*",
        metavar="KEY",
        default=None,
        help="trace these operations (default: the single and the batched redemption) and print "
        "where their gas goes, before the table or JSON",
    )
    parser.add_argument(
        "--large-cohort",
        type=int,
        default=LARGE_COHORT,
        help=f"leaves of the large cohort (default {LARGE_COHORT:,})",
    )
    parser.add_argument("--verbose", action="store_true", help="progress on stderr")
    args = parser.parse_args(argv)

    def progress(message: str) -> None:
        if args.verbose:
            print(f"[bench.gas] {message}", file=sys.stderr, flush=True)

    with bench_chain() as chain:
        result = run(chain, large_cohort=args.large_cohort, progress=progress)
        keys: list[str] = []
        if args.breakdown is not None:
            keys = args.breakdown or ["redeem_single", f"redeem_batched_per_item_{BATCH_SIZE}"]
            unknown = sorted(set(keys) - set(result.measurements))
            if unknown:
                parser.error(f"unknown operation(s) {unknown}; known: {result.keys()}")
        analysed = breakdowns(chain, result, keys)
    for b in analysed:
        print(format_breakdown(b))
        print()
    if args.json:
        print(json.dumps(result.figures()))
    else:
        print(render_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
