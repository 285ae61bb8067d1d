"""Evaluate one synthetic study: run quick_read as in production, compare everything with truth.

The result is one JSON-serialisable record (cached per study and model set, see
cds.evaluation.cache), holding per (level, condition) the true grade, the reported grade and the
classifier's probabilities; per level the measurements next to the generator's; voxel counts for
Dice (sagittal and axial, every structure the networks output); and the level identification.
Aggregation into the report's figures happens later, over all records (cds.evaluation.aggregate).
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from cds.domain import Condition, Level, MeasurementName, Side
from cds.errors import CdsError, ModelError
from cds.evaluation import overlays
from cds.evaluation.metrics import OverlapCounts
from cds.evaluation.recorder import StageRecord, recording_stages
from cds.evaluation.replay import StageStore, replaying_stages
from cds.evaluation.truth import StudyTruth, read_truth

if TYPE_CHECKING:
    from cds.dicom.study import Study
    from cds.dicom.volume import Volume

#: A pipeline disc centroid that is not on a disc label takes the nearest truth disc within this.
LEVEL_MATCH_RADIUS_MM = 6.0

#: Measurements compared per level: (name, side, condition whose finding carries it).
COMPARED_MEASUREMENTS: tuple[tuple[MeasurementName, Side | None, Condition], ...] = (
    (MeasurementName.DSCA_MM2, None, Condition.SPINAL_CANAL),
    (MeasurementName.AP_DIAMETER_MM, None, Condition.SPINAL_CANAL),
    (MeasurementName.LATERAL_RECESS_DEPTH_MM, Side.LEFT, Condition.LEFT_SUBARTICULAR),
    (MeasurementName.LATERAL_RECESS_DEPTH_MM, Side.RIGHT, Condition.RIGHT_SUBARTICULAR),
    (MeasurementName.FORAMINAL_AREA_RATIO, Side.LEFT, Condition.LEFT_FORAMINAL),
    (MeasurementName.FORAMINAL_AREA_RATIO, Side.RIGHT, Condition.RIGHT_FORAMINAL),
)


def _counts_json(counts: Mapping[str, OverlapCounts]) -> dict[str, list[int]]:
    return {k: [c.intersection, c.predicted, c.truth] for k, c in counts.items()}


# ----------------------------------------------------------------------------------------------
# sagittal: Dice and level identification
# ----------------------------------------------------------------------------------------------


def _oriented_truth(truth: StudyTruth, original: Volume) -> np.ndarray | None:
    """The sagittal label volume in the model orientation quick_read segments in."""
    from cds.pipeline.segment import SagittalOrientation

    raw = truth.labels_of(original.series_uid)
    if raw is None or raw.shape != original.shape:
        return None
    return SagittalOrientation.from_affine(original.affine).apply(raw)


def sagittal_dice(
    labels: np.ndarray, truth: StudyTruth, record: StageRecord
) -> tuple[dict[str, OverlapCounts], range] | None:
    """Overlap per class (disc, vertebra, canal) on the slices quick_read segmented."""
    from cds.pipeline.quick_read import central_block
    from cds.pipeline.segment import LABELS
    from cds.train.data import synth_class_table
    from cds.train.synth_data import lookup

    got = record.sagittal()
    if got is None:
        return None
    _, masks = got
    classes = lookup(synth_class_table(dict(truth.label_names)))[labels]
    block = central_block(classes.shape[0])
    pred = masks.label_map()
    counts = {
        LABELS[c]: OverlapCounts.of(
            pred[block.start : block.stop] == c, classes[block.start : block.stop] == c
        )
        for c in range(1, len(LABELS))
    }
    return counts, block


def _disc_level_at(
    labels: np.ndarray,
    names: Mapping[int, str],
    voxel: tuple[float, float, float],
    spacing: tuple[float, float],
) -> Level | None:
    """The truth disc level at a voxel, or of the nearest disc voxel on that slice within
    LEVEL_MATCH_RADIUS_MM; None when no lumbar disc is there."""
    k = int(np.clip(round(voxel[0]), 0, labels.shape[0] - 1))
    r = int(np.clip(round(voxel[1]), 0, labels.shape[1] - 1))
    c = int(np.clip(round(voxel[2]), 0, labels.shape[2] - 1))
    plane = labels[k]
    disc_values = np.array([v for v, n in names.items() if n.startswith("disc_")], dtype=plane.dtype)
    is_disc = np.isin(plane, disc_values)
    if not is_disc.any():
        return None
    if not is_disc[r, c]:
        dist, (ri, ci) = ndimage.distance_transform_edt(~is_disc, sampling=spacing, return_indices=True)
        if dist[r, c] > LEVEL_MATCH_RADIUS_MM:
            return None
        r, c = int(ri[r, c]), int(ci[r, c])
    name = names.get(int(plane[r, c]), "")
    try:
        return Level(name.removeprefix("disc_"))
    except ValueError:
        return None  # a thoracic disc (e.g. T12-L1)


def level_identification(labels: np.ndarray, truth: StudyTruth, record: StageRecord) -> dict[str, Any] | None:
    """For each pipeline level: the truth level under its disc centroid. A level counts as
    identified when the pipeline's disc of that name lies on the truth disc of that name."""
    got, labelling = record.sagittal(), record.labelling()
    if got is None or labelling is None:
        return None
    volume, _ = got
    spacing = (float(volume.spacing_mm[1]), float(volume.spacing_mm[2]))
    found: dict[str, str | None] = {}
    for disc in labelling.discs:
        if disc.level is None:
            continue
        at = _disc_level_at(labels, truth.label_names, disc.centroid_voxel, spacing)
        found[disc.level.value] = at.value if at else None
    correct = [lv.value for lv in Level if found.get(lv.value) == lv.value]
    return {
        "found": found,  # pipeline level -> truth level under it
        "correct": correct,
        "uncertain": bool(labelling.uncertain),
        "reasons": list(labelling.reasons),
    }


def _sagittal_overlay(
    image: np.ndarray,
    pred: np.ndarray,
    classes: np.ndarray,
    record: StageRecord,
    level_id: Mapping[str, Any] | None,
    title: str,
) -> overlays.Image.Image:
    labelling = record.labelling()
    marks = []
    if labelling is not None and level_id is not None:
        for disc in labelling.discs:
            if disc.level is None:
                continue
            ok = level_id["found"].get(disc.level.value) == disc.level.value
            marks.append(overlays.Mark(disc.centroid_voxel[1], disc.centroid_voxel[2], disc.level.value, ok))
    return overlays.triptych(image, pred, classes, overlays.SAGITTAL_COLOURS, marks, title)


# ----------------------------------------------------------------------------------------------
# axial: Dice per class
# ----------------------------------------------------------------------------------------------


def axial_dice(truth: StudyTruth, record: StageRecord) -> tuple[dict[str, OverlapCounts], int]:
    """Overlap per axial class over every segmented level, on the canonical grid the pipeline
    measures on (truth resampled nearest into each slice's frame, then upsampled like the labels).
    Returns the counts and how many segmented volumes had no usable truth."""
    from cds.pipeline import axial as ax

    lut = ax.class_of_gt()
    totals = {name: OverlapCounts() for name in ax.AXIAL_CLASSES[1:]}
    skipped = 0
    for volume, seg in record.axial():
        raw = truth.labels_of(volume.series_uid)
        if raw is None or raw.shape != volume.shape:
            skipped += 1
            continue
        up = ax.MEASURE_UPSAMPLE
        for row, k in enumerate(seg.slice_indices):
            t = lut[ax.to_canonical(raw[k].astype(np.uint8), seg.frames[row], order=0)]
            t = np.repeat(np.repeat(t, up, axis=0), up, axis=1)
            for cls, name in enumerate(ax.AXIAL_CLASSES):
                if cls:
                    totals[name] = totals[name] + OverlapCounts.of(seg.labels[row] == cls, t == cls)
    return totals, skipped


def _axial_overlays(truth: StudyTruth, record: StageRecord, out_dir: Path, study: str) -> dict[str, str]:
    """One triptych per classified level at its narrowest slice (the one the classifier saw)."""
    from cds.pipeline import axial as ax
    from cds.pipeline.classify import narrowest_slice

    lut = ax.class_of_gt()
    volumes = {id(seg): volume for volume, seg in record.axial()}
    written: dict[str, str] = {}
    for level, seg in record.axial_by_level().items():
        volume = volumes.get(id(seg))
        raw = truth.labels_of(volume.series_uid) if volume is not None else None
        if volume is None or raw is None or raw.shape != volume.shape:
            continue
        row = narrowest_slice(seg.probs)
        t = lut[ax.to_canonical(raw[seg.slice_indices[row]].astype(np.uint8), seg.frames[row], order=0)]
        img = overlays.triptych(
            seg.images[row],
            seg.labels[row],
            t,
            overlays.AXIAL_COLOURS,
            title=f"{study} {level.value}",
            height=160,
        )
        name = f"{study}_{level.value}_axial.png"
        overlays.save(img, out_dir / name)
        written[level.value] = name
    return written


# ----------------------------------------------------------------------------------------------
# findings against truth
# ----------------------------------------------------------------------------------------------


FORAMINAL = (Condition.LEFT_FORAMINAL, Condition.RIGHT_FORAMINAL)
SUBARTICULAR = (Condition.LEFT_SUBARTICULAR, Condition.RIGHT_SUBARTICULAR)


def compare_findings(truth: StudyTruth, analysis: Any, record: StageRecord) -> dict[str, Any]:
    """Per level: analysed?, per condition truth vs reported grade + classifier probabilities,
    measurements next to the generator's."""
    probabilities = record.probabilities()
    # the foraminal and subarticular models' estimates replace the classifier's for their conditions
    by_model = ((FORAMINAL, record.foraminal()), (SUBARTICULAR, record.subarticular()))
    out: dict[str, Any] = {}
    for level in Level:
        conditions: dict[str, Any] = {}
        estimates = probabilities.get(level)
        for condition in Condition:
            true_grade = truth.grade(level, condition)
            finding = analysis.finding(level, condition)
            est = estimates.estimates.get(condition) if estimates else None
            side = condition.side
            for family, estimates_of_model in by_model:
                if condition in family and side is not None:
                    est = estimates_of_model.get((level, side), est)
            conditions[condition.value] = {
                "truth": true_grade.value if true_grade else None,
                "grade": finding.grade.value if finding else None,
                "uncertain": bool(finding.uncertain) if finding else None,
                "p_present": float(est.p_present) if est else None,
                "p_severe": float(est.p_severe) if est else None,
            }
        measured: dict[str, Any] = {}
        for name, side, condition in COMPARED_MEASUREMENTS:
            key = name.value + (f"_{side.value}" if side else "")
            finding = analysis.finding(level, condition)
            value = finding.measurements.get(name) if finding else None
            measured[key] = {
                "truth": truth.measurement(level, name, side),
                "predicted": float(value) if value is not None else None,
            }
        out[level.value] = {
            "analysed": any(f.level is level for f in analysis.findings),
            "conditions": conditions,
            "measurements": measured,
        }
    return out


# ----------------------------------------------------------------------------------------------
# one study
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyResult:
    record: dict[str, Any]
    faithfulness: bytes | None = None  # pickled cds.explain.faithfulness scores, when asked for


def evaluate_study(
    study_dir: Path,
    models_dir: Path | None,
    overlay_dir: Path,
    faithfulness: bool = False,
    replay_dir: Path | None = None,
) -> StudyResult:
    """Run quick_read on one generated study and compare it with its truth (one JSON record);
    with ``faithfulness`` the same read is traced for Grad-CAM and scored against the causes.

    ModelError propagates (the whole evaluation is meaningless without the models); any other
    product error is recorded as this study's failure and counted in the report.
    """
    from cds.dicom import load_study
    from cds.pipeline.quick_read import DEFAULT_STAGES, quick_read

    truth = read_truth(study_dir)
    rec: dict[str, Any] = {
        "study": truth.name,
        "seed": truth.seed,
        "generator_version": truth.generator_version,
        "truth_digest": truth.digest,
    }
    start = time.perf_counter()
    try:
        study: Study = load_study(study_dir / "dicom")
    except CdsError as exc:
        rec.update(status="failed", error=f"{type(exc).__name__}: {exc.message}")
        return StudyResult(rec, pickle.dumps(("failed", "study_failed:unreadable")) if faithfulness else None)
    load_ms = (time.perf_counter() - start) * 1000.0
    store = StageStore.load(replay_dir / f"{truth.name}.pkl") if replay_dir is not None else None
    base = replaying_stages(DEFAULT_STAGES, store) if store is not None else DEFAULT_STAGES
    stages, record = recording_stages(base)
    scores: bytes | None = None
    try:
        if faithfulness:
            from cds.evaluation.explanation import traced_read_and_score

            analysis, scores = traced_read_and_score(study_dir, study, stages, models_dir, truth.seed or 0)
        else:
            analysis = quick_read(study, models_dir=models_dir, stages=stages)
    except ModelError:
        raise
    except CdsError as exc:  # a failed stage: no findings, but the stages before it still count
        rec.update(status="failed", error=f"{type(exc).__name__}: {exc.message}")
        if faithfulness:
            scores = pickle.dumps(("failed", f"study_failed:{type(exc).__name__}"))
    else:
        rec.update(
            status=analysis.status.value,
            reason=analysis.reason,
            labelling_uncertain=bool(analysis.labelling_uncertain),
            timings_ms={
                "dicom_load": round(load_ms, 1),
                **{k: round(v, 1) for k, v in analysis.timings_ms.items()},
            },
            total_ms=round((time.perf_counter() - start) * 1000.0, 1),
            model_versions=dict(analysis.model_versions),
            analysis=analysis.to_json(),
            levels=compare_findings(truth, analysis, record),
        )
    if store is not None:
        store.save()
        rec["replay"] = {"hits": store.hits, "computed": store.added}
    original = study.sagittal_t2 if record.sagittal() is not None else None
    oriented = _oriented_truth(truth, original) if original is not None else None
    if oriented is not None:
        dice = sagittal_dice(oriented, truth, record)
        level_id = level_identification(oriented, truth, record)
        rec["level_identification"] = level_id
        if dice is not None:
            counts, block = dice
            rec["sagittal_overlap"] = _counts_json(counts)
            sag = record.sagittal()
            assert sag is not None
            volume, masks = sag
            k = (block.start + block.stop - 1) // 2
            from cds.train.data import synth_class_table
            from cds.train.synth_data import lookup

            classes = lookup(synth_class_table(dict(truth.label_names)))[oriented[k]]
            image = _sagittal_overlay(
                volume.array[k], masks.label_map()[k], classes, record, level_id, truth.name
            )
            name = f"{truth.name}_sagittal.png"
            overlays.save(image, overlay_dir / name)
            rec.setdefault("overlays", {})["sagittal"] = name
    counts_ax, skipped = axial_dice(truth, record)
    rec["axial_overlap"] = _counts_json(counts_ax)
    rec["axial_volumes_without_truth"] = skipped
    rec.setdefault("overlays", {})["axial"] = _axial_overlays(truth, record, overlay_dir, truth.name)
    return StudyResult(rec, scores)
