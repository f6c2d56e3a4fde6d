"""Long admin operations (a CSV of 20,000 entitlements, a cohort, an import, letters) as
background jobs.

:class:`JobRegistry` runs jobs on a small thread pool in this process, and writes each job's
state to the database (:mod:`api.job_store`, table ``api_job``): when it is queued and starts,
its progress (at most once a second) and how it ended. So a job's answer survives a restart of
the service: ``GET /admin/jobs/{id}`` reads it from the database when this process does not
run it. A job that was queued or running when the service stopped is marked ``failed`` with the
problem ``job_interrupted`` by the next registry (work already sent to the chain stays done; an
interrupted import is finished by the service at start). Jobs run in the process that accepted
them: with several API processes, each runs its own (a shared queue is the next step then).

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
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from api.job_store import JobStore
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
    #: when its progress was last written to the database (monotonic seconds)
    saved_at: float = 0.0


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


#: Progress is written to the database at most this often per job (seconds).
PROGRESS_SAVE_INTERVAL_S = 1.0
#: A failed write of a job's end is tried this many times, waiting a second between tries.
_FINAL_SAVE_TRIES = 5


class JobRegistry:
    """Runs jobs on a small thread pool, keeps the last ``keep`` of them in memory and every
    job's state in ``store`` (None: memory only). On creation it marks the jobs a stopped
    process left unfinished as interrupted (see the module)."""

    def __init__(
        self, *, store: JobStore | None = None, max_workers: int = 2, keep: int = 1000
    ) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="admin-job")
        self._keep = keep
        self._mutex = threading.Lock()
        self._jobs: OrderedDict[str, _Record] = OrderedDict()
        self._store = store
        if store is not None:
            interrupted = store.interrupt_unfinished(datetime.now(UTC))
            if interrupted:
                log.warning(
                    "%d jobs were interrupted by a restart and are marked failed: %s",
                    len(interrupted),
                    ", ".join(interrupted),
                )

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
        if self._store is not None:  # refused (the database is away): no job, a 503
            self._store.save(_values(job))
        with self._mutex:
            self._jobs[job.id] = _Record(job)
            while len(self._jobs) > self._keep:
                self._jobs.popitem(last=False)
        self._pool.submit(self._run, job.id, work)
        return job

    def get(self, job_id: str) -> Job | None:
        """The job, from memory if this process runs or ran it, else from the database."""
        with self._mutex:
            record = self._jobs.get(job_id)
        if record is not None:
            with record.lock:
                return record.job
        if self._store is None:
            return None
        found = self._store.load(job_id)
        if found is None:
            return None
        return Job(**{**found, "status": JobStatus(found["status"])})

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
            job = record.job
        if "status" in changes:
            self._save(job, final=job.status in (JobStatus.DONE, JobStatus.FAILED))
        else:
            self._save_progress(record, job)

    def _advance(self, job_id: str, count: int) -> None:
        with self._mutex:
            record = self._jobs.get(job_id)
        if record is None:
            return
        with record.lock:
            done = record.job.done + count
            total = max(record.job.total, done)
            record.job = replace(record.job, done=done, total=total)
            job = record.job
        self._save_progress(record, job)

    def _save_progress(self, record: _Record, job: Job) -> None:
        now = time.monotonic()
        if now - record.saved_at < PROGRESS_SAVE_INTERVAL_S:
            return
        record.saved_at = now
        self._save(job, final=False)

    def _save(self, job: Job, *, final: bool) -> None:
        """Write ``job`` to the store; progress that cannot be written is skipped (the next
        write carries it), the end of a job is tried again a few times."""
        if self._store is None:
            return
        for attempt in range(_FINAL_SAVE_TRIES if final else 1):
            try:
                self._store.save(_values(job))
                return
            except Exception as exc:
                log.warning("job %s: could not save its state (%s): %s", job.id, job.status, exc)
                if attempt + 1 < (_FINAL_SAVE_TRIES if final else 1):
                    time.sleep(1.0)

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


def _values(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status.value,
        "done": job.done,
        "total": job.total,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "result": job.result,
        "problem": job.problem,
    }


def jobs_of(runtime: Runtime) -> JobRegistry:
    """The job registry of ``runtime``, its jobs kept in the runtime's store."""
    with _REGISTRIES_LOCK:
        registry = _REGISTRIES.get(runtime)
        if registry is None:
            registry = _REGISTRIES[runtime] = JobRegistry(store=JobStore(runtime.store.db))
            runtime.closing.append(registry.shutdown)  # jobs finish before the relayers stop
        return registry
