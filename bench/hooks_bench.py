"""Hook latency and throughput under gunicorn, next to the same run's bare-Flask floor.

What it measures: the patient-view hook answered from a stored analysis, with full JWT
validation (issuer allow-list, signature, aud, exp/iat, jti replay claimed in the database) and the
audit write, served by gunicorn with the production config, loaded by wrk from a second process
over loopback at 16 concurrent connections. The floor is a trivial Flask endpoint under the same
gunicorn config and the same wrk script: the best any hook could do on this machine.

Why pre-generated tokens: every request needs a token with a fresh jti (a replayed jti is
rejected with 401, as it must be), and wrk cannot sign JWTs. So the bench signs enough tokens
up front, one file per wrk thread, and the Lua script walks through them; a wrapped-around token
would show up as a 401 in the error count, never as a silent success.

The hook runs twice on the same server, once with ES384 and once with RS384 client tokens (both
are CDS Hooks' recommended algorithms): an ES384 (P-384) signature costs ~0.6 ms of CPU to verify,
RS384 (2048-bit) ~0.07 ms, and that difference alone is a sizeable part of a hook call.
Each run is preceded by an unmeasured wrk warm-up (--warmup s) so that only the steady state
counts; CPU per request of the server and of wrk is reported next to the latencies (on a shared
machine the load average printed with the figures says how much they can be trusted).

Run:  .venv/bin/python bench/hooks_bench.py [--alg both|ES384|RS384] [--duration 10] [--connections 16]
      [--database-url URL]
Needs: wrk (apt-get install -y wrk). Targets (issue 2): p95 < 50 ms and >= 25 % of the floor's rps.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SERVICE_PATH = "/cds-services/lumbar-mri-patient-view"
ISSUER = "https://bench-ehr.example.org"
PATIENT_ID = "bench-patient"
STUDY_UID = "1.2.826.0.1.3680043.8.498.77"

LUA = r"""
local dir = "%(dir)s"
local f = io.open(dir .. "/body.json", "rb")
local body = f:read("*a")
f:close()
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end

function init(args)
  tokens = {}
  local prefix = args[1] or "tokens"
  -- "reverse": warm-up runs walk the file from its end, measured runs from its start, so a
  -- request still in flight when a run ends can never hold a token the next run uses.
  reverse = args[2] == "reverse"
  for line in io.lines(dir .. "/" .. prefix .. "_" .. tid .. ".txt") do
    tokens[#tokens + 1] = line
  end
  idx = 0
end

function request()
  idx = idx + 1
  local i = ((idx - 1) %% #tokens) + 1
  if reverse then i = #tokens + 1 - i end
  local t = tokens[i]
  return wrk.format("POST", wrk.path,
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. t}, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%%d,"duration_us":%%d,"status_errors":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"timeout":%%d,"p50":%%d,"p95":%%d,"p99":%%d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def floor_app() -> Any:
    """The floor: a trivial endpoint, same framework, same server config (gunicorn entry point)."""
    from flask import Flask, Response

    app = Flask("floor")

    @app.post(SERVICE_PATH)
    def trivial() -> Response:
        return Response('{"cards":[]}', mimetype="application/json")

    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("gunicorn did not start in time")


def _gunicorn(
    app_spec: str, port: int, config: Path, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(config),
        "--bind",
        f"127.0.0.1:{port}",
        "--pythonpath",
        f"{ROOT},{ROOT / 'bench'}",
        app_spec,
    ]
    out = log.open("wb")
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _children_cpu_s() -> float:
    """CPU seconds used by this process's waited-for children (wrk)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the processes of a process group (Linux /proc),
    including their reaped children: a gunicorn worker recycled by max_requests during a run
    leaves /proc, and its CPU moves to the master's cutime/cstime (without these the floor's
    server CPU per request read about 0 once its workers started to recycle)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) == pgid:  # fields[2] = pgrp; utime, stime, cutime, cstime at 11-14
            total += sum(int(v) for v in fields[11:15])
    return total / tick


def _wrk(
    url: str,
    script: Path,
    args: argparse.Namespace,
    server_pgid: int,
    duration: int,
    tokens: str,
    order: str = "forward",
) -> dict[str, Any]:
    cmd = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{duration}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
        "--",
        tokens,
        order,
    ]
    server0, client0 = _group_cpu_s(server_pgid), _children_cpu_s()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    server_s, client_s = _group_cpu_s(server_pgid) - server0, _children_cpu_s() - client0
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith('{"requests"'))
    stats: dict[str, Any] = json.loads(line)
    stats["rps"] = stats["requests"] / (stats["duration_us"] / 1e6)
    stats["server_cpu_ms"] = server_s * 1000 / max(1, stats["requests"])
    stats["wrk_cpu_ms"] = client_s * 1000 / max(1, stats["requests"])
    stats["errors"] = sum(stats[k] for k in ("status_errors", "connect", "read", "write", "timeout"))
    return stats


def _prepare(
    work: Path,
    db_url: str,
    n_tokens: int,
    threads: int,
    base: str,
    algs: tuple[str, ...] = ("ES384",),
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Database with a stored analysis, trusted client keys (one per algorithm, kid = the
    algorithm), request body, and per algorithm the token files `<alg>_tokens_<thread>.txt`
    (used by every wrk run of that algorithm: the bench empties the replay table between runs), and
    `<alg>_ref_0.txt` (the in-process reference loop)."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from cds.domain import THRESHOLDS, AnalysisResult, AnalysisStatus, Condition, Finding, Grade, Level
    from cds.store import queries
    from cds.store.db import Database
    from cds.store.migrate import upgrade

    keys: dict[str, Any] = {}
    jwks = []
    for alg in algs:
        if alg == "ES384":
            keys[alg] = ec.generate_private_key(ec.SECP384R1())
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(keys[alg].public_key()))
        else:
            keys[alg] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(keys[alg].public_key()))
        jwk.update({"kid": alg, "use": "sig", "alg": alg})
        jwks.append(jwk)
    (work / "clients.json").write_text(json.dumps([{"iss": ISSUER, "jwks": {"keys": jwks}}]))

    upgrade(db_url)
    findings = []
    for level in Level:
        for cond in Condition:
            limits = THRESHOLDS[cond]
            severe = level is Level.L4_L5 and cond is Condition.SPINAL_CANAL
            value = limits.severe_below * 0.8 if severe else limits.moderate_below * 1.2
            grade = Grade.SEVERE if severe else Grade.NORMAL_MILD
            findings.append(Finding(level, cond, grade, 0.9, {cond.deciding_measurement: value}))
    db = Database(db_url)
    with db.session() as s:
        queries.upsert_study(s, STUDY_UID, patient_ref="MRN-B", study_date=date(2026, 7, 1), source_uri="/x")
        queries.save_analysis(s, STUDY_UID, AnalysisResult(AnalysisStatus.COMPLETE, tuple(findings)))
    db.dispose()

    study = {
        "resourceType": "ImagingStudy",
        "id": "bench-study",
        "status": "available",
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY_UID}"}],
        "started": "2026-07-01T10:00:00Z",
        "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "MR"}],
        "description": "MRI LUMBAR SPINE WITHOUT CONTRAST",
    }
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/bench", "patientId": PATIENT_ID},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": PATIENT_ID},
            "studies": {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": study}]},
            "reports": None,
        },
    }
    (work / "body.json").write_text(json.dumps(body))

    aud = base + SERVICE_PATH
    now = int(time.time())
    kinds = (("tokens", n_tokens), ("ref", INPROC_CALLS * threads))
    for alg, (prefix, count) in itertools.product(algs, kinds):
        key = keys[alg]
        for t in range(threads):
            with (work / f"{alg}_{prefix}_{t}.txt").open("w") as out:
                for _ in range(count // threads):
                    claims = {
                        "iss": ISSUER,
                        "sub": "bench",
                        "aud": aud,
                        "iat": now,
                        "exp": now + TOKEN_LIFETIME_S,
                        "jti": uuid.uuid4().hex,
                    }
                    out.write(jwt.encode(claims, key, algorithm=alg, headers={"kid": alg}) + "\n")
    warm = {
        alg: [
            jwt.encode(
                {
                    "iss": ISSUER,
                    "aud": aud,
                    "iat": now,
                    "exp": now + TOKEN_LIFETIME_S,
                    "jti": uuid.uuid4().hex,
                },
                keys[alg],
                algorithm=alg,
                headers={"kid": alg},
            )
            for _ in range(40)
        ]
        for alg in algs
    }
    (work / "bench.lua").write_text(LUA % {"dir": str(work)})
    env = {
        **os.environ,
        "CDS_DATA_DIR": str(work / "data"),
        "CDS_DATABASE_URL": db_url,
        "CDS_CLIENTS_FILE": str(work / "clients.json"),
        "CDS_PUBLIC_BASE_URL": base,
        "CDS_SECRET_KEY": uuid.uuid4().hex,
        "CDS_JOB_WORKERS": "0",
    }
    return env, warm


def _warm_floor(url: str, body: bytes) -> None:
    """Wait until the floor's workers answer (gunicorn binds before its workers have booted)."""
    import requests

    deadline = time.monotonic() + 60
    ok = 0
    while ok < 40:
        try:
            ok += requests.post(url, data=body, timeout=5).status_code == 200
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise SystemExit("floor app did not answer") from None
            time.sleep(0.2)


def _warm_up(url: str, body: bytes, tokens: list[str]) -> None:
    """One request per token, spread over the workers (runtime, report cache, DB pools), and a
    check that the hook really answers with a card."""
    import requests

    for tok in tokens:
        resp = requests.post(
            url,
            data=body,
            headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/json"},
            timeout=30,
        )
        cards = resp.json().get("cards") if resp.status_code == 200 else None
        if not cards:
            raise SystemExit(f"warm-up failed: HTTP {resp.status_code} {resp.text[:300]}")


#: Lifetime of the bench's tokens (the service accepts at most cds.hooks.auth.MAX_LIFETIME_S).
TOKEN_LIFETIME_S = 3000
INPROC_CALLS = 600  # per algorithm: the first 100 warm the process up, the rest are timed
INPROC_WARM = 100


def _inprocess_child(work: str, alg: str) -> None:
    """Run in a child process (the environment carries the CDS_* settings): CPU ms per call of the
    hook in a single-threaded Flask test-client loop, same database and token kind as under
    gunicorn. The difference to gunicorn's CPU per request is serving cost plus contention."""
    from cds import create_app

    client = create_app().test_client()
    body = (Path(work) / "body.json").read_bytes()
    tokens = (Path(work) / f"{alg}_ref_0.txt").read_text().split()
    for i, tok in enumerate(tokens):
        if i == INPROC_WARM:
            cpu0 = time.process_time()
        resp = client.post(
            SERVICE_PATH,
            data=body,
            headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/json"},
        )
        # A byte check, not get_json(): parsing the 80 kB answer would be counted as server CPU.
        if resp.status_code != 200 or b'"cards":[{' not in resp.data:
            raise SystemExit(f"in-process reference failed: HTTP {resp.status_code}")
    print(1000 * (time.process_time() - cpu0) / (len(tokens) - INPROC_WARM))


def _inprocess_cpu_ms(work: Path, env: dict[str, str], alg: str) -> float:
    code = f"import hooks_bench; hooks_bench._inprocess_child({str(work)!r}, {alg!r})"
    env = {**env, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'bench'}"}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"in-process reference failed: {done.stderr[-500:]}")
    return float(done.stdout.strip().splitlines()[-1])


FLOOR = "floor"
FLOOR_SPEC = "hooks_bench:floor_app()"


def _clear_seen_tokens(db_url: str) -> None:
    """Forget every claimed jti, so that the next wrk run can use the token files again.

    Within one wrk run every token is used once and the replay check is fully active (a token used
    twice would be a 401, counted as an error); between runs the servers are idle and the table is
    emptied, as if the next run's tokens were new ones. Signing fresh tokens for every run instead
    would cost more CPU (~0.3 ms a token) than the runs themselves on this shared machine.
    """
    import sqlalchemy as sa

    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM seen_tokens"))
    finally:
        engine.dispose()


def _web_env(env: dict[str, str], args: argparse.Namespace) -> dict[str, str]:
    """The gunicorn config's own knobs (CDS_WEB_*), overridden only when asked (config sweeps)."""
    env = dict(env)
    if args.web_workers:
        env["CDS_WEB_WORKERS"] = str(args.web_workers)
    if args.web_threads:
        env["CDS_WEB_THREADS"] = str(args.web_threads)
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run")
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of (floor, hook per algorithm), interleaved"
    )
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument(
        "--warmup", type=int, default=3, help="seconds of unmeasured load before each measured run"
    )
    parser.add_argument("--gunicorn-config", type=Path, default=ROOT / "docker" / "gunicorn.conf.py")
    parser.add_argument(
        "--web-workers", type=int, default=0, help="override CDS_WEB_WORKERS (default: the config's)"
    )
    parser.add_argument(
        "--web-threads", type=int, default=0, help="override CDS_WEB_THREADS (default: the config's)"
    )
    parser.add_argument("--database-url", default="", help="default: a SQLite file in a temp dir")
    parser.add_argument(
        "--tokens", type=int, default=0, help="tokens per algorithm; default: enough for 2500 req/s"
    )
    parser.add_argument(
        "--alg",
        choices=("both", "ES384", "RS384"),
        default="both",
        help="client JWT algorithm(s); both are CDS Hooks' recommended ones, and an ES384 signature "
        "costs ~0.6 ms of CPU to verify against ~0.07 ms for RS384 (2048-bit)",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    if not args.gunicorn_config.is_file():
        raise SystemExit(f"gunicorn config not found: {args.gunicorn_config}")

    with tempfile.TemporaryDirectory(prefix="hooks-bench-") as tmp:
        work = Path(tmp)
        (work / "data").mkdir()
        db_url = args.database_url or f"sqlite:///{work / 'data' / 'cds.db'}"
        floor_port, hook_port = _free_port(), _free_port()
        base = f"http://127.0.0.1:{hook_port}"
        algs = ("RS384", "ES384") if args.alg == "both" else (args.alg,)
        n_tokens = args.tokens or 2500 * max(args.duration, args.warmup)
        planned_s = args.repeat * (1 + len(algs)) * (args.duration + args.warmup)
        if planned_s > TOKEN_LIFETIME_S - 600:
            raise SystemExit(f"{planned_s} s of runs: longer than the tokens live; fewer --repeat/--duration")
        t0 = time.perf_counter()
        env, warm = _prepare(work, db_url, n_tokens, args.threads, base, algs)
        print(f"prepared {n_tokens} tokens per algorithm + database in {time.perf_counter() - t0:.1f} s")
        env = _web_env(env, args)
        body = (work / "body.json").read_bytes()
        floor_url = f"http://127.0.0.1:{floor_port}{SERVICE_PATH}"
        hook_url = base + SERVICE_PATH
        inproc = {alg: _inprocess_cpu_ms(work, env, alg) for alg in algs}
        script = work / "bench.lua"
        runs: list[dict[str, Any]] = []
        # Both servers stay up for the whole bench (the idle one costs nothing) and the runs
        # alternate floor, hook RS384, hook ES384, so that a neighbour's load hits both sides of
        # each ratio alike instead of falling on one side only.
        floor = _gunicorn(FLOOR_SPEC, floor_port, args.gunicorn_config, env, work / "gunicorn-floor.log")
        hook = _gunicorn("cds:create_app()", hook_port, args.gunicorn_config, env, work / "gunicorn-hook.log")
        try:
            _wait_ready(floor_port, floor)
            _wait_ready(hook_port, hook)
            _warm_floor(floor_url, body)
            for alg in algs:
                _warm_up(hook_url, body, warm[alg])
            targets = [(FLOOR, floor_url, floor, algs[0])] + [
                (f"hook {alg}", hook_url, hook, alg) for alg in algs
            ]
            for rep in range(1, args.repeat + 1):
                for name, url, proc, alg in targets:
                    tokens = f"{alg}_tokens"
                    _clear_seen_tokens(db_url)
                    _wrk(url, script, args, proc.pid, args.warmup, tokens, "reverse")  # steady state
                    time.sleep(1.0)  # let requests that wrk gave up on finish before the next run
                    _clear_seen_tokens(db_url)
                    stats = _wrk(url, script, args, proc.pid, args.duration, tokens)
                    time.sleep(1.0)
                    stats.update(name=name, rep=rep, load=os.getloadavg()[0])
                    runs.append(stats)
                    print(_row(stats), flush=True)
                    if stats["errors"]:
                        kinds = ("status_errors", "connect", "read", "write", "timeout")
                        print("    errors: " + ", ".join(f"{k} {stats[k]}" for k in kinds if stats[k]))
        finally:
            _stop(floor)
            _stop(hook)
        boots = {name: _worker_boots(work / f"gunicorn-{name}.log") for name in ("floor", "hook")}
    print(
        f"gunicorn worker boots (the first ones + max_requests recycling): floor {boots['floor']}, "
        f"hook {boots['hook']}"
    )
    return _report(args, runs, inproc, algs)


def _worker_boots(log: Path) -> int:
    """Workers gunicorn started, from its log: each one past the first set is a recycled worker
    whose successor paid for imports and a cold first call during the runs."""
    try:
        return log.read_text(errors="replace").count("Booting worker")
    except OSError:
        return -1


_HEADER = (
    f"{'rep':>3} {'endpoint':<12} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
    f"{'requests':>8} {'errors':>6} {'srv CPU':>7} {'wrk CPU':>7} {'load':>5}"
)


def _row(s: dict[str, Any]) -> str:
    return (
        f"{s['rep']:>3} {s['name']:<12} {s['rps']:>7.0f} {s['p50'] / 1000:>7.2f} {s['p95'] / 1000:>7.2f} "
        f"{s['p99'] / 1000:>7.2f} {s['requests']:>8d} {s['errors']:>6d} "
        f"{s['server_cpu_ms']:>7.2f} {s['wrk_cpu_ms']:>7.2f} {s['load']:>5.1f}"
    )


def _cpu_ms(stats: dict[str, Any]) -> float:
    return max(1e-9, float(stats["server_cpu_ms"] + stats["wrk_cpu_ms"]))


def _spread(values: list[float], fmt: str) -> str:
    """median (min-max) of a list of figures, in the given format."""
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def _report(
    args: argparse.Namespace, runs: list[dict[str, Any]], inproc: dict[str, float], algs: tuple[str, ...]
) -> int:
    config = args.gunicorn_config
    shown = config.relative_to(ROOT) if config.is_relative_to(ROOT) else config
    database = args.database_url.split(":")[0] if args.database_url else "SQLite"
    web = (
        f"workers {args.web_workers or 'config'}, threads {args.web_threads or 'config'}"
        if args.web_workers or args.web_threads
        else "its own workers/threads"
    )
    print(
        f"\nwrk: {args.connections} connections, {args.threads} threads, {args.duration} s per run, "
        f"{args.repeat} interleaved rounds; gunicorn config {shown} ({web}); database {database}; "
        f"CPUs {os.cpu_count()}"
    )
    print(_HEADER)
    for stats in runs:
        print(_row(stats))
    print("(srv CPU, wrk CPU: CPU ms per request of the gunicorn processes and of wrk; load: 1-min average)")
    for alg, cpu_ms in inproc.items():
        print(f"hook {alg}: {cpu_ms:.2f} CPU ms per call in a single-threaded Flask test-client loop")
    floors = {s["rep"]: s for s in runs if s["name"] == FLOOR}
    loads = [s["load"] for s in runs]
    print(
        f"floor: {_spread([s['rps'] for s in floors.values()], '.0f')} req/s; "
        f"load average during the runs {min(loads):.1f}-{max(loads):.1f}\n"
    )
    met = []
    for alg in algs:
        hooks = [s for s in runs if s["name"] == f"hook {alg}"]
        ratios = [100 * s["rps"] / floors[s["rep"]]["rps"] for s in hooks]
        # CPU (server + wrk) per request of the floor over the hook's, same round: the req/s ratio
        # a CPU-bound machine would reach, and much less sensitive to other processes' CPU use.
        cpu_ratios = [100 * _cpu_ms(floors[s["rep"]]) / _cpu_ms(s) for s in hooks]
        p95s = [s["p95"] / 1000 for s in hooks]
        errors = sum(s["errors"] for s in hooks)
        ok = statistics.median(ratios) >= 25 and statistics.median(p95s) < 50 and errors == 0
        every = all(r >= 25 for r in ratios) and all(p < 50 for p in p95s)
        met.append(ok)
        print(
            f"hook {alg}: {_spread([s['rps'] for s in hooks], '.0f')} req/s, "
            f"{_spread(ratios, '.1f')} % of the same round's floor (target >= 25 %), "
            f"p95 {_spread(p95s, '.1f')} ms (target < 50 ms), {errors} errors; "
            f"CPU quotient {_spread(cpu_ratios, '.1f')} %: "
            f"{'targets met' if ok else 'TARGETS NOT MET'} on the medians"
            f"{', and in every round' if every else ''}"
        )
    print(
        "(figures: median over the rounds, then the lowest and highest round in brackets; CPU quotient:\n"
        " CPU ms per request (server + wrk) of the floor over the hook's, same round: the share of the\n"
        " floor a CPU-bound machine reaches, less sensitive than req/s to other processes' load)"
    )
    return 0 if all(met) else 1


if __name__ == "__main__":
    raise SystemExit(main())
