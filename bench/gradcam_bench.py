"""Grad-CAM cost for all of a study's positive findings, as a share of the quick read's time.

Issue 5 target: on generated studies with 1-6 positive (moderate/severe) findings, Grad-CAM for
all of them costs <= 0.3 x the quick read, measured against the naive loop in the same run.

Per study (after one warm-up study, so imports and model loading are not counted):
- quick read: cds.explain.gradcam_inputs.traced_quick_read (the quick read itself plus a few
  list appends), DICOM load excluded;
- batched: cds.explain.gradcam.compute_maps -- all targets in one forward + backward pass of the
  classifier (the reference the naive loops are compared with);
- maps by grading model: the Grad-CAM passes the product runs (one batched pass per grading model:
  classifier for the canal, foraminal and subarticular models on their own crops), nothing drawn;
- batched + maps + PNGs: the whole heatmaps_for_study as the product runs it (each finding
  explained by the model that graded it: the classifier for the canal, the foraminal and the
  subarticular model on their own crops, one batched pass per model; mapping to the native slices,
  overlay PNG + raw .npz per finding);
- naive (library default): one GradCAM pass per target on an ordinary copy of the model
  (parameters requiring grad, full backward through the network), each in its own `with`;
- naive (same session): one pass per target with our frozen copy (isolates batching itself).
Studies whose pipeline result has more than 6 positive findings use their first 6 (said in the
output); studies without any are skipped.

Run:  .venv/bin/python bench/gradcam_bench.py --data /tmp/gc40 --n 12 [--threads 2] [--json out.json]
(generate studies with `cds synth --out /tmp/gc40 --n 40 --seed 6006`). Report with `uptime`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

MAX_TARGETS = 6


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _naive_library_default(loaded: Any, crops: Any, targets: Any) -> None:
    """What the issue rules out: one full GradCAM pass per target, model as the library expects."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cds.explain.gradcam import output_index

    net = copy.deepcopy(loaded.network)  # never the shared model: the library writes .grad
    for t in targets:
        x = torch.from_numpy(crops[t.level][None])
        with GradCAM(model=net, target_layers=[net.cam_layer]) as cam:
            cam(input_tensor=x, targets=[ClassifierOutputTarget(output_index(t.condition))])


def _maps_by_grading_model(traced: Any, targets: Sequence[Any]) -> None:
    """The Grad-CAM passes the product runs for these findings, without drawing anything: the
    classifier for the canal, the foraminal and subarticular models on their own crops (one batched
    pass per model; the grading models of cds.explain.gradcam_study.heatmaps_for_study)."""
    from cds.explain.gradcam import compute_maps
    from cds.explain.gradcam_foramen import SIDE_OF as FORAMEN_SIDE
    from cds.explain.gradcam_foramen import compute_foramen_maps
    from cds.explain.gradcam_subarticular import SIDE_OF as RECESS_SIDE
    from cds.explain.gradcam_subarticular import compute_recess_maps
    from cds.ml.classifier import load_classifier
    from cds.ml.foraminal import load_foraminal
    from cds.ml.subarticular import load_subarticular

    versions = traced.result.model_versions
    foramen = [t for t in targets if t.condition in FORAMEN_SIDE and "foraminal" in versions]
    recess = [t for t in targets if t.condition in RECESS_SIDE and "subarticular" in versions]
    canal = [t for t in targets if t not in foramen and t not in recess]
    if canal:
        compute_maps(load_classifier("classifier"), {lv: i.crop for lv, i in traced.inputs.items()}, canal)
    keys = [(t.level, FORAMEN_SIDE[t.condition]) for t in foramen]
    if keys:
        compute_foramen_maps(load_foraminal("foraminal"), traced.foramina, keys)
    keys = [(t.level, RECESS_SIDE[t.condition]) for t in recess]
    if keys:
        compute_recess_maps(load_subarticular("subarticular"), traced.recesses, keys)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="folder of generated studies (cds synth)")
    parser.add_argument("--n", type=int, default=12, help="studies measured (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--repeats", type=int, default=3, help="Grad-CAM timings per study (median kept)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    import torch

    from cds.dicom import load_study
    from cds.explain.gradcam import compute_maps, compute_maps_naive
    from cds.explain.gradcam_inputs import traced_quick_read
    from cds.explain.gradcam_study import heatmaps_for_study, select_targets
    from cds.explain.torchvision_compat import ensure_torchvision_importable
    from cds.ml.classifier import load_classifier
    from cds.pipeline.classify import MODEL_NAME

    torch.set_num_threads(args.threads)
    ensure_torchvision_importable()
    load_start = os.getloadavg()
    folders = sorted(p for p in args.data.iterdir() if (p / "dicom").is_dir())
    rows: list[dict[str, float]] = []
    truncated = skipped = 0
    warmed = False
    tmp = Path(tempfile.mkdtemp(prefix="gradcam-bench-"))
    for folder in folders:
        if len(rows) >= args.n:
            break
        study = load_study(folder / "dicom")
        traced = traced_quick_read(study)
        targets = [t for t in select_targets(traced.result) if t.level in traced.inputs]
        if not targets:
            skipped += 1
            continue
        if len(targets) > MAX_TARGETS:
            targets, truncated = targets[:MAX_TARGETS], truncated + 1
        loaded = load_classifier(MODEL_NAME)
        crops = {lv: i.crop for lv, i in traced.inputs.items()}

        def timed(fn: Any) -> float:
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1000.0)
            return statistics.median(times)

        out_dir = tmp / folder.name
        batched = timed(partial(compute_maps, loaded, crops, targets))
        by_model = timed(partial(_maps_by_grading_model, traced, targets))
        full = timed(
            partial(
                heatmaps_for_study,
                traced.result,
                traced.inputs,
                out_dir,
                targets=targets,
                foramina=traced.foramina,
                recesses=traced.recesses,
            )
        )
        naive_same = timed(partial(compute_maps_naive, loaded, crops, targets))
        naive_lib = timed(partial(_naive_library_default, loaded, crops, targets))
        if not warmed:
            warmed = True  # first study: imports, first-call allocations
            continue
        quick_ms = traced.seconds * 1000.0
        rows.append(
            {
                "targets": len(targets),
                "quick_read_ms": quick_ms,
                "batched_ms": batched,
                "maps_by_grading_model_ms": by_model,
                "batched_maps_pngs_ms": full,
                "naive_same_session_ms": naive_same,
                "naive_library_default_ms": naive_lib,
            }
        )
        print(
            f"{folder.name}: {len(targets)} targets, quick read {quick_ms:.0f} ms, batched {batched:.1f} ms "
            f"({batched / quick_ms:.3f}), by grading model {by_model:.1f} ms, +maps+PNGs {full:.1f} ms, "
            f"naive {naive_lib:.1f} ms",
            flush=True,
        )
    if not rows:
        raise SystemExit("no study with positive findings measured (need at least 2 such studies)")

    def stat(key: str) -> dict[str, float]:
        values = [r[key] for r in rows]
        return {"median": statistics.median(values), "p95": _pct(values, 0.95)}

    def ratio(key: str) -> dict[str, float]:
        values = [r[key] / r["quick_read_ms"] for r in rows]
        return {"median": statistics.median(values), "p95": _pct(values, 0.95)}

    summary = {
        "studies": len(rows),
        "targets_per_study": [int(r["targets"]) for r in rows],
        "truncated_to_6": truncated,
        "skipped_no_positive": skipped,
        "threads": args.threads,
        "load_avg_start": [round(x, 2) for x in load_start],
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "ms": {k: stat(k) for k in rows[0] if k != "targets"},
        "ratio_to_quick_read": {k: ratio(k) for k in rows[0] if k not in ("targets", "quick_read_ms")},
        "naive_over_batched": {
            "median": statistics.median(r["naive_library_default_ms"] / r["batched_ms"] for r in rows)
        },
        "target_ratio": 0.3,
    }
    print()
    print(f"studies {summary['studies']}, targets per study {summary['targets_per_study']}")
    for key, s in summary["ms"].items():
        r = summary["ratio_to_quick_read"].get(key)
        extra = f"   ratio to quick read median {r['median']:.3f} p95 {r['p95']:.3f}" if r else ""
        print(f"{key:<28} median {s['median']:8.1f} ms  p95 {s['p95']:8.1f} ms{extra}")
    print(f"naive (library default) / batched: median {summary['naive_over_batched']['median']:.1f}x")
    load = f"{summary['load_avg_start']} -> {summary['load_avg_end']}"
    print(f"peak RSS {summary['peak_rss_mib']} MiB; load average {load}")
    for key, what in (
        ("maps_by_grading_model_ms", "Grad-CAM maps of every finding by its grading model"),
        ("batched_maps_pngs_ms", "the same + native-slice maps, overlay PNGs and raw maps"),
    ):
        verdict = summary["ratio_to_quick_read"][key]["median"] <= 0.3
        print(f"target <= 0.3 x quick read, {what} (median): {'met' if verdict else 'MISSED'}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
