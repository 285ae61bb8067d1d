"""Quick read of generated studies, models already loaded: median and p95 per stage and in total.

What it measures: for each study folder (``cds synth`` output), DICOM load (cds.dicom.load_study)
and every quick_read stage as timed by quick_read itself (timings_ms), after one warm-up study so
that model loading is reported separately. Also: model load time (all three models, hashes
verified), peak RSS, studies/hour for one worker, the process CPU time per study (what the study
costs whatever else runs on the machine) and the load average (``uptime``) before and after, so
that figures taken on a busy machine are labelled as such. Target (issue 4): median < 1.0 s.

Run (one command; makes its 21 studies under /tmp on the first run, seed 7007):
    .venv/bin/python bench/quick_read_bench.py
or on studies you already have:
    .venv/bin/python bench/quick_read_bench.py --data /tmp/pipe40 --n 20 [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_DATA = Path("/tmp/cds_quick_read_bench")
DEFAULT_SEED = 7007


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f} (1, 5, 15 min) on {os.cpu_count()} CPUs"


def _ensure_studies(folder: Path, n: int, seed: int) -> None:
    have = [p for p in folder.iterdir() if (p / "dicom").is_dir()] if folder.is_dir() else []
    if len(have) >= n:
        return
    print(f"generating {n} studies into {folder} (seed {seed}) ...", file=sys.stderr)
    cds = Path(sys.executable).with_name("cds")
    subprocess.run(
        [str(cds), "synth", "--out", str(folder), "--n", str(n), "--seed", str(seed), "--workers", "1"],
        check=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of generated studies")
    parser.add_argument("--n", type=int, default=20, help="studies timed (one more is the warm-up)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed when studies must be made")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (a worker's share of the CPU)")
    parser.add_argument("--models-dir", type=Path)
    args = parser.parse_args()

    if args.data == DEFAULT_DATA:
        _ensure_studies(args.data, args.n + 1, args.seed)
    load_before = _load()

    import torch

    from cds.dicom import load_study
    from cds.pipeline.quick_read import DEFAULT_STAGES, quick_read

    torch.set_num_threads(args.threads)
    studies = sorted(p for p in args.data.iterdir() if (p / "dicom").is_dir())[: args.n + 1]
    if len(studies) < 2:
        raise SystemExit("need at least 2 studies (one is the warm-up)")
    t0 = time.perf_counter()
    versions = DEFAULT_STAGES.load_models(args.models_dir)
    load_models_ms = (time.perf_counter() - t0) * 1000.0
    per_stage: dict[str, list[float]] = {}
    totals: list[float] = []
    cpu: list[float] = []
    statuses: dict[str, int] = {}
    for i, folder in enumerate(studies):
        start, cpu_start = time.perf_counter(), time.process_time()
        study = load_study(folder / "dicom")
        load_ms = (time.perf_counter() - start) * 1000.0
        result = quick_read(study, models_dir=args.models_dir)
        total = (time.perf_counter() - start) * 1000.0
        if i == 0:
            continue  # warm-up: first-call allocations, lazy imports, weight layout conversion
        cpu.append((time.process_time() - cpu_start) * 1000.0)
        statuses[result.status.value] = statuses.get(result.status.value, 0) + 1
        per_stage.setdefault("load_dicom", []).append(load_ms)
        for stage, ms in result.timings_ms.items():
            if stage != "load_models":
                per_stage.setdefault(stage, []).append(ms)
        totals.append(total)
    print(f"quick read bench: {len(totals)} studies from {args.data} (after 1 warm-up), statuses {statuses}")
    print(f"torch threads {args.threads}; models {', '.join(versions.values())}")
    print(f"load average before: {load_before}")
    print(f"load average after:  {_load()}")
    print(f"model load (every model, hash-verified): {load_models_ms:.0f} ms")
    print(f"{'stage':<18} {'median ms':>10} {'p95 ms':>10}")
    for stage, values in per_stage.items():
        print(f"{stage:<18} {statistics.median(values):>10.1f} {_pct(values, 0.95):>10.1f}")
    med = statistics.median(totals)
    print(f"{'TOTAL (wall)':<18} {med:>10.1f} {_pct(totals, 0.95):>10.1f}")
    print(f"{'process CPU time':<18} {statistics.median(cpu):>10.1f} {_pct(cpu, 0.95):>10.1f}")
    print(f"target median < 1000 ms: {'met' if med < 1000 else 'MISSED'} (ratio {med / 1000:.2f})")
    print(f"studies/hour for one worker: {3600_000 / med:.0f}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
