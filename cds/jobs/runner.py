"""LocalRunner: N worker threads that claim jobs from the database and run their handlers.

The embedded default (one machine, no broker). Workers wake on a local enqueue (queue listener)
or poll every `poll_interval_s` for jobs enqueued by other processes. Only kinds with a registered
handler are claimed, so a web process that registers nothing never takes a job. Where analyses
complete, failed FHIR write-backs are retried too (cds.fhir.writeback.WritebackRetryLoop, a thread
started with the workers when CDS_FHIR_WRITEBACK_URL is set).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from cds.config import Settings
from cds.jobs.kinds import JobStatus
from cds.jobs.memory import release_job_memory
from cds.jobs.queue import JobQueue
from cds.jobs.registry import HandlerRegistry, JobContext, PermanentJobError
from cds.ops.metrics import observe_job
from cds.store.records import JobRecord

log = logging.getLogger(__name__)


def describe_error(exc: BaseException) -> str:
    """What is stored as the job's last_error (type + message; never a traceback)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class LocalRunner:
    def __init__(
        self,
        queue: JobQueue,
        registry: HandlerRegistry,
        settings: Settings,
        *,
        workers: int = 1,
        poll_interval_s: float = 1.0,
        retry_delay_s: float = 5.0,
        stale_after_s: float = 3600.0,
        writeback_retry_s: float = 60.0,
        dedicated_process: bool = False,
    ) -> None:
        """`dedicated_process`: this process only runs jobs (`cds worker`), so it may gc.freeze
        after the first job (cds.jobs.memory); False when it shares the process with the web app."""
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.queue = queue
        self.registry = registry
        self.settings = settings
        self.workers = workers
        self.poll_interval_s = poll_interval_s
        self.retry_delay_s = retry_delay_s
        self.stale_after_s = stale_after_s
        self.dedicated_process = dedicated_process
        self._stop = threading.Event()
        self._wake = threading.Condition()
        self._pending_wakeups = 0
        self._threads: list[threading.Thread] = []
        self.writeback_retry_s = writeback_retry_s
        self._writeback_retry: Any = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        recovered = self.queue.requeue_stale(self.stale_after_s)
        if recovered:
            log.warning("requeued %d stale running job(s)", recovered)
        self.queue.add_listener(self.wake)
        for i in range(self.workers):
            thread = threading.Thread(target=self._loop, name=f"cds-job-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.settings.fhir_writeback_url and self.registry.kinds:
            from cds.fhir.writeback import WritebackRetryLoop  # FHIR models only where write-back is on

            self._writeback_retry = WritebackRetryLoop(self.queue.db, self.settings, self.writeback_retry_s)
            self._writeback_retry.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop after the jobs in progress finish (up to timeout_s)."""
        self._stop.set()
        if self._writeback_retry is not None:
            self._writeback_retry.stop()
            self._writeback_retry = None
        self.queue.remove_listener(self.wake)
        self.wake(all_workers=True)
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads = []

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def wake(self, all_workers: bool = False) -> None:
        with self._wake:
            self._pending_wakeups += self.workers if all_workers else 1
            self._wake.notify_all() if all_workers else self._wake.notify()

    # --- work -----------------------------------------------------------------------------

    def _worker_id(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}:{threading.current_thread().name}"

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                ran = self.run_once()
            except Exception:  # the DB went away etc.: keep the worker alive, try again later
                log.exception("job worker loop error")
                ran = False
            if ran:
                continue
            with self._wake:
                if self._pending_wakeups == 0 and not self._stop.is_set():
                    self._wake.wait(self.poll_interval_s)
                self._pending_wakeups = max(0, self._pending_wakeups - 1)

    def run_once(self) -> bool:
        """Claim and run one job; False when none is due."""
        kinds = self.registry.kinds
        if not kinds:
            return False
        job = self.queue.claim(self._worker_id(), kinds)
        if job is None:
            return False
        self._run(job)
        return True

    def run_until_idle(self, max_jobs: int | None = None) -> int:
        """Run due jobs in the calling thread until none is left (CLI and tests). Returns the count."""
        done = 0
        while max_jobs is None or done < max_jobs:
            if not self.run_once():
                break
            done += 1
        return done

    def _run(self, job: JobRecord) -> None:
        try:
            self._run_handler(job)
        finally:
            # A long-lived worker stays the same size (cds.jobs.memory).
            release_job_memory(freeze=self.dedicated_process)

    def _run_handler(self, job: JobRecord) -> None:
        handler = self.registry.get(job.kind)
        ctx = JobContext(
            job_id=job.id,
            kind=job.kind,
            key=job.dedupe_key,
            payload=dict(job.payload or {}),
            attempt=job.attempts,
            max_attempts=job.max_attempts,
            db=self.queue.db,
            settings=self.settings,
        )
        if handler is None:  # claimed a kind we cannot run: give it back untouched
            self.queue.fail(job.id, f"no handler for {job.kind}", retry=True, retry_delay_s=0)
            return
        started = time.monotonic()
        try:
            handler.run(ctx)
        except Exception as exc:
            seconds = time.monotonic() - started
            permanent = isinstance(exc, PermanentJobError)
            error = describe_error(exc)
            log.warning(
                "job %d (%s) attempt %d/%d failed: %s",
                job.id, job.kind, job.attempts, job.max_attempts, type(exc).__name__,
            )  # fmt: skip
            status = self.queue.fail(job.id, error, retry=not permanent, retry_delay_s=self.retry_delay_s)
            observe_job(job.kind, "failed" if status is JobStatus.FAILED else "retry", seconds)
            if status is JobStatus.FAILED and handler.on_failure is not None:
                try:
                    handler.on_failure(ctx, error)
                except Exception:
                    log.exception("on_failure of job %d (%s) raised", job.id, job.kind)
            return
        observe_job(job.kind, "done", time.monotonic() - started)
        self.queue.complete(job.id)


def start_local_runner(queue: JobQueue, settings: Settings, workers: int | None = None) -> LocalRunner:
    """The product's handlers on `workers` (default CDS_JOB_WORKERS) local threads, started."""
    from cds.jobs.handlers import default_registry

    runner = LocalRunner(queue, default_registry(), settings, workers=workers or max(1, settings.job_workers))
    runner.start()
    return runner
