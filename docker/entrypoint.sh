#!/bin/sh
# Container entrypoint. `web`: migrate the schema, then gunicorn. `worker`: background jobs
# (waits for the schema). Anything else runs as given (e.g. `cds analyze /data/study`).
set -eu
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
