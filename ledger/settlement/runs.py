"""Payout runs: who is owed what, the pain.001 file, and recording the settlement on chain.

Rules (each tested):

- What a merchant is paid for a period ``[start, end)``: credited by its redemptions before
  ``end``, minus every reversal indexed so far, minus every settlement indexed so far, minus the
  lines of earlier runs that are not (yet) visible as settlements in the index. Never more than
  the chain will accept (reversals after ``end`` already count), and never the same money twice.
- A merchant that is already in a *pending* run for an overlapping period is not paid again: it
  is reported (``in_pending_run``). A run for a period that overlaps a *confirmed* run is refused
  (:class:`OverlappingSettledPeriod`).
- A merchant without a valid IBAN (schwifty: country format and mod-97), or unknown to the
  registry, is reported in the result (``invalid_iban``), never silently skipped.
- :func:`confirm_run` (the bank paid the file) records ``settle(merchant, amount, reference)`` per
  included line, where ``reference = keccak(run reference : merchant)``. It commits after every
  line and asks the chain (``isSettlementReferenceUsed``) before sending, so running it again after
  a crash finishes the job without settling anything twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from schwifty import BIC, IBAN
from schwifty.exceptions import SchwiftyException
from sqlalchemy import Engine, Table, exists, func, select, text, update
from sqlalchemy.orm import Session

from ledger.contract_errors import ContractRevert
from ledger.errors import ChainError
from ledger.reports.periods import Period
from ledger.reports.queries import _i, _t
from ledger.settlement.chain import SettlementChain, payment_reference
from ledger.settlement.config import PayoutConfig
from ledger.settlement.errors import (
    OverlappingSettledPeriod,
    RunNotFound,
    RunStateError,
    SettlementError,
)
from ledger.settlement.pain001 import Transfer, build_document
from ledger.store.payouts import LineStatus, PayoutLine, PayoutRun, RunStatus

__all__ = [
    "ConfirmResult",
    "RunLine",
    "RunResult",
    "cancel_run",
    "confirm_run",
    "create_run",
    "payable",
    "run_lines",
]

RUN: Table = PayoutRun.__table__  # type: ignore[attr-defined]
LINE: Table = PayoutLine.__table__  # type: ignore[attr-defined]
_LOCK_KEY = 0x5354_5041_594F  # "STPAYO": one payout run at a time (PostgreSQL advisory lock)
_IN_FLIGHT = (LineStatus.INCLUDED, LineStatus.FAILED, LineStatus.SETTLED)


@dataclass(frozen=True, slots=True)
class RunLine:
    merchant: str
    name: str | None
    amount: int
    status: LineStatus
    iban: str | None = None
    end_to_end_id: str | None = None
    payment_reference: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RunResult:
    """``reference``/``document`` are None when nobody could be paid (see ``reported``)."""

    period: Period
    reference: str | None
    document: bytes | None
    included: list[RunLine]
    reported: list[RunLine]

    @property
    def total(self) -> int:
        return sum(line.amount for line in self.included)


@dataclass(frozen=True, slots=True)
class ConfirmResult:
    reference: str
    settled: list[RunLine] = field(default_factory=list)  # recorded now
    already: list[RunLine] = field(default_factory=list)  # found recorded (earlier attempt)
    failed: list[RunLine] = field(default_factory=list)  # refused by the chain: see ``error``

    @property
    def complete(self) -> bool:
        return not self.failed


def _now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def _locked(engine: Engine) -> Iterator[Session]:
    """A session holding the payout lock until it commits or rolls back."""
    with Session(engine, expire_on_commit=False) as session:
        if engine.dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        else:  # SQLite: take the write lock now (a no-op write)
            session.execute(update(RUN).where(RUN.c.id == -1).values(note=None))
        yield session


def payable(session: Session, *, chain_id: int, period: Period) -> dict[str, int]:
    """Cents payable per merchant (checksummed address) for runs up to ``period.end``."""
    red, rev, sett = _t("index_redemption"), _t("index_reversal"), _t("index_settlement")
    run, line = RUN, LINE
    amounts: dict[str, int] = defaultdict(int)
    for merchant, credited in session.execute(
        select(red.c.merchant, func.sum(red.c.credited))
        .where(red.c.chain_id == chain_id, red.c.block_time < period.end)
        .group_by(red.c.merchant)
    ):
        amounts[str(merchant)] += _i(credited)
    for table, column in ((rev, rev.c.credited), (sett, sett.c.amount)):
        for merchant, value in session.execute(
            select(table.c.merchant, func.sum(column))
            .where(table.c.chain_id == chain_id)
            .group_by(table.c.merchant)
        ):
            amounts[str(merchant)] -= _i(value)
    indexed = exists().where(
        sett.c.chain_id == chain_id,
        sett.c.merchant == line.c.merchant,
        sett.c.payment_reference == line.c.payment_reference,
    )
    for merchant, value in session.execute(
        select(line.c.merchant, func.sum(line.c.amount))
        .select_from(line.join(run, run.c.id == line.c.run_id))
        .where(
            run.c.chain_id == chain_id,
            run.c.status.in_([RunStatus.PENDING.value, RunStatus.CONFIRMED.value]),
            line.c.status.in_([s.value for s in _IN_FLIGHT]),
            ~indexed,
        )
        .group_by(line.c.merchant)
    ):
        amounts[str(merchant)] -= _i(value)
    return {m: a for m, a in amounts.items() if a > 0}


def _overlapping(
    session: Session, period: Period, status: RunStatus, chain_id: int
) -> list[PayoutRun]:
    return list(
        session.execute(
            select(PayoutRun).where(
                RUN.c.status == status.value,
                RUN.c.chain_id == chain_id,
                RUN.c.period_start < period.end,
                RUN.c.period_end > period.start,
            )
        ).scalars()
    )


def _account(iban: str | None, bic: str | None) -> tuple[str, str | None]:
    """The compact IBAN and BIC, or raise ``ValueError`` saying what is wrong."""
    if not iban:
        raise ValueError("no IBAN in the registry")
    try:
        compact = IBAN(iban).compact
        checked_bic = None if not bic else str(BIC(bic))
    except SchwiftyException as exc:
        raise ValueError(f"invalid account {iban!r}: {exc}") from None
    return compact, checked_bic


def _next_reference(session: Session, prefix: str, period: Period) -> str:
    day = datetime.fromtimestamp(period.start, UTC).strftime("%Y%m%d")
    stem = f"{prefix}-{day}-"
    count = session.execute(
        select(func.count()).select_from(RUN).where(RUN.c.reference.startswith(stem))
    ).scalar_one()
    return f"{stem}{int(count) + 1:04d}"


def create_run(
    engine: Engine,
    *,
    period: Period,
    config: PayoutConfig,
    chain_id: int,
    contract: str,
    execution_date: date,
    now: datetime | None = None,
) -> RunResult:
    """Make a pending payout run for ``period`` (and its pain.001 file), or say why not.

    Raises :class:`OverlappingSettledPeriod` if a confirmed run overlaps the period.
    """
    debtor = config.debtor.validated()
    reg = _t("registry_merchant")
    with _locked(engine) as session:
        settled = _overlapping(session, period, RunStatus.CONFIRMED, chain_id)
        if settled:
            refs = tuple(r.reference for r in settled)
            raise OverlappingSettledPeriod(
                f"the period {period.label()} overlaps the settled payout run(s) "
                f"{', '.join(refs)}: settle a period after it instead",
                runs=refs,
            )
        pending_runs = {
            r.id: r.reference for r in _overlapping(session, period, RunStatus.PENDING, chain_id)
        }
        pending_merchants: dict[str, str] = {}
        if pending_runs:
            for merchant, run_id in session.execute(
                select(LINE.c.merchant, LINE.c.run_id).where(
                    LINE.c.run_id.in_(list(pending_runs)),
                    LINE.c.status == LineStatus.INCLUDED.value,
                )
            ):
                pending_merchants[str(merchant).lower()] = pending_runs[int(run_id)]
        registry: dict[str, Any] = {
            str(row.address).lower(): row
            for row in session.execute(select(reg.c.address, reg.c.name, reg.c.iban, reg.c.bic))
        }
        reference = _next_reference(session, config.reference_prefix, period)
        included: list[RunLine] = []
        reported: list[RunLine] = []
        for merchant, amount in sorted(payable(session, chain_id=chain_id, period=period).items()):
            entry = registry.get(merchant.lower())
            name = None if entry is None else str(entry.name)
            ref = "0x" + payment_reference(reference, merchant).hex()
            if merchant.lower() in pending_merchants:
                reported.append(
                    RunLine(
                        merchant,
                        name,
                        amount,
                        LineStatus.IN_PENDING_RUN,
                        payment_reference=ref,
                        error=f"already in pending run {pending_merchants[merchant.lower()]}",
                    )
                )
                continue
            try:
                if entry is None:
                    raise ValueError("not in the merchant registry")
                iban, _bic = _account(entry.iban, entry.bic)
            except ValueError as exc:
                reported.append(
                    RunLine(
                        merchant,
                        name,
                        amount,
                        LineStatus.INVALID_IBAN,
                        iban=None if entry is None else entry.iban,
                        payment_reference=ref,
                        error=str(exc),
                    )
                )
                continue
            included.append(
                RunLine(
                    merchant,
                    name,
                    amount,
                    LineStatus.INCLUDED,
                    iban=iban,
                    end_to_end_id=f"{reference}-{len(included) + 1:05d}",
                    payment_reference=ref,
                )
            )
        if not included:
            session.rollback()
            return RunResult(period, None, None, [], reported)
        remittance = config.remittance.format(period=period.label(), reference=reference)[:140]
        document = build_document(
            debtor=debtor,
            schema=config.schema,
            message_id=reference,
            execution_date=execution_date,
            transfers=[
                Transfer(
                    name=line.name or line.merchant,
                    iban=line.iban or "",
                    bic=_bic_of(registry, line.merchant),
                    amount=line.amount,
                    end_to_end_id=line.end_to_end_id or "",
                    remittance=remittance,
                )
                for line in included
            ],
        )
        run = PayoutRun(
            reference=reference,
            period_start=period.start,
            period_end=period.end,
            status=RunStatus.PENDING,
            schema_name=config.schema,
            execution_date=execution_date.isoformat(),
            total=sum(line.amount for line in included),
            transactions=len(included),
            chain_id=chain_id,
            contract=contract,
            document=document,
            created_at=now or _now(),
        )
        session.add(run)
        session.flush()
        assert run.id is not None
        for line in [*included, *reported]:
            entry = registry.get(line.merchant.lower())
            session.add(
                PayoutLine(
                    run_id=run.id,
                    merchant=line.merchant,
                    merchant_name=(line.name or "")[:200],
                    iban=(line.iban or (None if entry is None else entry.iban)),
                    bic=None if entry is None else entry.bic,
                    amount=line.amount,
                    status=line.status,
                    end_to_end_id=line.end_to_end_id,
                    payment_reference=line.payment_reference or "",
                    error=line.error,
                )
            )
        session.commit()
    return RunResult(period, reference, document, included, reported)


def _bic_of(registry: dict[str, Any], merchant: str) -> str | None:
    entry = registry.get(merchant.lower())
    if entry is None or not entry.bic:
        return None
    return str(BIC(entry.bic))


def _run(session: Session, reference: str) -> PayoutRun:
    found = session.execute(select(PayoutRun).where(RUN.c.reference == reference)).scalars().first()
    if found is None:
        raise RunNotFound(f"no payout run {reference!r}")
    return found


def _line(row: PayoutLine) -> RunLine:
    return RunLine(
        merchant=row.merchant,
        name=row.merchant_name or None,
        amount=row.amount,
        status=row.status,
        iban=row.iban,
        end_to_end_id=row.end_to_end_id,
        payment_reference=row.payment_reference,
        error=row.error,
    )


def run_lines(engine: Engine, reference: str) -> tuple[PayoutRun, list[RunLine]]:
    """A stored run and its lines (included and reported)."""
    with Session(engine, expire_on_commit=False) as session:
        run = _run(session, reference)
        rows = session.execute(
            select(PayoutLine).where(LINE.c.run_id == run.id).order_by(LINE.c.id)
        ).scalars()
        return run, [_line(row) for row in rows]


def cancel_run(engine: Engine, reference: str, *, note: str | None = None) -> None:
    """Cancel a pending run (the bank refused the file, or it was never sent)."""
    with _locked(engine) as session:
        run = _run(session, reference)
        if run.status is not RunStatus.PENDING:
            raise RunStateError(f"run {reference} is {run.status.value}; only pending runs cancel")
        run.status = RunStatus.CANCELLED
        run.cancelled_at = _now()
        run.note = note
        session.add(run)
        session.commit()


def confirm_run(
    engine: Engine, reference: str, chain: SettlementChain, *, now: datetime | None = None
) -> ConfirmResult:
    """The municipality confirms the bank paid run ``reference``: record it on chain.

    Idempotent: lines already recorded (in the database, or on chain by an attempt that crashed
    before it could note it) are not sent again; lines the chain refused stay ``failed`` and are
    retried by the next call.
    """
    with _locked(engine) as session:
        run = _run(session, reference)
        if run.status is RunStatus.CANCELLED:
            raise RunStateError(f"run {reference} was cancelled; it cannot be confirmed")
        if run.chain_id != chain.chain_id or run.contract.lower() != chain.contract.lower():
            raise SettlementError(
                f"run {reference} belongs to chain {run.chain_id} contract {run.contract}"
            )
        if run.status is RunStatus.PENDING:
            run.status = RunStatus.CONFIRMED
            run.confirmed_at = now or _now()
            session.add(run)
        session.commit()
        run_id = run.id
    result = ConfirmResult(reference)
    with Session(engine, expire_on_commit=False) as session:
        rows = list(
            session.execute(
                select(PayoutLine)
                .where(LINE.c.run_id == run_id, LINE.c.status.in_([s.value for s in _IN_FLIGHT]))
                .order_by(LINE.c.id)
            ).scalars()
        )
        for row in rows:
            if row.status is LineStatus.SETTLED:
                result.already.append(_line(row))
                continue
            ref = bytes.fromhex(row.payment_reference.removeprefix("0x"))
            try:
                if chain.is_settled(row.merchant, ref):
                    row.status = LineStatus.SETTLED
                    row.settled_at = row.settled_at or _now()
                    row.error = None
                    result.already.append(_line(row))
                else:
                    row.settle_tx = chain.settle(row.merchant, row.amount, ref)
                    row.status = LineStatus.SETTLED
                    row.settled_at = _now()
                    row.error = None
                    result.settled.append(_line(row))
            except (ContractRevert, ChainError) as exc:
                row.status = LineStatus.FAILED
                row.error = str(exc)[:2000]
                result.failed.append(_line(row))
            session.add(row)
            session.commit()
    return result
