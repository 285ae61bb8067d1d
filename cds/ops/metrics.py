"""Prometheus metrics of the service: defined once here, observed with one call where they happen.

What is measured and where:
- hook latency: `observe_hook(...)`, called once per request by the hooks blueprint;
- job (analysis and explanation) durations: `observe_job(...)`, called by both job runners
  (local threads and Celery) around the handler;
- job queue depth by kind and status, and the model versions: computed from the database and the
  model cards when /metrics is scraped (collectors below), so they are right whichever process
  changed them.

Several processes (gunicorn workers, Celery pool children): prometheus_client's multiprocess
mode. Set PROMETHEUS_MULTIPROC_DIR to an empty directory, private to one host and emptied at
start, before the processes start (docker/entrypoint.sh does this); every process then writes its
samples there and /metrics adds them up. Without it each process counts alone, which is right
only for a single process (`cds serve`). prometheus_client reads that variable itself when it is
first imported. Labels never carry patient data, study ids or free text; label values come from
closed sets (service ids of the registry, HTTP status, job kind/outcome).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from cds.jobs.kinds import JobKind, JobStatus

if TYPE_CHECKING:
    from cds.config import Settings
    from cds.store.db import Database

log = logging.getLogger(__name__)

#: Hook calls should answer in tens of milliseconds; the tail buckets show overload.
HOOK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
#: A quick read takes seconds, an explanation tens of seconds (minutes with a local LLM).
JOB_BUCKETS = (0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0)

HOOK_LATENCY = Histogram(
    "cds_hook_request_duration_seconds",
    "Time to answer a CDS Hooks request (service call or feedback), by service, endpoint and status.",
    ["service", "endpoint", "status"],
    buckets=HOOK_BUCKETS,
)
JOB_DURATION = Histogram(
    "cds_job_duration_seconds",
    "Wall time of one job attempt (kind=analyze: the analysis duration), by kind and outcome.",
    ["kind", "outcome"],
    buckets=JOB_BUCKETS,
)

#: Endpoints of the hooks blueprint a latency is observed for.
HOOK_ENDPOINTS = frozenset({"service", "feedback", "discovery"})
#: Outcomes of a job attempt (JOB_DURATION's `outcome` label).
JOB_OUTCOMES = frozenset({"done", "retry", "failed"})


def _known_service(service: str) -> str:
    """The service id if the registry knows it, else "unknown": a label per posted URL would let
    any client grow the metric without bound."""
    try:
        from cds.hooks.registry import BY_ID
    except ImportError:  # pragma: no cover - the hooks package is part of the product
        return "unknown"
    return service if service in BY_ID else "unknown"


def observe_hook(service: str, endpoint: str, status: int, seconds: float) -> None:
    """Record one hooks request. `endpoint`: "service" (a hook call), "feedback" or "discovery"."""
    HOOK_LATENCY.labels(
        service=_known_service(service),
        endpoint=endpoint if endpoint in HOOK_ENDPOINTS else "other",
        status=str(int(status)),
    ).observe(max(0.0, seconds))


def observe_job(kind: JobKind | str, outcome: str, seconds: float) -> None:
    """Record one job attempt: outcome "done", "retry" (failed, will run again) or "failed" (final)."""
    kind_value = kind.value if isinstance(kind, JobKind) else str(kind)
    if kind_value not in {k.value for k in JobKind}:
        kind_value = "other"
    JOB_DURATION.labels(kind=kind_value, outcome=outcome if outcome in JOB_OUTCOMES else "other").observe(
        max(0.0, seconds)
    )


# --- collectors computed at scrape time -----------------------------------------------------------


class JobQueueCollector(Collector):
    """`cds_jobs{kind,status}`: jobs in the database per kind and status (queued = the backlog)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def collect(self) -> Iterator[Metric]:
        from cds.store.records import JobRecord

        family = GaugeMetricFamily(
            "cds_jobs", "Jobs in the database queue by kind and status.", labels=["kind", "status"]
        )
        counts = {(k.value, s.value): 0 for k in JobKind for s in JobStatus}
        try:
            with self._db.session(readonly=True) as s:
                rows = s.execute(
                    sa.select(JobRecord.kind, JobRecord.status, sa.func.count()).group_by(
                        JobRecord.kind, JobRecord.status
                    )
                ).all()
        except Exception as exc:  # a scrape must not fail because the database is down (/readyz says so)
            log.warning("metrics: job counts unavailable (%s)", type(exc).__name__)
            return
        for row_kind, row_status, count in rows:
            counts[(JobKind(row_kind).value, JobStatus(row_status).value)] = int(count)
        for (kind_label, status_label), count in sorted(counts.items()):
            family.add_metric([kind_label, status_label], count)
        yield family


class BrokerQueueCollector(Collector):
    """`cds_broker_queue_length{queue}`: messages waiting in the Redis broker (Celery backend)."""

    def __init__(self, broker_url: str, queues: Iterable[str]) -> None:
        self._url = broker_url
        self._queues = tuple(queues)

    def collect(self) -> Iterator[Metric]:
        if not self._url.startswith(("redis://", "rediss://")):
            return
        import redis

        family = GaugeMetricFamily(
            "cds_broker_queue_length", "Messages waiting in the broker, per queue.", labels=["queue"]
        )
        try:
            client = redis.Redis.from_url(self._url, socket_timeout=1.0, socket_connect_timeout=1.0)
            try:
                for queue in self._queues:
                    family.add_metric([queue], int(client.llen(queue)))
            finally:
                client.close()
        except Exception as exc:
            log.warning("metrics: broker queue length unavailable (%s)", type(exc).__name__)
            return
        yield family


class ModelInfoCollector(Collector):
    """`cds_model_info{name,version,sha256}` = 1 per model card (which weights this host serves)."""

    def __init__(self, names: Iterable[str], models_dir: Path | None = None) -> None:
        self._names = tuple(names)
        self._models_dir = models_dir

    def collect(self) -> Iterator[Metric]:
        from cds.errors import ModelError
        from cds.ml.spec import read_card

        family = InfoMetricFamily(
            "cds_model", "Model cards installed on this host.", labels=["name", "version", "sha256"]
        )
        for name in self._names:
            try:
                spec = read_card(name, self._models_dir)
            except ModelError:
                continue  # /readyz reports it
            family.add_metric([spec.name, spec.version, spec.sha256[:12]], {})
        yield family


class _DefaultRegistryCollector(Collector):
    """This process's own metrics (single-process mode): the default registry's collectors."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def process_collector() -> Collector:
    """All processes' samples in multiprocess mode, else this process's default registry."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        holder = CollectorRegistry()
        multiprocess.MultiProcessCollector(holder)
        return _RegistryCollector(holder)
    return _DefaultRegistryCollector()


class _RegistryCollector(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()


def build_registry(
    db: Database, settings: Settings, model_names: Iterable[str], models_dir: Path | None = None
) -> CollectorRegistry:
    """The registry /metrics renders: process samples + queue depth + broker + model cards."""
    from cds.jobs.celery_app import queue_names

    registry = CollectorRegistry(auto_describe=False)
    registry.register(process_collector())
    registry.register(JobQueueCollector(db))
    registry.register(ModelInfoCollector(model_names, models_dir))
    if settings.jobs_backend == "celery":
        registry.register(BrokerQueueCollector(settings.broker_url, queue_names()))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def mark_process_dead(pid: int) -> None:
    """gunicorn's child_exit hook: drop a dead worker's live gauges (multiprocess mode only)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
