"""Celery backend against a real Redis and real worker processes (tests/jobs/celery_harness.py).

What must hold, whatever happens to a worker: every job completes exactly once (one "done" side
effect, one DONE row), a failed attempt is retried after its back-off, a permanent failure runs
on_failure once, a worker killed mid-job (one pool child, or the whole worker) costs one attempt
and another process finishes the job, and enqueueing from the web side stays idempotent and never
fails when the broker is down. Time scales are shrunk: lease 4 s (heartbeat 1 s), retry 0.5 s.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
from celery_harness import (
    LEASE_S,
    CeleryEnv,
    WorkerProcess,
    count,
    events,
    job_status,
    payload_for,
    spare_port,
    wait_for,
)

from cds.jobs.kinds import JobKind, JobStatus
from cds.jobs.queue import JobQueue

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker(celery_env: CeleryEnv) -> Iterator[WorkerProcess]:
    """One worker (one pool child) shared by the module's tests; restarted if a test killed it."""
    proc = WorkerProcess(celery_env.env(), celery_env.tmp / "worker-a.log")
    proc.wait_ready()
    try:
        yield proc
    finally:
        proc.stop()


def test_job_runs_once_and_duplicate_enqueues_publish_nothing(
    celery_env: CeleryEnv, worker: WorkerProcess
) -> None:
    queue = celery_env.queue()
    log, payload = payload_for(celery_env, "once", sleep_s=0.2)
    job = queue.enqueue(JobKind.ANALYZE, "celery:once", payload)
    for _ in range(5):  # concurrent hook calls asking for the same analysis
        assert queue.enqueue(JobKind.ANALYZE, "celery:once", payload).id == job.id
    wait_for(lambda: job_status(celery_env, job.id) is JobStatus.DONE, 30, "job done")
    time.sleep(1.0)  # any duplicate message would have run by now
    done = JobQueue(celery_env.db).get(job.id)
    assert done is not None and done.attempts == 1 and done.last_error is None
    assert [e[0] for e in events(log)] == ["start", "done"]


def test_transient_failure_is_retried_after_backoff(celery_env: CeleryEnv, worker: WorkerProcess) -> None:
    queue = celery_env.queue()
    log, payload = payload_for(celery_env, "retry", fail_until_attempt=1)
    job = queue.enqueue(JobKind.ANALYZE, "celery:retry", payload)
    wait_for(lambda: job_status(celery_env, job.id) is JobStatus.DONE, 30, "job done after a retry")
    seen = events(log)
    assert [(e[0], e[2]) for e in seen] == [("start", 1), ("fail", 1), ("start", 2), ("done", 2)]
    done = JobQueue(celery_env.db).get(job.id)
    assert done is not None and done.attempts == 2


def test_permanent_failure_fails_once_and_runs_on_failure(
    celery_env: CeleryEnv, worker: WorkerProcess
) -> None:
    queue = celery_env.queue()
    log, payload = payload_for(celery_env, "permanent", fail_until_attempt=9, permanent=True)
    job = queue.enqueue(JobKind.ANALYZE, "celery:permanent", payload)
    wait_for(lambda: count(log, "on_failure") == 1, 30, "on_failure")
    failed = JobQueue(celery_env.db).get(job.id)
    assert failed is not None and failed.status is JobStatus.FAILED and failed.attempts == 1
    assert "PermanentJobError" in (failed.last_error or "")
    assert [e[0] for e in events(log)] == ["start", "fail", "on_failure"]


def test_pool_child_killed_mid_job_is_retried_and_completes_once(
    celery_env: CeleryEnv, worker: WorkerProcess
) -> None:
    queue = celery_env.queue()
    log, payload = payload_for(celery_env, "child-kill", sleep_s=3.0)
    job = queue.enqueue(JobKind.ANALYZE, "celery:child-kill", payload)
    wait_for(lambda: count(log, "start") == 1, 30, "first attempt started")
    child = events(log)[0][3]
    assert child != worker.process.pid
    os.kill(child, signal.SIGKILL)  # mid-job: the handler sleeps 3 s
    wait_for(lambda: job_status(celery_env, job.id) is JobStatus.DONE, 60, "job done by a new child")
    time.sleep(LEASE_S)  # a redelivered duplicate (reject_on_worker_lost, visibility timeout) finds it DONE
    seen = events(log)
    assert [e[0] for e in seen] == ["start", "start", "done"], seen
    assert seen[1][3] != child and seen[1][2] == 2
    done = JobQueue(celery_env.db).get(job.id)
    assert done is not None and done.attempts == 2 and done.status is JobStatus.DONE


def test_broker_down_at_enqueue_then_the_sweeper_sends_it(
    celery_env: CeleryEnv, worker: WorkerProcess
) -> None:
    dead_broker = f"redis://127.0.0.1:{spare_port()}/0"
    log, payload = payload_for(celery_env, "no-broker")
    started = time.monotonic()
    job = celery_env.queue(dead_broker).enqueue(JobKind.ANALYZE, "celery:no-broker", payload)
    assert time.monotonic() - started < 5  # the hook call is not held up for long
    assert job.status is JobStatus.QUEUED  # the row is committed even though nothing was published
    wait_for(lambda: job_status(celery_env, job.id) is JobStatus.DONE, 30, "sweeper re-sent the job")
    assert [e[0] for e in events(log)] == ["start", "done"]
