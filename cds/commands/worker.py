"""`cds worker`: run analysis/explanation jobs (no web server), local or Celery per CDS_JOBS_BACKEND.

The production counterpart of the threads `cds serve` starts: run as many worker processes as
the CPUs allow, on any host that reaches the database and the images. CDS_JOBS_BACKEND=local
polls the database queue with threads; CDS_JOBS_BACKEND=celery runs a Celery worker (prefork
pool) fed by the Redis broker, over the same handlers and the same job rows. Workers never
migrate the schema (the web entrypoint does); they wait until it is current, so start order does
not matter.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

from cds.jobs.kinds import JobKind

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "worker", help="run background analysis jobs (local threads or Celery, per CDS_JOBS_BACKEND)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="jobs run at once: threads (local) or pool processes (celery); default CDS_JOB_WORKERS",
    )
    parser.add_argument(
        "--kinds",
        default=",".join(k.value for k in JobKind),
        help="celery: job kinds (queues) this worker takes, comma-separated (default: all)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="celery: torch threads per pool process (default: CPU cores / --threads)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve this worker's Prometheus metrics on 0.0.0.0:PORT (celery needs PROMETHEUS_MULTIPROC_DIR)",
    )
    parser.add_argument(
        "--schema-wait-s",
        type=float,
        default=300.0,
        help="how long to wait for `cds db upgrade` (default 300)",
    )
    parser.add_argument("--until-idle", action="store_true", help="local: run the due jobs, then exit")
    parser.set_defaults(handler=_worker)


def wait_for_schema(url: str, timeout_s: float) -> None:
    from cds.errors import CdsError
    from cds.store.migrate import current_revision, head_revision

    head = head_revision()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if current_revision(url) == head:
                return
        except Exception as exc:  # database not up yet (compose start order)
            log.info("database not ready (%s); waiting", type(exc).__name__)
        if time.monotonic() >= deadline:
            raise CdsError(f"database schema is not at {head} after {timeout_s:.0f} s: run `cds db upgrade`")
        time.sleep(2.0)


def _kinds(raw: str) -> tuple[JobKind, ...]:
    from cds.config import SettingsError

    try:
        kinds = tuple(JobKind(part.strip()) for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise SettingsError(f"--kinds: {exc}; known kinds: {', '.join(k.value for k in JobKind)}") from exc
    if not kinds:
        raise SettingsError("--kinds names no job kind")
    return kinds


def _start_metrics_server(port: int, backend: str) -> None:
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

    from cds.config import SettingsError
    from cds.ops.metrics import multiprocess_dir

    if multiprocess_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    elif backend == "celery":
        raise SettingsError("--metrics-port with Celery needs PROMETHEUS_MULTIPROC_DIR (pool children)")
    else:
        registry = REGISTRY
    start_http_server(port, registry=registry)
    log.info("worker metrics on :%d/metrics", port)


def _worker(args: argparse.Namespace) -> int:
    from cds.config import Settings, SettingsError

    settings = Settings.from_env()
    kinds = _kinds(args.kinds)
    if settings.jobs_backend == "celery" and args.until_idle:
        raise SettingsError("--until-idle runs the local backend only (CDS_JOBS_BACKEND=local)")
    threads = args.threads if args.threads is not None else max(1, settings.job_workers)
    if threads < 1:
        raise SettingsError("--threads must be >= 1")
    url = settings.resolved_database_url
    if settings.worker_nice and not args.until_idle:
        # Analyses are batch work; hook calls are answered while a clinician waits. Where both share
        # CPUs, the scheduler should serve the web tier first (a lower priority is inherited by the
        # Celery pool processes and torch's threads). On a dedicated worker host this changes nothing.
        os.nice(settings.worker_nice)
        log.info("worker CPU priority lowered: nice +%d (CDS_WORKER_NICE)", settings.worker_nice)
    wait_for_schema(url, args.schema_wait_s)
    if settings.jobs_backend == "celery":
        from cds.jobs.celery_worker import run_worker

        if args.metrics_port is not None:
            _start_metrics_server(args.metrics_port, "celery")
        log.info("celery worker: %d pool process(es), kinds %s", threads, ",".join(kinds))
        return run_worker(settings, concurrency=threads, kinds=kinds, torch_threads=args.torch_threads)
    if args.metrics_port is not None:
        _start_metrics_server(args.metrics_port, "local")
    return _local_worker(settings, url, threads, args.until_idle)


def _local_worker(settings: Any, url: str, threads: int, until_idle: bool) -> int:
    from cds.jobs.handlers import default_registry
    from cds.jobs.queue import JobQueue
    from cds.jobs.runner import LocalRunner
    from cds.store.db import Database

    db = Database(url)
    queue = JobQueue(db)
    runner = LocalRunner(queue, default_registry(), settings, workers=threads, dedicated_process=True)
    try:
        if until_idle:
            done = runner.run_until_idle()
            print(f"ran {done} job(s)")
            return 0
        stop = threading.Event()

        def _stop(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        runner.start()
        log.info("worker running %d thread(s); waiting for jobs", threads)
        stop.wait()
        log.info("stopping: finishing jobs in progress")
        runner.stop()
        return 0
    finally:
        db.dispose()
