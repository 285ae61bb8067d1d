"""Synthetic study generation speed and grade balance.

Usage: python bench/synth_speed.py [--n 8] [--seed 1000] [--grades 40]
Prints seconds per study (median / p95), studies per minute on one core, the stage split of one study,
and the grade histogram per condition over --grades patients (anatomy + pathology + measurement only,
which is what decides the grades; the images do not change them).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8, help="full studies to time")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--grades", type=int, default=40, help="patients for the grade histogram")
    args = ap.parse_args()

    from cds.domain import Condition, Grade, Level
    from cds.synth.anatomy import LevelDrivers, sample_anatomy
    from cds.synth.measure import measure_all
    from cds.synth.pathology import sample_pathology
    from cds.synth.raster import SpineModel
    from cds.synth.study import generate_study

    times, cpu = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.n):
            t0, c0 = time.perf_counter(), time.process_time()
            generate_study(args.seed + i, Path(tmp))
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    if times:
        t, c = np.array(times), np.array(cpu)
        med, p95 = float(np.median(t)), float(np.percentile(t, 95))
        print(
            f"studies: {args.n}  wall s/study median {med:.2f} p95 {p95:.2f}  |  CPU s/study median "
            f"{np.median(c):.2f} p95 {np.percentile(c, 95):.2f}  ->  {60.0 / med:.1f} studies/min wall, "
            f"{60.0 / np.median(c):.1f} studies/min per fully available core"
        )

    counts: dict[Condition, Counter[Grade]] = {c: Counter() for c in Condition}
    t0 = time.perf_counter()
    for i in range(args.grades):
        rng = np.random.default_rng([args.seed, i])
        anat = sample_pathology(rng, sample_anatomy(rng, tuple(LevelDrivers() for _ in Level)))
        for m in measure_all(SpineModel(anat), SpineModel(anat.without_pathology())).values():
            for c in Condition:
                counts[c][m.grade(c)] += 1
    dt = time.perf_counter() - t0
    if args.grades == 0:
        return
    per = dt / max(args.grades, 1)
    print(f"grade histogram over {args.grades} patients ({args.grades * 5} levels, {per:.2f} s/patient):")
    print(f"{'condition':22s} {'normal_mild':>12s} {'moderate':>9s} {'severe':>7s}")
    for c, cnt in counts.items():
        n = sum(cnt.values())
        row = "  ".join(f"{cnt[g]:4d} ({100 * cnt[g] / n:3.0f}%)" for g in Grade)
        print(f"{c.value:22s} {row}")


if __name__ == "__main__":
    main()
