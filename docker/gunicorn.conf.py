"""gunicorn settings for the production web process (docker/Dockerfile; also usable on a host).

    gunicorn -c docker/gunicorn.conf.py

Knobs come from the environment (CDS_WEB_*); the app itself reads its CDS_* settings in
create_app().

Workers and threads: one process per core, one request thread each (CDS_WEB_WORKERS,
CDS_WEB_THREADS). A patient-view call answered from the store is Python CPU (JWT check, card
building) and a few SQLite/PostgreSQL statements, so more request threads than cores only queue
behind the GIL, and each GIL hand-off (every statement and socket call releases it) costs a
context switch. Measured on the 2-core development box, idle, bench/hooks_bench.py --web-workers
W --web-threads T (RS384 share of the same round's bare floor; server CPU per call):
2x1 29.9 %, 0.77 ms; 4x1 29.4 %; 3x1 27.1 %; 2x2 26.6 %; 3x2 22.9 %; 2x4 18.5 %; 5x4 (the
former default, 2 x cores + 1 processes of 4 threads) 20.0 %, 1.04-1.11 ms. Under load with
analyses running (bench/load_bench.py, 64 clients, 30 s): 2x1 p95 67-81 ms, 2x4 87-100 ms, 5x1
110 ms, 2x2 111 ms, 5x4 145 ms. The cost of this choice: a request that waits on I/O (a FHIR
fetch when the EHR did not prefetch, up to CDS_FHIR_TIMEOUT_S; a remote PostgreSQL) holds its
process meanwhile, so where EHRs do not prefetch or the database is across a network, raise
CDS_WEB_THREADS (2-4) or CDS_WEB_WORKERS and re-measure on the target host. The cap of 8 bounds
memory: each process holds its own engine, key cache, result and report caches (~100-150 MiB).
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
    back, and freed memory of one arena cannot serve another, so each of a worker's threads
    (CDS_WEB_THREADS) ends up holding its own high-water mark of temporaries (a DiagnosticReport
    build makes megabytes of them). The soak's probe (bench/soak_bench.py --probe) saw a worker's
    resident memory step up by ~6 MiB when a new thread first served a call, with live Python
    objects flat. With the GIL, a worker's threads hardly ever malloc at the same time, so
    per-thread arenas buy no speed here; 2 arenas is the usual setting for threaded Python and Ruby
    servers (MALLOC_ARENA_MAX=2).
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


def _usable_cpus() -> int:
    """CPUs this process may run on (a cpuset-limited container sees its own, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return multiprocessing.cpu_count()


workers = _int("CDS_WEB_WORKERS", min(max(2, _usable_cpus()), 8))
worker_class = "gthread"
threads = _int("CDS_WEB_THREADS", 1)
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
