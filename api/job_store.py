"""Background jobs kept in the database (``api_job``), so a job's answer survives a restart.

The job registry (:mod:`api.jobs`) runs jobs in this process and writes each job's state here:
when it is queued, when it starts, its progress (at most once a second) and how it ended. A
``GET /admin/jobs/{id}`` after a restart finds the job here. A job that was queued or running
when the service stopped can never finish: the next registry marks it ``failed`` with the
problem ``job_interrupted`` (what the job already sent to the chain stays done; an interrupted
import is finished by the service itself at start, see :func:`api.imports.resume_unfinished`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Index, Text
from sqlmodel import Field, Session, SQLModel, col, select

from ledger.store.db import Store

__all__ = ["JobRow", "JobStore"]

#: States of a job that has not ended (kept in step with :class:`api.jobs.JobStatus`).
UNFINISHED = ("queued", "running")


class JobRow(SQLModel, table=True):
    """One background job: kind, state, progress, and its result or problem (JSON)."""

    __tablename__ = "api_job"
    __table_args__ = (Index("ix_api_job_status", "status"),)

    id: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=32)
    status: str = Field(max_length=16)
    done: int = Field(default=0, sa_type=BigInteger)
    total: int = Field(default=0, sa_type=BigInteger)
    created_at: datetime = Field(sa_type=DateTime(timezone=True))
    started_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    result: str | None = Field(default=None, sa_type=Text)
    problem: str | None = Field(default=None, sa_type=Text)


def _aware(value: datetime | None) -> datetime | None:
    """SQLite gives naive datetimes back; they were written in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class JobStore:
    """Save and read :class:`JobRow` rows of one store."""

    def __init__(self, db: Store) -> None:
        self.db = db

    def save(self, values: Mapping[str, Any]) -> None:
        """Insert or update the job ``values["id"]`` (``result``/``problem`` as JSON-able)."""
        fields = dict(values)
        for name in ("result", "problem"):
            if name in fields and fields[name] is not None:
                fields[name] = json.dumps(fields[name], sort_keys=True, default=str)
        with Session(self.db.engine) as session:
            row = session.get(JobRow, fields["id"])
            if row is None:
                row = JobRow(**fields)
            else:
                for name, value in fields.items():
                    setattr(row, name, value)
            session.add(row)
            session.commit()

    def load(self, job_id: str) -> dict[str, Any] | None:
        """The job's fields (``result``/``problem`` decoded), or None if there is no such job."""
        with Session(self.db.engine) as session:
            row = session.get(JobRow, job_id)
            if row is None:
                return None
            return _fields(row)

    def interrupt_unfinished(self, now: datetime) -> list[str]:
        """Mark every queued or running job ``failed`` with the problem ``job_interrupted``
        (the process that ran it is gone); returns their ids."""
        with Session(self.db.engine) as session:
            rows = session.exec(select(JobRow).where(col(JobRow.status).in_(UNFINISHED))).all()
            for row in rows:
                problem = {
                    "status": 503,
                    "code": "job_interrupted",
                    "detail": (
                        f"the service stopped while this {row.kind} job was {row.status} "
                        f"({row.done} of {row.total} done); what it already sent to the chain "
                        "stays done, and an interrupted import is finished by the service at "
                        "start; run the job again to do the rest (nothing is done twice)"
                    ),
                }
                row.status = "failed"
                row.problem = json.dumps(problem, sort_keys=True)
                row.finished_at = now
                session.add(row)
            session.commit()
            return [row.id for row in rows]


def _fields(row: JobRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "status": row.status,
        "done": row.done,
        "total": row.total,
        "created_at": _aware(row.created_at),
        "started_at": _aware(row.started_at),
        "finished_at": _aware(row.finished_at),
        "result": json.loads(row.result) if row.result is not None else None,
        "problem": json.loads(row.problem) if row.problem is not None else None,
    }
