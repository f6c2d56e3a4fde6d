"""Background jobs keep their answer across a restart: the registry writes every job's state to
the database (``api_job``), a new registry (the next start) reads a finished job from there,
and marks a job the stopped process left queued or running as ``failed`` with the problem
``job_interrupted``. Real SQLite and PostgreSQL, real threads; the restart is a second
registry on the same database while the first one's job is held mid-work."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from api.job_store import JobStore
from api.jobs import Job, JobRegistry, JobStatus, Progress
from api.store import ApiStore


@pytest.fixture
def store(database_url: str) -> Iterator[ApiStore]:
    opened = ApiStore.open(database_url)
    try:
        yield opened
    finally:
        opened.close()


def _wait(registry: JobRegistry, job_id: str, done: set[JobStatus]) -> Job:
    deadline = time.monotonic() + 20
    while True:
        job = registry.get(job_id)
        assert job is not None
        if job.status in done:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.02)


def test_a_finished_job_is_read_by_the_next_registry(store: ApiStore) -> None:
    before = datetime.now(UTC)

    def work(progress: Progress) -> dict[str, object]:
        progress.set_total(3)
        progress.advance(3)
        return {"imported": 3, "skipped": ["K-7"]}

    first = JobRegistry(store=JobStore(store.db))
    job = first.submit("holders_import", work, total=3)
    _wait(first, job.id, {JobStatus.DONE})
    first.shutdown()

    again = JobRegistry(store=JobStore(store.db)).get(job.id)  # the next start
    assert again is not None
    assert again.status is JobStatus.DONE
    assert again.kind == "holders_import"
    assert (again.done, again.total) == (3, 3)
    assert again.result == {"imported": 3, "skipped": ["K-7"]}
    assert again.problem is None
    assert again.created_at == job.created_at.replace(microsecond=again.created_at.microsecond)
    assert again.started_at is not None
    assert again.finished_at is not None
    assert before <= again.started_at <= again.finished_at


def test_a_failed_job_keeps_its_problem(store: ApiStore) -> None:
    def work(progress: Progress) -> dict[str, object]:
        raise ValueError("not a problem the API knows")

    first = JobRegistry(store=JobStore(store.db))
    job = first.submit("cohort", work)
    _wait(first, job.id, {JobStatus.FAILED})
    first.shutdown()
    again = JobRegistry(store=JobStore(store.db)).get(job.id)
    assert again is not None
    assert again.status is JobStatus.FAILED
    assert again.problem is not None
    assert again.problem["code"] == "internal_error"
    assert "not a problem" not in again.problem["detail"]  # logged, never shown


def test_a_job_the_restart_interrupted_fails_with_job_interrupted(store: ApiStore) -> None:
    release = threading.Event()
    reached = threading.Event()

    def work(progress: Progress) -> dict[str, object]:
        progress.set_total(5)
        time.sleep(1.05)  # progress is written at most once a second
        progress.advance(2)
        reached.set()
        release.wait(20)
        return {"imported": 5}

    first = JobRegistry(store=JobStore(store.db))
    job = first.submit("holders_import", work, total=5)
    try:
        assert reached.wait(10)
        deadline = time.monotonic() + 10
        while (JobStore(store.db).load(job.id) or {}).get("done") != 2:
            assert time.monotonic() < deadline, "the progress was not written"
            time.sleep(0.02)

        restarted = JobRegistry(store=JobStore(store.db))  # the process above is "gone"
        interrupted = restarted.get(job.id)
        assert interrupted is not None
        assert interrupted.status is JobStatus.FAILED
        assert interrupted.problem is not None
        assert interrupted.problem["code"] == "job_interrupted"
        assert interrupted.problem["status"] == 503
        assert "holders_import job was running (2 of 5 done)" in interrupted.problem["detail"]
        assert interrupted.finished_at is not None
        # only unfinished jobs are marked: a third start finds the same answer
        assert JobRegistry(store=JobStore(store.db)).get(job.id) == interrupted
    finally:
        release.set()
        first.shutdown()


def test_an_unknown_job_is_none(store: ApiStore) -> None:
    assert JobRegistry(store=JobStore(store.db)).get("0" * 32) is None
