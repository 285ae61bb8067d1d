"""Viewer benchmark: what opening a report costs the server and the network.

One generated study is analysed once with the real pipeline (through the job's artifact
recorder), then, through the real app (Flask test client, SQLite):

* the report page's HTML: median / p95 response time and its size;
* every image layer the page loads: cold render time (no PNG on disk) and warm serving time
  (cached PNG), median / p95 per layer, and the total bytes of one page view;
* bytes on a conditional re-request (304) - what a reload costs.

    .venv/bin/python bench/viewer_bench.py --runs 20 [--seed 4242]

Figures are load-dependent: the script prints `uptime` first, and the lead re-runs it on a quiet
machine with the same command.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=4242)
    args = parser.parse_args()
    print("load:", os.getloadavg())

    from cds import create_app
    from cds.config import Settings
    from cds.dicom import load_study
    from cds.extensions import services
    from cds.pipeline.quick_read import quick_read
    from cds.signing import sign_viewer_token
    from cds.store import queries
    from cds.store.migrate import upgrade
    from cds.synth.protocol import StudyOptions
    from cds.synth.study import generate_study
    from cds.viewer.artifacts import viewer_dir
    from cds.viewer.capture import recorder_for, write_viewer_artifacts

    root = Path(tempfile.mkdtemp(prefix="viewer-bench-"))
    try:
        folder = generate_study(args.seed, root / "studies", StudyOptions(), study_name="SYN-BENCH")
        study = load_study(folder / "dicom")
        settings = Settings(data_dir=root / "data", secret_key="bench", dev_mode=True, explain_eager="off")
        settings.data_dir.mkdir(parents=True)
        upgrade(settings.resolved_database_url)
        app = create_app(settings)
        recorder = recorder_for(quick_read)
        assert recorder is not None
        t0 = time.perf_counter()
        result = recorder.run(quick_read, study)
        quick_read_s = time.perf_counter() - t0
        with services(app).db.session() as s:
            queries.upsert_study(s, study.study_uid, patient_ref="Patient/bench", study_date=study.study_date)
            analysis_id = queries.save_analysis(s, study.study_uid, result).id
        t0 = time.perf_counter()
        assert write_viewer_artifacts(recorder, result, settings.data_dir, analysis_id)
        write_ms = (time.perf_counter() - t0) * 1000
        artifact_bytes = sum(
            f.stat().st_size for f in viewer_dir(settings.data_dir, analysis_id).iterdir() if f.is_file()
        )
        kib = artifact_bytes / 1024
        print(f"quick read {quick_read_s:.2f} s; artifact writing {write_ms:.0f} ms, {kib:.0f} KiB on disk")

        client = app.test_client()
        path = "/viewer/" + sign_viewer_token(analysis_id, 3600, secret_key="bench")
        page_ms, html = [], ""
        for _ in range(args.runs):
            t0 = time.perf_counter()
            resp = client.get(path)
            page_ms.append((time.perf_counter() - t0) * 1000)
            html = resp.get_data(as_text=True)
        urls = sorted({u.replace("&amp;", "&") for u in re.findall(r'\ssrc="([^"]+\.png[^"]*)"', html)})
        print(
            f"report page: median {statistics.median(page_ms):.1f} ms, p95 {_pct(page_ms, 0.95):.1f} ms, "
            f"{len(html.encode()) / 1024:.0f} KiB HTML, {len(urls)} image layers"
        )

        cold, warm, total, etags = [], [], 0, {}
        render_dir = viewer_dir(settings.data_dir, analysis_id) / "render"
        for url in urls:
            t0 = time.perf_counter()
            resp = client.get(url)
            cold.append((time.perf_counter() - t0) * 1000)
            total += len(resp.data)
            etags[url] = resp.headers["ETag"]
        for _ in range(args.runs):
            for url in urls:
                t0 = time.perf_counter()
                client.get(url)
                warm.append((time.perf_counter() - t0) * 1000)
        revalidate = sum(len(client.get(u, headers={"If-None-Match": etags[u]}).data) for u in urls)
        cold_med, warm_med = statistics.median(cold), statistics.median(warm)
        print(f"image layer, cold render: median {cold_med:.1f} ms, p95 {_pct(cold, 0.95):.1f} ms")
        print(
            f"image layer, cached:      median {warm_med:.1f} ms, p95 {_pct(warm, 0.95):.1f} ms "
            f"(ratio cold/cached {cold_med / warm_med:.1f}x)"
        )
        cached = len(list(render_dir.glob("*.png")))
        print(
            f"every layer of a page (axial ones load lazily): {total / 1024:.0f} KiB, {cached} PNGs cached; "
            f"reload with 304s: {revalidate} bytes of images"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
