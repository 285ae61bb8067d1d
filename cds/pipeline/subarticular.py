"""Subarticular stage: lateral recess stenosis per level and side, from fine axial crops.

pre-process (:mod:`cds.pipeline.recess_crop`): two crops per level (left, right mirrored) cut from
the axial segmentation the quick read already made (T2 + probabilities, 0.4 mm, the slices nearest
the disc centre). predict (torch): :class:`cds.ml.subarticular.SubarticularNet`, all crops of the
study in one batched forward pass. post-process: a :class:`cds.pipeline.grade.SeverityEstimate`
per recess from the ordinal heads, and the network's estimate of the lateral recess depth as a
:class:`cds.pipeline.measure.Measurement` whose provenance says plainly that it is model-estimated
(it is not measured on a segmentation and has no outline to draw).

Whether the estimated depth is ``reliable`` (so that the FINDINGS.md rule on it decides the grade,
with the ordinal heads as the second opinion that flags disagreement) is the model card's
decision (``thresholds.grade_from_depth_rule``), made on the validation split at training time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cds.domain import Level, MeasurementName, Side
from cds.errors import StageError
from cds.pipeline import measure as ms
from cds.pipeline import recess_crop as rc
from cds.pipeline.grade import SeverityEstimate

if TYPE_CHECKING:
    from cds.ml.subarticular import LoadedSubarticular
    from cds.pipeline.axial import AxialSegmentation

STAGE = "subarticular"
MODEL_NAME = "subarticular"
#: Estimated depths are clipped to this range (mm): the model was trained on truth depths clipped
#: at 10 mm (an open recess has no articular process behind it).
DEPTH_RANGE_MM = (0.0, 10.0)


@dataclass(frozen=True)
class SubarticularReading:
    """The model's view of one lateral recess: ordinal severity and the estimated depth."""

    level: Level
    side: Side
    estimate: SeverityEstimate
    depth: ms.Measurement


def predict(model: LoadedSubarticular, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, C, H, W) -> (present, severe, depth mm), each (N,)."""
    import torch

    with torch.inference_mode():
        out = model.network(torch.from_numpy(crops).to(model.device)).float().cpu().numpy()
    present = 1.0 / (1.0 + np.exp(-out[:, 0]))
    severe = 1.0 / (1.0 + np.exp(-out[:, 1]))
    return present, severe, np.clip(out[:, 2], *DEPTH_RANGE_MM)


def depth_measurement(
    value: float, side: Side, slice_index: int, version: str, reliable: bool
) -> ms.Measurement:
    method = (
        f"model-estimated (subarticular model {version}) from axial T2 crops of the "
        f"{rc.N_SLICES} slices nearest the disc centre and their segmentation; "
        "a learned estimate, not measured on a segmentation"
    )
    issues = () if reliable else ("model-estimated depth not validated for grading; the model's heads grade",)
    return ms.Measurement(
        MeasurementName.LATERAL_RECESS_DEPTH_MM,
        round(float(value), 2),
        ms.Provenance(ms.Plane.AXIAL, slice_index, method),
        side=side,
        reliable=reliable,
        issues=issues,
    )


def level_crops(
    segs: Mapping[Level, AxialSegmentation], offsets: Mapping[Level, Sequence[float] | None]
) -> dict[tuple[Level, Side], rc.RecessCrop]:
    """Both recess crops of every level (the same deterministic function trains the model)."""
    out: dict[tuple[Level, Side], rc.RecessCrop] = {}
    for level, seg in segs.items():
        for side, crop in rc.recess_crops(seg.images, seg.probs, offsets.get(level)).items():
            out[(level, side)] = crop
    return out


def estimate_recesses(
    segs: Mapping[Level, AxialSegmentation],
    offsets: Mapping[Level, Sequence[float] | None],
    *,
    models_dir: Path | None = None,
) -> dict[tuple[Level, Side], SubarticularReading]:
    """Every segmented level's two lateral recesses in one batched forward pass."""
    from cds.ml.subarticular import load_subarticular

    model = load_subarticular(MODEL_NAME, models_dir)
    if not segs:
        return {}
    try:
        crops = level_crops(segs, offsets)
        keys = list(crops)
        batch = np.stack([crops[k].array for k in keys]).astype(np.float32)
        present, severe, depth = predict(model, batch)
    except Exception as exc:
        raise StageError(STAGE, f"{type(exc).__name__}: {exc}") from exc
    reliable = bool(model.spec.thresholds.get("grade_from_depth_rule", 0.0) >= 0.5)
    out: dict[tuple[Level, Side], SubarticularReading] = {}
    for i, (level, side) in enumerate(keys):
        native_slice = segs[level].slice_indices[crops[(level, side)].central_row]
        out[(level, side)] = SubarticularReading(
            level,
            side,
            SeverityEstimate(p_present=float(present[i]), p_severe=float(severe[i])),
            depth_measurement(float(depth[i]), side, native_slice, model.spec.version, reliable),
        )
    return out


__all__ = ["MODEL_NAME", "STAGE", "SubarticularReading", "estimate_recesses", "level_crops", "predict"]
