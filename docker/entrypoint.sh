#!/bin/sh
# Container entrypoint. `web`: migrate the schema, then gunicorn. `worker`: background jobs
# (waits for the schema; a Celery worker when CDS_JOBS_BACKEND=celery). Anything else runs as
# given (e.g. `cds pacs poll`, `cds analyze /data/study`).
set -eu
# Prometheus multiprocess files of a previous run would be added to this run's metrics.
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
  rm -rf "$PROMETHEUS_MULTIPROC_DIR"
  mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
fi
case "${1:-web}" in
  web)
    cds db upgrade
    exec gunicorn -c /app/docker/gunicorn.conf.py
    ;;
  worker)
    shift
    exec cds worker "$@"
    ;;
  *)
    exec "$@"
    ;;
esac
