"""Hook latency and throughput under gunicorn, next to the same run's bare-Flask floor.

What it measures: the patient-view hook answered from a stored analysis, with full JWT
validation (ES384, issuer allow-list, aud, exp/iat, jti replay claimed in the database) and the
audit write, served by gunicorn with the production config, loaded by wrk from a second process
over loopback at 16 concurrent connections. The floor is a trivial Flask endpoint under the same
gunicorn config and the same wrk script: the best any hook could do on this machine.

Why pre-generated tokens: every request needs a token with a fresh jti (a replayed jti is
rejected with 401, as it must be), and wrk cannot sign JWTs. So the bench signs enough tokens
up front, one file per wrk thread, and the Lua script walks through them; a wrapped-around token
would show up as a 401 in the error count, never as a silent success.

Run:  .venv/bin/python bench/hooks_bench.py [--duration 10] [--connections 16] [--database-url URL]
Needs: wrk (apt-get install -y wrk). Targets (issue 2): p95 < 50 ms and >= 25 % of the floor's rps.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
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
  for line in io.lines(dir .. "/" .. prefix .. "_" .. tid .. ".txt") do
    tokens[#tokens + 1] = line
  end
  idx = 0
end

function request()
  idx = idx + 1
  local t = tokens[((idx - 1) %% #tokens) + 1]
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
    """CPU seconds (user + system) used so far by the processes of a process group (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) == pgid:  # fields[2] = pgrp; then utime, stime at 11, 12
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _wrk(
    url: str, script: Path, args: argparse.Namespace, server_pgid: int, duration: int, tokens: str
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
    work: Path, db_url: str, n_tokens: int, n_warm: int, threads: int, base: str, alg: str = "ES384"
) -> tuple[dict[str, str], Any]:
    """Database with a stored analysis, trusted client key, request body, tokens."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from cds.domain import THRESHOLDS, AnalysisResult, AnalysisStatus, Condition, Finding, Grade, Level
    from cds.store import queries
    from cds.store.db import Database
    from cds.store.migrate import upgrade

    key: Any
    if alg == "ES384":
        key = ec.generate_private_key(ec.SECP384R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "bench", "use": "sig", "alg": alg})
    (work / "clients.json").write_text(json.dumps([{"iss": ISSUER, "jwks": {"keys": [jwk]}}]))

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
    for prefix, count in (("tokens", n_tokens), ("warm", n_warm)):
        for t in range(threads):
            with (work / f"{prefix}_{t}.txt").open("w") as out:
                for _ in range(count // threads):
                    claims = {
                        "iss": ISSUER,
                        "sub": "bench",
                        "aud": aud,
                        "iat": now,
                        "exp": now + 900,
                        "jti": uuid.uuid4().hex,
                    }
                    out.write(jwt.encode(claims, key, algorithm=alg, headers={"kid": "bench"}) + "\n")
    warm = [
        jwt.encode(
            {"iss": ISSUER, "aud": aud, "iat": now, "exp": now + 900, "jti": uuid.uuid4().hex},
            key,
            algorithm=alg,
            headers={"kid": "bench"},
        )
        for _ in range(40)
    ]
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


def _row(name: str, s: dict[str, Any]) -> str:
    return (
        f"{name:<22} {s['rps']:>9.0f} {s['p50'] / 1000:>9.2f} {s['p95'] / 1000:>9.2f} "
        f"{s['p99'] / 1000:>9.2f} {s['requests']:>9d} {s['errors']:>7d} "
        f"{s['server_cpu_ms']:>10.2f} {s['wrk_cpu_ms']:>8.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument(
        "--warmup", type=int, default=5, help="seconds of unmeasured load before each measured run"
    )
    parser.add_argument("--gunicorn-config", type=Path, default=ROOT / "docker" / "gunicorn.conf.py")
    parser.add_argument("--database-url", default="", help="default: a SQLite file in a temp dir")
    parser.add_argument("--tokens", type=int, default=0, help="default: enough for 3000 rps")
    parser.add_argument(
        "--alg",
        choices=("ES384", "RS384"),
        default="ES384",
        help="client JWT algorithm (both recommended by CDS Hooks; RS384 verifies ~10x faster)",
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
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        n_tokens = args.tokens or max(20000, 3000 * (args.duration + 2))
        n_warm = max(2000, 2000 * args.warmup)
        t0 = time.perf_counter()
        env, warm = _prepare(work, db_url, n_tokens, n_warm, args.threads, base, args.alg)
        print(f"prepared {n_tokens} tokens + database in {time.perf_counter() - t0:.1f} s", flush=True)
        url = base + SERVICE_PATH
        results: dict[str, dict[str, Any]] = {}
        for name, spec in (
            ("floor (trivial Flask)", "hooks_bench:floor_app()"),
            ("patient-view hook", "cds:create_app()"),
        ):
            proc = _gunicorn(spec, port, args.gunicorn_config, env, work / f"gunicorn-{len(results)}.log")
            try:
                _wait_ready(port, proc)
                if spec.startswith("cds"):
                    _warm_up(url, (work / "body.json").read_bytes(), warm)
                else:
                    _warm_floor(url, (work / "body.json").read_bytes())
                # Steady state only: every worker booted, imported and past its first calls.
                _wrk(url, work / "bench.lua", args, proc.pid, args.warmup, "warm")
                results[name] = _wrk(url, work / "bench.lua", args, proc.pid, args.duration, "tokens")
            finally:
                _stop(proc)
            time.sleep(1.0)

    floor, hook = results["floor (trivial Flask)"], results["patient-view hook"]
    config = args.gunicorn_config
    shown = config.relative_to(ROOT) if config.is_relative_to(ROOT) else config
    database = args.database_url.split(":")[0] if args.database_url else "SQLite"
    print(
        f"\nwrk: {args.connections} connections, {args.threads} threads, {args.duration} s; "
        f"gunicorn config {shown}; database {database}; JWT {args.alg}; "
        f"CPUs {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'':<22} {'req/s':>9} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'requests':>9} {'errors':>7} "
        f"{'server CPU':>10} {'wrk CPU':>8}"
    )
    print(_row("floor (trivial Flask)", floor))
    print(_row("patient-view hook", hook))
    ratio = hook["rps"] / floor["rps"] if floor["rps"] else 0.0
    p95_ms = hook["p95"] / 1000
    print(
        f"\nhook / floor throughput: {ratio:.1%} (target >= 25%)   hook p95: {p95_ms:.1f} ms (target < 50 ms)"
    )
    ok = ratio >= 0.25 and p95_ms < 50 and hook["errors"] == 0
    print("targets met" if ok else "TARGETS NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
