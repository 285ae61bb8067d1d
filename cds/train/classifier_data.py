"""Training samples of the level classifier: crops, targets, cause masks and measurements, cached.

Each study is read once through the product's own code -- cds.dicom loads the DICOM,
``axial.preprocess`` + ``axial.predict`` (the inference functions, with the shipped axial U-Net)
give the canonical slices and class probabilities of each axial level block, and
``classify.level_crop`` cuts the classifier input -- so training crops equal inference crops.

Per level it also keeps, in the same (wide) crop coordinates:

* the cause region of every truth-positive condition (``truth/causes/<level>_<condition>.npz``),
  mapped onto the crop plane by ``faithfulness.crop_cause_mask`` -- the very mapping the
  pointing game uses, so the localisation loss and the faithfulness score agree on "where";
* the generator's deciding measurements (DSCA, AP diameter, lateral recess depth and foraminal
  area ratio per side), targets of an auxiliary regression.

Why a disk cache (one .npz per study, outside the repository): reading DICOM and running the
axial U-Net over 250 studies costs minutes on the shared CPU; a rerun (resume, new seed, new
loss weights) should start training at once. The cache key includes the axial_seg model's sha256
and the crop size, so a new segmentation model can never be paired with stale crops.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cds.domain import Condition, Grade, Level
from cds.pipeline import axial as ax
from cds.pipeline import classify as cl

log = logging.getLogger(__name__)

#: Margin (pixels, each side) of the cached crop around the inference crop: shift augmentation.
MARGIN = 4
WIDE_SIZE = cl.CROP_SIZE + 2 * MARGIN
#: Auxiliary regression targets (generator truth), in this order; scaled to about unit range.
MEASURES: tuple[tuple[str, str | None, float], ...] = (
    ("dsca_mm2", None, 100.0),
    ("ap_diameter_mm", None, 10.0),
    ("lateral_recess_depth_mm", "left", 5.0),
    ("lateral_recess_depth_mm", "right", 5.0),
    ("foraminal_area_ratio", "left", 1.0),
    ("foraminal_area_ratio", "right", 1.0),
)
#: Mirror permutation of MEASURES (left <-> right).
MEASURE_MIRROR = (0, 1, 3, 2, 5, 4)
CACHE_FORMAT = 1
_BY_RANK = {g.rank: g for g in Grade}


@dataclass(frozen=True)
class LevelSample:
    """One level of one study, everything in wide-crop coordinates (WIDE_SIZE square)."""

    study: str
    level: Level
    crop: np.ndarray  # (IN_CHANNELS, WIDE, WIDE) float32
    grades: dict[Condition, Grade]
    causes: np.ndarray  # (5, WIDE, WIDE) bool, Condition order; all False where no cause region
    measures: np.ndarray  # (len(MEASURES),) float32, scaled; NaN where unknown


def cache_dir_for(root: Path, seg_sha256: str) -> Path:
    return root / f"crops-v{CACHE_FORMAT}-{WIDE_SIZE}-{seg_sha256[:12]}"


def _measures(measured: dict[str, Any]) -> np.ndarray:
    out = np.full(len(MEASURES), np.nan, dtype=np.float32)
    for i, (name, side, scale) in enumerate(MEASURES):
        value = measured.get(name)
        if side is not None:
            value = value.get(side) if isinstance(value, dict) else None
        if isinstance(value, int | float) and np.isfinite(value):
            out[i] = float(value) / scale
    return out


def build_study(study_dir: Path, seg_model: Any) -> dict[str, np.ndarray]:
    """Arrays of one study's levels (keys ``<level>/crop``, ``/causes``, ``/grades``, ``/measures``)."""
    from cds.dicom import load_study
    from cds.explain.faithfulness import crop_cause_mask
    from cds.explain.gradcam_geometry import placement_for

    study = load_study(study_dir / "dicom")
    truth_dir = study_dir / "truth"
    labels = json.loads((truth_dir / "labels.json").read_text(encoding="utf-8"))
    findings = json.loads((truth_dir / "findings.json").read_text(encoding="utf-8"))
    series_level = {uid: info.get("level") for uid, info in dict(labels.get("series", {})).items()}
    causes = dict(labels.get("causes", {}))
    volumes = {v.series_uid: v for v in study.series}
    arrays: dict[str, np.ndarray] = {}
    for volume in study.axial_t2:
        name = series_level.get(volume.series_uid)
        if not name or f"{name}/crop" in arrays:
            continue
        level = Level(name)
        truth = findings["levels"].get(level.value, {})
        try:
            grades = [Grade(truth[c.value]["grade"]).rank for c in Condition]
        except (KeyError, ValueError):
            continue
        indices = list(range(volume.shape[0]))
        images, frames = ax.preprocess(volume.array, volume.affine, indices)
        probs = ax.predict(seg_model, images)
        k = cl.narrowest_slice(probs)
        centre = cl.crop_centre(probs[k, ax.SAC])
        placement = placement_for(centre, WIDE_SIZE, frames[k], k, volume.affine, volume.series_uid)
        masks = np.zeros((len(Condition), WIDE_SIZE, WIDE_SIZE), dtype=bool)
        for j, c in enumerate(Condition):
            cause = causes.get(f"{level.value}_{c.value}")
            cause_volume = volumes.get(cause["series_uid"]) if cause else None
            if cause is None or cause_volume is None:
                continue
            with np.load(truth_dir / cause["file"]) as z:
                masks[j] = crop_cause_mask(z["mask"], cause_volume, placement)
        arrays[f"{level.value}/crop"] = cl.level_crop(images, probs, size=WIDE_SIZE).astype(np.float16)
        arrays[f"{level.value}/causes"] = np.packbits(masks, axis=-1)
        arrays[f"{level.value}/grades"] = np.asarray(grades, dtype=np.int8)
        arrays[f"{level.value}/measures"] = _measures(findings.get("measurements", {}).get(level.value, {}))
    return arrays


def prepare(root: Path, studies: Sequence[str], cache_dir: Path, seg_model: Any) -> list[Path]:
    """Build (or reuse) the cache file of every study; studies that cannot be read are skipped."""
    from cds.errors import CdsError

    cache_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for name in tqdm(studies, desc="classifier data", leave=False):
        path = cache_dir / f"{name}.npz"
        if not path.is_file():
            try:
                arrays = build_study(root / name, seg_model)
            except (CdsError, OSError, ValueError, KeyError) as exc:
                log.warning("skipping %s: %s", name, exc)
                continue
            if not arrays:
                log.warning("skipping %s: no axial level block with truth", name)
                continue
            # Write then rename: a second process may read the cache at the same time.
            partial = path.with_name(f".{path.stem}.{os.getpid()}.npz")
            np.savez_compressed(partial, allow_pickle=False, **arrays)
            os.replace(partial, path)
        out.append(path)
    return out


def load_samples(paths: Sequence[Path]) -> list[LevelSample]:
    out = []
    for path in paths:
        with np.load(path) as z:
            for level in Level:
                key = level.value
                if f"{key}/crop" not in z:
                    continue
                causes = np.unpackbits(z[f"{key}/causes"], axis=-1, count=WIDE_SIZE).astype(bool)
                out.append(
                    LevelSample(
                        study=path.stem,
                        level=level,
                        crop=z[f"{key}/crop"].astype(np.float32),
                        grades={
                            c: _BY_RANK[int(r)] for c, r in zip(Condition, z[f"{key}/grades"], strict=True)
                        },
                        causes=causes,
                        measures=z[f"{key}/measures"].astype(np.float32),
                    )
                )
    return out
