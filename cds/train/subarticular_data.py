"""Training examples for the subarticular model: lateral recess crops of generated studies + truth.

Each study goes through the product's own path up to the crops (DICOM ingestion, sagittal
segmentation, level labelling, axial slice-to-level mapping, the shipped axial segmentation,
:mod:`cds.pipeline.recess_crop`), so the network learns from exactly what the quick read gives it,
including the segmentations' mistakes. Truth: ``truth/findings.json`` (grade and lateral recess
depth per level and side).

Beside the crops, the cache keeps what the product decides today on the same levels (classifier
2.0.0's subarticular estimates and the measured recess depth of the rule), so the comparison the
grading policy rests on is made on the same studies.

One ``.npz`` per study under a cache folder outside the repository, written atomically, so an
interrupted build resumes where it stopped. Crops are stored ``MARGIN`` pixels wider on each
side, so training can shift the window (sac-centre placement error).
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

from cds.domain import Condition, Grade, Level, Side
from cds.errors import CdsError

log = logging.getLogger(__name__)

MARGIN = 6
#: 2: with each recess's cause region on its wide crop (``causes``).
CACHE_VERSION = 2
SIDE_CONDITION = {Side.LEFT: Condition.LEFT_SUBARTICULAR, Side.RIGHT: Condition.RIGHT_SUBARTICULAR}


@dataclass(frozen=True)
class RecessExample:
    """One (study, level, side): wide crop, truth, and today's sources on the same recess."""

    study: str
    level: Level
    side: Side
    crop: np.ndarray  # (C, SIZE + 2 MARGIN, SIZE + 2 MARGIN) float16
    grade: Grade
    depth_mm: float
    classifier: tuple[float, float]  # (p_present, p_severe) of the shipped classifier
    rule_depth_mm: float  # the measured recess depth (cds.pipeline.quick_read.measure_level)
    rule_reliable: bool
    #: (SIZE + 2 MARGIN,) * 2 bool: the truth cause region seen on the crop (union over its
    #: slices); all False for a normal recess or a cache without causes
    cause: np.ndarray | None = None


def read_split(root: Path) -> dict[str, list[str]]:
    data = json.loads((root / "split.json").read_text(encoding="utf-8"))
    return {k: [str(x) for x in v] for k, v in data.items()}


def read_truth(study_dir: Path) -> dict[tuple[Level, Side], tuple[Grade, float]]:
    data = json.loads((study_dir / "truth" / "findings.json").read_text(encoding="utf-8"))
    out: dict[tuple[Level, Side], tuple[Grade, float]] = {}
    for lv_name, conds in data["levels"].items():
        for side, cond in SIDE_CONDITION.items():
            item = conds.get(cond.value)
            if item is not None:
                out[(Level(lv_name), side)] = (Grade(item["grade"]), float(item["measurement"]["value"]))
    return out


@dataclass(frozen=True)
class LevelReads:
    """What the quick read knows about a study's levels when the subarticular stage runs."""

    segs: dict[Level, Any]  # Level -> cds.pipeline.axial.AxialSegmentation
    offsets: dict[Level, tuple[float, ...]]
    volumes: dict[Level, Any]  # Level -> the axial Volume the level's slices come from
    classifier: dict[Level, Any]  # Level -> cds.pipeline.classify.LevelProbabilities


def read_levels(study_dir: Path) -> LevelReads:
    """The product's own path up to the axial segmentation and the classifier, for one study
    (raises CdsError / ValueError when the study cannot be read)."""
    from cds.dicom import load_study
    from cds.pipeline import quick_read as qr

    stages = qr.DEFAULT_STAGES
    study = load_study(study_dir / "dicom")
    sagittal = qr.model_oriented(study.sagittal_t2)
    masks = stages.segment_sagittal(sagittal, None)
    spacing = (float(sagittal.spacing_mm[1]), float(sagittal.spacing_mm[2]))
    labelling = stages.label_levels(masks, spacing)
    discs = qr.disc_locations(sagittal, masks, labelling)
    centres = {lv: d.centre for lv, d in discs.items()}
    normals = {lv: d.normal for lv, d in discs.items()}
    per_level = qr.slices_per_level([(v, stages.assign_axial(v, centres, normals)) for v in study.axial_t2])
    levels = [lv for lv in per_level if lv in discs]
    segs = {lv: stages.segment_axial(per_level[lv].volume, per_level[lv].indices, None) for lv in levels}
    return LevelReads(
        segs=segs,
        offsets={
            lv: qr.slice_offsets_mm(per_level[lv].volume, segs[lv].slice_indices, discs[lv]) for lv in levels
        },
        volumes={lv: per_level[lv].volume for lv in levels},
        classifier={p.level: p for p in stages.classify(segs, None)},
    )


def prepare_study(study_dir: Path, cache_dir: Path) -> Path | None:
    """Crops, truth and today's sources of one study into ``cache_dir/<study>.npz``."""
    from cds.pipeline import quick_read as qr
    from cds.pipeline import recess_crop as rc

    out = cache_dir / f"{study_dir.name}.npz"
    if out.is_file():
        with np.load(out) as z:
            if int(z["version"]) == CACHE_VERSION:
                return out
    try:
        reads = read_levels(study_dir)
    except (CdsError, ValueError) as exc:
        log.warning("skipping %s: %s", study_dir.name, exc)
        return None
    truth = read_truth(study_dir)
    causes = _cause_regions(study_dir)
    rows: list[tuple[Level, Side, np.ndarray, float, float, float, bool, np.ndarray]] = []
    for lv, seg in sorted(reads.segs.items(), key=lambda kv: kv[0].index):
        offsets = reads.offsets[lv]
        measured = qr.measure_level(seg, None, lv, offsets)
        crops = rc.recess_crops(seg.images, seg.probs, offsets, MARGIN)
        for side, cond in SIDE_CONDITION.items():
            if (lv, side) not in truth:
                continue
            est = reads.classifier[lv].estimates[cond]
            depth = measured.by_condition[cond][0]
            cause = causes.get((lv, side))
            region = (
                cause_on_crop(cause[0], cause[1], seg, reads.volumes[lv], crops[side])
                if cause is not None
                else np.zeros(crops[side].array.shape[1:], bool)
            )
            rows.append(
                (
                    lv,
                    side,
                    crops[side].array,
                    est.p_present,
                    est.p_severe,
                    depth.value,
                    depth.reliable,
                    region,
                )
            )
    if not rows:
        return None
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        version=np.int32(CACHE_VERSION),
        crops=np.stack([r[2] for r in rows]).astype(np.float16),
        levels=np.array([r[0].value for r in rows]),
        sides=np.array([r[1].value for r in rows]),
        grades=np.array([truth[(r[0], r[1])][0].value for r in rows]),
        depths=np.array([truth[(r[0], r[1])][1] for r in rows], dtype=np.float32),
        classifier=np.array([(r[3], r[4]) for r in rows], dtype=np.float32),
        rule=np.array([r[5] for r in rows], dtype=np.float32),
        rule_reliable=np.array([r[6] for r in rows], dtype=bool),
        causes=np.packbits(np.stack([r[7] for r in rows]), axis=-1),
        geometry=np.array([rc.SIZE, MARGIN, rc.SPACING_MM, rc.ANTERIOR_MM, rc.MEDIAL_MM], dtype=np.float64),
    )
    os.replace(tmp, out)
    return out


def load_examples(path: Path) -> list[RecessExample]:
    from cds.pipeline import recess_crop as rc

    with np.load(path) as z:
        geometry = tuple(float(x) for x in z["geometry"])
        expected = (rc.SIZE, MARGIN, rc.SPACING_MM, rc.ANTERIOR_MM, rc.MEDIAL_MM)
        if not np.allclose(geometry, expected):
            raise ValueError(f"{path} holds crops of another geometry ({geometry}); rebuild the cache")
        rows = zip(z["levels"], z["sides"], z["grades"], z["depths"], strict=True)
        width = z["crops"].shape[-1]
        causes = (
            np.unpackbits(z["causes"], axis=-1, count=width).astype(bool)
            if "causes" in z
            else np.zeros((len(z["levels"]), width, width), bool)
        )
        return [
            RecessExample(
                study=path.stem,
                level=Level(str(lv)),
                side=Side(str(sd)),
                crop=z["crops"][i],
                grade=Grade(str(g)),
                depth_mm=float(d),
                classifier=(float(z["classifier"][i, 0]), float(z["classifier"][i, 1])),
                rule_depth_mm=float(z["rule"][i]),
                rule_reliable=bool(z["rule_reliable"][i]),
                cause=causes[i],
            )
            for i, (lv, sd, g, d) in enumerate(rows)
        ]


def _cause_regions(study_dir: Path) -> dict[tuple[Level, Side], tuple[np.ndarray, str]]:
    """The truth cause region (3D mask, its series uid) of every recess that has one."""
    truth_dir = study_dir / "truth"
    labels = json.loads((truth_dir / "labels.json").read_text(encoding="utf-8"))
    out: dict[tuple[Level, Side], tuple[np.ndarray, str]] = {}
    for key, cause in dict(labels.get("causes", {})).items():
        for side, cond in SIDE_CONDITION.items():
            suffix = f"_{cond.value}"
            if key.endswith(suffix):
                with np.load(truth_dir / cause["file"]) as z:
                    out[(Level(key[: -len(suffix)]), side)] = (
                        np.asarray(z["mask"]),
                        str(cause["series_uid"]),
                    )
    return out


def cause_on_crop(mask: np.ndarray, series_uid: str, seg: Any, volume: Any, crop: Any) -> np.ndarray:
    """The cause region as the recess crop sees it: True where a crop pixel, on any of the crop's
    slices, falls in a cause voxel (nearest voxel). Only causes drawn in the level's own series
    are mapped (the generator draws them there); another series' cause gives an empty region."""
    from cds.explain.gradcam_geometry import placement_for
    from cds.pipeline import axial as ax

    if series_uid != volume.series_uid or mask.shape != volume.shape:
        return np.zeros(crop.coords.shape[1:], bool)
    uv = crop.coords.reshape(2, -1).T
    out = np.zeros(uv.shape[0], bool)
    centre = (ax.CANONICAL_SIZE // 2, ax.CANONICAL_SIZE // 2)
    for row in crop.rows:
        k = seg.slice_indices[row]
        placement = placement_for(centre, ax.CANONICAL_SIZE, seg.frames[row], k, volume.affine, series_uid)
        ij = np.rint(placement.crop_to_native(uv)).astype(np.int64)
        inside = (ij[:, 0] >= 0) & (ij[:, 0] < mask.shape[1]) & (ij[:, 1] >= 0) & (ij[:, 1] < mask.shape[2])
        out[inside] |= mask[k, ij[inside, 0], ij[inside, 1]] > 0
    return out.reshape(crop.coords.shape[1:])


def build_cache(root: Path, cache_dir: Path, studies: Sequence[str]) -> list[RecessExample]:
    """Prepare (or reuse) every study's crops and return all examples, in study order."""
    examples: list[RecessExample] = []
    for name in tqdm(studies, desc="recess crops", unit="study"):
        path = prepare_study(root / name, cache_dir)
        if path is not None:
            examples.extend(load_examples(path))
    return examples
