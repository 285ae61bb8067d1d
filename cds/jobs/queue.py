"""JobQueue: jobs persisted in the database, enqueued idempotently, claimed atomically.

Why the database and not an in-memory queue: a job survives a restart, several processes (web,
workers) share one queue without a broker, and the unique dedupe key makes "enqueue the analysis
of study X" safe to call from every concurrent hook request. Claiming is a conditional UPDATE
(... WHERE status='queued') whose rowcount tells the one winner, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from cds.jobs.kinds import JobKind, JobStatus
from cds.store.db import Database
from cds.store.queries import insert_or_get
from cds.store.records import JobRecord
from cds.store.types import utcnow

#: Stored error text is cut to this many characters (it is for operators, not a log dump).
MAX_ERROR_CHARS = 2000


class JobQueue:
    """Enqueue, claim and settle jobs. Thread-safe: every call is its own transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._listeners: list[Callable[[], None]] = []
        self._listeners_lock = threading.Lock()
        #: Called with each newly claimable job (created, or a failed one queued again) after its
        #: row is committed: the Celery backend publishes the job's id to the broker here.
        self.dispatcher: Callable[[JobRecord], None] | None = None

    # --- producers ------------------------------------------------------------------------

    def enqueue(
        self, kind: JobKind, key: str, payload: Mapping[str, Any], *, max_attempts: int = 3
    ) -> JobRecord:
        """The job for `key`, created if new. A queued/running/done job is returned as is; a failed
        one is queued again (a later request for the same work is a retry, e.g. after a PACS outage).
        """
        if not key or len(key) > 255:
            raise ValueError("job key must be 1-255 characters")
        with self.db.session() as s:
            job, created = insert_or_get(
                s,
                JobRecord(
                    kind=kind,
                    dedupe_key=key,
                    payload=dict(payload),
                    status=JobStatus.QUEUED,
                    attempts=0,
                    max_attempts=max_attempts,
                    run_after=utcnow(),
                ),
                lambda: s.scalars(sa.select(JobRecord).where(JobRecord.dedupe_key == key)).one_or_none(),
            )
            if not created and job.status is JobStatus.FAILED:
                requeued = s.execute(
                    sa.update(JobRecord)
                    .where(JobRecord.id == job.id, JobRecord.status == JobStatus.FAILED)
                    .values(status=JobStatus.QUEUED, attempts=0, run_after=utcnow(), updated_at=utcnow())
                )
                if requeued.rowcount == 1:  # type: ignore[attr-defined]
                    created = True
                s.refresh(job)
        if created:
            self._notify()
            if self.dispatcher is not None:
                self.dispatcher(job)
        return job

    # --- consumers ------------------------------------------------------------------------

    def claim(self, worker: str, kinds: frozenset[JobKind] | None = None) -> JobRecord | None:
        """Atomically take the oldest due queued job (of `kinds`), or None if there is none."""
        now = utcnow()
        query = (
            sa.select(JobRecord.id)
            .where(JobRecord.status == JobStatus.QUEUED, JobRecord.run_after <= now)
            .order_by(JobRecord.run_after, JobRecord.id)
            .limit(8)
        )
        if kinds is not None:
            query = query.where(JobRecord.kind.in_(sorted(kinds)))
        # Look first in a read-only transaction: an idle poll takes no write lock (matters on SQLite).
        with self.db.session(readonly=True) as s:
            candidates = list(s.scalars(query))
        if not candidates:
            return None
        with self.db.session() as s:
            for job_id in candidates:
                claimed = s.execute(
                    sa.update(JobRecord)
                    .where(JobRecord.id == job_id, JobRecord.status == JobStatus.QUEUED)
                    .values(
                        status=JobStatus.RUNNING,
                        attempts=JobRecord.attempts + 1,
                        started_at=now,
                        updated_at=now,
                        worker=worker[:128],
                    )
                )
                if claimed.rowcount == 1:  # type: ignore[attr-defined]
                    return s.get_one(JobRecord, job_id, populate_existing=True)
        return None

    def complete(self, job_id: int) -> None:
        self._settle(job_id, status=JobStatus.DONE, error=None)

    def fail(self, job_id: int, error: str, *, retry: bool = True, retry_delay_s: float = 5.0) -> JobStatus:
        """Record a failed attempt: back to QUEUED after a delay while attempts remain, else FAILED."""
        with self.db.session() as s:
            job = s.get_one(JobRecord, job_id)
            again = retry and job.attempts < job.max_attempts
            job.last_error = error[:MAX_ERROR_CHARS]
            job.worker = None
            if again:
                job.status = JobStatus.QUEUED
                job.run_after = utcnow() + timedelta(seconds=retry_delay_s * job.attempts)
            else:
                job.status = JobStatus.FAILED
                job.finished_at = utcnow()
            status = job.status
        if again:
            self._notify()
        return status

    def _settle(self, job_id: int, *, status: JobStatus, error: str | None) -> None:
        with self.db.session() as s:
            job = s.get_one(JobRecord, job_id)
            job.status = status
            job.last_error = error
            job.finished_at = utcnow()
            job.worker = None

    def requeue_stale(self, older_than_s: float) -> int:
        """Running jobs whose worker vanished (claimed longer ago than any job may take) -> queued."""
        cutoff = utcnow() - timedelta(seconds=older_than_s)
        with self.db.session() as s:
            result = s.execute(
                sa.update(JobRecord)
                .where(JobRecord.status == JobStatus.RUNNING, JobRecord.started_at < cutoff)
                .values(status=JobStatus.QUEUED, worker=None, run_after=utcnow(), updated_at=utcnow())
            )
            count = int(result.rowcount)  # type: ignore[attr-defined]
        if count:
            self._notify()
        return count

    # --- inspection -----------------------------------------------------------------------

    def get(self, job_id: int) -> JobRecord | None:
        with self.db.session(readonly=True) as s:
            return s.get(JobRecord, job_id)

    def by_key(self, key: str) -> JobRecord | None:
        with self.db.session(readonly=True) as s:
            return s.scalars(sa.select(JobRecord).where(JobRecord.dedupe_key == key)).one_or_none()

    def counts(self) -> dict[JobStatus, int]:
        """Jobs per status (queue depth for health and metrics)."""
        with self.db.session(readonly=True) as s:
            rows = s.execute(sa.select(JobRecord.status, sa.func.count()).group_by(JobRecord.status)).all()
        out = dict.fromkeys(JobStatus, 0)
        for status, count in rows:
            out[JobStatus(status)] = int(count)
        return out

    # --- wake-ups -------------------------------------------------------------------------

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Called (in the producer's thread) after a job becomes claimable, so local workers
        need not wait for their next poll. Other processes still find the job by polling."""
        with self._listeners_lock:
            self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        with self._listeners_lock:
            if callback in self._listeners:
                self._listeners.remove(callback)

    def _notify(self) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for callback in listeners:
            callback()
