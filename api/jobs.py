"""Long admin operations (a CSV of 20,000 entitlements, a cohort) as background jobs.

:class:`JobRegistry` is an **in-process** thread-pool job registry: jobs, their progress and
their results live in this process's memory only. With several API processes (workers) a job is
known only to the process that accepted it, and a restart forgets every job (work already sent
to the chain stays done; the chain is the record). A shared queue (a database table polled by a
worker, or Redis) is the next step when the service runs more than one process.

A job's work is a function taking a :class:`Progress`; it reports ``done``/``total`` as it goes
and returns a JSON-able result. An exception fails the job with a problem (``status``, ``code``,
``detail``) in the same shape as the API's problem documents: :class:`api.problems.ApiProblem`
and the contract's typed errors keep their codes; anything else is ``internal_error`` (logged).

:func:`jobs_of` gives the registry of a runtime (one per runtime, created on first use).
"""

from __future__ import annotations

import enum
import logging
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from api.problems import ApiProblem, contract_status
from api.runtime import Runtime
from ledger import contract_errors as ce
from ledger.errors import LedgerError, NodeError, RelayerError
from ledger.relayer import ReceiptTimeout

__all__ = ["Job", "JobRegistry", "JobStatus", "Progress", "jobs_of"]

log = logging.getLogger(__name__)


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Job:
    """A snapshot of a job (the registry hands out copies, never its own record)."""

    id: str
    kind: str
    status: JobStatus
    done: int
    total: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: dict[str, Any] | None = None
    problem: dict[str, Any] | None = None


@dataclass(slots=True)
class _Record:
    job: Job
    lock: threading.Lock = field(default_factory=threading.Lock)


class Progress:
    """Handed to a job's work function: report how far it got."""

    def __init__(self, registry: JobRegistry, job_id: str) -> None:
        self._registry = registry
        self._job_id = job_id

    def set_total(self, total: int) -> None:
        self._registry._update(self._job_id, total=max(0, total))

    def advance(self, count: int = 1) -> None:
        self._registry._advance(self._job_id, count)


Work = Callable[[Progress], dict[str, Any]]


def _problem_of(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, ApiProblem):
        return {"status": exc.status, "code": exc.code, "detail": exc.detail, **exc.extensions}
    if isinstance(exc, ce.ContractRevert):
        return {"status": contract_status(exc), "code": exc.code, "detail": str(exc)}
    if isinstance(exc, ReceiptTimeout):
        return {"status": 504, "code": "receipt_timeout", "detail": str(exc)}
    if isinstance(exc, NodeError):
        return {"status": 503, "code": "chain_unavailable", "detail": str(exc)}
    if isinstance(exc, RelayerError):
        return {"status": 503, "code": "relayer_unavailable", "detail": str(exc)}
    if isinstance(exc, LedgerError):
        return {"status": 502, "code": "chain_error", "detail": str(exc)}
    return {
        "status": 500,
        "code": "internal_error",
        "detail": "an unexpected error occurred; it has been logged",
    }


class JobRegistry:
    """Runs jobs on a small thread pool and remembers the last ``keep`` of them (per process)."""

    def __init__(self, *, max_workers: int = 2, keep: int = 1000) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="admin-job")
        self._keep = keep
        self._mutex = threading.Lock()
        self._jobs: OrderedDict[str, _Record] = OrderedDict()

    def submit(self, kind: str, work: Work, *, total: int = 0) -> Job:
        """Queue ``work``; returns the queued job at once."""
        job = Job(
            id=uuid.uuid4().hex,
            kind=kind,
            status=JobStatus.QUEUED,
            done=0,
            total=total,
            created_at=datetime.now(UTC),
        )
        with self._mutex:
            self._jobs[job.id] = _Record(job)
            while len(self._jobs) > self._keep:
                self._jobs.popitem(last=False)
        self._pool.submit(self._run, job.id, work)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._mutex:
            record = self._jobs.get(job_id)
        if record is None:
            return None
        with record.lock:
            return record.job

    def shutdown(self, *, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=False)

    # -- internals -----------------------------------------------------------------------------

    def _update(self, job_id: str, **changes: Any) -> None:
        with self._mutex:
            record = self._jobs.get(job_id)
        if record is None:
            return
        with record.lock:
            record.job = replace(record.job, **changes)

    def _advance(self, job_id: str, count: int) -> None:
        with self._mutex:
            record = self._jobs.get(job_id)
        if record is None:
            return
        with record.lock:
            done = record.job.done + count
            total = max(record.job.total, done)
            record.job = replace(record.job, done=done, total=total)

    def _run(self, job_id: str, work: Work) -> None:
        self._update(job_id, status=JobStatus.RUNNING, started_at=datetime.now(UTC))
        try:
            result = work(Progress(self, job_id))
        except Exception as exc:
            if not isinstance(exc, ApiProblem | ce.ContractRevert | LedgerError):
                log.exception("job %s failed", job_id)
            else:
                log.warning("job %s failed: %s", job_id, exc)
            self._update(
                job_id,
                status=JobStatus.FAILED,
                problem=_problem_of(exc),
                finished_at=datetime.now(UTC),
            )
            return
        self._update(job_id, status=JobStatus.DONE, result=result, finished_at=datetime.now(UTC))


_REGISTRIES: weakref.WeakKeyDictionary[Runtime, JobRegistry] = weakref.WeakKeyDictionary()
_REGISTRIES_LOCK = threading.Lock()


def jobs_of(runtime: Runtime) -> JobRegistry:
    """The job registry of ``runtime`` (this process only)."""
    with _REGISTRIES_LOCK:
        registry = _REGISTRIES.get(runtime)
        if registry is None:
            registry = _REGISTRIES[runtime] = JobRegistry()
            runtime.closing.append(registry.shutdown)  # jobs finish before the relayers stop
        return registry
