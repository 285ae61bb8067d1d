"""LocalRunner with handlers registered by the test (the job's work is the boundary here)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from cds.config import Settings
from cds.jobs import JobKind, JobStatus
from cds.jobs.queue import JobQueue
from cds.jobs.registry import HandlerRegistry, JobContext, PermanentJobError
from cds.jobs.runner import LocalRunner
from cds.store.db import Database


def _wait_for(predicate: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def settings(tmp_path: object) -> Settings:
    return Settings()


def test_workers_run_each_job_once(db: Database, settings: Settings) -> None:
    queue = JobQueue(db)
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def handler(ctx: JobContext) -> None:
        time.sleep(0.01)
        with lock:
            seen[str(ctx.payload["n"])] += 1

    registry = HandlerRegistry()
    registry.register(JobKind.ANALYZE, handler)
    runner = LocalRunner(queue, registry, settings, workers=3, poll_interval_s=0.05)
    runner.start()
    try:
        for n in range(10):
            queue.enqueue(JobKind.ANALYZE, f"job-{n}", {"n": n})
        _wait_for(lambda: queue.counts()[JobStatus.DONE] == 10)
    finally:
        runner.stop()
    assert seen == Counter({str(n): 1 for n in range(10)})
    assert not runner.running


def test_concurrent_enqueues_of_one_key_run_the_handler_once(db: Database, settings: Settings) -> None:
    queue = JobQueue(db)
    calls: list[int] = []
    registry = HandlerRegistry()
    registry.register(JobKind.ANALYZE, lambda ctx: calls.append(ctx.job_id))
    runner = LocalRunner(queue, registry, settings, workers=2, poll_interval_s=0.05)
    runner.start()
    barrier = threading.Barrier(8)

    def hook_call() -> None:
        barrier.wait()
        queue.enqueue(JobKind.ANALYZE, "analyze:quick:r1:1.2.3", {"study_uid": "1.2.3"})

    threads = [threading.Thread(target=hook_call) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        _wait_for(lambda: queue.counts()[JobStatus.DONE] == 1)
        time.sleep(0.2)  # give a (wrong) second run the chance to happen
    finally:
        runner.stop()
    assert len(calls) == 1


def test_failed_attempt_is_retried_then_succeeds(db: Database, settings: Settings) -> None:
    queue = JobQueue(db)
    attempts: list[int] = []

    def flaky(ctx: JobContext) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("PACS unreachable")

    registry = HandlerRegistry()
    registry.register(JobKind.ANALYZE, flaky)
    runner = LocalRunner(queue, registry, settings, retry_delay_s=0)
    job = queue.enqueue(JobKind.ANALYZE, "k", {})
    assert runner.run_until_idle() == 2
    final = queue.get(job.id)
    assert final is not None
    assert (final.status, final.attempts) == (JobStatus.DONE, 2)
    assert attempts == [1, 2]


def test_permanent_error_fails_at_once_and_reports(db: Database, settings: Settings) -> None:
    queue = JobQueue(db)
    reported: list[str] = []
    registry = HandlerRegistry()

    def broken(ctx: JobContext) -> None:
        raise PermanentJobError("models missing")

    registry.register(JobKind.ANALYZE, broken, on_failure=lambda ctx, error: reported.append(error))
    runner = LocalRunner(queue, registry, settings, retry_delay_s=0)
    job = queue.enqueue(JobKind.ANALYZE, "k", {}, max_attempts=5)
    assert runner.run_until_idle() == 1
    final = queue.get(job.id)
    assert final is not None
    assert (final.status, final.attempts) == (JobStatus.FAILED, 1)
    assert reported == ["PermanentJobError: models missing"]


def test_retries_exhausted_call_on_failure_once(db: Database, settings: Settings) -> None:
    queue = JobQueue(db)
    reported: list[str] = []
    registry = HandlerRegistry()

    def always(ctx: JobContext) -> None:
        raise RuntimeError("still down")

    registry.register(JobKind.ANALYZE, always, on_failure=lambda ctx, error: reported.append(error))
    runner = LocalRunner(queue, registry, settings, retry_delay_s=0)
    job = queue.enqueue(JobKind.ANALYZE, "k", {}, max_attempts=3)
    assert runner.run_until_idle() == 3
    final = queue.get(job.id)
    assert final is not None and final.status is JobStatus.FAILED
    assert reported == ["RuntimeError: still down"]


def test_runner_without_handlers_claims_nothing(db: Database, settings: Settings) -> None:
    queue = JobQueue(db)
    queue.enqueue(JobKind.ANALYZE, "k", {})
    runner = LocalRunner(queue, HandlerRegistry(), settings)
    assert runner.run_until_idle() == 0
    assert queue.counts()[JobStatus.QUEUED] == 1
