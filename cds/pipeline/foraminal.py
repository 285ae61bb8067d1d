"""Foraminal stage: severity of neural foraminal narrowing per level and side, from the sagittal T2.

pre-process (:mod:`cds.pipeline.foramen_crop`): a parasagittal crop per (level, side) cut from the
sagittal T2 the quick read already loaded, placed by the sagittal segmentation's disc centroid
and normal. predict (torch): :class:`cds.ml.foraminal.ForaminalNet`, all crops of the study in
one batched forward pass (ten crops: a few ms). post-process: a
:class:`cds.pipeline.grade.SeverityEstimate` per foramen from the ordinal heads, and the
network's estimate of the foraminal area ratio as a :class:`cds.pipeline.measure.Measurement`
whose provenance says plainly that it is model-estimated on the parasagittal plane (it is not
measured on a segmentation and has no outline to draw).

Whether the ratio is ``reliable`` (so that the FINDINGS.md rule on it decides the grade, with the
ordinal heads as the second opinion that flags disagreement) is the model card's decision
(``thresholds.grade_from_ratio_rule``), made on the validation split when the model was trained:
the rule is used only where it graded the validation foramina at least as well as the heads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cds.domain import Level, MeasurementName, Side
from cds.errors import StageError
from cds.pipeline import foramen_crop as fc
from cds.pipeline import measure as ms
from cds.pipeline.grade import SeverityEstimate

if TYPE_CHECKING:
    from cds.dicom.volume import Volume
    from cds.ml.foraminal import LoadedForaminal

STAGE = "foraminal"
MODEL_NAME = "foraminal"
#: The lateral offset (mm) reported as the parasagittal plane of the estimate: the middle of the
#: sampled band, where the synthetic foramina lie (canal half-width + 3.75 mm, 14-19 mm).
REPORTED_OFFSET_MM = 16.5


@dataclass(frozen=True)
class ForaminalReading:
    """The model's view of one foramen: ordinal severity and the estimated area ratio."""

    level: Level
    side: Side
    estimate: SeverityEstimate
    ratio: ms.Measurement


def predict(model: LoadedForaminal, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, C, H, W) -> (present, severe, ratio), each (N,)."""
    import torch

    with torch.inference_mode():
        out = model.network(torch.from_numpy(crops).to(model.device)).float().cpu().numpy()
    present = 1.0 / (1.0 + np.exp(-out[:, 0]))
    severe = 1.0 / (1.0 + np.exp(-out[:, 1]))
    return present, severe, np.clip(out[:, 2], 0.0, 1.5)


def reported_slice(sagittal: Volume, centre: np.ndarray, side: Side) -> int:
    """Native sagittal slice nearest the reported parasagittal plane of one side."""
    lateral = np.asarray(sagittal.normal, dtype=np.float64)
    if lateral[0] < 0:
        lateral = -lateral
    sign = 1.0 if side is Side.LEFT else -1.0
    point = np.asarray(centre, dtype=np.float64) + sign * REPORTED_OFFSET_MM * lateral
    k = float(sagittal.patient_to_voxel(point)[0])
    return int(min(max(round(k), 0), sagittal.shape[0] - 1))


def ratio_measurement(
    value: float, side: Side, slice_index: int, version: str, reliable: bool
) -> ms.Measurement:
    method = (
        f"model-estimated (foraminal model {version}) from parasagittal sagittal-T2 crops "
        f"{fc.LATERAL_OFFSETS_MM[0]:g}-{fc.LATERAL_OFFSETS_MM[-1]:g} mm lateral of the disc centre; "
        "a learned estimate, not measured on a segmentation"
    )
    issues = () if reliable else ("model-estimated ratio not validated for grading; the model's heads grade",)
    return ms.Measurement(
        MeasurementName.FORAMINAL_AREA_RATIO,
        round(float(value), 3),
        ms.Provenance(ms.Plane.SAGITTAL, slice_index, method),
        side=side,
        reliable=reliable,
        issues=issues,
    )


def estimate_foramina(
    sagittal: Volume,
    centres: Mapping[Level, np.ndarray],
    normals: Mapping[Level, np.ndarray],
    *,
    models_dir: Path | None = None,
) -> dict[tuple[Level, Side], ForaminalReading]:
    """Every labelled level's two foramina in one batched forward pass."""
    from cds.ml.foraminal import load_foraminal

    model = load_foraminal(MODEL_NAME, models_dir)
    if not centres:
        return {}
    try:
        crops = fc.foramen_crops(sagittal, centres, normals)
        keys = list(crops)
        batch = np.stack([crops[k] for k in keys]).astype(np.float32)
        present, severe, ratio = predict(model, batch)
    except Exception as exc:
        raise StageError(STAGE, f"{type(exc).__name__}: {exc}") from exc
    reliable = bool(model.spec.thresholds.get("grade_from_ratio_rule", 0.0) >= 0.5)
    out: dict[tuple[Level, Side], ForaminalReading] = {}
    for i, (level, side) in enumerate(keys):
        k = reported_slice(sagittal, centres[level], side)
        out[(level, side)] = ForaminalReading(
            level,
            side,
            SeverityEstimate(p_present=float(present[i]), p_severe=float(severe[i])),
            ratio_measurement(float(ratio[i]), side, k, model.spec.version, reliable),
        )
    return out


__all__ = ["MODEL_NAME", "STAGE", "ForaminalReading", "estimate_foramina", "predict"]
