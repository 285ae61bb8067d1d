"""`cds serve --host H --port P`: upgrade the schema, start local job workers, serve the app.

The one-machine path (embedded defaults: SQLite, local DICOM folder, in-process jobs) on
Werkzeug's threaded server. Production runs gunicorn with docker/gunicorn.conf.py and separate
`cds worker` processes instead.

Werkzeug starts one thread per connection, without limit, and each request thread that touches
the hook hot path holds its own database driver connection while it lives (cds.store.db). So the
server here is bounded: at most CDS_SERVE_MAX_THREADS connections are served at once (the accept
loop waits for a free slot; the kernel's listen backlog holds the rest), and an idle keep-alive
connection is closed after KEEPALIVE_IDLE_S so that it does not hold a slot. PostgreSQL then sees
at most CDS_SERVE_MAX_THREADS driver connections plus the session pool's 15 from this process.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

from cds.errors import RequestTimeout

if TYPE_CHECKING:
    from werkzeug.serving import ThreadedWSGIServer

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


#: An idle keep-alive connection is closed after this many seconds (it would hold a thread slot).
KEEPALIVE_IDLE_S = 5.0


class StallGuardedInput:
    """wsgi.input whose socket timeout (a client pausing more than KEEPALIVE_IDLE_S mid-body)
    becomes RequestTimeout: the app answers 408 with an OperationOutcome (cds.weberrors, or the
    hook path's own CdsError handling) instead of a 500 and a TimeoutError traceback in the log.

    Why here: the socket timeout that closes idle keep-alive connections also applies to reading
    the body; only this server knows that a TimeoutError from its input means a stalled client.
    `on_timeout` lets the handler close the connection (the timed-out socket cannot be read again).
    """

    def __init__(self, stream: Any, on_timeout: Callable[[], None]) -> None:
        self._stream = stream
        self._on_timeout = on_timeout

    def _stalled(self) -> RequestTimeout:
        self._on_timeout()
        return RequestTimeout(f"request body not received within {KEEPALIVE_IDLE_S:g} s")

    def read(self, *args: Any) -> bytes:
        try:
            data: bytes = self._stream.read(*args)
        except TimeoutError:
            raise self._stalled() from None
        return data

    def readinto(self, buffer: Any) -> int | None:
        try:
            count: int | None = self._stream.readinto(buffer)
        except TimeoutError:
            raise self._stalled() from None
        return count

    def readline(self, *args: Any) -> bytes:
        try:
            line: bytes = self._stream.readline(*args)
        except TimeoutError:
            raise self._stalled() from None
        return line

    def readlines(self, *args: Any) -> list[bytes]:
        try:
            lines: list[bytes] = self._stream.readlines(*args)
        except TimeoutError:
            raise self._stalled() from None
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def make_bounded_server(host: str, port: int, app: Any, max_threads: int) -> ThreadedWSGIServer:
    """Werkzeug's threaded server with at most `max_threads` connections served at once."""
    from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

    if max_threads < 1:
        raise ValueError("max_threads must be at least 1")

    class IdleClosingHandler(WSGIRequestHandler):
        timeout = KEEPALIVE_IDLE_S  # socket timeout: an idle (or stalled) connection is closed

        def make_environ(self) -> dict[str, Any]:
            environ = super().make_environ()
            environ["wsgi.input"] = StallGuardedInput(environ["wsgi.input"], self._body_stalled)
            return environ

        def _body_stalled(self) -> None:
            self.close_connection = True

    class BoundedThreadedServer(ThreadedWSGIServer):
        def __init__(self) -> None:
            super().__init__(host, port, app, IdleClosingHandler)
            self.slots = threading.BoundedSemaphore(max_threads)

        def process_request(self, request: Any, client_address: Any) -> None:
            self.slots.acquire()  # full: wait here; new connections queue in the listen backlog
            try:
                super().process_request(request, client_address)
            except BaseException:
                self.slots.release()
                raise

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.slots.release()

    return BoundedThreadedServer()


def serve(settings: Any, host: str, port: int, job_workers: int | None = None) -> int:
    """Serve until interrupted (SIGINT/SIGTERM); shared by `cds serve` and `cds demo`."""
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
    server = make_bounded_server(host, port, app, settings.serve_max_threads)
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
