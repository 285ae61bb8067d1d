"""Training examples for the foraminal model: parasagittal crops of generated studies + their truth.

Each study goes through the product's own path up to the crops (DICOM ingestion, model
orientation, the shipped sagittal segmentation, level labelling, disc locations,
:mod:`cds.pipeline.foramen_crop`), so the network is trained on exactly what the quick read will
give it, including the segmentation's and the labelling's mistakes. Truth comes from
``truth/findings.json`` (grade and foraminal area ratio per level and side).

Crops are cached per study under a cache folder outside the repository (one ``.npz`` per
study, written atomically), so an interrupted build resumes where it stopped. They are stored
``MARGIN`` pixels wider on each side, un-normalised, with the study's intensity window computed
on the central windows (as at inference), so training can shift the window by up to ``MARGIN``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cds.domain import Condition, Grade, Level, Side
from cds.errors import CdsError

log = logging.getLogger(__name__)

MARGIN = 6
CACHE_VERSION = 2
#: Geometry of version-1 caches (written before the crop was narrowed to 48 px; they hold the
#: current window, so they are cut down rather than rebuilt): size, margin, cranial top, posterior start.
_V1_GEOMETRY = (64, 6, 30.0, -6.0)


@dataclass(frozen=True)
class ForamenExample:
    """One (study, level, side): raw wide crop, the study's intensity window, and the truth."""

    study: str
    level: Level
    side: Side
    crop: np.ndarray  # (C, SIZE + 2 MARGIN, SIZE + 2 MARGIN) float16, un-normalised
    lo: float
    scale: float
    grade: Grade
    ratio: float


def read_split(root: Path) -> dict[str, list[str]]:
    data = json.loads((root / "split.json").read_text(encoding="utf-8"))
    return {k: [str(x) for x in v] for k, v in data.items()}


def _truth(study_dir: Path) -> dict[tuple[Level, Side], tuple[Grade, float]]:
    data = json.loads((study_dir / "truth" / "findings.json").read_text(encoding="utf-8"))
    out: dict[tuple[Level, Side], tuple[Grade, float]] = {}
    for lv_name, conds in data["levels"].items():
        for side, cond in ((Side.LEFT, Condition.LEFT_FORAMINAL), (Side.RIGHT, Condition.RIGHT_FORAMINAL)):
            item = conds.get(cond.value)
            if item is None:
                continue
            out[(Level(lv_name), side)] = (Grade(item["grade"]), float(item["measurement"]["value"]))
    return out


def prepare_study(study_dir: Path, cache_dir: Path) -> Path | None:
    """Crops + truth of one study into ``cache_dir/<study>.npz``; None when it cannot be read."""
    from cds.dicom import load_study
    from cds.pipeline import foramen_crop as fc
    from cds.pipeline import quick_read as qr

    out = cache_dir / f"{study_dir.name}.npz"
    if out.is_file():
        return out
    try:
        study = load_study(study_dir / "dicom")
        sagittal = qr.model_oriented(study.sagittal_t2)
        masks = qr.DEFAULT_STAGES.segment_sagittal(sagittal, None)
        spacing = (float(sagittal.spacing_mm[1]), float(sagittal.spacing_mm[2]))
        labelling = qr.DEFAULT_STAGES.label_levels(masks, spacing)
        discs = qr.disc_locations(sagittal, masks, labelling)
    except (CdsError, ValueError) as exc:
        log.warning("skipping %s: %s", study_dir.name, exc)
        return None
    truth = _truth(study_dir)
    frames = {lv: fc.frame_for(sagittal, d.centre, d.normal) for lv, d in discs.items()}
    wide = fc.raw_crops(sagittal, frames, MARGIN)
    central = {k: v[:, MARGIN:-MARGIN, MARGIN:-MARGIN] for k, v in wide.items()}
    lo, scale = fc.intensity_window(central)
    keys = [k for k in wide if k in truth]
    if not keys:
        return None
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        version=np.int32(CACHE_VERSION),
        crops=np.stack([wide[k] for k in keys]).astype(np.float16),
        levels=np.array([k[0].value for k in keys]),
        sides=np.array([k[1].value for k in keys]),
        grades=np.array([truth[k][0].value for k in keys]),
        ratios=np.array([truth[k][1] for k in keys], dtype=np.float32),
        window=np.array([lo, scale], dtype=np.float64),
        geometry=np.array([fc.SIZE, MARGIN, fc.CRANIAL_TOP_MM, fc.POSTERIOR_START_MM], dtype=np.float64),
    )
    os.replace(tmp, out)
    return out


def _current_window(crops: np.ndarray, geometry: tuple[float, ...]) -> np.ndarray:
    """Cut the current crop geometry (SIZE + 2 MARGIN, same spacing) out of wider cached crops."""
    from cds.pipeline import foramen_crop as fc

    _, margin, top, start = geometry
    row0 = (top + margin * fc.SPACING_MM - (fc.CRANIAL_TOP_MM + MARGIN * fc.SPACING_MM)) / fc.SPACING_MM
    col0 = (
        (fc.POSTERIOR_START_MM - MARGIN * fc.SPACING_MM) - (start - margin * fc.SPACING_MM)
    ) / fc.SPACING_MM
    r, c = round(row0), round(col0)
    n = fc.SIZE + 2 * MARGIN
    if abs(row0 - r) > 1e-6 or abs(col0 - c) > 1e-6 or r < 0 or c < 0:
        raise ValueError(f"cached crops ({geometry}) do not contain the current crop window")
    out = crops[:, :, r : r + n, c : c + n]
    if out.shape[-2:] != (n, n):
        raise ValueError(f"cached crops ({geometry}) do not contain the current crop window")
    return out


def load_examples(path: Path) -> list[ForamenExample]:
    """A study's examples in the current crop geometry, with the window recomputed as inference does."""
    from cds.pipeline import foramen_crop as fc

    with np.load(path) as z:
        geometry = tuple(float(x) for x in z["geometry"]) if "geometry" in z else _V1_GEOMETRY
        crops = _current_window(z["crops"].astype(np.float32), geometry)
        central = {i: c[:, MARGIN:-MARGIN, MARGIN:-MARGIN] for i, c in enumerate(crops)}
        lo, scale = fc.intensity_window(central)  # type: ignore[arg-type]
        rows = zip(z["levels"], z["sides"], z["grades"], z["ratios"], strict=True)
        return [
            ForamenExample(
                study=path.stem,
                level=Level(str(lv)),
                side=Side(str(sd)),
                crop=crops[i].astype(np.float16),
                lo=lo,
                scale=scale,
                grade=Grade(str(g)),
                ratio=float(r),
            )
            for i, (lv, sd, g, r) in enumerate(rows)
        ]


def build_cache(root: Path, cache_dir: Path, studies: Sequence[str]) -> list[ForamenExample]:
    """Prepare (or reuse) every study's crops and return all examples, in study order."""
    examples: list[ForamenExample] = []
    for name in tqdm(studies, desc="foraminal crops", unit="study"):
        path = prepare_study(root / name, cache_dir)
        if path is not None:
            examples.extend(load_examples(path))
    return examples
