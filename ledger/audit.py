"""Independent audit of the ledger: the node's events and views against the index and reports.

The audit trusts nothing the service wrote. It reads the contract's events straight from the
node (``eth_getLogs`` from the deployment block to a target block, decoded with
:mod:`ledger.events`), and recomputes from them alone:

- every balance per scheme and pass: issued + claimed - debited + reversal-restored - expired,
  following the contract's rules for unlimited discount entitlements;
- per scheme: issued, claimed, redeemed (debited and credited), reversed, expired and the budget
  the contract must have committed (issuances for Budget and Uses schemes, cohort totals, and the
  reimbursed discounts net of reversals for Discount schemes);
- per merchant: credited by redemptions, taken back by reversals, settled;
- the used, reversed and rejected redemption ids, cohort claims, and the state of every pass.

It then compares that recomputation with

(a) the contract's own views at the target block (``balanceOf``, ``schemeOf``, ``schemeCount``,
    ``merchantAccount``, ``isRedemptionUsed``, ``isReversed``, ``isClaimed``, ``passOf``), sent as
    JSON-RPC batches of ``eth_call`` (standard methods only, so it runs against Besu too);
(b) the index tables, row by row on their natural key ``(chain_id, block_hash, log_index
    [, position])``: missing rows, extra rows, and rows whose values differ;
(c) the reports of :mod:`ledger.reports` when that package is present (imported lazily; the audit
    notes that it skipped the comparison otherwise).

(d) the service's promises and its outbox (:func:`compare_promises`, :func:`compare_outbox`):
    what the service answered (a redemption confirmed, or refused) against the ledger's own
    ``Redeemed`` and ``Reversed`` logs, and the transactions the outbox holds against their
    records and their age. See "Service promises" below.

Every mismatch is a :class:`Difference`; :class:`AuditResult` collects them. ``ok`` is true when
there are none. Nothing here writes anywhere.

Service promises
----------------

A service that answered ``201`` to a redemption has made a promise the chain must keep. The
index cannot tell whether it does (it mirrors the chain, lost blocks included), so the audit
compares the promises with the chain's logs of the ledger contract.

``ledger`` never imports ``api`` (``tests/test_import_rules.py``), and the promises live in the
API's table. So the audit takes them as plain typed objects, :class:`ServicePromise`, which the
API builds from its own table (``api.audit_promises``), rather than reading ``api_*`` tables by
name: the API owns the meaning of its columns (status values, uint64 text, which merchant id is
which address, what ``promise_broken_at`` means), and a renamed column then fails the API's
type check instead of silently emptying the audit. The promises are passed as a callable that
the audit calls *after* it has read the chain's head: every redemption mined up to that head had
its record stored before its transaction was signed, so a ``Redeemed`` log up to that head
without a promise is really unknown to the service; the logs compared with the promises are then
read up to the head *after* the promises were read, so a confirmed redemption missing from them
is really missing (not mined later than the audit looked). The promises are compared with the
chain up to its head, also when the rest of the audit stops at an earlier block.

Differences (kind, one per redemption id unless noted), ``expected`` is what the chain says and
``actual`` what the service recorded:

- ``promise.missing_on_chain``: confirmed here (record ``succeeded``), but no ``Redeemed`` with
  that id on chain; also a record the service itself marked broken after confirming it
  (``promise_broken_at`` set, now ``failed``, e.g. ``confirmation_lost``);
- ``promise.unknown_here``: a ``Redeemed`` log whose id has no record;
- ``promise.refused_on_chain``: refused here (record ``failed``), yet ``Redeemed`` on chain; also
  a record marked broken after a refusal that landed after all (now ``succeeded``);
- ``promise.amounts`` / ``promise.merchant`` / ``promise.scheme``: the record and the event
  disagree on debited/credited, on the merchant's address or on the scheme;
- ``promise.reversal_missing`` / ``promise.reversal_unknown``: a reversal recorded here without a
  ``Reversed`` log, or the other way round;
- ``promise.broken``: any other record with ``promise_broken_at`` set (the chain now agrees with
  the record, but an answer given earlier was contradicted);
- ``outbox.failed``: an outbox row ``failed`` that carries a redemption whose record is not
  ``failed`` and that no other live row carries;
- ``outbox.stuck`` (per transaction): a row neither ``final`` nor ``failed`` older than
  ``stuck_after_s`` (default 10 minutes); a ``mined`` row whose receipt the chain still has at
  the recorded block is not stuck (only not yet marked final, e.g. the service stopped).
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from eth_abi import decode
from sqlalchemy import Engine, Table, inspect, make_url, select
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import SQLModel

from ledger.abi import abi_type
from ledger.client import LedgerClient, SchemeKind
from ledger.contract_errors import error_selectors
from ledger.errors import LedgerError
from ledger.events import DecodedEvent
from ledger.outbox import OutboxRow, SqlOutbox, outbox_store_url
from ledger.rpc import RpcClient, RpcError
from ledger.store.db import Store, StoreConfig, open_store
from ledger.store.index import (
    EVENT_TABLES,
    GOVERNANCE_KINDS,
    GOVERNANCE_VALUES,
    IndexCheckpoint,
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
from ledger.store.outbox import OutboxState, OutboxTx

__all__ = [
    "DEFAULT_STUCK_AFTER_S",
    "PROMISE_KINDS",
    "REDEMPTION_CALLS",
    "AuditError",
    "AuditResult",
    "Difference",
    "LedgerState",
    "MerchantFigures",
    "PassFigures",
    "PromiseSource",
    "PromiseStatus",
    "SchemeFigures",
    "ServicePromise",
    "audit",
    "compare_outbox",
    "compare_promises",
    "engine_of",
    "expected_index_rows",
    "fetch_events",
    "read_index_rows",
    "read_outbox",
    "recompute",
]

UNLIMITED: Final = 2**64 - 1
ZERO_ADDRESS: Final = "0x" + "00" * 20
DEFAULT_LOG_CHUNK: Final = 5_000
CALL_BATCH: Final = 400
#: An outbox row neither final nor failed for longer than this is stuck (seconds).
DEFAULT_STUCK_AFTER_S: Final = 600.0
#: Outbox labels (contract functions) whose ``refs`` are redemption ids.
REDEMPTION_CALLS: Final = frozenset({"redeem", "redeemBatch", "claimAndRedeem"})
#: The differences of (d), each with what it means in one line.
PROMISE_KINDS: Final[Mapping[str, str]] = {
    "promise.missing_on_chain": "confirmed here, missing on chain",
    "promise.unknown_here": "on chain, unknown here",
    "promise.refused_on_chain": "refused here, on chain",
    "promise.amounts": "amounts differ",
    "promise.merchant": "merchant differs",
    "promise.scheme": "scheme differs",
    "promise.reversal_missing": "reversed here, not on chain",
    "promise.reversal_unknown": "reversed on chain, not here",
    "promise.broken": "an answer given was contradicted",
    "outbox.failed": "failed in the outbox, not here",
    "outbox.stuck": "stuck in the outbox",
}

IndexKey = tuple[str, int, int]
"""Natural key of an index row: (block hash, log index, position in a batch event or 0)."""

Row = dict[str, Any]
_T = TypeVar("_T")


class AuditError(LedgerError):
    """The audit could not run: the node or the database cannot be read, or bad arguments."""


class _HasEngine(Protocol):
    @property
    def engine(self) -> Engine: ...


def engine_of(store: Engine | _HasEngine) -> Engine:
    """The SQLAlchemy engine of a store object (anything with ``.engine``) or an engine itself."""
    if isinstance(store, Engine):
        return store
    return store.engine


# ================================================================== results


@dataclass(frozen=True, slots=True)
class Difference:
    """One mismatch. ``kind`` says what was compared (e.g. ``chain.balance``, ``index.missing``,
    ``index.value``, ``report.scheme``); ``key`` which item; ``expected`` is what the node's
    events imply, ``actual`` what the contract, the index or the report says."""

    kind: str
    key: str
    expected: Any
    actual: Any
    #: One line for people (the service-promise and outbox differences have one).
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "expected": _jsonable(self.expected),
            "actual": _jsonable(self.actual),
            "detail": self.detail,
        }

    @property
    def about_promises(self) -> bool:
        """A difference of (d): the service's promises or its outbox against the chain."""
        return self.kind in PROMISE_KINDS


class PromiseStatus(enum.StrEnum):
    """What the service answered: nothing final yet, confirmed, or refused."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServicePromise:
    """What the service recorded (and answered) about one redemption id.

    Built by the service from its own records (the API: ``api.audit_promises``). ``merchant`` is
    the chain address the service redeemed for (None: unknown, not compared); amounts are None
    until known. ``reference`` says, for people, which request it was (e.g. merchant and
    idempotency key)."""

    redemption_id: int
    status: PromiseStatus
    scheme_id: int | None = None
    merchant: str | None = None
    debited: int | None = None
    credited: int | None = None
    tx_hash: str | None = None
    block_number: int | None = None
    reversal_tx_hash: str | None = None
    promise_broken_at: datetime | None = None
    problem_code: str | None = None
    reference: str = ""

    def summary(self) -> dict[str, Any]:
        """The record as a difference's ``actual``: only what is set."""
        values: dict[str, Any] = {
            "status": self.status.value,
            "scheme_id": self.scheme_id,
            "merchant": self.merchant,
            "debited": self.debited,
            "credited": self.credited,
            "tx_hash": self.tx_hash,
            "block_number": self.block_number,
            "reversal_tx_hash": self.reversal_tx_hash,
            "problem_code": self.problem_code,
            "promise_broken_at": (
                None if self.promise_broken_at is None else self.promise_broken_at.isoformat()
            ),
        }
        return {k: v for k, v in values.items() if v is not None}


#: The promises, read when the audit calls it (after the head it compares against was read);
#: None: the database has no promises to compare (e.g. no API tables).
PromiseSource = Callable[[], Sequence[ServicePromise] | None]


@dataclass(slots=True)
class SchemeFigures:
    """Totals of one scheme recomputed from events (cents or uses, by the scheme's kind)."""

    kind: SchemeKind
    unit_value: int = 0
    budget_cap: int = 0
    terms: tuple[Any, ...] = ()
    issued: int = 0  # issue + batch (unlimited issuances are counted apart)
    claimed: int = 0  # cohort claims
    unlimited_issued: int = 0  # number of UNLIMITED issuances or claims (Discount only)
    cohort_total: int = 0  # declared totals of cohorts issued by Merkle root
    redeemed: int = 0  # debited from entitlements
    redeemed_credited: int = 0  # owed to merchants
    discount: int = 0  # discounts granted (Discount schemes)
    redemptions: int = 0
    reversed: int = 0  # restored to entitlements
    reversed_credited: int = 0
    reversals: int = 0
    expired: int = 0
    committed: int = 0

    @property
    def remaining_expected(self) -> int:
        """issued + claimed - redeemed + reversed - expired (finite entitlements only)."""
        return self.issued + self.claimed - self.redeemed + self.reversed - self.expired


@dataclass(slots=True)
class MerchantFigures:
    redeemed: int = 0  # credited by redemptions
    reversed: int = 0  # credited amounts taken back by reversals
    settled: int = 0
    redemptions: int = 0
    reversals: int = 0
    settlements: int = 0

    @property
    def owed(self) -> int:
        return self.redeemed - self.reversed - self.settled


@dataclass(slots=True)
class PassFigures:
    registered: bool = True
    blocked: bool = False
    holder_key: str = ZERO_ADDRESS
    card_serial: int = 0


@dataclass(slots=True)
class LedgerState:
    """Everything recomputed from the events alone."""

    schemes: dict[int, SchemeFigures] = field(default_factory=dict)
    balances: dict[tuple[int, bytes], int] = field(default_factory=dict)
    merchants: dict[str, MerchantFigures] = field(default_factory=dict)
    passes: dict[bytes, PassFigures] = field(default_factory=dict)
    used_ids: set[int] = field(default_factory=set)
    reversed_ids: set[int] = field(default_factory=set)
    rejected_ids: set[int] = field(default_factory=set)
    cohorts: dict[bytes, int] = field(default_factory=dict)  # root -> scheme id
    claims: set[tuple[bytes, int]] = field(default_factory=set)
    anomalies: list[Difference] = field(default_factory=list)


@dataclass(slots=True)
class AuditResult:
    """What was audited, the recomputed state, and every difference found."""

    chain_id: int
    contract: str
    from_block: int
    to_block: int
    block_hash: str
    events: int
    state: LedgerState
    checked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "chain_id": self.chain_id,
            "contract": self.contract,
            "from_block": self.from_block,
            "to_block": self.to_block,
            "block_hash": self.block_hash,
            "events": self.events,
            "checked": list(self.checked),
            "notes": list(self.notes),
            "differences": [d.to_json() for d in self.differences],
        }


# ================================================================== fetching


def fetch_events(
    rpc: RpcClient,
    client: LedgerClient,
    *,
    from_block: int,
    to_block: int,
    chunk: int = DEFAULT_LOG_CHUNK,
) -> list[DecodedEvent]:
    """The contract's decoded events in ``[from_block, to_block]``, in chain order.

    Ranges are fetched in chunks; a chunk the node refuses (too many results, range too large) is
    halved until it is accepted or a single block still fails.
    """
    if from_block > to_block:
        return []
    events: list[DecodedEvent] = []
    start = from_block
    size = max(1, chunk)
    while start <= to_block:
        end = min(to_block, start + size - 1)
        try:
            logs = rpc.call(
                "eth_getLogs",
                {"address": client.address, "fromBlock": hex(start), "toBlock": hex(end)},
            )
        except RpcError:
            if end == start:
                raise
            size = max(1, (end - start + 1) // 2)
            continue
        if not isinstance(logs, list):
            raise AuditError(f"eth_getLogs returned {type(logs).__name__}, not a list")
        for log in logs:
            if log.get("removed"):
                continue
            event = client.events.decode_log(log)
            if event is not None and event.address == client.address:
                events.append(event)
        start = end + 1
        size = min(chunk, size * 2)
    events.sort(key=lambda e: (e.block_number, e.log_index))
    return events


def _block_times(rpc: RpcClient, numbers: Iterable[int]) -> dict[int, tuple[str, int]]:
    """Block number -> (hash, timestamp) for each block, in JSON-RPC batches."""
    wanted = sorted(set(numbers))
    out: dict[int, tuple[str, int]] = {}
    for part in _chunks(wanted, CALL_BATCH):
        replies = rpc.batch([("eth_getBlockByNumber", [hex(n), False]) for n in part])
        for number, reply in zip(part, replies, strict=True):
            if isinstance(reply, RpcError) or not isinstance(reply, dict):
                raise AuditError(f"the node did not return block {number}: {reply}")
            out[number] = (str(reply["hash"]).lower(), int(str(reply["timestamp"]), 16))
    return out


# ================================================================== recomputation


def recompute(events: Sequence[DecodedEvent]) -> LedgerState:
    """Replay the contract's accounting from its events (pure; no node, no database)."""
    state = LedgerState()

    def scheme(scheme_id: int) -> SchemeFigures:
        found = state.schemes.get(scheme_id)
        if found is None:
            state.anomalies.append(
                Difference("events.unknown_scheme", f"scheme={scheme_id}", "SchemeCreated", None)
            )
            found = state.schemes[scheme_id] = SchemeFigures(kind=SchemeKind.BUDGET)
        return found

    def merchant(address: str) -> MerchantFigures:
        return state.merchants.setdefault(address, MerchantFigures())

    def credit(scheme_id: int, pid: bytes, amount: int) -> None:
        key = (scheme_id, pid)
        remaining = state.balances.get(key, 0)
        if scheme(scheme_id).kind is SchemeKind.DISCOUNT:
            if remaining == UNLIMITED:
                return
            if amount == UNLIMITED:
                state.balances[key] = UNLIMITED
                return
        state.balances[key] = remaining + amount

    def issued(scheme_id: int, amount: int, *, claim: bool) -> None:
        figures = scheme(scheme_id)
        if amount == UNLIMITED and figures.kind is SchemeKind.DISCOUNT:
            figures.unlimited_issued += 1
        elif claim:
            figures.claimed += amount
        else:
            figures.issued += amount

    def commit_issue(figures: SchemeFigures, amount: int) -> None:
        if figures.kind is SchemeKind.BUDGET:
            figures.committed += amount
        elif figures.kind is SchemeKind.USES:
            figures.committed += amount * figures.unit_value

    for event in events:
        a = event.args
        name = event.name
        if name == "SchemeCreated":
            terms = tuple(a["terms"])
            state.schemes[int(a["schemeId"])] = SchemeFigures(
                kind=SchemeKind(int(terms[0])),
                unit_value=int(terms[4]),
                budget_cap=int(terms[8]),
                terms=terms,
            )
        elif name == "PassRegistered":
            state.passes[a["passId"]] = PassFigures(
                holder_key=a["holderKey"], card_serial=int(a["cardSerial"])
            )
        elif name == "HolderKeyChanged":
            state.passes.setdefault(a["passId"], PassFigures()).holder_key = a["holderKey"]
        elif name == "CardReplaced":
            state.passes.setdefault(a["passId"], PassFigures()).card_serial = int(a["newSerial"])
        elif name == "PassBlockStatusChanged":
            state.passes.setdefault(a["passId"], PassFigures()).blocked = bool(a["blocked"])
        elif name == "EntitlementIssued":
            sid = int(a["schemeId"])
            credit(sid, a["passId"], int(a["amount"]))
            issued(sid, int(a["amount"]), claim=False)
            commit_issue(scheme(sid), int(a["amount"]))
        elif name == "EntitlementsIssued":
            sid = int(a["schemeId"])
            for pid, amount in zip(a["passIds"], a["amounts"], strict=True):
                credit(sid, pid, int(amount))
                issued(sid, int(amount), claim=False)
                commit_issue(scheme(sid), int(amount))
        elif name == "CohortIssued":
            sid = int(a["schemeId"])
            state.cohorts[a["root"]] = sid
            figures = scheme(sid)
            figures.cohort_total += int(a["totalAmount"])
            commit_issue(figures, int(a["totalAmount"]))
        elif name == "CohortClaimed":
            root = a["root"]
            sid = state.cohorts.get(root, 0)
            if sid == 0:
                state.anomalies.append(
                    Difference("events.unknown_cohort", "0x" + root.hex(), "CohortIssued", None)
                )
                continue
            state.claims.add((root, int(a["index"])))
            credit(sid, a["passId"], int(a["amount"]))
            issued(sid, int(a["amount"]), claim=True)
        elif name == "EntitlementExpired":
            sid = int(a["schemeId"])
            key = (sid, a["passId"])
            amount = int(a["amount"])
            remaining = state.balances.get(key, 0)
            if remaining != amount:
                state.anomalies.append(
                    Difference("events.expiry", _balance_key(sid, a["passId"]), remaining, amount)
                )
            state.balances[key] = 0
            if amount != UNLIMITED:
                scheme(sid).expired += amount
        elif name == "Redeemed":
            sid = int(a["schemeId"])
            figures = scheme(sid)
            key = (sid, a["passId"])
            debited = int(a["debited"])
            remaining = state.balances.get(key, 0)
            if not (remaining == UNLIMITED and figures.kind is SchemeKind.DISCOUNT):
                if debited > remaining:
                    state.anomalies.append(
                        Difference(
                            "events.overdraft", _balance_key(sid, a["passId"]), remaining, debited
                        )
                    )
                state.balances[key] = remaining - debited
            credited = int(a["credited"])
            figures.redeemed += debited
            figures.redeemed_credited += credited
            figures.discount += int(a["discount"])
            figures.redemptions += 1
            if figures.kind is SchemeKind.DISCOUNT:
                figures.committed += credited
            rid = int(a["redemptionId"])
            if rid in state.used_ids:
                state.anomalies.append(Difference("events.duplicate_id", str(rid), 1, 2))
            state.used_ids.add(rid)
            m = merchant(a["merchant"])
            m.redeemed += credited
            m.redemptions += 1
        elif name == "RedemptionRejected":
            state.rejected_ids.add(int(a["redemptionId"]))
        elif name == "Reversed":
            sid = int(a["schemeId"])
            figures = scheme(sid)
            debited = int(a["debited"])
            credited = int(a["credited"])
            if debited != 0:
                credit(sid, a["passId"], debited)
            figures.reversed += debited
            figures.reversed_credited += credited
            figures.reversals += 1
            if figures.kind is SchemeKind.DISCOUNT:
                figures.committed -= credited
            state.reversed_ids.add(int(a["redemptionId"]))
            m = merchant(a["merchant"])
            m.reversed += credited
            m.reversals += 1
        elif name == "Settled":
            m = merchant(a["merchant"])
            m.settled += int(a["amount"])
            m.settlements += 1
    return state


def _balance_key(scheme_id: int, pid: bytes) -> str:
    return f"scheme={scheme_id} pass=0x{pid.hex()}"


# ================================================================== (a) contract views


def _compare_chain(
    rpc: RpcClient, client: LedgerClient, state: LedgerState, block: int
) -> list[Difference]:
    """Compare the recomputation with the contract's views at ``block`` (batched ``eth_call``)."""
    functions = {str(f["name"]): f for f in client.abi if f.get("type") == "function"}
    calls: list[tuple[str, tuple[Any, ...], str, str, Any]] = []
    # (function, args, difference kind, key, expected)

    calls.append(("schemeCount", (), "chain.scheme_count", "schemeCount", len(state.schemes)))
    for sid, figures in sorted(state.schemes.items()):
        calls.append(("schemeOf", (sid,), "chain.scheme", f"scheme={sid}", figures))
    for (sid, pid), balance in sorted(state.balances.items()):
        calls.append(("balanceOf", (sid, pid), "chain.balance", _balance_key(sid, pid), balance))
    for address, m in sorted(state.merchants.items()):
        calls.append(("merchantAccount", (address,), "chain.merchant", f"merchant={address}", m))
    for rid in sorted(state.used_ids | state.rejected_ids):
        used = rid in state.used_ids
        calls.append(("isRedemptionUsed", (rid,), "chain.redemption_used", f"id={rid}", used))
    for rid in sorted(state.used_ids | state.reversed_ids):
        done = rid in state.reversed_ids
        calls.append(("isReversed", (rid,), "chain.redemption_reversed", f"id={rid}", done))
    for root, index in sorted(state.claims):
        calls.append(
            ("isClaimed", (root, index), "chain.cohort_claim", f"root=0x{root.hex()} i={index}", 1)
        )
    for pid, p in sorted(state.passes.items()):
        calls.append(("passOf", (pid,), "chain.pass", f"pass=0x{pid.hex()}", p))

    differences: list[Difference] = []
    tag = hex(block)
    for part in _chunks(calls, CALL_BATCH):
        requests = [
            (
                "eth_call",
                [{"to": client.address, "data": "0x" + client.call_data(fn, *args).hex()}, tag],
            )
            for fn, args, _, _, _ in part
        ]
        replies = rpc.batch(requests)
        for (fn, _args, kind, key, expected), reply in zip(part, replies, strict=True):
            if isinstance(reply, RpcError):
                differences.append(Difference(kind, key, "a result", f"call failed: {reply}"))
                continue
            outputs = [abi_type(p) for p in functions[fn]["outputs"]]
            values = decode(outputs, bytes.fromhex(str(reply)[2:]))
            differences.extend(_view_differences(fn, kind, key, expected, values))
    return differences


def _view_differences(
    fn: str, kind: str, key: str, expected: Any, values: Sequence[Any]
) -> Iterator[Difference]:
    if fn == "schemeOf":
        figures: SchemeFigures = expected
        terms, committed = tuple(values[0]), int(values[1])
        if terms != figures.terms:
            yield Difference(kind + ".terms", key, list(figures.terms), list(terms))
        if committed != figures.committed:
            yield Difference(kind + ".committed", key, figures.committed, committed)
    elif fn == "merchantAccount":
        m: MerchantFigures = expected
        for name, want, got in zip(
            ("redeemed", "reversed", "settled"),
            (m.redeemed, m.reversed, m.settled),
            values,
            strict=True,
        ):
            if want != int(got):
                yield Difference(f"{kind}.{name}", key, want, int(got))
    elif fn == "passOf":
        p: PassFigures = expected
        registered, blocked, holder_key, serial = values
        want_pass = (True, p.blocked, _lower(p.holder_key), p.card_serial)
        got_pass = (bool(registered), bool(blocked), _lower(str(holder_key)), int(serial))
        if want_pass != got_pass:
            yield Difference(kind, key, list(want_pass), list(got_pass))
    elif fn in {"isRedemptionUsed", "isReversed", "isClaimed"}:
        if bool(values[0]) != bool(expected):
            yield Difference(kind, key, bool(expected), bool(values[0]))
    elif int(values[0]) != int(expected):
        yield Difference(kind, key, int(expected), int(values[0]))


# ================================================================== (b) index rows


def _table_name(model: type[SQLModel]) -> str:
    table: Table = model.__table__  # type: ignore[attr-defined]
    return str(table.name)


def _hex(value: bytes) -> str:
    return "0x" + bytes(value).hex()


def _lower(value: str | None) -> str | None:
    return None if value is None else value.lower()


def _optional_address(value: str) -> str | None:
    return None if int(value, 16) == 0 else value


_KINDS: Final = {
    SchemeKind.BUDGET: "budget",
    SchemeKind.USES: "uses",
    SchemeKind.DISCOUNT: "discount",
}

_TABLE_OF: Final[dict[str, type[SQLModel]]] = {
    "PassRegistered": IndexedPass,
    "HolderKeyChanged": IndexedPassBlock,
    "PassBlockStatusChanged": IndexedPassBlock,
    "CardReplaced": IndexedCardChange,
    "SchemeCreated": IndexedScheme,
    "EntitlementIssued": IndexedEntitlement,
    "EntitlementsIssued": IndexedEntitlement,
    "CohortClaimed": IndexedEntitlement,
    "CohortIssued": IndexedCohort,
    "EntitlementExpired": IndexedExpiry,
    "Redeemed": IndexedRedemption,
    "RedemptionRejected": IndexedRejection,
    "Reversed": IndexedReversal,
    "Settled": IndexedSettlement,
    **dict.fromkeys(GOVERNANCE_KINDS, IndexedGovernance),
}


def expected_index_rows(
    events: Sequence[DecodedEvent],
    *,
    chain_id: int,
    block_times: Mapping[int, int],
    abi: Sequence[Mapping[str, Any]],
) -> dict[str, dict[IndexKey, Row]]:
    """The rows the index tables must hold for ``events``: table name -> natural key -> columns.

    Column values are what the tables store (hex strings for bytes, checksummed addresses,
    redemption ids as decimal text); ``id`` is left out. A cohort claim appears twice: in
    ``index_cohort_claim`` and as an entitlement with source ``claim``.
    """
    errors = {sel: spec[0] for sel, spec in error_selectors(abi).items()}
    tables: dict[str, dict[IndexKey, Row]] = {_table_name(t): {} for t in EVENT_TABLES}
    # receipt root and position of each Redeemed event: leaves in log order, root recorded after.
    receipt: dict[tuple[bytes, int], tuple[str, int]] = {}
    pending: list[DecodedEvent] = []
    for event in events:
        if event.name == "Redeemed":
            pending.append(event)
        elif event.name == "ReceiptsRecorded":
            for position, redeemed in enumerate(
                e for e in pending if e.transaction_hash == event.transaction_hash
            ):
                receipt[(redeemed.block_hash, redeemed.log_index)] = (
                    _hex(event.args["root"]),
                    position,
                )
            pending = [e for e in pending if e.transaction_hash != event.transaction_hash]
    cohort_schemes: dict[bytes, int] = {}
    kinds: dict[int, SchemeKind] = {}

    for event in events:
        a = event.args
        base: Row = {
            "chain_id": chain_id,
            "block_number": event.block_number,
            "block_hash": _hex(event.block_hash),
            "block_time": block_times[event.block_number],
            "transaction_hash": _hex(event.transaction_hash),
            "log_index": event.log_index,
        }
        key: IndexKey = (_hex(event.block_hash), event.log_index, 0)
        name = event.name
        table = _TABLE_OF.get(name)
        if table is None:
            continue
        rows = tables[_table_name(table)]
        if name == "PassRegistered":
            rows[key] = base | {
                "pass_id": _hex(a["passId"]),
                "holder_key": _optional_address(a["holderKey"]),
                "card_serial": int(a["cardSerial"]),
            }
        elif name == "HolderKeyChanged":
            rows[key] = base | {
                "pass_id": _hex(a["passId"]),
                "kind": "holder_key",
                "holder_key": _optional_address(a["holderKey"]),
            }
        elif name == "PassBlockStatusChanged":
            rows[key] = base | {
                "pass_id": _hex(a["passId"]),
                "kind": "blocked" if a["blocked"] else "unblocked",
                "holder_key": None,
            }
        elif name == "CardReplaced":
            rows[key] = base | {
                "pass_id": _hex(a["passId"]),
                "old_serial": int(a["oldSerial"]),
                "new_serial": int(a["newSerial"]),
            }
        elif name == "SchemeCreated":
            t = tuple(a["terms"])
            kinds[int(a["schemeId"])] = SchemeKind(int(t[0]))
            rows[key] = base | {
                "scheme_id": int(a["schemeId"]),
                "kind": _KINDS[SchemeKind(int(t[0]))],
                "valid_from": int(t[1]),
                "valid_until": int(t[2]),
                "per_redemption_cap": int(t[3]),
                "unit_value": int(t[4]),
                "discount_bps": int(t[5]),
                "reimburse_bps": int(t[6]),
                "discount_fixed": int(t[7]),
                "budget_cap": int(t[8]),
                "open_to_all_merchants": bool(t[9]),
            }
        elif name == "EntitlementIssued":
            rows[key] = base | _entitlement(
                int(a["schemeId"]), a["passId"], int(a["amount"]), "issue", None, 0
            )
        elif name == "EntitlementsIssued":
            for position, (pid, amount) in enumerate(zip(a["passIds"], a["amounts"], strict=True)):
                rows[(key[0], key[1], position)] = base | _entitlement(
                    int(a["schemeId"]), pid, int(amount), "batch", None, position
                )
        elif name == "CohortIssued":
            cohort_schemes[a["root"]] = int(a["schemeId"])
            rows[key] = base | {
                "scheme_id": int(a["schemeId"]),
                "root": _hex(a["root"]),
                "holder_count": int(a["holderCount"]),
                "total_amount": int(a["totalAmount"]),
            }
        elif name == "CohortClaimed":
            amount = int(a["amount"])
            rows[key] = base | _entitlement(
                cohort_schemes.get(a["root"], 0), a["passId"], amount, "claim", a["root"], 0
            )
            tables[_table_name(IndexedCohortClaim)][key] = base | {
                "root": _hex(a["root"]),
                "leaf_index": int(a["index"]),
                "pass_id": _hex(a["passId"]),
                "amount": 0 if amount == UNLIMITED else amount,
                "unlimited": amount == UNLIMITED,
            }
        elif name == "EntitlementExpired":
            amount = int(a["amount"])
            rows[key] = base | {
                "scheme_id": int(a["schemeId"]),
                "pass_id": _hex(a["passId"]),
                "amount": 0 if amount == UNLIMITED else amount,  # nothing countable written off
                "unlimited": amount == UNLIMITED,
            }
        elif name == "Redeemed":
            located = receipt.get((event.block_hash, event.log_index))
            rows[key] = base | {
                "redemption_id": str(int(a["redemptionId"])),
                "pass_id": _hex(a["passId"]),
                "scheme_id": int(a["schemeId"]),
                "merchant": a["merchant"],
                "amount": int(a["amount"]),
                "debited": int(a["debited"]),
                "discount": int(a["discount"]),
                "credited": int(a["credited"]),
                "receipt_root": None if located is None else located[0],
                "receipt_position": None if located is None else located[1],
            }
        elif name == "RedemptionRejected":
            reason = bytes(a["reason"])
            rows[key] = base | {
                "redemption_id": str(int(a["redemptionId"])),
                "reason": errors.get(reason, _hex(reason)),
                "detail": _hex(a["detail"]),
            }
        elif name == "Reversed":
            rows[key] = base | {
                "redemption_id": str(int(a["redemptionId"])),
                "pass_id": _hex(a["passId"]),
                "scheme_id": int(a["schemeId"]),
                "merchant": a["merchant"],
                "debited": int(a["debited"]),
                "credited": int(a["credited"]),
            }
        elif name == "Settled":
            rows[key] = base | {
                "merchant": a["merchant"],
                "payment_reference": _hex(a["paymentReference"]),
                "amount": int(a["amount"]),
            }
        else:
            rows[key] = base | _governance_row(name, a)
    return tables


def _governance_row(name: str, a: Mapping[str, Any]) -> Row:
    """The ``index_governance`` columns of a role, pause, allowance, window or domain event."""
    row: Row = dict.fromkeys(GOVERNANCE_VALUES)
    row["kind"] = GOVERNANCE_KINDS[name]
    if name in ("RoleGranted", "RoleRevoked"):
        row |= {"role": _hex(a["role"]), "account": a["account"], "sender": a["sender"]}
    elif name == "RoleAdminChanged":
        row |= {
            "role": _hex(a["role"]),
            "previous_admin_role": _hex(a["previousAdminRole"]),
            "new_admin_role": _hex(a["newAdminRole"]),
        }
    elif name in ("Paused", "Unpaused"):
        row["account"] = a["account"]
    elif name == "MerchantAllowanceChanged":
        row |= {
            "scheme_id": int(a["schemeId"]),
            "account": a["merchant"],
            "allowed": bool(a["allowed"]),
        }
    elif name == "ReversalWindowChanged":
        row["window_s"] = int(a["window"])
    return row


def _entitlement(
    scheme_id: int, pid: bytes, amount: int, source: str, root: bytes | None, position: int
) -> Row:
    unlimited = amount == UNLIMITED
    return {
        "position": position,
        "scheme_id": scheme_id,
        "pass_id": _hex(pid),
        "amount": 0 if unlimited else amount,
        "unlimited": unlimited,
        "source": source,
        "cohort_root": None if root is None else _hex(root),
    }


def read_index_rows(
    engine: Engine, *, chain_id: int, to_block: int
) -> dict[str, dict[IndexKey, Row]]:
    """The index tables' rows of ``chain_id`` up to ``to_block``, keyed like
    :func:`expected_index_rows`."""
    out: dict[str, dict[IndexKey, Row]] = {}
    with engine.connect() as conn:
        for model in EVENT_TABLES:
            table: Table = model.__table__  # type: ignore[attr-defined]
            rows: dict[IndexKey, Row] = {}
            query = (
                select(table)
                .where(table.c.chain_id == chain_id)
                .where(table.c.block_number <= to_block)
            )
            for record in conn.execute(query).mappings():
                row = {k: v for k, v in record.items() if k != "id"}
                position = int(row.get("position", 0) or 0)
                rows[(str(row["block_hash"]).lower(), int(row["log_index"]), position)] = row
            out[str(table.name)] = rows
    return out


def _normal(column: str, value: Any) -> Any:
    """Compare values the way they mean, not the way they are spelled (hex case, Decimal)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, Decimal):
        return int(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, str) and value.startswith(("0x", "0X")):
        if column in {"holder_key"} and int(value, 16) == 0:
            return None
        return value.lower()
    return value


def _compare_index(
    expected: Mapping[str, Mapping[IndexKey, Row]], actual: Mapping[str, Mapping[IndexKey, Row]]
) -> list[Difference]:
    differences: list[Difference] = []
    for table in sorted(set(expected) | set(actual)):
        want = expected.get(table, {})
        have = actual.get(table, {})
        for key in sorted(set(want) | set(have)):
            label = f"{table} block={key[0]} log={key[1]}" + (f" pos={key[2]}" if key[2] else "")
            if key not in have:
                differences.append(Difference("index.missing", label, _jsonable(want[key]), None))
                continue
            if key not in want:
                differences.append(Difference("index.extra", label, None, _jsonable(have[key])))
                continue
            w, h = want[key], have[key]
            for column in w:
                if column == "unlimited" or (column == "amount" and w.get("unlimited")):
                    if column == "unlimited" and bool(h.get(column)) != bool(w[column]):
                        differences.append(
                            Difference("index.value", f"{label} {column}", w[column], h[column])
                        )
                    continue
                if _normal(column, w[column]) != _normal(column, h.get(column)):
                    differences.append(
                        Difference(
                            "index.value",
                            f"{label} {column}",
                            _jsonable(w[column]),
                            _jsonable(h.get(column)),
                        )
                    )
    return differences


def _checkpoint(engine: Engine, chain_id: int, contract: str) -> tuple[int, str] | None:
    table: Table = IndexCheckpoint.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        rows = conn.execute(select(table).where(table.c.chain_id == chain_id)).mappings().all()
    for row in rows:
        if str(row["contract"]).lower() == contract.lower():
            return int(row["block_number"]), str(row["block_hash"]).lower()
    return None


# ================================================================== (c) reports


def _compare_reports(
    engine: Engine, state: LedgerState, result: AuditResult, first_time: int, last_time: int
) -> list[Difference] | None:
    """Compare with :mod:`ledger.reports` (scheme and merchant totals over all indexed time)
    when that package exists; else note why not and return ``None``."""
    if importlib.util.find_spec("ledger.reports") is None:
        result.notes.append("reports not compared: ledger.reports is not installed")
        return None
    reports: Any = importlib.import_module("ledger.reports")
    period = reports.Period(first_time, last_time + 1)
    schemes: dict[int, dict[str, int]] = {}
    for row in reports.scheme_report(engine, period=period).rows:
        figures = schemes.setdefault(int(row.scheme_id), {})
        for name in _REPORT_SCHEME_FLOWS:
            figures[name] = figures.get(name, 0) + int(getattr(row, name))
        figures["remaining"] = int(row.remaining)  # a stock: the last bucket's
    merchants: dict[str, dict[str, int]] = {}
    for mrow in reports.merchant_report(engine).rows:
        merchants[str(mrow.merchant).lower()] = {
            name: int(getattr(mrow, name)) for name in _REPORT_MERCHANT_FIGURES
        }
    return list(_report_differences(state, schemes, merchants))


_REPORT_SCHEME_FLOWS: Final = (
    "issued",
    "issued_unlimited",
    "redemptions",
    "redeemed",
    "credited",
    "reversals",
    "reversed",
    "reversed_credited",
    "expired",
)
_REPORT_MERCHANT_FIGURES: Final = (
    "redemptions",
    "credited",
    "reversals",
    "reversed",
    "settled",
    "owed",
)


def _report_differences(
    state: LedgerState,
    schemes: Mapping[int, Mapping[str, int]],
    merchants: Mapping[str, Mapping[str, int]],
) -> Iterator[Difference]:
    for sid, f in sorted(state.schemes.items()):
        got = schemes.get(sid, {})
        want = {
            "issued": f.issued + f.claimed,
            "issued_unlimited": f.unlimited_issued,
            "redemptions": f.redemptions,
            "redeemed": f.redeemed,
            "credited": f.redeemed_credited,
            "reversals": f.reversals,
            "reversed": f.reversed,
            "reversed_credited": f.reversed_credited,
            "expired": f.expired,
            "remaining": sum(
                b for (s, _), b in state.balances.items() if s == sid and b != UNLIMITED
            ),
        }
        for name, value in want.items():
            if got.get(name, 0) != value:
                yield Difference(f"report.scheme.{name}", f"scheme={sid}", value, got.get(name))
    for address, m in sorted(state.merchants.items()):
        mgot = merchants.get(address.lower(), {})
        mwant = {
            "redemptions": m.redemptions,
            "credited": m.redeemed,
            "reversals": m.reversals,
            "reversed": m.reversed,
            "settled": m.settled,
            "owed": m.owed,
        }
        for name, value in mwant.items():
            if mgot.get(name, 0) != value:
                yield Difference(
                    f"report.merchant.{name}", f"merchant={address}", value, mgot.get(name)
                )


# ================================================================== (d) promises and outbox


def _redemption_key(redemption_id: int) -> str:
    return f"redemption={redemption_id}"


def _where(event: DecodedEvent) -> str:
    return f"block {event.block_number}, tx {_hex(event.transaction_hash)}"


def _said(promise: ServicePromise) -> str:
    """Where the service's record says it happened, for a detail line."""
    parts = [promise.reference] if promise.reference else []
    if promise.tx_hash is not None:
        parts.append(f"tx {promise.tx_hash}")
    if promise.block_number is not None:
        parts.append(f"block {promise.block_number}")
    return "; ".join(parts) if parts else "no transaction recorded"


def _broken_note(promise: ServicePromise) -> str:
    if promise.promise_broken_at is None:
        return ""
    code = f" ({promise.problem_code})" if promise.problem_code else ""
    at = f"{promise.promise_broken_at:%Y-%m-%d %H:%M:%S}"
    return f"; the service marked this promise broken at {at}{code}"


def _event_figures(event: DecodedEvent) -> dict[str, Any]:
    a = event.args
    return {
        "scheme_id": int(a["schemeId"]),
        "merchant": a["merchant"],
        "debited": int(a["debited"]),
        "credited": int(a["credited"]),
        "block_number": event.block_number,
        "tx_hash": _hex(event.transaction_hash),
    }


def compare_promises(
    promises: Sequence[ServicePromise],
    events: Sequence[DecodedEvent],
    *,
    known_until: int,
) -> list[Difference]:
    """Compare the service's promises with the ledger's ``Redeemed`` and ``Reversed`` logs in
    ``events`` (pure). A ``Redeemed`` log without a promise counts only up to block
    ``known_until`` (what was mined before the promises were read); see the module docstring
    for the kinds. Sorted by redemption id."""
    redeemed: dict[int, DecodedEvent] = {}
    reversed_: dict[int, DecodedEvent] = {}
    for log in events:
        if log.name == "Redeemed":
            redeemed.setdefault(int(log.args["redemptionId"]), log)
        elif log.name == "Reversed":
            reversed_.setdefault(int(log.args["redemptionId"]), log)
    by_id = {p.redemption_id: p for p in promises}
    found: list[tuple[int, Difference]] = []

    def add(rid: int, kind: str, expected: Any, actual: Any, detail: str) -> None:
        line = f"{PROMISE_KINDS[kind]}: {detail}"
        found.append((rid, Difference(kind, _redemption_key(rid), expected, actual, line)))

    for rid, promise in sorted(by_id.items()):
        event = redeemed.get(rid)
        broken = _broken_note(promise)
        before = len(found)
        if promise.status is PromiseStatus.SUCCEEDED and event is None:
            add(
                rid,
                "promise.missing_on_chain",
                None,
                promise.summary(),
                f"the service confirmed it ({_said(promise)}), but no Redeemed log on chain "
                f"has this id{broken}",
            )
        elif promise.status is PromiseStatus.FAILED and event is not None:
            add(
                rid,
                "promise.refused_on_chain",
                _event_figures(event),
                promise.summary(),
                f"the service refused it ({promise.problem_code or 'no reason recorded'}), "
                f"but it was redeemed on chain ({_where(event)}){broken}",
            )
        elif promise.status is PromiseStatus.FAILED and promise.promise_broken_at is not None:
            add(
                rid,
                "promise.missing_on_chain",
                None,
                promise.summary(),
                f"the service had confirmed it ({_said(promise)}); the chain lost it{broken}",
            )
        elif (
            promise.status is PromiseStatus.SUCCEEDED
            and promise.promise_broken_at is not None
            and event is not None
        ):
            add(
                rid,
                "promise.refused_on_chain",
                _event_figures(event),
                promise.summary(),
                f"the service had refused it, then it landed on chain ({_where(event)}){broken}",
            )
        if event is not None and promise.status is PromiseStatus.SUCCEEDED:
            on_chain = _event_figures(event)
            if (promise.debited is not None and promise.debited != on_chain["debited"]) or (
                promise.credited is not None and promise.credited != on_chain["credited"]
            ):
                add(
                    rid,
                    "promise.amounts",
                    {"debited": on_chain["debited"], "credited": on_chain["credited"]},
                    {"debited": promise.debited, "credited": promise.credited},
                    f"debited/credited here {promise.debited}/{promise.credited}, on chain "
                    f"{on_chain['debited']}/{on_chain['credited']} ({_where(event)})",
                )
            if (
                promise.merchant is not None
                and promise.merchant.lower() != str(on_chain["merchant"]).lower()
            ):
                add(
                    rid,
                    "promise.merchant",
                    on_chain["merchant"],
                    promise.merchant,
                    f"redeemed here for {promise.merchant}, on chain for "
                    f"{on_chain['merchant']} ({_where(event)})",
                )
            if promise.scheme_id is not None and promise.scheme_id != on_chain["scheme_id"]:
                add(
                    rid,
                    "promise.scheme",
                    on_chain["scheme_id"],
                    promise.scheme_id,
                    f"scheme {promise.scheme_id} here, {on_chain['scheme_id']} on chain "
                    f"({_where(event)})",
                )
        reversal = reversed_.get(rid)
        if promise.reversal_tx_hash is not None and reversal is None:
            add(
                rid,
                "promise.reversal_missing",
                None,
                promise.summary(),
                f"the service reversed it (tx {promise.reversal_tx_hash}), but no Reversed log "
                "on chain has this id",
            )
        elif (
            promise.reversal_tx_hash is None
            and reversal is not None
            and reversal.block_number <= known_until
        ):
            add(
                rid,
                "promise.reversal_unknown",
                {"block_number": reversal.block_number, "tx_hash": _hex(reversal.transaction_hash)},
                promise.summary(),
                f"reversed on chain ({_where(reversal)}), but the service's record says it is "
                "not reversed",
            )
        if promise.promise_broken_at is not None and len(found) == before:
            add(
                rid,
                "promise.broken",
                None if event is None else _event_figures(event),
                promise.summary(),
                f"the record now agrees with the chain, but an answer given earlier was "
                f"contradicted{broken}",
            )
    for rid, unknown in sorted(redeemed.items()):
        if rid not in by_id and unknown.block_number <= known_until:
            add(
                rid,
                "promise.unknown_here",
                _event_figures(unknown),
                None,
                f"redeemed on chain for {unknown.args['merchant']} ({_where(unknown)}), but the "
                "service has no record of this id",
            )
    found.sort(key=lambda item: item[0])
    return [difference for _, difference in found]


def read_outbox(engine: Engine) -> list[OutboxRow] | None:
    """Every row of the outbox of the store on ``engine`` (``outbox_tx``; a SQLite store keeps
    it in a file of its own beside it, see :func:`ledger.outbox.outbox_store_url`), or None
    when there is no outbox. Opens, never creates nor migrates anything."""
    url = engine.url.render_as_string(hide_password=False)
    own = outbox_store_url(url)
    if own == url:
        return _outbox_rows(engine, url)
    path = make_url(own).database
    if not path or not Path(path).is_file():
        return None
    store = open_store(StoreConfig(own))
    try:
        return _outbox_rows(store.engine, own)
    finally:
        store.close()


def _outbox_rows(engine: Engine, url: str) -> list[OutboxRow] | None:
    table: Table = OutboxTx.__table__  # type: ignore[attr-defined]
    if not inspect(engine).has_table(str(table.name)):
        return None
    outbox = SqlOutbox(Store(StoreConfig(url), engine))
    try:
        return outbox.all_rows()
    finally:
        outbox.close()


def _receipts(rpc: RpcClient, tx_hashes: Sequence[str]) -> dict[str, tuple[int, str] | None]:
    """Transaction hash -> (block number, block hash) of its receipt on chain, or None."""
    out: dict[str, tuple[int, str] | None] = {}
    for part in _chunks(list(tx_hashes), CALL_BATCH):
        replies = rpc.batch([("eth_getTransactionReceipt", [h]) for h in part])
        for tx_hash, reply in zip(part, replies, strict=True):
            if isinstance(reply, RpcError):
                raise AuditError(f"the node did not answer for transaction {tx_hash}: {reply}")
            if isinstance(reply, dict) and reply.get("blockNumber"):
                out[tx_hash] = (
                    int(str(reply["blockNumber"]), 16),
                    str(reply.get("blockHash", "")).lower(),
                )
            else:
                out[tx_hash] = None
    return out


def compare_outbox(
    rows: Sequence[OutboxRow],
    promises: Sequence[ServicePromise] | None,
    *,
    now: datetime,
    stuck_after_s: float = DEFAULT_STUCK_AFTER_S,
    receipts: Mapping[str, tuple[int, str] | None] | None = None,
) -> list[Difference]:
    """The outbox against the promises and the clock (pure).

    ``receipts`` holds what the chain says about the old ``mined`` rows (see :func:`audit`): a
    row whose receipt is there, in the recorded block, is not stuck."""
    differences: list[Difference] = []
    live: set[int] = set()  # redemption ids some row that is not failed carries
    for row in rows:
        if row.state is not OutboxState.FAILED and row.label in REDEMPTION_CALLS:
            live.update(row.refs)
    by_id = {p.redemption_id: p for p in promises or ()}
    reported: set[int] = set()
    for row in rows:
        if row.state is not OutboxState.FAILED or row.label not in REDEMPTION_CALLS:
            continue
        for rid in row.refs:
            promise = by_id.get(rid)
            if promise is None or promise.status is PromiseStatus.FAILED:
                continue
            if rid in live or rid in reported:
                continue
            reported.add(rid)
            detail = (
                f"{PROMISE_KINDS['outbox.failed']}: transaction {row.tx_hash} carrying it "
                f"failed ({row.reason or 'no reason'}), but the record is "
                f"{promise.status.value} ({_said(promise)})"
            )
            differences.append(
                Difference(
                    "outbox.failed",
                    _redemption_key(rid),
                    {"tx_hash": row.tx_hash, "state": row.state.value, "reason": row.reason},
                    promise.summary(),
                    detail,
                )
            )
    limit = now - timedelta(seconds=stuck_after_s)
    for row in rows:
        if row.state in (OutboxState.FINAL, OutboxState.FAILED) or row.created_at > limit:
            continue
        seen = None if receipts is None else receipts.get(row.tx_hash)
        recorded = (row.block_number, (row.block_hash or "").lower())
        if row.state is OutboxState.MINED and seen is not None and seen == recorded:
            continue  # mined where the outbox says, only not marked final yet
        age = now - row.created_at
        if receipts is None:
            chain = "the chain was not asked"
        elif seen is None:
            chain = "the chain has no receipt for it"
        else:
            chain = f"the chain mined it in block {seen[0]}"
        refs = f", carrying redemption(s) {', '.join(map(str, row.refs))}" if row.refs else ""
        detail = (
            f"{PROMISE_KINDS['outbox.stuck']}: {row.label or 'a call'} from {row.sender} "
            f"(nonce {row.nonce}{refs}) is still {row.state.value} after "
            f"{int(age.total_seconds() // 60)} min; {chain}"
        )
        differences.append(
            Difference(
                "outbox.stuck",
                f"tx={row.tx_hash}",
                None if seen is None else {"block_number": seen[0], "block_hash": seen[1]},
                {
                    "state": row.state.value,
                    "sender": row.sender,
                    "nonce": row.nonce,
                    "label": row.label,
                    "refs": list(row.refs),
                    "created_at": row.created_at.isoformat(),
                    "block_number": row.block_number,
                },
                detail,
            )
        )
    return differences


# ================================================================== the audit


def audit(
    *,
    rpc: RpcClient,
    client: LedgerClient,
    from_block: int,
    to_block: int | None = None,
    store: Engine | _HasEngine | None = None,
    compare_chain: bool = True,
    compare_reports: bool = True,
    log_chunk: int = DEFAULT_LOG_CHUNK,
    promises: Sequence[ServicePromise] | PromiseSource | None = None,
    compare_outbox_rows: bool = True,
    stuck_after_s: float = DEFAULT_STUCK_AFTER_S,
    now: datetime | None = None,
) -> AuditResult:
    """Audit the ledger at ``client.address`` from ``from_block`` (its deployment) to ``to_block``.

    ``to_block`` defaults to the index checkpoint when ``store`` has one for this contract (the
    block the index claims to mirror), else the node's latest block; an index checkpoint beyond
    the node's head (a node that lost blocks) is a difference, and the audit stops at the head.
    Raises :class:`AuditError` when the node or the database cannot be read; mismatches are
    returned, never raised.

    ``promises`` (a sequence, or a :data:`PromiseSource` called once the chain's head is known)
    are compared with the chain's logs up to its head; the outbox is read from ``store`` when it
    has one (``compare_outbox_rows``), its open rows older than ``stuck_after_s`` before ``now``
    are stuck. See the module docstring, "Service promises".
    """
    engine = None if store is None else engine_of(store)
    try:
        chain_id = int(str(rpc.call("eth_chainId")), 16)
        head = int(str(rpc.call("eth_blockNumber")), 16)
    except LedgerError as exc:
        raise AuditError(f"cannot read the node: {exc}") from exc
    checkpoint: tuple[int, str] | None = None
    if engine is not None:
        try:
            checkpoint = _checkpoint(engine, chain_id, client.address)
        except SQLAlchemyError as exc:
            raise AuditError(f"cannot read the index database: {_first_line(exc)}") from exc
    ahead: Difference | None = None
    if to_block is None and checkpoint is not None and checkpoint[0] > head:
        try:  # the indexer may have followed a block mined since the head was read
            head = int(str(rpc.call("eth_blockNumber")), 16)
        except LedgerError as exc:
            raise AuditError(f"cannot read the node: {exc}") from exc
        if checkpoint[0] > head:
            ahead = Difference(
                "index.checkpoint",
                f"block={checkpoint[0]}",
                f"at most the node's head {head}",
                checkpoint[0],
                f"the index mirrors block {checkpoint[0]}, beyond the node's head {head}: "
                "the node lost blocks (or is another chain)",
            )
    target = (
        to_block if to_block is not None else (min(checkpoint[0], head) if checkpoint else head)
    )
    if target > head:
        raise AuditError(f"block {target} is beyond the node's head {head}")
    if from_block < 0 or from_block > target:
        raise AuditError(f"from block {from_block} is not within 0..{target}")

    try:
        events = fetch_events(rpc, client, from_block=from_block, to_block=target, chunk=log_chunk)
        blocks = _block_times(rpc, [target, *(e.block_number for e in events)])
    except LedgerError as exc:
        raise AuditError(f"cannot read the node: {exc}") from exc
    state = recompute(events)
    result = AuditResult(
        chain_id=chain_id,
        contract=client.address,
        from_block=from_block,
        to_block=target,
        block_hash=blocks[target][0],
        events=len(events),
        state=state,
    )
    result.differences.extend(state.anomalies)
    if ahead is not None:
        result.differences.append(ahead)
    for event in events:  # logs of a block that is no longer canonical
        if _hex(event.block_hash) != blocks[event.block_number][0]:
            result.differences.append(
                Difference(
                    "chain.block_hash",
                    f"block={event.block_number}",
                    blocks[event.block_number][0],
                    _hex(event.block_hash),
                )
            )
            break

    if compare_chain:
        try:
            result.differences.extend(_compare_chain(rpc, client, state, target))
        except LedgerError as exc:
            raise AuditError(f"cannot read the contract's views: {exc}") from exc
        result.checked.append("contract views")

    if engine is None:
        result.notes.append("index not compared: no database given")
    else:
        if (
            checkpoint is not None
            and checkpoint[0] == target
            and checkpoint[1] != blocks[target][0]
        ):
            result.differences.append(
                Difference("index.checkpoint", f"block={target}", blocks[target][0], checkpoint[1])
            )
        if checkpoint is not None and checkpoint[0] < target:
            result.notes.append(
                f"the index checkpoint is at block {checkpoint[0]}, behind the audited {target}"
            )
        expected = expected_index_rows(
            events,
            chain_id=chain_id,
            block_times={n: t for n, (_, t) in blocks.items()},
            abi=client.abi,
        )
        try:
            actual = read_index_rows(engine, chain_id=chain_id, to_block=target)
        except SQLAlchemyError as exc:
            raise AuditError(f"cannot read the index database: {_first_line(exc)}") from exc
        result.differences.extend(_compare_index(expected, actual))
        result.checked.append("index rows")
        if compare_reports and to_block is not None:
            result.notes.append("reports not compared: they cover the whole index, not --block")
        elif compare_reports:
            times = [t for _, t in blocks.values()]
            try:
                report_differences = _compare_reports(
                    engine, state, result, min(times), blocks[target][1]
                )
            except SQLAlchemyError as exc:
                raise AuditError(f"cannot read the reports: {_first_line(exc)}") from exc
            if report_differences is not None:
                result.differences.extend(report_differences)
                result.checked.append("reports")

    _audit_promises(
        result,
        rpc=rpc,
        client=client,
        engine=engine,
        events=events,
        head=head,
        promises=promises,
        compare_outbox_rows=compare_outbox_rows,
        stuck_after_s=stuck_after_s,
        now=now,
        log_chunk=log_chunk,
    )
    return result


def _audit_promises(
    result: AuditResult,
    *,
    rpc: RpcClient,
    client: LedgerClient,
    engine: Engine | None,
    events: Sequence[DecodedEvent],
    head: int,
    promises: Sequence[ServicePromise] | PromiseSource | None,
    compare_outbox_rows: bool,
    stuck_after_s: float,
    now: datetime | None,
    log_chunk: int,
) -> None:
    """(d): the promises against the chain up to its head, then the outbox."""
    loaded: Sequence[ServicePromise] | None = None
    if promises is None:
        result.notes.append("service promises not compared: none given")
    else:
        try:
            loaded = promises() if callable(promises) else promises
        except SQLAlchemyError as exc:
            raise AuditError(f"cannot read the service's records: {_first_line(exc)}") from exc
        if loaded is None:
            result.notes.append(
                "service promises not compared: the database holds no service records"
            )
    if loaded is not None:
        try:  # read after the promises: a confirmed redemption mined by now is in these logs
            latest = int(str(rpc.call("eth_blockNumber")), 16)
            later = fetch_events(
                rpc, client, from_block=result.to_block + 1, to_block=latest, chunk=log_chunk
            )
        except LedgerError as exc:
            raise AuditError(f"cannot read the node: {exc}") from exc
        redemptions = [e for e in (*events, *later) if e.name in ("Redeemed", "Reversed")]
        result.differences.extend(compare_promises(loaded, redemptions, known_until=head))
        result.checked.append("service promises")
        if latest > result.to_block:
            result.notes.append(f"service promises compared with the chain up to block {latest}")

    if not compare_outbox_rows:
        return
    if engine is None:
        result.notes.append("outbox not compared: no database given")
        return
    try:
        rows = read_outbox(engine)
    except SQLAlchemyError as exc:
        raise AuditError(f"cannot read the outbox: {_first_line(exc)}") from exc
    if rows is None:
        result.notes.append("outbox not compared: the database has no outbox")
        return
    at = now if now is not None else datetime.now(UTC)
    limit = at - timedelta(seconds=stuck_after_s)
    old_open = [
        row.tx_hash
        for row in rows
        if row.state not in (OutboxState.FINAL, OutboxState.FAILED) and row.created_at <= limit
    ]
    try:
        receipts = _receipts(rpc, old_open)
    except LedgerError as exc:
        raise AuditError(f"cannot read the node: {exc}") from exc
    result.differences.extend(
        compare_outbox(rows, loaded, now=at, stuck_after_s=stuck_after_s, receipts=receipts)
    )
    result.checked.append("outbox")


# ================================================================== helpers


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, Decimal):
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, SchemeFigures | MerchantFigures | PassFigures):
        return {k: _jsonable(getattr(value, k)) for k in value.__slots__}
    return value
