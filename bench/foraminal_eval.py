"""Figures of a trained foraminal model on one part of a ``cds synth`` split (not a timing bench).

What it prints: per side and pooled, AUROC of "present" (grade >= moderate), AUROC of "severe",
quadratic-weighted kappa of the grade from the ordinal heads and from the FINDINGS.md rule on
the estimated ratio, MAE of the estimated foraminal area ratio, confusion matrix of the grade the
quick read reports (the card's grading choice). Crops come from the training crop cache (built
with the product's own path on first use: ingestion, the shipped sagittal segmentation, level
labelling, cds.pipeline.foramen_crop), so the figures describe what the quick read sees.

Run (the validation part is what the card reports; ``test`` = the held-out part of the
training folder's split, never used for training or selection; the evaluation split
/work/data/synth-test is for ``cds evaluate`` only):
    .venv/bin/python bench/foraminal_eval.py --data /work/data/synth-train --part test \\
        --cache-dir /work/data/foraminal/cache-v1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--part", default="validation")
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from cds.ml.foraminal import load_foraminal
    from cds.train import foraminal as tf
    from cds.train.foraminal_data import build_cache, read_split

    names = read_split(args.data)[args.part]
    data = tf.to_arrays(build_cache(args.data, args.cache_dir, names))
    loaded = load_foraminal("foraminal", args.models_dir)
    out = tf.predict(loaded.network, data.x)
    metrics = tf.metrics(out, data)
    rule = loaded.spec.thresholds.get("grade_from_ratio_rule", 0.0) >= 0.5
    p_present, p_severe = 1 / (1 + np.exp(-out[:, 0])), 1 / (1 + np.exp(-out[:, 1]))
    reported = tf.ratio_grade(out[:, 2]) if rule else tf.ordinal_grade(p_present, p_severe)
    confusion = np.zeros((3, 3), dtype=int)
    for t, p in zip(data.grade, reported, strict=True):
        confusion[t, p] += 1
    print(
        json.dumps(
            {
                "model": loaded.spec.tag,
                "part": args.part,
                "studies": len(names),
                "grading": "ratio rule" if rule else "ordinal heads",
                "metrics": metrics,
                "confusion_truth_rows_normal_moderate_severe": confusion.tolist(),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
