"""The Celery worker: the task that runs database jobs, the sweeper, and `run_worker`.

One task, `cds.run_job(job_id)`, runs cds.jobs.celery_execute.execute in a prefork pool child.
The sweeper is a thread in the worker's main process that, every CDS_JOB_LEASE_S/4 s (at most
30 s), makes the database and the broker agree again:
- RUNNING jobs whose lease ran out (their worker was killed) go back to QUEUED and are published,
  or FAIL (with the handler's on_failure) when that was their final attempt;
- QUEUED jobs that nobody took for a long time (their message was lost, e.g. Redis was down when
  the web process enqueued them) are published again.
Every worker sweeps; the conditional UPDATEs make that safe. Redis' own redelivery of an
unacknowledged message (visibility timeout) then finds the job settled and does nothing.
Failed FHIR write-backs are retried where analyses complete: each pool child runs a
cds.fhir.writeback.WritebackRetryLoop thread (when CDS_FHIR_WRITEBACK_URL is set) on its own
Database (a pool child never forks, so a thread may hold connections there).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cds.config import Settings
from cds.jobs.celery_app import TASK_NAME, make_celery, queue_name, queue_names
from cds.jobs.celery_execute import Outcome, context_for, execute, run_on_failure
from cds.jobs.celery_lease import JobLeases
from cds.jobs.kinds import JobKind
from cds.jobs.memory import release_job_memory
from cds.jobs.registry import HandlerRegistry
from cds.store.db import Database

log = logging.getLogger(__name__)

RegistryFactory = Callable[[], HandlerRegistry]
Publish = Callable[[int, JobKind], bool]

#: Re-send a queued job nobody took after this long (its message may be lost). A duplicate only
#: costs a no-op delivery, a lost message costs a stuck analysis: err towards re-sending.
DEFAULT_REDISPATCH_AFTER_S = 300.0
#: Seconds between FHIR write-back retry sweeps in each pool child (the back-off starts at 5 min).
DEFAULT_WRITEBACK_RETRY_S = 60.0


def default_registry_factory() -> HandlerRegistry:
    from cds.jobs.handlers import default_registry

    return default_registry()


class ProcessState:
    """Per-process database and registry: built lazily in each pool child (never shared across a
    fork: a connection inherited from the parent must not be used by two processes)."""

    def __init__(self, settings: Settings, registry_factory: RegistryFactory) -> None:
        self.settings = settings
        self._registry_factory = registry_factory
        self._pid: int | None = None
        self._leases: JobLeases | None = None
        self._registry: HandlerRegistry | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> tuple[JobLeases, HandlerRegistry]:
        with self._lock:
            if self._pid != os.getpid() or self._leases is None or self._registry is None:
                self._pid = os.getpid()
                db = Database(self.settings.resolved_database_url)
                self._leases = JobLeases(db, self.settings.job_lease_s)
                self._registry = self._registry_factory()
            return self._leases, self._registry

    def after_fork(self) -> None:
        """In a new pool child: forget (without closing) the parent's connections."""
        with self._lock:
            if self._leases is not None and self._pid != os.getpid():
                self._leases.db.engine.dispose(close=False)
                self._leases = None

    @property
    def leases(self) -> JobLeases:
        return self._ensure()[0]

    @property
    def registry(self) -> HandlerRegistry:
        return self._ensure()[1]

    @property
    def worker_id(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}:celery"


@dataclass(frozen=True)
class SweepReport:
    requeued: int
    failed: int
    redispatched: int


class Sweeper:
    """Recovers jobs of dead workers and re-sends lost messages (see the module docstring).

    It runs in the worker's main process, which forks the pool children. A database connection
    must never be open across a fork (SQLite keeps per-process lock state that a child would
    inherit wrongly; a PostgreSQL socket would be shared), so each sweep opens its own Database,
    closes it at the end, and holds a lock that os.register_at_fork takes before any fork.
    """

    def __init__(
        self,
        settings: Settings,
        registry: HandlerRegistry,
        publish: Publish,
        *,
        interval_s: float,
        redispatch_after_s: float = DEFAULT_REDISPATCH_AFTER_S,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._publish = publish
        self.interval_s = interval_s
        self.redispatch_after_s = redispatch_after_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep_once(self) -> SweepReport:
        with _NO_FORK:
            db = Database(self._settings.resolved_database_url)
            try:
                leases = JobLeases(db, self._settings.job_lease_s)
                requeued, exhausted = leases.recover_stale()
                for job in exhausted:
                    log.warning("job %d (%s): worker lost on the final attempt, failed", job.id, job.kind)
                    ctx = context_for(job, leases, self._settings)
                    run_on_failure(self._registry, ctx, "worker lost")
                resent = leases.undispatched(self.redispatch_after_s)
            finally:
                db.dispose()
        for job in requeued:
            log.warning("job %d (%s): worker lost, queued again", job.id, job.kind)
            self._publish(job.id, job.kind)
        for job in resent:
            self._publish(job.id, job.kind)
        if resent:
            log.info("re-sent %d queued job(s) nobody took for %.0f s", len(resent), self.redispatch_after_s)
        return SweepReport(requeued=len(requeued), failed=len(exhausted), redispatched=len(resent))

    def _loop(self) -> None:
        while True:
            try:
                self.sweep_once()
            except Exception as exc:  # database or broker briefly away: next round
                log.warning("job sweeper: %s", type(exc).__name__)
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="cds-job-sweeper", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            self._thread = None


#: Held by a sweep while it has a database open, and taken before every fork of this process.
_NO_FORK = threading.Lock()
_fork_guard_installed = False


def _install_fork_guard() -> None:
    global _fork_guard_installed
    if not _fork_guard_installed:
        os.register_at_fork(
            before=_NO_FORK.acquire,
            after_in_parent=_NO_FORK.release,
            after_in_child=_NO_FORK.release,
        )
        _fork_guard_installed = True


def sweep_interval(settings: Settings) -> float:
    return min(30.0, settings.job_lease_s / 4.0)


def build_worker_app(settings: Settings, state: ProcessState) -> Any:
    """The Celery app with the `cds.run_job` task bound to `state`."""
    app = make_celery(settings)

    @app.task(name=TASK_NAME, bind=True, max_retries=None)
    def run_job(task: Any, job_id: int) -> str:
        try:
            result = execute(
                int(job_id),
                leases=state.leases,
                registry=state.registry,
                settings=settings,
                worker=state.worker_id,
                retry_delay_s=settings.job_retry_delay_s,
            )
        finally:
            # The pool process stays the same size job after job; it runs nothing but jobs, so it
            # may freeze (cds.jobs.memory).
            release_job_memory(freeze=True)
        if result.outcome is Outcome.RETRY:
            # A new message that arrives when the job is due again; the database row already says
            # QUEUED with run_after, so the sweeper re-sends it should this message be lost.
            raise task.retry(countdown=result.retry_in_s)
        return result.outcome.value

    return app


def publisher_for(app: Any) -> Publish:
    def publish(job_id: int, kind: JobKind) -> bool:
        try:
            app.send_task(TASK_NAME, args=[int(job_id)], queue=queue_name(kind))
        except Exception as exc:
            log.warning("job %d: could not publish (%s); next sweep retries", job_id, type(exc).__name__)
            return False
        return True

    return publish


def run_worker(
    settings: Settings,
    *,
    concurrency: int = 1,
    kinds: Sequence[JobKind] = tuple(JobKind),
    registry_factory: RegistryFactory = default_registry_factory,
    torch_threads: int | None = None,
    redispatch_after_s: float = DEFAULT_REDISPATCH_AFTER_S,
    writeback_retry_s: float = DEFAULT_WRITEBACK_RETRY_S,
    loglevel: str = "INFO",
    node_name: str | None = None,
) -> int:
    """Run a Celery worker (prefork, `concurrency` children) until SIGTERM/SIGINT."""
    from celery.signals import setup_logging, worker_process_init, worker_ready, worker_shutdown

    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    state = ProcessState(settings, registry_factory)
    app = build_worker_app(settings, state)
    sweeper = Sweeper(
        settings,
        registry_factory(),
        publisher_for(app),
        interval_s=sweep_interval(settings),
        redispatch_after_s=redispatch_after_s,
    )
    _install_fork_guard()
    threads = torch_threads if torch_threads is not None else max(1, (os.cpu_count() or 1) // concurrency)

    def _child_init(**_: Any) -> None:
        state.after_fork()
        if settings.fhir_writeback_url:
            from cds.fhir.writeback import WritebackRetryLoop

            WritebackRetryLoop(state.leases.db, settings, writeback_retry_s).start()
        if threads > 0:
            # Each pool child runs one analysis at a time: split the cores instead of every child
            # starting one torch thread per core (oversubscription slows all of them down).
            import torch

            torch.set_num_threads(threads)

    # Logging is the caller's (cds.cli -> cds.logs: JSON lines, no PHI); a receiver on this signal
    # stops Celery from installing its own handlers over it.
    setup_logging.connect(lambda **_: None, weak=False)
    worker_process_init.connect(_child_init, weak=False)
    worker_ready.connect(lambda **_: sweeper.start(), weak=False)
    worker_shutdown.connect(lambda **_: sweeper.stop(), weak=False)
    argv = [
        "worker",
        f"--loglevel={loglevel}",
        "--pool=prefork",
        f"--concurrency={concurrency}",
        f"--queues={','.join(queue_names(tuple(kinds)))}",
        f"--hostname={node_name or 'cds@%h'}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    app.worker_main(argv)
    return 0
