"""gunicorn settings for the production web process (docker/Dockerfile; also usable on a host).

    gunicorn -c docker/gunicorn.conf.py

Knobs come from the environment (CDS_WEB_*); the app itself reads its CDS_* settings in
create_app(). Threads per worker matter more than processes here: a hook call mostly waits on
the database, and each process holds its own engine, key cache and result cache.
Access logs are off by default: viewer URLs carry a signed token, and the hooks blueprint logs
one PHI-free line per call itself. Every log line (gunicorn's own and the app's) is one JSON
object (cds.logs.JsonFormatter: ts, level, logger, msg, request_id, service, status,
latency_ms); CDS_LOG_FORMAT=text gives plain lines, CDS_LOG_LEVEL the level.
"""

from __future__ import annotations

import multiprocessing
import os


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from exc


wsgi_app = "cds:create_app()"
bind = os.environ.get("CDS_WEB_BIND", "0.0.0.0:8080")
workers = _int("CDS_WEB_WORKERS", min(2 * multiprocessing.cpu_count() + 1, 8))
worker_class = "gthread"
threads = _int("CDS_WEB_THREADS", 4)
timeout = _int("CDS_WEB_TIMEOUT_S", 30)
graceful_timeout = _int("CDS_WEB_GRACEFUL_TIMEOUT_S", 20)
keepalive = _int("CDS_WEB_KEEPALIVE_S", 5)
# Recycle workers now and then (bounded memory growth), staggered so they never restart together.
max_requests = _int("CDS_WEB_MAX_REQUESTS", 20000)
max_requests_jitter = max(1, max_requests // 10) if max_requests else 0
limit_request_line = 8190
limit_request_fields = 100
accesslog = "-" if os.environ.get("CDS_WEB_ACCESS_LOG", "").lower() in {"1", "true", "yes"} else None
errorlog = "-"
loglevel = os.environ.get("CDS_WEB_LOG_LEVEL", os.environ.get("CDS_LOG_LEVEL", "info")).lower()
_LOG_FORMATTER = (
    {"()": "cds.logs.TextFormatter"}
    if os.environ.get("CDS_LOG_FORMAT", "json").lower() == "text"
    else {"()": "cds.logs.JsonFormatter"}
)
# One handler on stderr for the app (root logger) and gunicorn's own loggers, all in one format.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"cds": _LOG_FORMATTER},
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "cds", "stream": "ext://sys.stderr"}
    },
    "root": {"level": loglevel.upper(), "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": loglevel.upper(), "handlers": ["stderr"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        # URLs with signed tokens / SQL with bound values at INFO: never.
        "werkzeug": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
    },
}
# Behind a TLS-terminating proxy: trust its X-Forwarded-* only from these addresses.
forwarded_allow_ips = os.environ.get("CDS_WEB_FORWARDED_ALLOW_IPS", "127.0.0.1")
proc_name = "cds-web"


def child_exit(server: object, worker: object) -> None:
    """Prometheus multiprocess mode: drop a dead worker's live gauges (cds.ops.metrics)."""
    from cds.ops.metrics import mark_process_dead

    mark_process_dead(int(getattr(worker, "pid", 0)))
