"""Segmentation Dice on held-out real SPIDER patients through the product's own sagittal path.

The patients are those the sagittal model card lists as held out of training
(``training.spider.held_out_patients``), so the figure is patient-level out-of-sample. Dice is
computed per patient over all of the patient's slices (3D), then averaged over patients, for the
three structures SPIDER and the model share (disc, vertebra, canal). Slices go through
cds.pipeline.segment.segment_sagittal_stack, the batched form of segment_sagittal_slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cds.errors import BadRequest
from cds.evaluation import overlays
from cds.evaluation.metrics import OverlapCounts, mean_or_none


def held_out_patients(card_training: dict[str, Any]) -> list[str]:
    spider = dict(card_training.get("spider") or {})
    return [str(p) for p in spider.get("held_out_patients", [])]


def evaluate_spider(
    root: Path, patients: Sequence[str], models_dir: Path | None, overlay_dir: Path
) -> dict[str, Any]:
    """Per-patient Dice, the summary over patients, and one overlay per patient (middle slice)."""
    from cds.pipeline.segment import LABELS, segment_sagittal_stack
    from cds.train.data import SPIDER_SPACING_MM, read_spider_patient

    if not root.is_dir():
        raise BadRequest(f"SPIDER folder not found: {root}")
    per_patient: dict[str, dict[str, float | None]] = {}
    files: dict[str, str] = {}
    missing = []
    for patient in patients:
        slices = read_spider_patient(root, patient)
        if not slices:
            missing.append(patient)
            continue
        counts = {name: OverlapCounts() for name in LABELS[1:]}
        preds: list[np.ndarray] = [np.zeros(0, dtype=np.uint8)] * len(slices)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, s in enumerate(slices):
            by_shape.setdefault(s.image.shape, []).append(i)
        for idx in by_shape.values():
            stack = np.stack([slices[i].image for i in idx])
            masks = segment_sagittal_stack(stack, SPIDER_SPACING_MM, models_dir=models_dir)
            for i, mk in zip(idx, masks, strict=True):
                preds[i] = mk.label_map()
        for s, p in zip(slices, preds, strict=True):
            for c, name in enumerate(LABELS):
                if c:
                    counts[name] = counts[name] + OverlapCounts.of(p == c, s.labels == c)
        per_patient[patient] = {name: c.dice for name, c in counts.items()}
        mid = len(slices) // 2
        img = overlays.triptych(
            slices[mid].image,
            preds[mid],
            slices[mid].labels,
            overlays.SAGITTAL_COLOURS,
            title=f"SPIDER {patient}",
        )
        name = f"spider_{patient}.png"
        overlays.save(img, overlay_dir / name)
        files[patient] = name
    structures = list(LABELS[1:])
    summary: dict[str, float | None] = {
        s: mean_or_none([d[s] for d in per_patient.values()]) for s in structures
    }
    summary["mean"] = mean_or_none([summary[s] for s in structures])
    return {
        "patients": list(per_patient),
        "missing_patients": missing,
        "per_patient": per_patient,
        "summary": summary,
        "overlays": files,
    }
