"""Worker throughput: studies analysed per hour with the local runner and with 1 and 2 Celery workers.

What it measures: the real ANALYZE job (DICOM load + quick read with the shipped models + store)
on studies made by `cds synth` (cached under --studies, re-used by later runs), run by real
`cds worker` processes against a fresh SQLite database per mode:
- local:   one `cds worker` (CDS_JOBS_BACKEND=local), one job thread;
- celery1: one Celery worker (one pool process), Redis broker;
- celery2: two Celery workers (one pool process each), like `docker compose up --scale worker=2`
           on one host.
Torch threads per worker process: --torch-threads, default CPU cores / workers (2, 2, 1 here);
on a loaded machine torch's busy-waiting threads suffer most, so compare modes at equal
--torch-threads too.
Each mode first analyses one warm-up study per worker (process start, torch import, model load:
reported apart), then all --n studies are requested at once (the web path: request_analysis ->
JobQueue, published to Redis for Celery) and the clock runs until the last is stored.
studies/hour = n / wall time; per study = the job's started -> finished time (median, p95).
Explanation jobs are switched off (CDS_EXPLAIN_EAGER=off): this is the analysis throughput.

Run:   .venv/bin/python bench/worker_bench.py [--n 12] [--modes local,celery1,celery2]
Needs: redis-server (Debian), the shipped models. Prints `uptime` before and after each mode:
figures from a loaded machine are not comparable to an idle one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CDS = Path(sys.executable).with_name("cds")
TERMINAL = ("complete", "unanalysable", "failed")


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def spare_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- studies -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchStudy:
    uid: str
    dicom: Path


def ensure_studies(folder: Path, n: int, seed: int) -> list[BenchStudy]:
    """n studies from `cds synth --seed seed` in `folder` (generated once, re-used afterwards)."""
    found = sorted(p for p in folder.glob("*/dicom") if p.is_dir()) if folder.is_dir() else []
    if len(found) < n:
        print(f"generating {n} studies with `cds synth` into {folder} (once) ...", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run(
            ["nice", "-n", "5", str(CDS), "synth", "--out", str(folder), "--n", str(n), "--seed", str(seed),
             "--workers", "2", "--no-progress"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        found = sorted(p for p in folder.glob("*/dicom") if p.is_dir())
    studies = []
    for dicom in found[:n]:
        truth = json.loads((dicom.parent / "truth" / "findings.json").read_text())
        studies.append(BenchStudy(uid=str(truth["study_uid"]), dicom=dicom))
    return studies


# --- servers and workers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisHandle:
    base: str  # redis://127.0.0.1:PORT (append /DB)
    pid: int


@contextmanager
def redis_server() -> Iterator[RedisHandle]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    import redis

    work = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    port = spare_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(work), "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start") from None
                time.sleep(0.05)
        yield RedisHandle(f"redis://127.0.0.1:{port}", proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


class Process:
    """A child process in its own session, stopped with SIGTERM (then SIGKILL) at the end."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        self.log = log
        self._fh = log.open("ab")
        self.proc = subprocess.Popen(
            list(argv), env={**os.environ, **env}, cwd=ROOT, stdout=self._fh, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pids(self) -> list[int]:
        """This process and its descendants (pool children), from /proc."""
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
        found, frontier = [self.pid], [self.pid]
        while frontier:
            pid = frontier.pop()
            kids = [c for c, p in parents.items() if p == pid]
            found += kids
            frontier += kids
        return found

    def stop(self, timeout_s: float = 60.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the main process stops its own pool children
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._fh.close()


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def worker_env(db_url: str, data_dir: Path, backend: str, broker: str) -> dict[str, str]:
    return {
        "CDS_DATABASE_URL": db_url,
        "CDS_DATA_DIR": str(data_dir),
        "CDS_JOBS_BACKEND": backend,
        "CDS_BROKER_URL": broker,
        "CDS_EXPLAIN_EAGER": "off",
        "CDS_LOG_FORMAT": "text",
        "CDS_SECRET_KEY": "bench-only-secret-key-0123456789abcdef",
    }


# --- one mode ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModeResult:
    mode: str
    workers: int
    n: int
    wall_s: float
    per_study_s: list[float]
    warmup_s: float
    statuses: dict[str, int]
    load_before: str
    load_after: str

    @property
    def per_hour(self) -> float:
        return self.n / self.wall_s * 3600.0


def register(db: object, studies: Sequence[BenchStudy]) -> None:
    from cds.store import queries

    with db.session() as s:  # type: ignore[attr-defined]
        for i, st in enumerate(studies):
            queries.upsert_study(s, st.uid, patient_ref=f"Patient/bench-{i}", source_uri=str(st.dicom))


def wait_analysed(db: object, uids: Sequence[str], timeout_s: float) -> dict[str, str]:
    from cds.store import queries

    deadline = time.monotonic() + timeout_s
    while True:
        with db.session(readonly=True) as s:  # type: ignore[attr-defined]
            states = {}
            for uid in uids:
                record = queries.latest_analysis(s, uid)
                states[uid] = record.status.value if record is not None else "none"
        if all(v in TERMINAL for v in states.values()):
            return states
        if time.monotonic() > deadline:
            raise SystemExit(f"not analysed within {timeout_s:.0f} s: {states}")
        time.sleep(0.2)


def run_mode(
    mode: str,
    studies: Sequence[BenchStudy],
    warmups: Sequence[BenchStudy],
    broker: str,
    work: Path,
    timeout_s: float,
    torch_threads: int | None = None,
) -> ModeResult:
    import sqlalchemy as sa

    from cds.config import Settings
    from cds.jobs.analysis import request_analysis
    from cds.jobs.celery_dispatch import attach_backend
    from cds.jobs.queue import JobQueue
    from cds.store.db import Database
    from cds.store.migrate import upgrade
    from cds.store.records import JobRecord

    backend = "local" if mode == "local" else "celery"
    workers = 2 if mode == "celery2" else 1
    folder = work / mode
    folder.mkdir(parents=True)
    url = f"sqlite:///{folder / 'cds.db'}"
    upgrade(url)
    db = Database(url)
    queue = attach_backend(JobQueue(db), Settings(database_url=url, jobs_backend=backend, broker_url=broker))
    register(db, [*warmups[:workers], *studies])
    env = worker_env(url, folder / "data", backend, broker)
    threads = torch_threads or max(1, (os.cpu_count() or 1) // workers)
    env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads, local runner included
    argv = [str(CDS), "worker", "--threads", "1"]
    if backend == "celery":
        argv += ["--torch-threads", str(threads)]
    procs = [Process(argv, env, folder / f"worker-{i}.log") for i in range(workers)]
    try:
        t0 = time.monotonic()
        for st in warmups[:workers]:
            request_analysis(db, queue, st.uid)
        wait_analysed(db, [st.uid for st in warmups[:workers]], timeout_s)
        warmup_s = time.monotonic() - t0
        before = uptime()
        t0 = time.monotonic()
        for st in studies:
            request_analysis(db, queue, st.uid)
        states = wait_analysed(db, [st.uid for st in studies], timeout_s)
        wall = time.monotonic() - t0
        after = uptime()
        with db.session(readonly=True) as s:
            jobs = s.scalars(sa.select(JobRecord)).all()
            warm_keys = {st.uid for st in warmups}
            per_study = [
                (j.finished_at - j.started_at).total_seconds()
                for j in jobs
                if j.finished_at and j.started_at and str(j.payload.get("study_uid")) not in warm_keys
            ]
    finally:
        for p in procs:
            p.stop()
        db.dispose()
    counts: dict[str, int] = {}
    for v in states.values():
        counts[v] = counts.get(v, 0) + 1
    return ModeResult(mode, workers, len(studies), wall, per_study, warmup_s, counts, before, after)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12, help="studies measured per mode")
    parser.add_argument("--modes", default="local,celery1,celery2")
    parser.add_argument("--seed", type=int, default=7700, help="cds synth seed of the cached studies")
    parser.add_argument("--studies", type=Path, default=Path(tempfile.gettempdir()) / "cds-bench-studies")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per mode before giving up")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch threads per worker process in every mode (default: CPU cores / workers)",
    )
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(modes) <= {"local", "celery1", "celery2"}:
        raise SystemExit("--modes: local, celery1, celery2")
    pool = ensure_studies(args.studies, args.n + 2, args.seed)
    warmups, studies = pool[:2], pool[2 : 2 + args.n]
    print(f"{len(studies)} studies from {args.studies} (+2 warm-up); {os.cpu_count()} CPUs; {uptime()}")
    results = []
    with tempfile.TemporaryDirectory(prefix="worker-bench-") as tmp, redis_server() as redis:
        for i, mode in enumerate(modes):
            print(f"\n== {mode}", flush=True)
            broker = f"{redis.base}/{i}"
            result = run_mode(mode, studies, warmups, broker, Path(tmp), args.timeout, args.torch_threads)
            results.append(result)
            print(f"   warm-up (start, torch import, models, first study): {result.warmup_s:.1f} s")
            print(f"   load before: {result.load_before}")
            print(f"   load after:  {result.load_after}")
            print(f"   statuses: {result.statuses}")
    print("\nmode     workers  studies  wall s  studies/h  per study median  p95")
    for r in results:
        print(
            f"{r.mode:<8} {r.workers:>7}  {r.n:>7}  {r.wall_s:6.1f}  {r.per_hour:9.0f}  "
            f"{statistics.median(r.per_study_s):14.2f} s  {pct(r.per_study_s, 0.95):5.2f} s"
        )
    base = results[0]
    for r in results[1:]:
        print(f"{r.mode} / {base.mode}: {r.per_hour / base.per_hour:.2f}x studies/h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
