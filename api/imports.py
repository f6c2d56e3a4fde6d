"""Going live from an old system: the holders import and the opening balances import.

Both run in two steps. The request checks the whole file (:mod:`ledger.imports`; any problem is
a 422 ``csv_lines_invalid`` problem with ``errors`` ``[{line, column, message}]`` and nothing
changes) and writes the registry rows in one database transaction; then a job (:mod:`api.jobs`)
does the chain part in batches and reports progress (``GET /admin/imports/jobs/{id}``).

**Holders**: ``registerPasses`` with the passes' card serials, :data:`PASS_BATCH` passes per
transaction, up to :data:`IN_FLIGHT` transactions waiting for receipts at once. A batch's passes
are marked ``sent`` (committed) before the batch reaches the relayer and ``done`` after its
receipt. A job first settles what an earlier run left ``sent`` by asking the chain (``passOf``):
registered passes are ``done``, the others go back to ``pending``. So after a crash (the
service killed mid-import) running the same file again, or any holders import, finishes the
registration, and no pass is sent twice once its batch was mined (a batch is preflighted too,
and one refused because a replayed batch was mined meanwhile is filtered on chain and resent).

**Opening balances**: ``issueBatch`` through :func:`api.admin_services.issue_in_batches` (the
CSV issuance's loop), :data:`BALANCE_BATCH` per transaction, each batch recorded in the outbox
with label ``migrateBalances`` and its batch number. A batch left ``sent`` is settled from the
outbox and the chain: mined -> ``done`` with its transaction hash; never signed or failed ->
``pending``; still open -> the job waits for it. The scheme report counts the entitlements of
these transactions as ``migrated`` (:mod:`ledger.reports`).

One registration at a time per process (a lock): a second job waits, then finds nothing left.
At start the service resumes on its own what an interrupted import left pending or sent
(:func:`resume_unfinished`, called from the app's lifespan); running the file again does too.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy.exc import IntegrityError

from api import admin_services as svc
from api.jobs import Job, Progress, jobs_of
from api.problems import ApiProblem
from api.runtime import Runtime, gas_limit
from ledger import contract_errors as ce
from ledger import imports
from ledger.imports import ImportRejected, PendingPass
from ledger.outbox import OutboxRow
from ledger.relayer import TxHandle, TxReceipt, TxRequest
from ledger.store.imports import ChainState, MigratedBalance

__all__ = [
    "BALANCE_BATCH",
    "IN_FLIGHT",
    "PASS_BATCH",
    "register_pending_passes",
    "resume_unfinished",
    "start_balances_import",
    "start_holders_import",
]

log = logging.getLogger(__name__)

#: Passes per ``registerPasses`` transaction (about 25,500 gas each: 6.4 M gas a batch).
PASS_BATCH: Final = 250
#: Opening balances per ``issueBatch`` transaction (about 25,000 gas each).
BALANCE_BATCH: Final = 250
#: Transactions waiting for their receipts at once.
IN_FLIGHT: Final = 8
BALANCE_LABEL: Final = "migrateBalances"

_LOCKS: weakref.WeakKeyDictionary[Runtime, threading.Lock] = weakref.WeakKeyDictionary()
_WRITE_LOCKS: weakref.WeakKeyDictionary[Runtime, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def _lock(runtime: Runtime) -> threading.Lock:
    with _LOCKS_LOCK:
        lock = _LOCKS.get(runtime)
        if lock is None:
            lock = _LOCKS[runtime] = threading.Lock()
        return lock


def _rejected(exc: ImportRejected) -> ApiProblem:
    errors = [p.as_dict() for p in exc.problems]
    return ApiProblem(
        422,
        "csv_lines_invalid",
        f"{len(errors)} problem(s) in the CSV; nothing was imported",
        errors=errors[:1000],
    )


# -- holders ----------------------------------------------------------------------------------


def _writing(runtime: Runtime) -> threading.Lock:
    """Checking a file and writing its rows, one at a time per process (two uploads of the same
    file at once would both find their lines new); the chain jobs have a lock of their own."""
    with _LOCKS_LOCK:
        lock = _WRITE_LOCKS.get(runtime)
        if lock is None:
            lock = _WRITE_LOCKS[runtime] = threading.Lock()
        return lock


_CONFLICT = (
    "another import wrote some of the same rows at the same time; nothing of this file was "
    "imported: run it again"
)


def start_holders_import(runtime: Runtime, data: bytes) -> Job:
    """Check and write the holders of ``data``, then register the pending passes as a job."""
    try:
        with _writing(runtime):
            result = imports.import_holders(runtime.store.registry, data)
    except ImportRejected as exc:
        raise _rejected(exc) from None
    except IntegrityError:  # another process imported the same lines meanwhile
        raise ApiProblem(409, "import_conflict", _CONFLICT) from None
    runtime.store.registry.commits += 1  # cached pass views see the new passes

    def work(progress: Progress) -> dict[str, Any]:
        chain = register_pending_passes(runtime, progress)
        return {**result.as_dict(), **chain}

    return jobs_of(runtime).submit("holders_import", work, total=result.imported)


def _registered(runtime: Runtime, passes: Sequence[PendingPass]) -> list[bool]:
    return [runtime.client.pass_of(p.pass_id).registered for p in passes]


def _settle_sent(runtime: Runtime) -> int:
    """Passes an earlier run left ``sent``: done if the chain has them, else pending again."""
    store = runtime.store.db
    sent = imports.passes_in_state(store, ChainState.SENT)
    if not sent:
        return 0
    on_chain = _registered(runtime, sent)
    done = [p.external_reference for p, ok in zip(sent, on_chain, strict=True) if ok]
    imports.mark_passes(store, done, ChainState.DONE)
    imports.mark_passes(
        store,
        [p.external_reference for p, ok in zip(sent, on_chain, strict=True) if not ok],
        ChainState.PENDING,
    )
    return len(done)


def register_pending_passes(runtime: Runtime, progress: Progress | None = None) -> dict[str, Any]:
    """Register every imported pass that is not on chain yet (see the module docstring)."""
    with _lock(runtime):
        store = runtime.store.db
        client = runtime.client
        relayer = runtime.issuer()
        found = _settle_sent(runtime)
        pending = imports.passes_in_state(store, ChainState.PENDING)
        if progress is not None:
            progress.set_total(len(pending))
        waiting: deque[tuple[Sequence[PendingPass], TxRequest, TxHandle]] = deque()
        transactions: list[str] = []
        gas = 0
        registered = 0

        def send(batch: Sequence[PendingPass]) -> None:
            data = client.call_data(
                "registerPasses", [p.pass_id for p in batch], [p.card_serial for p in batch]
            )
            estimate = client.preflight(sender=relayer.address, data=data)
            imports.mark_passes(store, [p.external_reference for p in batch], ChainState.SENT)
            request = TxRequest(
                to=client.address, data=data, gas=gas_limit(estimate), label="registerPasses"
            )
            waiting.append((batch, request, relayer.submit(request)))

        def finish() -> None:
            nonlocal gas, registered
            batch, request, handle = waiting.popleft()
            receipt = runtime.receipt_of(relayer, request, handle)
            imports.mark_passes(store, [p.external_reference for p in batch], ChainState.DONE)
            transactions.append(receipt.tx_hash.to_0x_hex())
            gas += receipt.gas_used
            registered += len(batch)
            if progress is not None:
                progress.advance(len(batch))

        for start in range(0, len(pending), PASS_BATCH):
            batch = pending[start : start + PASS_BATCH]
            try:
                send(batch)
            except ce.PassAlreadyRegistered:
                # a batch an earlier run sent was mined meanwhile (a replay): keep what is missing
                flags = _registered(runtime, batch)
                imports.mark_passes(
                    store,
                    [p.external_reference for p, ok in zip(batch, flags, strict=True) if ok],
                    ChainState.DONE,
                )
                found += sum(flags)
                if progress is not None:
                    progress.advance(sum(flags))
                rest = [p for p, ok in zip(batch, flags, strict=True) if not ok]
                if rest:
                    send(rest)
            if len(waiting) >= IN_FLIGHT:
                finish()
        while waiting:
            finish()
        return {
            "registered": registered,
            "already_on_chain": found,
            "transactions": transactions,
            "gas_used": gas,
        }


# -- opening balances -------------------------------------------------------------------------


def _outbox_batches(runtime: Runtime) -> dict[int, list[OutboxRow]]:
    out: dict[int, list[OutboxRow]] = {}
    for row in runtime.outbox.all_rows():
        if row.label == BALANCE_LABEL:
            for ref in row.refs:
                out.setdefault(ref, []).append(row)
    return out


def _mined_hash(runtime: Runtime, rows: Sequence[OutboxRow]) -> str | bool | None:
    """The hash of the row of ``rows`` mined successfully; None if none can be any more;
    False if one is still open."""
    open_row = False
    for row in rows:
        receipt = runtime.rpc.call("eth_getTransactionReceipt", row.tx_hash)
        if isinstance(receipt, dict):
            if int(str(receipt.get("status", "0x0")), 16) == 1:
                return row.tx_hash
        elif row.state.value in ("signed", "sent"):
            open_row = True
    return False if open_row else None


def _settle_sent_balances(runtime: Runtime) -> None:
    store = runtime.store.db
    sent = imports.balances_in_state(store, ChainState.SENT)
    if not sent:
        return
    batches = _outbox_batches(runtime)
    deadline = time.monotonic() + runtime.settings.receipt_timeout_s
    by_batch: dict[int | None, list[tuple[int, str]]] = {}
    for row in sent:
        by_batch.setdefault(row.batch, []).append((row.scheme_id, row.pass_id))
    for batch, keys in by_batch.items():
        rows = batches.get(batch, []) if batch is not None else []
        while True:
            mined = _mined_hash(runtime, rows)
            if mined is not False or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if isinstance(mined, str):
            imports.mark_balances(store, keys, ChainState.DONE, batch=batch, transaction_hash=mined)
        elif mined is None:
            imports.mark_balances(store, keys, ChainState.PENDING)
        else:
            raise ApiProblem(
                503,
                "import_waiting_for_chain",
                f"a batch of opening balances (batch {batch}) sent before a restart is not "
                "mined yet; run the import again in a minute",
            )


def _issue_scheme(
    runtime: Runtime, scheme_id: int, rows: Sequence[MigratedBalance], progress: Progress | None
) -> list[str]:
    store = runtime.store.db
    keys = {bytes.fromhex(r.pass_id.removeprefix("0x")): r.pass_id for r in rows}
    first = imports.next_balance_batch(store)
    transactions: list[str] = []

    def sending(index: int, chunk: Sequence[svc.IssueItem]) -> tuple[int, ...]:
        batch = first + index
        imports.mark_balances(
            store, [(scheme_id, keys[pid]) for pid, _ in chunk], ChainState.SENT, batch=batch
        )
        return (batch,)

    def mined(chunk: Sequence[svc.IssueItem], receipt: TxReceipt) -> None:
        tx_hash = receipt.tx_hash.to_0x_hex()
        imports.mark_balances(
            store,
            [(scheme_id, keys[pid]) for pid, _ in chunk],
            ChainState.DONE,
            transaction_hash=tx_hash,
        )
        transactions.append(tx_hash)
        if progress is not None:
            progress.advance(len(chunk))

    svc.issue_in_batches(
        runtime,
        scheme_id,
        [(pid, r.amount) for pid, r in zip(keys, rows, strict=True)],
        batch_size=BALANCE_BATCH,
        in_flight=IN_FLIGHT,
        label=BALANCE_LABEL,
        on_sending=sending,
        on_mined=mined,
    )
    return transactions


def issue_pending_balances(runtime: Runtime, progress: Progress | None = None) -> dict[str, Any]:
    """Issue every pending opening balance, per scheme, in batches (module docstring)."""
    with _lock(runtime):
        store = runtime.store.db
        _settle_sent_balances(runtime)
        pending = imports.balances_in_state(store, ChainState.PENDING)
        if progress is not None:
            progress.set_total(len(pending))
        transactions: list[str] = []
        for scheme_id in sorted({row.scheme_id for row in pending}):
            rows = [row for row in pending if row.scheme_id == scheme_id]
            transactions += _issue_scheme(runtime, scheme_id, rows, progress)
        return {
            "issued": len(pending),
            "total_amount": sum(r.amount for r in pending),
            "transactions": transactions,
        }


def start_balances_import(runtime: Runtime, data: bytes, *, scheme_id: int | None) -> Job:
    """Check the opening balances of ``data`` (and each scheme's budget), record them pending,
    then issue them as a job."""
    schemes = set(range(1, runtime.client.scheme_count() + 1))
    try:
        with _writing(runtime):
            plan = imports.plan_balances(
                runtime.store.registry, data, scheme_id=scheme_id, schemes=schemes
            )
            for sid, total in plan.totals_by_scheme().items():
                state = svc._open_scheme(runtime, sid)
                svc._check_budget(sid, state, total)
            imports.record_balances(runtime.store.db, plan.lines)
    except ImportRejected as exc:
        raise _rejected(exc) from None
    except IntegrityError:
        raise ApiProblem(409, "import_conflict", _CONFLICT) from None
    summary = {
        "lines": len(plan.lines) + plan.skipped,
        "imported": len(plan.lines),
        "skipped": plan.skipped,
        "encoding": plan.encoding,
        "delimiter": plan.delimiter,
    }

    def work(progress: Progress) -> dict[str, Any]:
        return {**summary, **issue_pending_balances(runtime, progress)}

    return jobs_of(runtime).submit("balances_import", work, total=len(plan.lines))


# -- at start -----------------------------------------------------------------------------------


def resume_unfinished(runtime: Runtime) -> Job | None:
    """At start: a job that finishes what an interrupted import left on its way to the chain
    (passes and balances ``pending`` or ``sent``); None when nothing is left."""
    counts = imports.migrated_counts(runtime.store.db)
    left = sum(v for k, v in counts.items() if k.endswith(("_pending", "_sent")))
    if not left:
        return None
    log.warning("%d imported passes or balances are not on chain yet; finishing them", left)

    def work(progress: Progress) -> dict[str, Any]:
        passes = register_pending_passes(runtime, progress)
        balances = issue_pending_balances(runtime, progress)
        return {"passes": passes, "balances": balances}

    return jobs_of(runtime).submit("resume_import", work, total=left)
