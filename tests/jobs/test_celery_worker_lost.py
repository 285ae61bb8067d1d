"""A whole Celery worker (main process and pool children) SIGKILLed mid-job: another worker
started afterwards recovers the job through its database lease and completes it exactly once.
Its own module: no other worker may be consuming while the first one dies.
"""

from __future__ import annotations

import time

import pytest
from celery_harness import CeleryEnv, WorkerProcess, count, events, job_status, payload_for, wait_for

from cds.jobs.kinds import JobKind, JobStatus
from cds.jobs.queue import JobQueue

pytestmark = pytest.mark.integration


def test_whole_worker_killed_mid_job_another_worker_completes_it_once(celery_env: CeleryEnv) -> None:
    queue = celery_env.queue()
    first = WorkerProcess(celery_env.env(), celery_env.tmp / "worker-b.log")
    second: WorkerProcess | None = None
    try:
        first.wait_ready()
        log, payload = payload_for(celery_env, "host-kill", sleep_s=3.0)
        job = queue.enqueue(JobKind.ANALYZE, "celery:host-kill", payload)
        wait_for(lambda: count(log, "start") == 1, 30, "first attempt started")
        first.kill_all()  # main process and pool child: the message stays unacknowledged in Redis
        assert job_status(celery_env, job.id) is JobStatus.RUNNING
        second = WorkerProcess(celery_env.env(), celery_env.tmp / "worker-c.log")
        second.wait_ready()
        wait_for(lambda: job_status(celery_env, job.id) is JobStatus.DONE, 60, "job done by a second worker")
        time.sleep(5.0)  # past the visibility timeout: a redelivered message must find the job done
        seen = events(log)
        assert [e[0] for e in seen] == ["start", "start", "done"], seen
        assert seen[0][3] != seen[1][3]
        done = JobQueue(celery_env.db).get(job.id)
        assert done is not None and done.attempts == 2
    finally:
        first.stop()
        if second is not None:
            second.stop()
