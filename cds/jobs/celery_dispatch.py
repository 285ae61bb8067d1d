"""Publishing jobs to Celery from the process that enqueues them (web, PACS trigger, CLI).

JobQueue.enqueue commits the job row first (idempotent on its key) and then calls the dispatcher
with the new job, so a hook call publishes at most one message per new job however many calls
race for it. Publishing never fails the caller: if Redis is unreachable the job stays QUEUED in
the database and a worker's sweeper publishes it later (cds.jobs.celery_worker.Sweeper). Only
Celery/kombu are imported here, lazily, on first publish (after gunicorn forked), never torch.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from cds.jobs.celery_app import TASK_NAME, make_celery, queue_name
from cds.jobs.kinds import JobKind

if TYPE_CHECKING:
    from cds.config import Settings
    from cds.jobs.queue import JobQueue
    from cds.store.records import JobRecord

log = logging.getLogger(__name__)

#: Publishing happens inside a hook request: give up quickly (one retry, 1 s connect timeout:
#: at most ~2 s when the broker host does not answer, immediate when it refuses); the sweeper re-sends.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.0, "interval_step": 0.2, "interval_max": 0.2}
PUBLISH_CONNECT_TIMEOUT_S = 1.0


class CeleryPublisher:
    """Sends "run job N" messages; one Celery app per process, built on first use."""

    def __init__(self, settings: Settings, app: Any = None) -> None:
        self._settings = settings
        self._app = app
        self._lock = threading.Lock()

    @property
    def app(self) -> Any:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    app = make_celery(self._settings)
                    app.conf.broker_connection_timeout = PUBLISH_CONNECT_TIMEOUT_S
                    app.conf.broker_transport_options = {
                        **app.conf.broker_transport_options,
                        "socket_connect_timeout": PUBLISH_CONNECT_TIMEOUT_S,
                    }
                    self._app = app
        return self._app

    def publish(self, job_id: int, kind: JobKind, countdown_s: float | None = None) -> bool:
        """True if the broker took the message; False (logged) if not: the job stays queued."""
        try:
            self.app.send_task(
                TASK_NAME,
                args=[int(job_id)],
                queue=queue_name(kind),
                countdown=countdown_s,
                retry=True,
                retry_policy=PUBLISH_RETRY_POLICY,
            )
        except Exception as exc:
            log.warning(
                "job %d (%s) stays queued: broker unavailable (%s); a worker re-sends it",
                job_id, kind, type(exc).__name__,
            )  # fmt: skip
            return False
        return True

    def __call__(self, job: JobRecord) -> None:
        self.publish(job.id, job.kind)


def attach_backend(queue: JobQueue, settings: Settings) -> JobQueue:
    """`queue`, publishing each new job to Celery when CDS_JOBS_BACKEND=celery (else unchanged)."""
    if settings.jobs_backend == "celery":
        queue.dispatcher = CeleryPublisher(settings)
    return queue
