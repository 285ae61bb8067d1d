"""`cds pacs poll`: follow the PACS's (Orthanc's) change feed and queue every stable lumbar MRI.

The pull half of the PACS trigger (the push half is docker/orthanc/notify.lua). It only registers
studies and enqueues ANALYZE jobs; `cds worker` (or the threads of `cds serve`) runs them. One
poller per PACS is enough; a second one is harmless (the cursor only moves forward and intake is
idempotent).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("pacs", help="PACS trigger: follow Orthanc's change feed")
    actions = parser.add_subparsers(dest="pacs_action", required=True, metavar="ACTION")
    poll = actions.add_parser("poll", help="queue analyses for studies that become stable in Orthanc")
    poll.add_argument("--once", action="store_true", help="read the pending changes, print a summary, exit")
    poll.add_argument(
        "--interval",
        type=float,
        default=None,
        help="seconds between polls (default CDS_PACS_POLL_INTERVAL_S)",
    )
    poll.add_argument(
        "--from-now",
        action="store_true",
        help="on first run, start at the newest change instead of reading the PACS's whole change history",
    )
    poll.add_argument(
        "--schema-wait-s", type=float, default=300.0, help="wait for `cds db upgrade` (default 300)"
    )
    poll.set_defaults(handler=_poll)


def _poll(args: argparse.Namespace) -> int:
    from cds.commands.worker import wait_for_schema
    from cds.config import Settings, SettingsError
    from cds.fhir.writeback import retry_due_writebacks
    from cds.jobs.queue import JobQueue
    from cds.pacs.orthanc import OrthancClient
    from cds.pacs.poller import ChangePoller
    from cds.pacs.retry import retry_due_failures
    from cds.store.db import Database

    settings = Settings.from_env()
    if not settings.dicomweb_url:
        raise SettingsError("CDS_DICOMWEB_URL must name the PACS's DICOMweb root for `cds pacs poll`")
    interval = args.interval if args.interval is not None else settings.pacs_poll_interval_s
    if interval <= 0:
        raise SettingsError("the poll interval must be positive")
    wait_for_schema(settings.resolved_database_url, args.schema_wait_s)
    db = Database(settings.resolved_database_url)
    try:
        queue = JobQueue(db)
        if settings.jobs_backend == "celery":  # publish what the poller enqueues to the broker
            from cds.jobs.celery_dispatch import attach_backend

            attach_backend(queue, settings)
        poller = ChangePoller(db, queue, settings, OrthancClient.from_settings(settings))
        if args.from_now:
            poller.start_from_now()
        if args.once:
            total = stable = queued = skipped = 0
            while True:
                report = poller.poll_once()
                total += report.changes
                stable += report.stable_studies
                queued += report.queued
                skipped += report.skipped
                if report.done:
                    break
            retried = retry_due_failures(db, queue)
            rewritten = retry_due_writebacks(db, settings)
            print(
                f"changes {total}, stable studies {stable}, lumbar MRI queued {queued}, "
                f"skipped {skipped}, cursor {report.cursor}; failed analyses retried {retried}, "
                f"failed write-backs written {rewritten}"
            )
            return 0
        stop = threading.Event()

        def _stop(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        log.info("polling %r every %.1f s", poller.orthanc, interval)
        poller.run(stop, interval)
        return 0
    finally:
        db.dispose()
