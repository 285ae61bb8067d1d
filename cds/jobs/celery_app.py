"""The Celery application shared by the web process (publishes) and the workers (consume).

Why Celery carries only a job id: the database JobRecord stays the one source of truth for what
a job is, its status, attempts and errors, and results go to the database through the same
handlers as the local runner. A broker message is just "job N may be due now": a duplicate is
harmless (claiming in the database is atomic) and a lost one is re-sent by the workers' sweeper
(cds.jobs.celery_worker), so Redis needs no persistence guarantees and no result backend.

Delivery settings and why:
- acks_late + reject_on_worker_lost: a message is acknowledged only after its job ran, and a
  pool child killed mid-job (OOM, SIGKILL, hard time limit) gives the message back to the broker;
- prefetch 1: analyses take seconds, so a worker must not hoard messages other workers could run;
- soft/hard time limits from CDS_JOB_SOFT_TIME_LIMIT_S / CDS_JOB_TIME_LIMIT_S;
- visibility timeout (Redis): how long an unacknowledged message of a vanished worker waits before
  Redis redelivers it; the database lease (CDS_JOB_LEASE_S) usually recovers such jobs sooner.
Importing this module imports no Celery; make_celery() does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cds.jobs.kinds import JobKind

if TYPE_CHECKING:
    from celery import Celery

    from cds.config import Settings

#: The one task: run the database job with this id.
TASK_NAME = "cds.run_job"


def queue_name(kind: JobKind) -> str:
    """One broker queue per job kind, so that e.g. explanation workers can run on other hosts."""
    return f"cds.{kind.value}"


def queue_names(kinds: tuple[JobKind, ...] = tuple(JobKind)) -> tuple[str, ...]:
    return tuple(queue_name(k) for k in kinds)


def celery_config(settings: Settings) -> dict[str, object]:
    """Celery settings (lower-case names) derived from the CDS settings."""
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3.0,
        "broker_transport_options": {
            "visibility_timeout": settings.broker_visibility_timeout_s,
            "socket_connect_timeout": 3.0,
            "socket_timeout": 10.0,
        },
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "task_store_errors_even_if_ignored": False,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "task_soft_time_limit": settings.job_soft_time_limit_s,
        "task_time_limit": settings.job_time_limit_s,
        "task_default_queue": queue_name(JobKind.ANALYZE),
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": False,
        "worker_hijack_root_logger": False,
        "enable_utc": True,
        "timezone": "UTC",
    }


def memory_limit(settings: Settings) -> dict[str, object]:
    """worker_max_memory_per_child (KiB) when CDS_JOB_MAX_MEMORY_MB is set: a pool process whose
    resident memory is above it after a job is replaced by a fresh one (bounds allocator growth)."""
    if settings.job_max_memory_mb > 0:
        return {"worker_max_memory_per_child": settings.job_max_memory_mb * 1024}
    return {}


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured for `settings` (no tasks registered: the worker adds its task)."""
    from celery import Celery

    app = Celery("cds", set_as_current=False)
    app.conf.update(celery_config(settings), **memory_limit(settings))
    return app
