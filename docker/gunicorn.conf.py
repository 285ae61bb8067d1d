"""gunicorn settings for the production web process (docker/Dockerfile; also usable on a host).

    gunicorn -c docker/gunicorn.conf.py

Knobs come from the environment (CDS_WEB_*); the app itself reads its CDS_* settings in
create_app().

Workers and threads. A patient-view call answered from the store is mostly Python CPU (about
0.5-1 ms: JWT check, card building) and only microseconds of SQLite I/O, so throughput needs at
least one process per core (the GIL serialises a process's threads). Spare processes (2 x cores
+ 1) keep every core busy while some workers wait: on PostgreSQL round trips, on FHIR fetches when
the EHR did not prefetch (up to CDS_FHIR_TIMEOUT_S), or while a worker is being recycled. The cap
of 8 bounds memory: each process holds its own engine, key cache, result and report caches
(~100-150 MiB RSS). 4 threads per worker let one process overlap such waits; more threads only
queue CPU-bound calls behind the GIL. On the 2-core development box (5 workers x 4 threads) the
hooks bench could not tell 5x4, 2x4, 2x1, 3x2 and 2x8 apart under the shared load of the day
(bench/hooks_bench.py --web-workers/--web-threads; per-round ratios 9-47 %, server CPU per hook
call 1.9-2.4 ms for every configuration), so the general rule stays the default; re-measure with
those options on the target host before changing it.
Access logs are off by default (cds.weblog.AccessLogger makes that true; stock gunicorn would
write them because of logconfig_dict): viewer URLs carry a signed token, and the hooks blueprint
logs one PHI-free line per call itself. With CDS_WEB_ACCESS_LOG=1 the token segments and query
strings are redacted. Every log line (gunicorn's own and the app's) is one JSON
object (cds.logs.JsonFormatter: ts, level, logger, msg, request_id, service, status,
latency_ms); CDS_LOG_FORMAT=text gives plain lines, CDS_LOG_LEVEL the level.
"""

from __future__ import annotations

import ctypes
import ctypes.util
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


#: glibc mallopt() parameter number of M_ARENA_MAX (malloc.h).
_M_ARENA_MAX = -8


def _cap_malloc_arenas(limit: int) -> int:
    """Cap glibc's malloc arenas for this process and the workers forked from it; the cap applied
    (0: none, glibc's default of 8 per core, also when MALLOC_ARENA_MAX is set or libc is not glibc).

    Memory. glibc gives a thread that finds the main arena locked its own arena and never gives it
    back, and freed memory of one arena cannot serve another, so each of a worker's 4 threads ends
    up holding its own high-water mark of temporaries (a DiagnosticReport build makes megabytes of
    them). The soak's probe (bench/soak_bench.py --probe) saw a worker's resident memory step up by
    ~6 MiB when a new thread first served a call, with live Python objects flat. With the GIL, a
    worker's threads hardly ever malloc at the same time, so per-thread arenas buy no speed here;
    2 arenas is the usual setting for threaded Python and Ruby servers (MALLOC_ARENA_MAX=2).
    """
    if limit <= 0 or os.environ.get("MALLOC_ARENA_MAX"):
        return 0
    name = ctypes.util.find_library("c")
    if not name:
        return 0
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to cap
        return 0
    return limit if mallopt(_M_ARENA_MAX, limit) == 1 else 0


malloc_arenas = _cap_malloc_arenas(_int("CDS_WEB_MALLOC_ARENAS", 2))

wsgi_app = "cds:create_app()"
bind = os.environ.get("CDS_WEB_BIND", "0.0.0.0:8080")
workers = _int("CDS_WEB_WORKERS", min(2 * multiprocessing.cpu_count() + 1, 8))
worker_class = "gthread"
threads = _int("CDS_WEB_THREADS", 4)
timeout = _int("CDS_WEB_TIMEOUT_S", 30)
graceful_timeout = _int("CDS_WEB_GRACEFUL_TIMEOUT_S", 20)
keepalive = _int("CDS_WEB_KEEPALIVE_S", 5)
# Recycle workers now and then (bounded memory growth), staggered so they never restart together.
# Not too often: a fresh worker pays ~1-1.5 s of CPU for imports and create_app plus ~0.3 s for its
# first hook call (runtime, result, FHIR report), so at full load (~200 hook calls/s per worker on
# 2 cores) the former 20000 meant a cold start per worker every ~100 s, in the middle of traffic.
max_requests = _int("CDS_WEB_MAX_REQUESTS", 100000)
max_requests_jitter = max(1, max_requests // 10) if max_requests else 0
limit_request_line = 8190
limit_request_fields = 100
accesslog = "-" if os.environ.get("CDS_WEB_ACCESS_LOG", "").lower() in {"1", "true", "yes"} else None
# Stock gunicorn writes the access log whenever logconfig_dict is set (below), whatever `accesslog`
# says; this class writes it only when `accesslog` is set, with token paths and queries redacted.
logger_class = "cds.weblog.AccessLogger"
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
