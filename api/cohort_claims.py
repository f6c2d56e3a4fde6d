"""Cohort shares that are not yet claimed, and their claim on first use at the counter.

A cohort is issued by Merkle root (:func:`api.admin_services.start_cohort`): the chain holds
only the root and the cohort's total, and each holder's share (leaf ``index``: ``pass_id``,
``amount``) becomes a balance only when someone presents its proof (``claim``). The leaves and
proofs are kept under ``<var>/cohorts/0x<root>.json`` (pass ids only).

:class:`CohortShares` is this process's index of those files by pass id: loaded lazily, and
reloaded when the directory changes (a new cohort file, or the file of a cohort whose issuance
failed being removed); :func:`register` adds a cohort at once. Whether a share can still be
claimed is the chain's to say:

- a cohort counts only once ``cohortScheme(root)`` is set (the file is written just before
  ``issueCohort``) or its ``CohortIssued`` event was seen;
- a leaf is claimed once ``isClaimed(root, index)`` says so or its ``CohortClaimed`` event was
  seen. Both facts only ever turn true, so they are cached for good; a leaf read as unclaimed
  is read once and then kept up to date by the events, which the state cache
  (:meth:`ledger.state_cache.LedgerStateCache.add_listener`) hands on from the chain's logs and
  from the receipts of this service's own transactions.

What the counter sees (:func:`balance_with_share`): a pass's balance in a scheme is its on-chain
balance plus its unclaimed shares in that scheme, with the share shown apart as ``unclaimed``.

Redemption policy (:func:`claim_and_redeem`): a redemption in a scheme where the pass still has
an unclaimed share *always* claims it, whatever the on-chain balance: the share is claimed on
first use, as the design says, and from then on the pass's redemptions take the batched fast
path. The redemption is sent as ONE ``claimAndRedeem`` transaction through the merchant's
relayer (not the batcher); the contract claims the leaf only if it is still unclaimed, so two
first uses at the same moment (two terminals, or a retry) claim it exactly once and each
redemption is judged against the balance after it. A pass with several unclaimed shares in the
scheme (several cohorts) has the others claimed by plain ``claim`` transactions sent just before
it through the same relayer (lower nonces, so mined first). The outcome is a
:class:`~ledger.batcher.RedemptionOutcome` like a batched one, so the idempotency record is
completed exactly as for a batch (:func:`api.redemptions.redeem`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api.runtime import Runtime
from api.store import RedemptionRecord
from ledger.batcher import RedemptionAccepted, RedemptionRefused
from ledger.batcher import RedemptionOutcome as BatchOutcome
from ledger.client import UNLIMITED, LedgerClient, RedemptionRequest
from ledger.contract_errors import ContractRevert, UnknownRevert
from ledger.events import DecodedEvent
from ledger.relayer import Relayer, TxHandle, TxRequest
from ledger.rpc import RpcClient, RpcError
from ledger.state_cache import CacheMiss
from wallet import SignedPassToken

__all__ = [
    "CohortShares",
    "Share",
    "balance_with_share",
    "claim_and_redeem",
    "register",
    "shares_of",
    "unclaimed_amount",
]

log = logging.getLogger(__name__)

#: Gas for ``claimAndRedeem`` (a redemption with its signature checks, a receipt root, and a
#: claim: proof check, bitmap, balance) plus per proof node; generous, the unused part is not
#: paid for.
_CLAIM_AND_REDEEM_GAS = 260_000
_CLAIM_GAS = 160_000
_GAS_PER_PROOF_NODE = 4_000
#: A cohort directory unchanged for this long is not listed again until its mtime changes.
_QUIET_NS = 2_000_000_000


@dataclass(frozen=True, slots=True)
class Share:
    """Leaf ``index`` of cohort ``root``: ``amount`` for ``pass_id`` in ``scheme_id``."""

    root: bytes
    scheme_id: int
    index: int
    pass_id: bytes
    amount: int
    proof: tuple[bytes, ...]

    def as_claim(self) -> tuple[bytes, int, bytes, int, list[bytes]]:
        """The contract's ``CohortClaim`` struct."""
        return (self.root, self.index, self.pass_id, self.amount, list(self.proof))


def _word(data: str) -> int:
    return int(data, 16) if data not in ("0x", "") else 0


class CohortShares:
    """Unclaimed cohort shares by pass id, from the cohort files and the chain's claim bitmap."""

    def __init__(self, directory: Path, client: LedgerClient, rpc: RpcClient) -> None:
        self._directory = directory
        self._client = client
        self._rpc = rpc
        self._lock = threading.Lock()
        self._stamp: int | None = None  # the directory's mtime when its files were loaded
        self._settled = False  # ... and it was older than _QUIET_NS then
        self._files: dict[str, bytes] = {}  # file name -> root
        self._by_pass: dict[bytes, list[Share]] = {}
        self._issued: set[bytes] = set()  # roots known to be on chain
        self._claimed: set[tuple[bytes, int]] = set()  # leaves known to be claimed
        self._read: set[tuple[bytes, int]] = set()  # leaves whose bitmap bit was read once

    # -- the cohort files -------------------------------------------------------------------------

    def _directory_stamp(self) -> int:
        try:
            return os.stat(self._directory).st_mtime_ns
        except FileNotFoundError:
            return -1

    def _settled_now(self) -> bool:
        """Whether the loaded files are what the directory holds (nothing to load)."""
        stamp = self._directory_stamp()
        with self._lock:
            return stamp == self._stamp and self._settled

    def _refresh(self) -> None:
        """Load new cohort files and drop removed ones when the directory changed."""
        stamp = self._directory_stamp()
        with self._lock:
            if stamp == self._stamp and self._settled:
                return
        names = sorted(p.name for p in self._directory.glob("0x*.json")) if stamp != -1 else []
        with self._lock:
            known = dict(self._files)
        loaded: dict[str, list[Share]] = {}
        for name in names:
            if name in known:
                continue
            try:
                document = json.loads((self._directory / name).read_text(encoding="utf-8"))
                loaded[name] = _shares(document)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("cohort shares: cannot read %s (%s); skipped", name, exc)
        with self._lock:
            removed = {known[name] for name in known if name not in names}
            for name, shares in loaded.items():
                if shares:
                    self._add(name, shares)
            if removed:
                self._drop(removed)
            self._stamp = stamp
            # a file added in the same clock tick as the listing leaves the mtime unchanged:
            # list again until the directory has been quiet for a while
            self._settled = time.time_ns() - stamp > _QUIET_NS

    def _add(self, name: str, shares: Sequence[Share]) -> None:  # holds self._lock
        root = shares[0].root
        if root in self._files.values():
            return
        self._files[name] = root
        for share in shares:
            self._by_pass.setdefault(share.pass_id, []).append(share)

    def _drop(self, roots: set[bytes]) -> None:  # holds self._lock
        self._files = {name: root for name, root in self._files.items() if root not in roots}
        for pid in list(self._by_pass):
            kept = [share for share in self._by_pass[pid] if share.root not in roots]
            if kept:
                self._by_pass[pid] = kept
            else:
                del self._by_pass[pid]

    def register(self, document: Mapping[str, Any], *, issued: bool = False) -> None:
        """Add a cohort (its stored document) now; ``issued`` once ``issueCohort`` was mined."""
        shares = _shares(document)
        if not shares:
            return
        with self._lock:
            self._add(f"0x{shares[0].root.hex()}.json", shares)
            if issued:
                self._issued.add(shares[0].root)

    # -- the chain --------------------------------------------------------------------------------

    def observe(self, events: Sequence[DecodedEvent]) -> None:
        """Learn issued cohorts and claimed leaves from the ledger's events (a state-cache
        listener)."""
        with self._lock:
            for event in events:
                if event.name == "CohortClaimed":
                    self._claimed.add((bytes(event.args["root"]), int(event.args["index"])))
                elif event.name == "CohortIssued":
                    self._issued.add(bytes(event.args["root"]))

    def _unknown(self, shares: Sequence[Share]) -> tuple[list[bytes], list[tuple[bytes, int]]]:
        """The cohort roots not known to be on chain, and the leaves not known to be claimed
        or not, of ``shares``."""
        with self._lock:
            roots = sorted({s.root for s in shares if s.root not in self._issued})
            leaves = sorted(
                leaf
                for leaf in {(s.root, s.index) for s in shares}
                if leaf not in self._claimed and leaf not in self._read
            )
        return roots, leaves

    def _check(self, shares: Sequence[Share]) -> None:
        """Read, in one JSON-RPC batch, what the cache does not know of ``shares``: whether
        their cohorts are on chain, and whether their leaves were claimed."""
        roots, leaves = self._unknown(shares)
        if not roots and not leaves:
            return
        to = self._client.address
        datas = [self._client.call_data("cohortScheme", root) for root in roots]
        datas += [self._client.call_data("isClaimed", root, index) for root, index in leaves]
        replies = self._rpc.batch(
            [("eth_call", [{"to": to, "data": "0x" + data.hex()}, "latest"]) for data in datas]
        )
        for reply in replies:
            if isinstance(reply, RpcError):
                raise reply
        with self._lock:
            for root, reply in zip(roots, replies[: len(roots)], strict=True):
                if _word(str(reply)) != 0:
                    self._issued.add(root)
            for leaf, reply in zip(leaves, replies[len(roots) :], strict=True):
                if _word(str(reply)) != 0:
                    self._claimed.add(leaf)
                elif leaf[0] in self._issued:  # an unissued cohort's leaves are read again
                    self._read.add(leaf)

    # -- reads ------------------------------------------------------------------------------------

    def unclaimed(
        self, pass_id: bytes, scheme_id: int | None = None, *, cached_only: bool = False
    ) -> list[Share]:
        """``pass_id``'s shares of issued cohorts that are not yet claimed (in ``scheme_id``).
        ``cached_only``: raise :class:`ledger.state_cache.CacheMiss` rather than read the chain
        (or the cohort directory)."""
        if not cached_only:
            self._refresh()
        elif not self._settled_now():  # loading the files is for a worker thread
            raise CacheMiss("the cohort directory changed")
        with self._lock:
            candidates = [
                share
                for share in self._by_pass.get(pass_id, ())
                if (scheme_id is None or share.scheme_id == scheme_id)
                and (share.root, share.index) not in self._claimed
            ]
        if not candidates:
            return []
        if cached_only and any(self._unknown(candidates)):
            raise CacheMiss(f"cohort shares of pass 0x{pass_id.hex()} need a chain read")
        self._check(candidates)
        with self._lock:
            return [
                share
                for share in candidates
                if share.root in self._issued and (share.root, share.index) not in self._claimed
            ]

    def amounts(self, pass_id: bytes) -> dict[int, int]:
        """``pass_id``'s unclaimed share per scheme."""
        totals: dict[int, int] = {}
        for share in self.unclaimed(pass_id):
            totals[share.scheme_id] = totals.get(share.scheme_id, 0) + share.amount
        return totals


def _shares(document: Mapping[str, Any]) -> list[Share]:
    root = bytes.fromhex(str(document["root"]).removeprefix("0x"))
    scheme_id = int(document["scheme_id"])
    return [
        Share(
            root=root,
            scheme_id=scheme_id,
            index=int(leaf["index"]),
            pass_id=bytes.fromhex(str(leaf["pass_id"]).removeprefix("0x")),
            amount=int(leaf["amount"]),
            proof=tuple(bytes.fromhex(str(node).removeprefix("0x")) for node in leaf["proof"]),
        )
        for leaf in document["leaves"]
    ]


# -- one index per runtime ---------------------------------------------------------------------

_INDEXES: weakref.WeakKeyDictionary[Runtime, CohortShares] = weakref.WeakKeyDictionary()
_INDEXES_LOCK = threading.Lock()


def shares_of(runtime: Runtime) -> CohortShares:
    """This process's index of ``runtime``'s cohort shares (created on first use, then kept up
    to date by the state cache's events)."""
    with _INDEXES_LOCK:
        index = _INDEXES.get(runtime)
        if index is None:
            # the directory admin_services.cohorts_dir names (not imported: it imports us)
            index = CohortShares(runtime.settings.var_dir / "cohorts", runtime.client, runtime.rpc)
            runtime.state.add_listener(index.observe)
            _INDEXES[runtime] = index
        return index


def register(runtime: Runtime, document: Mapping[str, Any], *, issued: bool = True) -> None:
    """The cohort job's hook: index the cohort ``document`` (as stored) at once."""
    shares_of(runtime).register(document, issued=issued)


def unclaimed_amount(
    runtime: Runtime, pass_id: bytes, scheme_id: int, *, cached_only: bool = False
) -> int:
    """What ``pass_id`` still has to claim in ``scheme_id`` (0 for most passes: no RPC then).
    ``cached_only``: raise :class:`ledger.state_cache.CacheMiss` rather than read."""
    shares = shares_of(runtime).unclaimed(pass_id, scheme_id, cached_only=cached_only)
    return sum(share.amount for share in shares)


def balance_with_share(
    runtime: Runtime, pass_id: bytes, scheme_id: int, balance: int, *, cached_only: bool = False
) -> tuple[int, int]:
    """``(balance including the unclaimed share, the unclaimed share)`` for the counter and the
    holder; an unlimited balance stays unlimited."""
    share = unclaimed_amount(runtime, pass_id, scheme_id, cached_only=cached_only)
    if balance == UNLIMITED:
        return balance, share
    return min(balance + share, UNLIMITED - 1) if share else balance, share


# -- claim on first use --------------------------------------------------------------------------


def _outcome(
    client: LedgerClient, relayer: Relayer, handle: TxHandle, redemption_id: int
) -> BatchOutcome:
    """The mined ``claimAndRedeem``'s outcome, as the batcher would give it."""
    receipt = handle.future.result()
    tx_hash = bytes(receipt.tx_hash)
    if not receipt.ok:  # reverted as a whole: the claim is undone with the redemption
        data = relayer.revert_data(handle.request, receipt)
        return RedemptionRefused(redemption_id, client.revert_of(bytes(data or b"")), tx_hash)
    events = client.receipt_events(receipt)
    root = next((e.args["root"] for e in events if e.name == "ReceiptsRecorded"), None)
    for event in events:
        args = event.args
        if event.name == "Redeemed" and int(args["redemptionId"]) == redemption_id:
            return RedemptionAccepted(
                redemption_id=redemption_id,
                pass_id=bytes(args["passId"]),
                scheme_id=int(args["schemeId"]),
                merchant=str(args["merchant"]),
                amount=int(args["amount"]),
                debited=int(args["debited"]),
                discount=int(args["discount"]),
                credited=int(args["credited"]),
                transaction_hash=tx_hash,
                block_number=receipt.block_number,
                receipt_root=bytes(root) if root is not None else None,
                receipt_position=0,
            )
    error: ContractRevert = UnknownRevert({"redemptionId": redemption_id})
    return RedemptionRefused(redemption_id, error, tx_hash)


def _send_claims(runtime: Runtime, relayer: Relayer, shares: Iterable[Share]) -> None:
    """Plain ``claim`` transactions for further shares (not waited for: whether they are mined
    or refused as already claimed, the share is claimed either way)."""
    for share in shares:
        data = runtime.client.call_data("claim", share.as_claim())
        gas = _CLAIM_GAS + _GAS_PER_PROOF_NODE * len(share.proof)
        relayer.submit(TxRequest(to=runtime.client.address, data=data, gas=gas, label="claim"))


def claim_and_redeem(
    runtime: Runtime, record: RedemptionRecord, signed: SignedPassToken
) -> Future[BatchOutcome] | None:
    """If the pass still has an unclaimed share in ``record``'s scheme, send the redemption of
    the pending ``record`` as one ``claimAndRedeem`` through the merchant's relayer and return
    the future of its outcome (registered in ``runtime.inflight`` under the record's key, so a
    retry that finds the record pending waits for it); otherwise None (the caller batches it).
    """
    shares = shares_of(runtime).unclaimed(signed.token.pass_id, record.scheme_id)
    if not shares:
        return None
    first, *others = shares
    client = runtime.client
    relayer = runtime.merchant_relayer(record.merchant_id)
    call = RedemptionRequest(
        redemption_id=record.redemption_id,
        scheme_id=record.scheme_id,
        amount=record.amount,
        token=signed,
    )
    data = client.call_data("claimAndRedeem", first.as_claim(), call.as_tuple())
    gas = _CLAIM_AND_REDEEM_GAS + _GAS_PER_PROOF_NODE * len(first.proof)
    future: Future[BatchOutcome] = Future()
    slot = (record.merchant_id, record.idempotency_key)

    def forget(done: Future[BatchOutcome]) -> None:
        with runtime.inflight_lock:
            if runtime.inflight.get(slot) is done:
                del runtime.inflight[slot]

    with runtime.inflight_lock:
        runtime.inflight[slot] = future
    try:
        _send_claims(runtime, relayer, others)
        handle = relayer.submit(
            TxRequest(
                to=client.address,
                data=data,
                gas=gas,
                label="claimAndRedeem",
                refs=(record.redemption_id,),
            )
        )
    except BaseException:
        with runtime.inflight_lock:
            runtime.inflight.pop(slot, None)
        raise

    def resolve(_: object) -> None:
        try:
            outcome = _outcome(client, relayer, handle, record.redemption_id)
        except BaseException as exc:  # never leave the request waiting
            future.set_exception(exc)
        else:
            future.set_result(outcome)

    handle.future.add_done_callback(resolve)
    future.add_done_callback(forget)
    return future
