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
CACHE_VERSION = 1
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
        return out
    try:
        reads = read_levels(study_dir)
    except (CdsError, ValueError) as exc:
        log.warning("skipping %s: %s", study_dir.name, exc)
        return None
    truth = read_truth(study_dir)
    rows: list[tuple[Level, Side, np.ndarray, float, float, float, bool]] = []
    for lv, seg in sorted(reads.segs.items(), key=lambda kv: kv[0].index):
        offsets = reads.offsets[lv]
        measured = qr.measure_level(seg, None, lv, offsets)
        crops = rc.recess_crops(seg.images, seg.probs, offsets, MARGIN)
        for side, cond in SIDE_CONDITION.items():
            if (lv, side) not in truth:
                continue
            est = reads.classifier[lv].estimates[cond]
            depth = measured.by_condition[cond][0]
            rows.append(
                (lv, side, crops[side].array, est.p_present, est.p_severe, depth.value, depth.reliable)
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
            )
            for i, (lv, sd, g, d) in enumerate(rows)
        ]


def build_cache(root: Path, cache_dir: Path, studies: Sequence[str]) -> list[RecessExample]:
    """Prepare (or reuse) every study's crops and return all examples, in study order."""
    examples: list[RecessExample] = []
    for name in tqdm(studies, desc="recess crops", unit="study"):
        path = prepare_study(root / name, cache_dir)
        if path is not None:
            examples.extend(load_examples(path))
    return examples
