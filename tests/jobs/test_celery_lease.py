"""Database leases of the Celery backend (cds.jobs.celery_lease) and one execution
(cds.jobs.celery_execute) with handlers registered by the test, on SQLite and PostgreSQL.
No broker here: the message layer is tested in test_celery_worker.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from cds.config import Settings
from cds.jobs.celery_execute import Outcome, execute
from cds.jobs.celery_lease import ClaimOutcome, JobLeases
from cds.jobs.kinds import JobKind, JobStatus
from cds.jobs.queue import JobQueue
from cds.jobs.registry import HandlerRegistry, JobContext, PermanentJobError
from cds.store.db import Database
from cds.store.records import JobRecord
from cds.store.types import utcnow


def _age(db: Database, job_id: int, seconds: float) -> None:
    """Pretend the job's last heartbeat was `seconds` ago (its worker died then)."""
    with db.session() as s:
        s.execute(
            sa.update(JobRecord)
            .where(JobRecord.id == job_id)
            .values(updated_at=utcnow() - timedelta(seconds=seconds))
        )


def _job(db: Database, job_id: int) -> JobRecord:
    job = JobQueue(db).get(job_id)
    assert job is not None
    return job


def test_claim_takes_a_due_job_once(db: Database) -> None:
    job = JobQueue(db).enqueue(JobKind.ANALYZE, "k", {"x": 1})
    leases = JobLeases(db, lease_s=60)
    first = leases.claim(job.id, "w1")
    assert first.outcome is ClaimOutcome.CLAIMED and first.job is not None
    assert first.job.attempts == 1 and first.job.payload == {"x": 1}
    assert leases.claim(job.id, "w2").outcome is ClaimOutcome.BUSY
    assert leases.claim(job.id + 999, "w2").outcome is ClaimOutcome.MISSING
    assert leases.complete(job.id, "w1")
    assert leases.claim(job.id, "w2").outcome is ClaimOutcome.SETTLED
    assert _job(db, job.id).status is JobStatus.DONE


def test_a_job_in_back_off_is_not_due(db: Database) -> None:
    job = JobQueue(db).enqueue(JobKind.ANALYZE, "k", {})
    leases = JobLeases(db, lease_s=60)
    assert leases.claim(job.id, "w1").outcome is ClaimOutcome.CLAIMED
    status, delay = leases.fail(job.id, "w1", "boom", retry=True, retry_delay_s=30)
    assert (status, delay) == (JobStatus.QUEUED, 30)
    assert leases.claim(job.id, "w2").outcome is ClaimOutcome.NOT_DUE


def test_a_stale_lease_is_taken_over_and_the_old_worker_is_fenced_off(db: Database) -> None:
    job = JobQueue(db).enqueue(JobKind.ANALYZE, "k", {})
    leases = JobLeases(db, lease_s=10)
    assert leases.claim(job.id, "dead").outcome is ClaimOutcome.CLAIMED
    assert leases.claim(job.id, "w2").outcome is ClaimOutcome.BUSY  # lease still fresh
    _age(db, job.id, 11)
    takeover = leases.claim(job.id, "w2")
    assert takeover.outcome is ClaimOutcome.CLAIMED and takeover.job is not None
    assert takeover.job.attempts == 2
    # The first worker wakes up: it may neither heartbeat nor settle any more.
    assert not leases.heartbeat(job.id, "dead")
    assert not leases.complete(job.id, "dead")
    assert leases.fail(job.id, "dead", "late", retry=True, retry_delay_s=1) == (None, 0.0)
    assert leases.heartbeat(job.id, "w2") and leases.complete(job.id, "w2")
    assert _job(db, job.id).status is JobStatus.DONE


def test_a_stale_final_attempt_fails_exactly_once(db: Database) -> None:
    job = JobQueue(db).enqueue(JobKind.ANALYZE, "k", {}, max_attempts=1)
    leases = JobLeases(db, lease_s=10)
    assert leases.claim(job.id, "dead").outcome is ClaimOutcome.CLAIMED
    _age(db, job.id, 11)
    assert leases.claim(job.id, "w2").outcome is ClaimOutcome.EXHAUSTED
    assert leases.claim(job.id, "w3").outcome is ClaimOutcome.SETTLED
    failed = _job(db, job.id)
    assert failed.status is JobStatus.FAILED and "WorkerLost" in (failed.last_error or "")


def test_recover_stale_requeues_or_fails(db: Database) -> None:
    queue = JobQueue(db)
    again = queue.enqueue(JobKind.ANALYZE, "again", {})
    final = queue.enqueue(JobKind.EXPLAIN, "final", {}, max_attempts=1)
    alive = queue.enqueue(JobKind.ANALYZE, "alive", {})
    leases = JobLeases(db, lease_s=10)
    for job in (again, final, alive):
        assert leases.claim(job.id, "w").outcome is ClaimOutcome.CLAIMED
    _age(db, again.id, 11)
    _age(db, final.id, 11)
    requeued, exhausted = leases.recover_stale()
    assert [j.id for j in requeued] == [again.id] and [j.id for j in exhausted] == [final.id]
    assert _job(db, again.id).status is JobStatus.QUEUED
    assert _job(db, final.id).status is JobStatus.FAILED
    assert _job(db, alive.id).status is JobStatus.RUNNING
    assert leases.recover_stale() == ([], [])


def test_undispatched_resends_each_old_queued_job_once_per_period(db: Database) -> None:
    queue = JobQueue(db)
    old = queue.enqueue(JobKind.ANALYZE, "old", {})
    new = queue.enqueue(JobKind.ANALYZE, "new", {})
    with db.session() as s:
        s.execute(
            sa.update(JobRecord)
            .where(JobRecord.id == old.id)
            .values(updated_at=utcnow() - timedelta(seconds=120), run_after=utcnow() - timedelta(seconds=120))
        )
    leases = JobLeases(db, lease_s=10)
    assert [j.id for j in leases.undispatched(60)] == [old.id]
    assert leases.undispatched(60) == []  # touched: not again within the period
    assert new.id not in [j.id for j in leases.undispatched(60)]


# --- one execution -------------------------------------------------------------------------------


@pytest.fixture
def leases(db: Database) -> JobLeases:
    return JobLeases(db, lease_s=30)


def _run(leases: JobLeases, registry: HandlerRegistry, job_id: int) -> Outcome:
    return execute(
        job_id, leases=leases, registry=registry, settings=Settings(), worker="w", retry_delay_s=0.0
    ).outcome


def test_execute_retries_then_completes(leases: JobLeases) -> None:
    attempts: list[int] = []

    def flaky(ctx: JobContext) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("transient")

    registry = HandlerRegistry()
    registry.register(JobKind.ANALYZE, flaky)
    job = JobQueue(leases.db).enqueue(JobKind.ANALYZE, "k", {})
    assert _run(leases, registry, job.id) is Outcome.RETRY
    assert _run(leases, registry, job.id) is Outcome.DONE
    assert _run(leases, registry, job.id) is Outcome.SKIPPED  # a duplicate message
    assert attempts == [1, 2]
    assert _job(leases.db, job.id).status is JobStatus.DONE


def test_execute_permanent_failure_runs_on_failure_once(leases: JobLeases) -> None:
    failures: list[str] = []

    def broken(ctx: JobContext) -> None:
        raise PermanentJobError("bad payload")

    registry = HandlerRegistry()
    registry.register(JobKind.ANALYZE, broken, lambda ctx, error: failures.append(error))
    job = JobQueue(leases.db).enqueue(JobKind.ANALYZE, "k", {})
    assert _run(leases, registry, job.id) is Outcome.FAILED
    assert _run(leases, registry, job.id) is Outcome.SKIPPED
    assert failures == ["PermanentJobError: bad payload"]
    assert _job(leases.db, job.id).status is JobStatus.FAILED


def test_execute_after_retries_exhausted_fails(leases: JobLeases) -> None:
    def always(ctx: JobContext) -> None:
        raise RuntimeError("still down")

    failures: list[str] = []
    registry = HandlerRegistry()
    registry.register(JobKind.ANALYZE, always, lambda ctx, error: failures.append(error))
    job = JobQueue(leases.db).enqueue(JobKind.ANALYZE, "k", {}, max_attempts=2)
    assert [_run(leases, registry, job.id) for _ in range(2)] == [Outcome.RETRY, Outcome.FAILED]
    assert len(failures) == 1 and _job(leases.db, job.id).attempts == 2


# --- `cds worker` settings ------------------------------------------------------------------------


def test_cds_worker_refuses_options_the_backend_cannot_honour(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cds.cli import main

    monkeypatch.setenv("CDS_JOBS_BACKEND", "celery")
    assert main(["worker", "--until-idle"]) == 2
    assert "--until-idle runs the local backend only" in capsys.readouterr().err
    assert main(["worker", "--kinds", "analyze,dream"]) == 2
    assert "--kinds" in capsys.readouterr().err
    assert main(["worker", "--threads", "0"]) == 2


def test_celery_settings_follow_cds_settings() -> None:
    from cds.jobs.celery_app import make_celery

    settings = Settings.from_env(
        {
            "CDS_BROKER_URL": "redis://broker:6379/3",
            "CDS_JOB_SOFT_TIME_LIMIT_S": "30",
            "CDS_JOB_TIME_LIMIT_S": "40",
            "CDS_BROKER_VISIBILITY_TIMEOUT_S": "900",
            "CDS_JOB_MAX_MEMORY_MB": "1500",
        }
    )
    conf = make_celery(settings).conf
    assert conf.broker_url == "redis://broker:6379/3"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert (conf.task_soft_time_limit, conf.task_time_limit) == (30.0, 40.0)
    assert conf.broker_transport_options["visibility_timeout"] == 900.0
    assert conf.worker_max_memory_per_child == 1500 * 1024
    assert conf.task_ignore_result is True  # results live in the database
