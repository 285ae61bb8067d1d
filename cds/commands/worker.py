"""`cds worker`: run analysis/explanation jobs from the database queue (no web server).

The production counterpart of the threads `cds serve` starts: run as many worker processes as
the CPUs allow, on any host that reaches the database and the images. Workers never migrate the
schema (the web entrypoint does); they wait until it is current, so start order does not matter.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("worker", help="run background analysis jobs (local thread runner)")
    parser.add_argument("--threads", type=int, default=None, help="worker threads (default CDS_JOB_WORKERS)")
    parser.add_argument(
        "--schema-wait-s",
        type=float,
        default=300.0,
        help="how long to wait for `cds db upgrade` (default 300)",
    )
    parser.add_argument("--until-idle", action="store_true", help="run the due jobs, then exit")
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


def _worker(args: argparse.Namespace) -> int:
    from cds.config import Settings, SettingsError
    from cds.jobs.handlers import default_registry
    from cds.jobs.queue import JobQueue
    from cds.jobs.runner import LocalRunner
    from cds.store.db import Database

    settings = Settings.from_env()
    if settings.jobs_backend != "local":
        raise SettingsError(f"`cds worker` runs the local backend; CDS_JOBS_BACKEND={settings.jobs_backend}")
    url = settings.resolved_database_url
    wait_for_schema(url, args.schema_wait_s)
    db = Database(url)
    queue = JobQueue(db)
    threads = args.threads if args.threads is not None else max(1, settings.job_workers)
    runner = LocalRunner(queue, default_registry(), settings, workers=threads)
    try:
        if args.until_idle:
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
