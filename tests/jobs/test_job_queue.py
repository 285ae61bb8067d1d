"""JobQueue on SQLite and PostgreSQL: idempotent enqueue and atomic claims under concurrency."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import sqlalchemy as sa

from cds.jobs import JobKind, JobStatus
from cds.jobs.queue import JobQueue
from cds.store.db import Database
from cds.store.records import JobRecord
from cds.store.types import utcnow


def _concurrently(n: int, fn: Callable[[int], object]) -> list[object]:
    barrier = threading.Barrier(n)
    out: list[object] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        barrier.wait()
        try:
            value = fn(i)
            with lock:
                out.append(value)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return out


def _job_count(db: Database) -> int:
    with db.session(readonly=True) as s:
        return int(s.scalar(sa.select(sa.func.count()).select_from(JobRecord)) or 0)


def test_enqueue_is_idempotent_on_key(db: Database) -> None:
    queue = JobQueue(db)
    a = queue.enqueue(JobKind.ANALYZE, "analyze:1", {"study_uid": "1"})
    b = queue.enqueue(JobKind.ANALYZE, "analyze:1", {"study_uid": "other"})
    c = queue.enqueue(JobKind.ANALYZE, "analyze:2", {"study_uid": "2"})
    assert a.id == b.id != c.id
    assert b.payload == {"study_uid": "1"}  # the first request wins
    assert _job_count(db) == 2


def test_concurrent_enqueue_of_one_key_makes_one_job(db: Database) -> None:
    queue = JobQueue(db)
    ids = _concurrently(8, lambda i: queue.enqueue(JobKind.ANALYZE, "analyze:same", {"n": i}).id)
    assert len(set(ids)) == 1
    assert _job_count(db) == 1


def test_each_job_is_claimed_by_exactly_one_worker(db: Database) -> None:
    queue = JobQueue(db)
    for i in range(6):
        queue.enqueue(JobKind.ANALYZE, f"k{i}", {})

    def drain(i: int) -> list[int]:
        mine = []
        while (job := queue.claim(f"w{i}")) is not None:
            mine.append(job.id)
        return mine

    claimed = [job_id for batch in _concurrently(4, drain) for job_id in batch]  # type: ignore[attr-defined]
    assert sorted(claimed) == sorted(set(claimed))
    assert len(claimed) == 6
    counts = queue.counts()
    assert counts[JobStatus.RUNNING] == 6 and counts[JobStatus.QUEUED] == 0


def test_claim_respects_kinds_and_run_after(db: Database) -> None:
    queue = JobQueue(db)
    explain = queue.enqueue(JobKind.EXPLAIN, "e1", {})
    assert queue.claim("w", frozenset({JobKind.ANALYZE})) is None
    with db.session() as s:
        s.get_one(JobRecord, explain.id).run_after = utcnow() + timedelta(hours=1)
    assert queue.claim("w") is None  # not due yet


def test_fail_retries_until_max_attempts_then_fails(db: Database) -> None:
    queue = JobQueue(db)
    job = queue.enqueue(JobKind.ANALYZE, "k", {}, max_attempts=2)
    claimed = queue.claim("w")
    assert claimed is not None and claimed.id == job.id and claimed.attempts == 1
    assert queue.fail(job.id, "boom", retry_delay_s=0) is JobStatus.QUEUED
    again = queue.claim("w")
    assert again is not None and again.attempts == 2
    assert queue.fail(job.id, "boom again", retry_delay_s=0) is JobStatus.FAILED
    final = queue.get(job.id)
    assert final is not None
    assert (final.status, final.last_error, final.attempts) == (JobStatus.FAILED, "boom again", 2)


def test_permanent_failure_skips_retries_and_enqueue_requeues_failed(db: Database) -> None:
    queue = JobQueue(db)
    job = queue.enqueue(JobKind.ANALYZE, "k", {})
    queue.claim("w")
    assert queue.fail(job.id, "no pipeline", retry=False) is JobStatus.FAILED
    again = queue.enqueue(JobKind.ANALYZE, "k", {})
    assert again.id == job.id
    assert (again.status, again.attempts) == (JobStatus.QUEUED, 0)


def test_done_job_is_not_requeued(db: Database) -> None:
    queue = JobQueue(db)
    job = queue.enqueue(JobKind.ANALYZE, "k", {})
    queue.claim("w")
    queue.complete(job.id)
    again = queue.enqueue(JobKind.ANALYZE, "k", {})
    assert again.status is JobStatus.DONE
    assert queue.claim("w") is None


def test_stale_running_jobs_are_requeued(db: Database) -> None:
    queue = JobQueue(db)
    job = queue.enqueue(JobKind.ANALYZE, "k", {})
    queue.claim("w")
    assert queue.requeue_stale(older_than_s=3600) == 0
    with db.session() as s:
        s.get_one(JobRecord, job.id).started_at = utcnow() - timedelta(hours=2)
    assert queue.requeue_stale(older_than_s=3600) == 1
    claimed = queue.claim("w2")
    assert claimed is not None and claimed.id == job.id and claimed.attempts == 2
