"""Real Redis and real Celery worker processes for the Celery backend tests.

- `RedisServer`: redis-server (Debian package) on a spare loopback port, no persistence, in a
  temporary directory; stopped at the end of the session.
- `WorkerProcess`: `python tests/jobs/celery_harness.py` = cds.jobs.celery_worker.run_worker with
  the product's code path and a registry whose ANALYZE handler is the test's boundary: it logs
  each start/finish to the file named in the job payload (the side effects the tests count),
  sleeps, and fails on the attempts the payload asks for. Started in its own session, so a test
  can SIGKILL one pool child or the whole worker (main process and children) at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from cds.config import Settings
from cds.jobs.celery_dispatch import attach_backend
from cds.jobs.kinds import JobStatus
from cds.jobs.queue import JobQueue
from cds.store.db import Database

HARNESS = Path(__file__).resolve()
ROOT = HARNESS.parents[2]


def spare_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path

    _next_db: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def fresh_url(self) -> str:
        """A broker URL on a Redis database no earlier test used (a message left over from one
        test's database must never reach another test's jobs with the same id)."""
        self._next_db += 1
        if self._next_db > 15:
            raise RuntimeError("out of Redis databases (16)")
        return f"redis://127.0.0.1:{self.port}/{self._next_db}"

    def client(self) -> object:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_redis() -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed (apt-get install redis-server; .ci/setup does it)"
        if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    workdir = Path(tempfile.mkdtemp(prefix="cds-redis-"))
    port = spare_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--protected-mode", "yes", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = RedisServer(port=port, process=process, workdir=workdir)
    import redis

    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping()
            return server
        except redis.RedisError:
            if time.monotonic() > deadline or process.poll() is not None:
                server.stop()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


class WorkerProcess:
    """One `run_worker` process (its own session: the main process and its pool children)."""

    def __init__(self, env: Mapping[str, str], log_path: Path, concurrency: int = 1) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, str(HARNESS), str(concurrency)],
            env=full_env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if b" ready." in self.log_path.read_bytes():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"celery worker not ready:\n{self.log_path.read_text()[-3000:]}")

    def descendants(self) -> list[int]:
        """Pids of the pool children (and theirs), from /proc."""
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(stat.parent.name)] = int(fields[1])
        found, frontier = [], [self.process.pid]
        while frontier:
            pid = frontier.pop()
            kids = [child for child, parent in parents.items() if parent == pid]
            found += kids
            frontier += kids
        return found

    def kill_all(self) -> None:
        """SIGKILL the main process and every pool child at once (a lost host/container)."""
        for pid in [self.process.pid, *self.descendants()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        children = self.descendants()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill_all()
        for pid in children:  # pool children that outlived their parent
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._log.close()


LEASE_S = 4.0


@dataclass
class CeleryEnv:
    db: Database
    url: str
    redis: RedisServer
    broker_url: str
    tmp: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "CDS_DATABASE_URL": self.url,
            "CDS_DATA_DIR": str(self.tmp),
            "CDS_JOBS_BACKEND": "celery",
            "CDS_BROKER_URL": self.broker_url,
            "CDS_JOB_LEASE_S": str(LEASE_S),
            "CDS_JOB_RETRY_DELAY_S": "0.5",
            "CDS_BROKER_VISIBILITY_TIMEOUT_S": "3",
            "CDS_TEST_REDISPATCH_AFTER_S": "2",
            **extra,
        }

    def settings(self, broker_url: str | None = None) -> Settings:
        return Settings(
            data_dir=self.tmp,
            database_url=self.url,
            jobs_backend="celery",
            broker_url=broker_url or self.broker_url,
        )

    def queue(self, broker_url: str | None = None) -> JobQueue:
        """The web process's queue: enqueue commits the row, then publishes (cds.extensions)."""
        return attach_backend(JobQueue(self.db), self.settings(broker_url))


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def celery_env(
    request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CeleryEnv]:
    from cds.store.migrate import upgrade

    tmp = tmp_path_factory.mktemp(f"celery-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'cds.db'}"
        cluster = None
    else:
        cluster = request.getfixturevalue("postgres_cluster")
        url = cluster.create_database()
    upgrade(url)
    db = Database(url)
    try:
        yield CeleryEnv(db=db, url=url, redis=redis_server, broker_url=redis_server.fresh_url(), tmp=tmp)
    finally:
        db.dispose()
        if cluster is not None:
            cluster.drop_database(url)


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def events(log: Path) -> list[tuple[str, int, int, int]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        event, job_id, attempt, pid = line.split()
        out.append((event, int(job_id), int(attempt), int(pid)))
    return out


def count(log: Path, event: str) -> int:
    return sum(1 for e in events(log) if e[0] == event)


def job_status(env: CeleryEnv, job_id: int) -> JobStatus:
    job = JobQueue(env.db).get(job_id)
    assert job is not None
    return job.status


def payload_for(env: CeleryEnv, name: str, **extra: object) -> tuple[Path, dict[str, object]]:
    log = env.tmp / f"{name}.events"
    return log, {"log": str(log), **extra}


# --- inside the worker process ---------------------------------------------------------------


def _record(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _registry() -> object:
    from cds.jobs.kinds import JobKind
    from cds.jobs.registry import HandlerRegistry, JobContext, PermanentJobError

    def run(ctx: JobContext) -> None:
        p = ctx.payload
        log = str(p["log"])
        _record(log, f"start {ctx.job_id} {ctx.attempt} {os.getpid()}")
        time.sleep(float(p.get("sleep_s", 0.0)))
        if ctx.attempt <= int(p.get("fail_until_attempt", 0)):
            _record(log, f"fail {ctx.job_id} {ctx.attempt} {os.getpid()}")
            if p.get("permanent"):
                raise PermanentJobError("the payload asks for a permanent failure")
            raise RuntimeError("the payload asks for a transient failure")
        _record(log, f"done {ctx.job_id} {ctx.attempt} {os.getpid()}")

    def on_failure(ctx: JobContext, error: str) -> None:
        _record(str(ctx.payload["log"]), f"on_failure {ctx.job_id} {ctx.attempt} {os.getpid()}")

    registry = HandlerRegistry()
    registry.register(JobKind.ANALYZE, run, on_failure)
    return registry


def _main() -> int:
    from cds.jobs.celery_worker import run_worker
    from cds.logs import configure_logging

    configure_logging(fmt="text")
    concurrency = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    return run_worker(
        Settings.from_env(),
        concurrency=concurrency,
        registry_factory=_registry,  # type: ignore[arg-type]
        torch_threads=0,
        redispatch_after_s=float(os.environ.get("CDS_TEST_REDISPATCH_AFTER_S", "300")),
        writeback_retry_s=float(os.environ.get("CDS_TEST_WRITEBACK_RETRY_S", "60")),
        loglevel="INFO",
    )


if __name__ == "__main__":
    sys.exit(_main())
