"""Benchmark: sagittal segmentation of a 15-slice stack on CPU with the shipped model.

Prints model load time, median/p95 wall time of segment_sagittal_stack (pre-process, predict,
post-process at the input resolution) over repeated runs, a per-part breakdown, and peak RSS.
Uses real SPIDER slices when the data folder is present, else a synthetic noise stack of the
same size (timings barely depend on content).

    .venv/bin/python bench/segment_bench.py [--runs 20] [--threads 2] [--spider PATH]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import numpy as np

SPIDER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "spider-t2-sagittal"


def _stack(spider: Path, n: int) -> tuple[np.ndarray, tuple[float, float], str]:
    from cds.train.data import SPIDER_SPACING_MM, read_spider_patient, spider_patients

    if spider.is_dir():
        slices = read_spider_patient(spider, spider_patients(spider)[0])
        shape = slices[0].image.shape
        images = [s.image for s in slices if s.image.shape == shape]
        stack = np.stack([images[i % len(images)] for i in range(n)])
        return stack, SPIDER_SPACING_MM, f"SPIDER slices {shape}"
    rng = np.random.default_rng(0)
    return rng.random((n, 640, 512), dtype=np.float32) * 255, (0.46875, 0.46875), "noise (640, 512)"


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--slices", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spider", type=Path, default=SPIDER)
    parser.add_argument("--models-dir", type=Path, help="default: the repository's models/")
    args = parser.parse_args()

    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    from cds.ml.loading import clear_cache, load_model
    from cds.pipeline import segment as seg

    import_s = time.perf_counter() - t0
    stack, spacing, what = _stack(args.spider, args.slices)

    loads = []
    for _ in range(3):
        clear_cache()
        t = time.perf_counter()
        model = load_model(seg.MODEL_NAME, args.models_dir, device="cpu")
        loads.append(time.perf_counter() - t)

    seg.segment_sagittal_stack(stack, spacing, models_dir=args.models_dir)  # warm-up
    total, pre, pred, post = [], [], [], []
    for _ in range(args.runs):
        t = time.perf_counter()
        seg.segment_sagittal_stack(stack, spacing, models_dir=args.models_dir)
        total.append(time.perf_counter() - t)
        t = time.perf_counter()
        prepared = [seg.preprocess_slice(s, spacing, model.spec.input) for s in stack]
        t1 = time.perf_counter()
        probs = seg.predict(model, np.stack([p[0] for p in prepared]))
        t2 = time.perf_counter()
        for pr, (_, g) in zip(probs, prepared, strict=True):
            seg.postprocess_slice(pr, g)
        t3 = time.perf_counter()
        pre.append(t1 - t)
        pred.append(t2 - t1)
        post.append(t3 - t2)

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"model {model.spec.tag} sha256 {model.spec.sha256[:12]}; input {what}; {args.slices} slices")
    print(f"torch threads {args.threads}; runs {args.runs}; import torch+stage {import_s:.2f} s")
    print(f"model load (verify sha256 + build + load): median {statistics.median(loads) * 1000:.0f} ms")
    med, p95 = statistics.median(total) * 1000, _pct(total, 95) * 1000
    print(f"stack segmentation: median {med:.0f} ms, p95 {p95:.0f} ms")
    print(
        "  breakdown (median): "
        f"pre-process {statistics.median(pre) * 1000:.0f} ms, "
        f"predict {statistics.median(pred) * 1000:.0f} ms, "
        f"post-process {statistics.median(post) * 1000:.0f} ms"
    )
    print(f"  per slice: {statistics.median(total) / args.slices * 1000:.1f} ms")
    print(f"peak RSS {peak_mb:.0f} MiB")


if __name__ == "__main__":
    main()
