"""Leases on database jobs for broker-driven workers: claim by id, heartbeat, fenced settle.

Why leases: with Celery a job is run by whichever process receives its message, and a worker can
vanish mid-job (SIGKILL, OOM, a host lost). The job row says RUNNING with the worker's id; the
worker refreshes `updated_at` every lease/4 s while the handler runs. A RUNNING row whose
heartbeat is older than the lease belongs to a dead worker and may be taken over, and every
settle (done / failed / retry) is conditional on still holding the lease, so a worker that lost
its lease can never overwrite the outcome of the one that took over. All statements are
conditional UPDATEs whose row count names the one winner (SQLite and PostgreSQL alike).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cds.jobs.kinds import JobKind, JobStatus
from cds.jobs.queue import MAX_ERROR_CHARS
from cds.store.db import Database
from cds.store.records import JobRecord
from cds.store.types import utcnow


class ClaimOutcome(StrEnum):
    CLAIMED = "claimed"  # this worker now runs the job
    NOT_DUE = "not_due"  # queued, but its back-off has not passed
    BUSY = "busy"  # another live worker runs it
    SETTLED = "settled"  # done or failed already (a duplicate message)
    MISSING = "missing"  # no such job
    EXHAUSTED = "exhausted"  # its worker died on the final attempt: now FAILED (run on_failure)


@dataclass(frozen=True)
class JobSnapshot:
    """What a runner needs of a job row, detached from any session."""

    id: int
    kind: JobKind
    key: str
    payload: dict[str, object]
    attempts: int
    max_attempts: int
    run_after: datetime | None = None

    @classmethod
    def of(cls, job: JobRecord) -> JobSnapshot:
        return cls(
            id=job.id,
            kind=JobKind(job.kind),
            key=job.dedupe_key,
            payload=dict(job.payload or {}),
            attempts=int(job.attempts),
            max_attempts=int(job.max_attempts),
            run_after=job.run_after,
        )


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    job: JobSnapshot | None = None


def _lost_error(lease_s: float) -> str:
    return f"WorkerLost: no heartbeat for {lease_s:.0f} s (worker killed or hung)"


class JobLeases:
    """Lease operations on the jobs table for one database."""

    def __init__(self, db: Database, lease_s: float) -> None:
        if lease_s <= 0:
            raise ValueError("lease_s must be > 0")
        self.db = db
        self.lease_s = lease_s

    @property
    def heartbeat_interval_s(self) -> float:
        return self.lease_s / 4.0

    def _stale_before(self, now: datetime) -> datetime:
        return now - timedelta(seconds=self.lease_s)

    # --- claim ----------------------------------------------------------------------------

    def claim(self, job_id: int, worker: str) -> Claim:
        """Take job `job_id` if it is due, or if its worker's lease ran out (attempts left)."""
        now = utcnow()
        stale = self._stale_before(now)
        claimable = sa.or_(
            sa.and_(JobRecord.status == JobStatus.QUEUED, JobRecord.run_after <= now),
            sa.and_(
                JobRecord.status == JobStatus.RUNNING,
                JobRecord.updated_at < stale,
                JobRecord.attempts < JobRecord.max_attempts,
            ),
        )
        with self.db.session() as s:
            taken = s.execute(
                sa.update(JobRecord)
                .where(JobRecord.id == job_id, claimable)
                .values(
                    status=JobStatus.RUNNING,
                    attempts=JobRecord.attempts + 1,
                    started_at=now,
                    updated_at=now,
                    worker=worker[:128],
                )
            )
            job = s.get(JobRecord, job_id, populate_existing=True)
            if job is None:
                return Claim(ClaimOutcome.MISSING)
            snapshot = JobSnapshot.of(job)
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                return Claim(ClaimOutcome.CLAIMED, snapshot)
            if job.status in (JobStatus.DONE, JobStatus.FAILED):
                return Claim(ClaimOutcome.SETTLED, snapshot)
            if job.status is JobStatus.QUEUED:
                return Claim(ClaimOutcome.NOT_DUE, snapshot)
            # A dead worker on the final attempt: fail the job here (exactly one caller wins).
            stale_final = job.updated_at is not None and job.updated_at < stale
            if stale_final and self._fail_stale(s, job_id, stale, now):
                return Claim(ClaimOutcome.EXHAUSTED, snapshot)
            return Claim(ClaimOutcome.BUSY, snapshot)

    def _fail_stale(self, s: Session, job_id: int, stale: datetime, now: datetime) -> bool:
        failed = s.execute(
            sa.update(JobRecord)
            .where(
                JobRecord.id == job_id,
                JobRecord.status == JobStatus.RUNNING,
                JobRecord.updated_at < stale,
                JobRecord.attempts >= JobRecord.max_attempts,
            )
            .values(
                status=JobStatus.FAILED,
                finished_at=now,
                worker=None,
                last_error=_lost_error(self.lease_s),
            )
        )
        return bool(failed.rowcount == 1)  # type: ignore[attr-defined]

    # --- while running ----------------------------------------------------------------------

    @staticmethod
    def _update_held(s: Session, job_id: int, holder: str, values: dict[str, object]) -> bool:
        """The fence: write `values` only while `holder` still holds the RUNNING job (one row)."""
        done = s.execute(
            sa.update(JobRecord)
            .where(
                JobRecord.id == job_id,
                JobRecord.status == JobStatus.RUNNING,
                JobRecord.worker == holder[:128],
            )
            .values(**values)
        )
        return bool(done.rowcount == 1)  # type: ignore[attr-defined]

    def heartbeat(self, job_id: int, worker: str) -> bool:
        """Refresh the lease; False if this worker no longer holds the job."""
        with self.db.session() as s:
            return self._update_held(s, job_id, worker, {"updated_at": utcnow()})

    # --- settle (fenced on the lease) --------------------------------------------------------

    def complete(self, job_id: int, worker: str) -> bool:
        """DONE, if this worker still holds the job (False: it lost the lease; nothing written)."""
        done = {"status": JobStatus.DONE, "finished_at": utcnow(), "worker": None, "last_error": None}
        with self.db.session() as s:
            return self._update_held(s, job_id, worker, done)

    def fail(
        self, job_id: int, worker: str, error: str, *, retry: bool, retry_delay_s: float
    ) -> tuple[JobStatus | None, float]:
        """A failed attempt: QUEUED again after attempts * retry_delay_s while attempts remain,
        else FAILED. Returns (new status, delay in s); status None if this worker lost the lease."""
        now = utcnow()
        with self.db.session() as s:
            job = s.get(JobRecord, job_id, populate_existing=True)
            if job is None or job.status is not JobStatus.RUNNING or job.worker != worker[:128]:
                return None, 0.0
            again = retry and job.attempts < job.max_attempts
            delay = retry_delay_s * max(1, job.attempts) if again else 0.0
            values: dict[str, object] = {"last_error": error[:MAX_ERROR_CHARS], "worker": None}
            if again:
                values |= {"status": JobStatus.QUEUED, "run_after": now + timedelta(seconds=delay)}
            else:
                values |= {"status": JobStatus.FAILED, "finished_at": now}
            if not self._update_held(s, job_id, worker, values):
                return None, 0.0
            return (JobStatus.QUEUED if again else JobStatus.FAILED), delay

    # --- recovery (the sweeper) -------------------------------------------------------------------

    def recover_stale(self, limit: int = 200) -> tuple[list[JobSnapshot], list[JobSnapshot]]:
        """RUNNING jobs whose lease ran out: requeued (attempts left) or FAILED (none left).

        Returns (requeued, exhausted); the caller publishes the requeued ones and runs the
        handlers' on_failure for the exhausted ones.
        """
        now = utcnow()
        stale = self._stale_before(now)
        requeued: list[JobSnapshot] = []
        exhausted: list[JobSnapshot] = []
        with self.db.session() as s:
            rows = list(
                s.scalars(
                    sa.select(JobRecord)
                    .where(JobRecord.status == JobStatus.RUNNING, JobRecord.updated_at < stale)
                    .order_by(JobRecord.id)
                    .limit(limit)
                )
            )
            for job in rows:
                snapshot = JobSnapshot.of(job)
                back = s.execute(
                    sa.update(JobRecord)
                    .where(
                        JobRecord.id == job.id,
                        JobRecord.status == JobStatus.RUNNING,
                        JobRecord.updated_at < stale,
                        JobRecord.attempts < JobRecord.max_attempts,
                    )
                    .values(
                        status=JobStatus.QUEUED,
                        run_after=now,
                        worker=None,
                        last_error=_lost_error(self.lease_s),
                    )
                )
                if back.rowcount == 1:  # type: ignore[attr-defined]
                    requeued.append(snapshot)
                elif self._fail_stale(s, job.id, stale, now):
                    exhausted.append(snapshot)
        return requeued, exhausted

    def undispatched(self, older_than_s: float, limit: int = 500) -> list[JobSnapshot]:
        """QUEUED jobs due for `older_than_s` and untouched as long (their message may be lost:
        the broker was down when they were enqueued). Touched, so each is re-sent at most once
        per period; a duplicate message is harmless (the claim is atomic)."""
        now = utcnow()
        cutoff = now - timedelta(seconds=older_than_s)
        out: list[JobSnapshot] = []
        with self.db.session() as s:
            rows = list(
                s.scalars(
                    sa.select(JobRecord)
                    .where(
                        JobRecord.status == JobStatus.QUEUED,
                        JobRecord.run_after <= cutoff,
                        JobRecord.updated_at <= cutoff,
                    )
                    .order_by(JobRecord.run_after, JobRecord.id)
                    .limit(limit)
                )
            )
            for job in rows:
                touched = s.execute(
                    sa.update(JobRecord)
                    .where(
                        JobRecord.id == job.id,
                        JobRecord.status == JobStatus.QUEUED,
                        JobRecord.updated_at <= cutoff,
                    )
                    .values(updated_at=now)
                )
                if touched.rowcount == 1:  # type: ignore[attr-defined]
                    out.append(JobSnapshot.of(job))
        return out
