"""Soak: mixed hook calls, PACS notifications and feedback against gunicorn + a Celery worker.

What runs (all real processes on loopback): Redis, gunicorn with docker/gunicorn.conf.py (the
production web config, Prometheus multiprocess mode), one Celery `cds worker`, a fresh SQLite
database (or --database-url). For --duration seconds (default 600) the bench drives:
- hook clients (--clients threads): patient-view calls with a fresh signed ES384 JWT each, for the
  patients of already-notified studies (cards from stored or pending analyses);
- a notifier: every --notify-every s a new study (made by `cds synth`, cached) is announced with
  POST /pacs/notifications (the Orthanc Lua body), and an earlier one is announced again (a
  duplicate, as Orthanc and the poller both do); the study's images are registered beforehand with
  their local folder as source, so this soak exercises the trigger and the queue, not DICOMweb
  retrieval (bench/pacs_trigger_bench.py measures that against Orthanc);
- a feedback client: one CDS Hooks feedback POST every --feedback-every s, each on a different
  card the service returned (the service accepts feedback only on cards it issued).
Then it waits for the queue to drain and checks that nothing was lost or doubled: every notified
study has exactly one analysis, finished, made by exactly one job run once; every feedback post
is accepted (200) and stored once. RSS of every server process (gunicorn master and workers, Celery main
and pool child, Redis) and of each process tree (web = gunicorn master + workers, worker = Celery main
+ pool children, so a recycled process is still counted) is sampled when the servers are up (before
any load: "start"), after the warm-up (--warmup s, default 60: models loaded, first studies analysed)
and every --sample-every s to the end. Growth is reported from both baselines; the target (< 10 %)
is judged on the process trees after the warm-up (from the start it includes loading the models).
Hook latency p50/p95/p99 and errors, and `uptime` before and after.

Run:   .venv/bin/python bench/soak_bench.py [--duration 600] [--clients 4] [--notify-every 20]
Needs: redis-server, the shipped models (the worker runs the real pipeline).

Where web memory goes: --probe DIR samples every gunicorn worker by component (RSS split into heap
and mappings, glibc malloc in use / free-but-mapped / arenas, SQLite's own memory, threads, the
hook caches' entries) and prints each component's growth after the warm-up; --probe-trace adds
tracemalloc's top growing allocation sites (bench/web_memprobe.py; slows the web tier, so judge
the RSS verdicts on a run without it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import requests

sys.path[:0] = [
    str(Path(__file__).resolve().parent),
    str(Path(__file__).resolve().parents[1] / "tests" / "hooks"),
]
from worker_bench import (  # noqa: E402
    CDS,
    ROOT,
    TERMINAL,
    BenchStudy,
    Process,
    ensure_studies,
    pct,
    redis_server,
    rss_mib,
    spare_port,
    uptime,
    worker_env,
)

SERVICE = "lumbar-mri-patient-view"


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    hook_ms: list[float] = field(default_factory=list)
    hook_status: Counter[int] = field(default_factory=Counter)
    notify_status: Counter[int] = field(default_factory=Counter)
    feedback_status: Counter[int] = field(default_factory=Counter)
    feedback_sent: list[str] = field(default_factory=list)
    notified: list[BenchStudy] = field(default_factory=list)
    cards: list[str] = field(default_factory=list)  # uuids of cards the service returned
    duplicates: int = 0


def patient_of(i: int) -> str:
    return f"soak-{i}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--warmup", type=float, default=60.0, help="RSS baseline taken after this many s")
    parser.add_argument("--sample-every", type=float, default=60.0, help="s between RSS samples")
    parser.add_argument("--clients", type=int, default=4, help="hook client threads")
    parser.add_argument("--hook-pause", type=float, default=0.05, help="s between one client's calls")
    parser.add_argument("--notify-every", type=float, default=20.0, help="s between new studies")
    parser.add_argument("--feedback-every", type=float, default=0.5, help="s between feedback posts")
    parser.add_argument("--drain-timeout", type=float, default=900.0, help="s to wait for the queue to empty")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument(
        "--web-threads", type=int, default=1, help="CDS_WEB_THREADS (default: the production config's 1)"
    )
    parser.add_argument("--seed", type=int, default=7700, help="cds synth seed of the cached studies")
    parser.add_argument("--studies", type=Path, default=Path(tempfile.gettempdir()) / "cds-bench-studies")
    parser.add_argument("--database-url", default="", help="default: a fresh SQLite file")
    parser.add_argument(
        "--probe",
        type=Path,
        default=None,
        help="diagnostic: sample each gunicorn worker's memory by component (RSS, tracemalloc, SQLite, "
        "malloc arenas, hook caches) into this folder and print where it grew (bench/web_memprobe.py)",
    )
    parser.add_argument(
        "--probe-trace",
        action="store_true",
        help="with --probe: also tracemalloc after the warm-up, top growing allocation sites "
        "(slows the web tier; its RSS then includes tracemalloc's tables)",
    )
    args = parser.parse_args()

    from hooks_support import ISSUER, SigningKey, bundle, imaging_study

    n_studies = int(args.duration // args.notify_every) + 1
    pool = ensure_studies(args.studies, max(n_studies, 2), args.seed)[:n_studies]
    print(
        f"soak {args.duration:.0f} s: {args.clients} hook clients, a study every {args.notify_every:.0f} s "
        f"({len(pool)} studies), feedback every {args.feedback_every} s; {os.cpu_count()} CPUs"
    )
    print(f"start: {uptime()}", flush=True)

    from cds.store import queries
    from cds.store.db import Database
    from cds.store.migrate import upgrade
    from cds.store.records import AnalysisRecord, FeedbackRecord, JobRecord, StudyRecord

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp, redis_server() as redis:
        work = Path(tmp)
        url = args.database_url or f"sqlite:///{work / 'cds.db'}"
        upgrade(url)
        db = Database(url)
        with db.session() as s:  # images are local; the notification keeps this source
            for i, st in enumerate(pool):
                queries.upsert_study(
                    s, st.uid, patient_ref=f"Patient/{patient_of(i)}", source_uri=str(st.dicom)
                )
        key = SigningKey()
        clients = work / "clients.json"
        clients.write_text(json.dumps([{"iss": ISSUER, "jwks": key.jwks()}]))
        port = spare_port()
        base = f"http://127.0.0.1:{port}"
        token = uuid.uuid4().hex
        prom = work / "prom"
        prom.mkdir()
        env = {
            **worker_env(url, work / "data", "celery", f"{redis.base}/0"),
            "CDS_CLIENTS_FILE": str(clients),
            "CDS_PUBLIC_BASE_URL": base,
            "CDS_PACS_NOTIFY_TOKEN": token,
            "CDS_DICOMWEB_URL": "http://127.0.0.1:9/dicom-web",  # required by the intake; never read here
            "CDS_WEB_BIND": f"127.0.0.1:{port}",
            "CDS_WEB_WORKERS": str(args.web_workers),
            "CDS_WEB_THREADS": str(args.web_threads),
            "PROMETHEUS_MULTIPROC_DIR": str(prom),
        }
        web_config = ROOT / "docker/gunicorn.conf.py"
        if args.probe is not None:
            args.probe.mkdir(parents=True, exist_ok=True)
            web_config = ROOT / "bench/web_memprobe_gunicorn.conf.py"
            env |= {
                "CDS_MEMPROBE_DIR": str(args.probe.resolve()),
                "CDS_MEMPROBE_WARMUP_S": str(args.warmup),
                "CDS_MEMPROBE_EVERY_S": str(min(15.0, args.sample_every)),
                "CDS_MEMPROBE_TRACE": "1" if args.probe_trace else "0",
            }
        gunicorn = Process([str(CDS.with_name("gunicorn")), "-c", str(web_config)], env, work / "web.log")
        worker = Process([str(CDS), "worker", "--threads", "1"], env, work / "worker.log")
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if requests.get(f"{base}/healthz", timeout=5).ok:
                        break
                except requests.RequestException:  # not listening yet, or still importing
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"gunicorn did not start:\n{(work / 'web.log').read_text()[-2000:]}")
                time.sleep(0.2)
            deadline = time.monotonic() + 120  # the Celery pool child is forked once the worker is ready
            while len(worker.pids()) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2.0)
            tally = Tally()
            stop = threading.Event()

            def hook_client(seed: int) -> None:
                rng = random.Random(seed)
                session = requests.Session()
                path = f"/cds-services/{SERVICE}"
                while not stop.is_set():
                    with tally.lock:
                        known = list(enumerate(tally.notified))
                    if not known:
                        time.sleep(0.1)
                        continue
                    i, st = rng.choice(known)
                    body = {
                        "hook": "patient-view", "hookInstance": str(uuid.uuid4()),
                        "context": {"userId": "Practitioner/soak", "patientId": patient_of(i)},
                        "prefetch": {"studies": bundle(imaging_study(st.uid, patient=patient_of(i))),
                                     "reports": bundle()},
                    }  # fmt: skip
                    headers = {"Authorization": "Bearer " + key.token(base + path)}
                    t0 = time.perf_counter()
                    cards: list[str] = []
                    try:
                        response = session.post(base + path, json=body, headers=headers, timeout=30)
                        status = response.status_code
                        if status == 200:
                            cards = [c["uuid"] for c in response.json().get("cards", []) if "uuid" in c]
                    except (requests.RequestException, ValueError):
                        status = 0
                    ms = (time.perf_counter() - t0) * 1000
                    with tally.lock:
                        tally.hook_ms.append(ms)
                        tally.hook_status[status] += 1
                        tally.cards.extend(cards[:1])
                        del tally.cards[:-1000]  # keep the newest
                    time.sleep(args.hook_pause)

            def notifier() -> None:
                rng = random.Random(1)
                session = requests.Session()
                headers = {"Authorization": f"Bearer {token}"}
                for i, st in enumerate(pool):
                    if stop.is_set():
                        return
                    targets = [(i, st)]
                    if i and rng.random() < 0.5:
                        targets.append(rng.choice(list(enumerate(pool[:i]))))  # a duplicate
                    for j, target in targets:
                        body = {
                            "event": "StableStudy", "studyInstanceUid": target.uid,
                            "patientId": patient_of(j), "studyDate": "20260701",
                            "studyDescription": "MRI LUMBAR SPINE WO CONTRAST", "modalitiesInStudy": ["MR"],
                            "series": [{"modality": "MR", "seriesDescription": "Sag T2",
                                        "bodyPartExamined": "LSPINE"}],
                        }  # fmt: skip
                        try:
                            status = session.post(
                                f"{base}/pacs/notifications", json=body, headers=headers, timeout=30
                            ).status_code
                        except requests.RequestException:
                            status = 0
                        with tally.lock:
                            tally.notify_status[status] += 1
                            if target is st:
                                tally.notified.append(st)
                            else:
                                tally.duplicates += 1
                    stop.wait(args.notify_every)

            def feedback_client() -> None:
                session = requests.Session()
                path = f"/cds-services/{SERVICE}/feedback"
                while not stop.is_set():
                    with tally.lock:  # feedback only on a card the service issued, each card once
                        card = tally.cards.pop() if tally.cards else None
                    if card is None:
                        stop.wait(0.1)
                        continue
                    body = {"feedback": [{"card": card, "outcome": "overridden",
                                          "outcomeTimestamp": datetime.now(UTC).isoformat()}]}  # fmt: skip
                    headers = {"Authorization": "Bearer " + key.token(base + path)}
                    try:
                        status = session.post(base + path, json=body, headers=headers, timeout=30).status_code
                    except requests.RequestException:
                        status = 0
                    with tally.lock:
                        tally.feedback_status[status] += 1
                        if status == 200:
                            tally.feedback_sent.append(card)
                    stop.wait(args.feedback_every)

            threads = [
                threading.Thread(target=hook_client, args=(k,), daemon=True) for k in range(args.clients)
            ]
            threads += [threading.Thread(target=notifier, daemon=True),
                        threading.Thread(target=feedback_client, daemon=True)]  # fmt: skip

            def processes() -> dict[str, int]:
                named = {f"web[{i}]": pid for i, pid in enumerate(gunicorn.pids())}
                named |= {f"worker[{i}]": pid for i, pid in enumerate(worker.pids())}
                named["redis"] = redis.pid
                return named

            def trees() -> dict[str, float]:
                """Resident MiB of each process tree (processes replaced by recycling included)."""
                return {
                    "web tree": sum(rss_mib(pid) or 0.0 for pid in gunicorn.pids()),
                    "worker tree": sum(rss_mib(pid) or 0.0 for pid in worker.pids()),
                }

            rss_zero = {name: rss_mib(pid) for name, pid in processes().items()}
            pids_zero = processes()
            tree_zero = trees()
            t_start = time.monotonic()
            for t in threads:
                t.start()

            stop.wait(min(args.warmup, args.duration))
            rss_start = {name: rss_mib(pid) for name, pid in processes().items()}
            pids_start = processes()
            tree_start = trees()
            timeline: list[tuple[float, dict[str, float | None]]] = [
                (0.0, {**rss_zero, **tree_zero}),
                (time.monotonic() - t_start, {**rss_start, **tree_start}),
            ]
            while not stop.wait(
                min(args.sample_every, max(0.0, args.duration - (time.monotonic() - t_start)))
            ):
                if time.monotonic() - t_start >= args.duration:
                    break
                timeline.append(
                    (
                        time.monotonic() - t_start,
                        {**{n: rss_mib(pid) for n, pid in processes().items()}, **trees()},
                    )
                )
            stop.set()
            for t in threads:
                t.join(timeout=60)
            rss_end = {name: rss_mib(pid) for name, pid in processes().items()}
            pids_end = processes()
            tree_end = trees()
            timeline.append((time.monotonic() - t_start, {**rss_end, **tree_end}))
            print(f"load stopped after {time.monotonic() - t_start:.0f} s: {uptime()}", flush=True)

            # Drain: every notified study's analysis must finish.
            uids = [st.uid for st in tally.notified]
            deadline = time.monotonic() + args.drain_timeout
            while True:
                with db.session(readonly=True) as s:
                    states = [queries.latest_analysis(s, uid) for uid in uids]
                pending = [a for a in states if a is None or a.status.value not in TERMINAL]
                if not pending or time.monotonic() > deadline:
                    break
                time.sleep(1.0)
            drained = time.monotonic() - t_start
            metrics_text = requests.get(f"{base}/metrics", timeout=10).text
        finally:
            worker.stop()
            gunicorn.stop()

        # --- checks -------------------------------------------------------------------------------
        import sqlalchemy as sa

        problems: list[str] = []
        with db.session(readonly=True) as s:
            for st in tally.notified:
                study = s.scalars(sa.select(StudyRecord).where(StudyRecord.study_uid == st.uid)).one()
                analyses = s.scalars(
                    sa.select(AnalysisRecord).where(AnalysisRecord.study_id == study.id)
                ).all()
                jobs = [
                    j for j in s.scalars(sa.select(JobRecord)).all() if j.payload.get("study_uid") == st.uid
                ]
                ok = (
                    len(analyses) == 1
                    and analyses[0].status.value in ("complete", "unanalysable")
                    and len(jobs) == 1
                    and jobs[0].status.value == "done"
                    and jobs[0].attempts == 1
                )
                if not ok:
                    problems.append(
                        f"study ...{st.uid[-10:]}: analyses {[a.status.value for a in analyses]}, "
                        f"jobs {[(j.status.value, j.attempts) for j in jobs]}"
                    )
            stored = Counter(s.scalars(sa.select(FeedbackRecord.card_uuid)).all())
        lost = [c for c in tally.feedback_sent if stored.get(c, 0) != 1]
        statuses: Counter[str] = Counter()
        with db.session(readonly=True) as s:
            for uid in uids:
                a = queries.latest_analysis(s, uid)
                statuses[a.status.value if a else "none"] += 1
        db.dispose()

    n_hooks = len(tally.hook_ms)
    print(f"\nhook calls: {n_hooks} ({n_hooks / args.duration:.1f}/s), statuses {dict(tally.hook_status)}")
    if n_hooks:
        print(f"  latency ms: p50 {pct(tally.hook_ms, 0.5):.1f}  p95 {pct(tally.hook_ms, 0.95):.1f}  "
              f"p99 {pct(tally.hook_ms, 0.99):.1f}  max {max(tally.hook_ms):.1f}")  # fmt: skip
    print(f"notifications: {len(tally.notified)} studies + {tally.duplicates} duplicates, "
          f"statuses {dict(tally.notify_status)}")  # fmt: skip
    print(f"analyses: {dict(statuses)}; queue drained {drained:.0f} s after the start")
    print(f"feedback: {len(tally.feedback_sent)} acknowledged, statuses {dict(tally.feedback_status)}, "
          f"stored once each: {len(tally.feedback_sent) - len(lost)}")  # fmt: skip
    print(f"\nRSS MiB: start (servers up, no load) -> after warm-up ({args.warmup:.0f} s) -> end; growth")
    tree_growths = []
    for name in tree_start:
        t_zero, t_before, t_after = tree_zero[name], tree_start[name], tree_end[name]
        tree_growth = (t_after - t_before) / t_before * 100
        tree_growths.append(tree_growth)
        print(f"  {name:<12} {t_zero:7.1f} -> {t_before:7.1f} -> {t_after:7.1f}  after warm-up "
              f"{tree_growth:+.1f} %, from start {(t_after - t_zero) / t_zero * 100:+.1f} %")  # fmt: skip
    growths = []
    for name, before in rss_start.items():
        after, zero = rss_end.get(name), rss_zero.get(name)
        same = pids_start.get(name) == pids_end.get(name)
        if before and after and same:
            growth = (after - before) / before * 100
            growths.append(growth)
            since = (
                f", from start {(after - zero) / zero * 100:+.1f} %"
                if zero and pids_zero.get(name) == pids_start[name]
                else ""
            )
            print(f"  {name:<12} pid {pids_start[name]:>7}  {zero or 0:7.1f} -> {before:7.1f} -> "
                  f"{after:7.1f}  after warm-up {growth:+.1f} %{since}")  # fmt: skip
        else:
            print(f"  {name:<12} replaced or gone during the run (recycled: counted in its tree above)")
    print("RSS MiB over time (s since the load started):")
    names = [*rss_start, *tree_start]
    print("  " + "t s".rjust(6) + "".join(n.rjust(11) for n in names))
    for at, sample in timeline:
        cells = "".join((f"{sample[n]:11.1f}" if sample.get(n) else " " * 11) for n in names)
        print(f"  {at:6.0f}{cells}")
    jobs_line = [ln for ln in metrics_text.splitlines() if ln.startswith("cds_job_duration_seconds_count")]
    print("metrics: " + "; ".join(jobs_line))
    verdicts = [
        ("no hook errors", set(tally.hook_status) <= {200}),
        ("every notification accepted", set(tally.notify_status) <= {202}),
        ("every notified study analysed exactly once", not problems),
        (
            "every feedback accepted and stored once",
            bool(tally.feedback_sent) and set(tally.feedback_status) <= {200} and not lost,
        ),
        ("RSS growth after warm-up < 10 % per process tree (web, worker)", all(g < 10 for g in tree_growths)),
        ("RSS growth after warm-up < 10 % per process", all(g < 10 for g in growths)),
    ]
    print()
    for name, ok in verdicts:
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}")
    for p in problems[:10]:
        print(f"    {p}")
    if args.probe is not None:
        from web_memprobe import report

        print(f"\nmemory by component per web worker (--probe {args.probe}):")
        print(report(args.probe))
    print(f"end: {uptime()}")
    return 0 if all(ok for _, ok in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
