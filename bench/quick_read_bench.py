"""Quick read of generated studies, models already loaded: median and p95 per stage and in total.

What it measures: for each study folder (``cds synth`` output), DICOM load (cds.dicom.load_study)
and every quick_read stage as timed by quick_read itself (timings_ms), after one warm-up study so
that model loading is reported separately. Also: model load time, peak RSS, and the resulting
studies/hour for one worker. Target (issue 4): median total < 1.0 s on this 2-core CPU.

Run:  .venv/bin/python bench/quick_read_bench.py --data /tmp/pipe_synth --n 20 [--threads 2]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="folder of generated studies")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (a worker's share of the CPU)")
    parser.add_argument("--models-dir", type=Path)
    args = parser.parse_args()

    import torch

    from cds.dicom import load_study
    from cds.pipeline.quick_read import DEFAULT_STAGES, quick_read

    torch.set_num_threads(args.threads)
    studies = sorted(p for p in args.data.iterdir() if (p / "dicom").is_dir())[: args.n + 1]
    if len(studies) < 2:
        raise SystemExit("need at least 2 studies (one is the warm-up)")
    t0 = time.perf_counter()
    DEFAULT_STAGES.load_models(args.models_dir)
    load_models_ms = (time.perf_counter() - t0) * 1000.0
    per_stage: dict[str, list[float]] = {}
    totals: list[float] = []
    statuses: dict[str, int] = {}
    for i, folder in enumerate(studies):
        start = time.perf_counter()
        study = load_study(folder / "dicom")
        load_ms = (time.perf_counter() - start) * 1000.0
        result = quick_read(study, models_dir=args.models_dir)
        total = (time.perf_counter() - start) * 1000.0
        if i == 0:
            continue  # warm-up: first-call allocations, lazy imports
        statuses[result.status.value] = statuses.get(result.status.value, 0) + 1
        per_stage.setdefault("load_dicom", []).append(load_ms)
        for stage, ms in result.timings_ms.items():
            per_stage.setdefault(stage, []).append(ms)
        totals.append(total)
    print(f"studies: {len(totals)} (after 1 warm-up), statuses: {statuses}, torch threads: {args.threads}")
    print(f"model load (all three, verified): {load_models_ms:.0f} ms")
    print(f"{'stage':<18} {'median ms':>10} {'p95 ms':>10}")
    for stage, values in per_stage.items():
        print(f"{stage:<18} {statistics.median(values):>10.1f} {_pct(values, 0.95):>10.1f}")
    med = statistics.median(totals)
    print(f"{'TOTAL':<18} {med:>10.1f} {_pct(totals, 0.95):>10.1f}")
    print(f"target median < 1000 ms: {'met' if med < 1000 else 'MISSED'} (ratio {med / 1000:.2f})")
    print(f"studies/hour for one worker: {3600_000 / med:.0f}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
