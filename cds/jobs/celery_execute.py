"""Run one database job under a lease: what a Celery task does with its message (no Celery here).

The same handlers as the local runner (cds.jobs.handlers), the same JobContext, the same meaning
of PermanentJobError and of on_failure. Differences, and why:
- the job is claimed by id (the message names it), under a lease kept alive by a heartbeat
  thread, so that a killed worker's job is recovered and nobody else's outcome is overwritten;
- a retryable failure returns RETRY with the back-off delay; the Celery task turns that into
  `task.retry(countdown=...)`, i.e. a new message that arrives when the job is due again.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType

from cds.config import Settings
from cds.jobs.celery_lease import ClaimOutcome, JobLeases, JobSnapshot
from cds.jobs.kinds import JobStatus
from cds.jobs.registry import HandlerRegistry, JobContext, PermanentJobError
from cds.jobs.runner import describe_error
from cds.ops.metrics import observe_job

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    DONE = "done"  # ran and completed
    RETRY = "retry"  # failed; queued again after `retry_in_s`
    FAILED = "failed"  # failed for good (on_failure ran)
    SKIPPED = "skipped"  # nothing to do for this message (duplicate, not due, another worker has it)
    LOST = "lost"  # ran, but another worker took the job over meanwhile (its outcome stands)


@dataclass(frozen=True)
class Execution:
    outcome: Outcome
    detail: str = ""
    retry_in_s: float = 0.0


class Heartbeat:
    """Refreshes the job's lease every interval while the handler runs (a daemon thread)."""

    def __init__(self, leases: JobLeases, job_id: int, worker: str) -> None:
        self._leases = leases
        self._job_id = job_id
        self._worker = worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"cds-job-{job_id}-heartbeat", daemon=True)
        self.lost = False

    def _beat(self) -> None:
        while not self._stop.wait(self._leases.heartbeat_interval_s):
            try:
                if not self._leases.heartbeat(self._job_id, self._worker):
                    self.lost = True
                    log.warning("job %d: lease lost (another worker took it over)", self._job_id)
                    return
            except Exception as exc:  # database briefly away: try again next beat
                log.warning("job %d: heartbeat failed (%s)", self._job_id, type(exc).__name__)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


def context_for(job: JobSnapshot, leases: JobLeases, settings: Settings) -> JobContext:
    return JobContext(
        job_id=job.id,
        kind=job.kind,
        key=job.key,
        payload=dict(job.payload),
        attempt=job.attempts,
        max_attempts=job.max_attempts,
        db=leases.db,
        settings=settings,
    )


def run_on_failure(registry: HandlerRegistry, ctx: JobContext, error: str) -> None:
    """The handler's final-failure hook (e.g. mark the analysis FAILED with its reason)."""
    handler = registry.get(ctx.kind)
    if handler is None or handler.on_failure is None:
        return
    try:
        handler.on_failure(ctx, error)
    except Exception:
        log.exception("on_failure of job %d (%s) raised", ctx.job_id, ctx.kind)


def execute(
    job_id: int,
    *,
    leases: JobLeases,
    registry: HandlerRegistry,
    settings: Settings,
    worker: str,
    retry_delay_s: float,
) -> Execution:
    """Claim job `job_id` and run its handler once; never raises for a handler's failure."""
    claim = leases.claim(job_id, worker)
    if claim.outcome is ClaimOutcome.EXHAUSTED and claim.job is not None:
        ctx = context_for(claim.job, leases, settings)
        run_on_failure(registry, ctx, "worker lost on the final attempt")
        return Execution(Outcome.FAILED, "worker lost on the final attempt")
    if claim.outcome is not ClaimOutcome.CLAIMED or claim.job is None:
        return Execution(Outcome.SKIPPED, claim.outcome.value)
    job = claim.job
    handler = registry.get(job.kind)
    ctx = context_for(job, leases, settings)
    if handler is None:  # this worker cannot run that kind: give it back at once
        status, _ = leases.fail(job.id, worker, f"no handler for {job.kind}", retry=True, retry_delay_s=0.0)
        return Execution(Outcome.SKIPPED, f"no handler for {job.kind} ({status})")

    started = time.monotonic()
    failure: Exception | None = None
    with Heartbeat(leases, job.id, worker):
        try:
            handler.run(ctx)
        except Exception as exc:  # settled below, after the heartbeat stopped
            failure = exc
    seconds = time.monotonic() - started
    if failure is None:
        if not leases.complete(job.id, worker):
            return Execution(Outcome.LOST, "lease lost before completion")
        observe_job(job.kind, "done", seconds)
        return Execution(Outcome.DONE)

    error = describe_error(failure)
    log.warning(
        "job %d (%s) attempt %d/%d failed: %s",
        job.id, job.kind, job.attempts, job.max_attempts, type(failure).__name__,
    )  # fmt: skip
    permanent = isinstance(failure, PermanentJobError)
    status, delay = leases.fail(job.id, worker, error, retry=not permanent, retry_delay_s=retry_delay_s)
    if status is None:
        return Execution(Outcome.LOST, error)
    if status is JobStatus.QUEUED:
        observe_job(job.kind, "retry", seconds)
        return Execution(Outcome.RETRY, error, retry_in_s=delay)
    observe_job(job.kind, "failed", seconds)
    run_on_failure(registry, ctx, error)
    return Execution(Outcome.FAILED, error)
