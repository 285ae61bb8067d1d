"""`cds serve --host H --port P`: upgrade the schema, start local job workers, serve the app.

The one-machine path (embedded defaults: SQLite, local DICOM folder, in-process jobs) on
Werkzeug's threaded server. Production runs gunicorn with docker/gunicorn.conf.py and separate
`cds worker` processes instead.
"""

from __future__ import annotations

import argparse
import logging
import signal
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="upgrade the database and serve the CDS Hooks service")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument(
        "--job-workers",
        type=int,
        default=None,
        help="in-process analysis worker threads (default CDS_JOB_WORKERS; 0 = none, e.g. with `cds worker`)",
    )
    parser.set_defaults(handler=_serve)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def serve(settings: Any, host: str, port: int, job_workers: int | None = None) -> int:
    """Serve until interrupted (SIGINT/SIGTERM); shared by `cds serve` and `cds demo`."""
    from werkzeug.serving import make_server

    from cds import check_deployable, create_app
    from cds.extensions import services
    from cds.jobs.runner import start_local_runner
    from cds.store.migrate import upgrade

    check_deployable(settings)
    upgrade(settings.resolved_database_url)
    app = create_app(settings)
    workers = settings.job_workers if job_workers is None else job_workers
    runner = None
    if workers > 0 and settings.jobs_backend == "local":
        runner = start_local_runner(services(app).jobs, settings, workers)
        log.info("started %d local job worker thread(s)", workers)
    elif settings.jobs_backend != "local":
        log.info(
            "CDS_JOBS_BACKEND=%s: no in-process job workers (run that backend's workers)",
            settings.jobs_backend,
        )
    else:
        log.warning("no job workers in this process: analyses wait for a `cds worker` process")
    if settings.clients_file is None:
        log.warning("CDS_CLIENTS_FILE is not set: no EHR is trusted, every hook call will get 401")
    # Werkzeug's request log prints every path, and viewer paths carry signed link tokens.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server(host, port, app, threaded=True)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    print(f"serving on http://{host}:{server.port}/cds-services (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if runner is not None:
            runner.stop()
        services(app).close()
    return 0


def _serve(args: argparse.Namespace) -> int:
    from cds.config import Settings

    return serve(Settings.from_env(), args.host, args.port, args.job_workers)
