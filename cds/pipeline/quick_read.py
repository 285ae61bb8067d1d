"""quick_read(study): the whole analysis in one readable function over typed stage results.

    models -> sagittal segmentation -> level labelling -> axial slice-to-level mapping
    -> axial segmentation -> fine dural sac (0.4 mm crops at the narrowest slices)
    -> measurements -> classification
    -> foraminal model (parasagittal sagittal-T2 crops; replaces the foraminal estimates)
    -> subarticular model (fine axial recess crops; replaces the subarticular estimates) -> grading

Each stage runs inside :func:`_stage`, which times it (``timings_ms``) and turns any unexpected
exception into a :class:`StageError` naming the stage, so a failed analysis always says where
it failed. A study that is readable but cannot be analysed (no sagittal T2, no level found, no
axial slice through any level) is not an error: it returns status UNANALYSABLE with the reason.

Models are loaded (and their hashes verified) before any stage runs: missing or corrupt weights
raise ModelError, because findings from untrained or wrong weights must never be produced.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from cds.domain import AnalysisResult, AnalysisStatus, Condition, Finding, Level, MeasurementName, Side
from cds.errors import CdsError, IngestError, StageError
from cds.pipeline import axial as ax
from cds.pipeline import measure as ms
from cds.pipeline.grade import DEFAULT_POLICY, Decider, GradingPolicy, grade_level

if TYPE_CHECKING:
    from cds.dicom.study import Study
    from cds.dicom.volume import Volume
    from cds.pipeline.classify import LevelProbabilities
    from cds.pipeline.foraminal import ForaminalReading
    from cds.pipeline.levels import LevelLabelling
    from cds.pipeline.sac_refine import FineSac
    from cds.pipeline.segment import SagittalMasks
    from cds.pipeline.subarticular import SubarticularReading

#: Canonical-grid directions (see cds.pipeline.axial): rows run posterior, columns run patient left.
POSTERIOR_RC = (1.0, 0.0)
LEFT_RC = (0.0, 1.0)


@dataclass(frozen=True)
class DiscLocation:
    """Where a labelled disc lies in patient space (LPS mm), from the sagittal segmentation."""

    centre: np.ndarray  # (3,)
    normal: np.ndarray  # (3,), unit, pointing cranial
    height: ms.Measurement


@dataclass(frozen=True)
class LevelSlices:
    """The axial slices of one level: which volume and which slice indices."""

    volume: Volume
    indices: tuple[int, ...]


@dataclass(frozen=True)
class LevelMeasurements:
    """All measurements of one level, grouped by the condition whose finding carries them."""

    by_condition: Mapping[Condition, tuple[ms.Measurement, ...]]

    def all(self) -> tuple[ms.Measurement, ...]:
        return tuple(m for group in self.by_condition.values() for m in group)


class Unanalysable(Exception):
    """Internal signal: the study was read but cannot be analysed; carries the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Clock:
    timings_ms: dict[str, float] = field(default_factory=dict)


@contextmanager
def _stage(clock: _Clock, name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    except (CdsError, Unanalysable):
        raise
    except Exception as exc:  # anything unexpected is reported as this stage's failure
        raise StageError(name, f"{type(exc).__name__}: {exc}") from exc
    finally:
        clock.timings_ms[name] = (time.perf_counter() - start) * 1000.0


# ----------------------------------------------------------------------------------------------
# Stage helpers (pure NumPy where possible)
# ----------------------------------------------------------------------------------------------


def model_oriented(volume: Volume) -> Volume:
    """The sagittal volume re-indexed to the segmentation's input contract (head up, anterior left),
    with the affine changed to match, so that masks, labelling and patient coordinates agree."""
    from cds.pipeline.segment import SagittalOrientation

    o = SagittalOrientation.from_affine(volume.affine)
    array = o.apply(np.asarray(volume.array))
    a = np.array(volume.affine, dtype=np.float64)
    sk, sr, sc = volume.spacing_mm
    if o.transpose:
        a[:, [1, 2]] = a[:, [2, 1]]
        sr, sc = sc, sr
    if o.flip_rows:
        a[:3, 3] += a[:3, 1] * (array.shape[1] - 1)
        a[:3, 1] *= -1.0
    if o.flip_cols:
        a[:3, 3] += a[:3, 2] * (array.shape[2] - 1)
        a[:3, 2] *= -1.0
    return replace(volume, array=array.astype(np.float32), affine=a, spacing_mm=(sk, sr, sc))


def disc_locations(
    sagittal: Volume, masks: SagittalMasks, labelling: LevelLabelling
) -> dict[Level, DiscLocation]:
    """Patient-space centre and cranial-pointing normal of each labelled disc, plus its height."""
    a = sagittal.affine
    spacing = (float(sagittal.spacing_mm[1]), float(sagittal.spacing_mm[2]))
    out: dict[Level, DiscLocation] = {}
    for level, disc in labelling.by_level().items():
        centre = sagittal.voxel_to_patient(np.asarray(disc.centroid_voxel, dtype=np.float64))
        axis = disc.axis_rc[0] * a[:3, 1] + disc.axis_rc[1] * a[:3, 2]
        normal = np.cross(axis, sagittal.normal)
        normal /= np.linalg.norm(normal)
        if normal[2] < 0:
            normal = -normal
        k = round(disc.centroid_voxel[0])
        out[level] = DiscLocation(
            centre, normal, _disc_height(masks.disc[k], spacing, disc.centroid_voxel, k)
        )
    return out


def _disc_height(
    disc2d: np.ndarray, spacing: tuple[float, float], centroid: Sequence[float], k: int
) -> ms.Measurement:
    """Height of the disc component at the labelled centroid on its sagittal slice."""
    comps, n = ndimage.label(disc2d)
    if n == 0:
        return ms.disc_height(disc2d, spacing, k)
    r, c = round(centroid[1]), round(centroid[2])
    r = min(max(r, 0), disc2d.shape[0] - 1)
    c = min(max(c, 0), disc2d.shape[1] - 1)
    label = comps[r, c]
    if label == 0:  # centroid between components: nearest disc pixel's component
        _, (ri, ci) = ndimage.distance_transform_edt(comps == 0, return_indices=True)
        label = comps[ri[r, c], ci[r, c]]
    return ms.disc_height(comps == label, spacing, k)


def slices_per_level(
    assignments: Sequence[tuple[Volume, Sequence[Level | None]]],
) -> dict[Level, LevelSlices]:
    """For each level, the axial volume with the most slices assigned to it, and those slices."""
    best: dict[Level, LevelSlices] = {}
    for volume, per_slice in assignments:
        for level in Level:
            idx = tuple(k for k, lv in enumerate(per_slice) if lv is level)
            if idx and (level not in best or len(idx) > len(best[level].indices)):
                best[level] = LevelSlices(volume, idx)
    return best


def _native_points(m: ms.Measurement, seg: ax.AxialSegmentation, row: int) -> ms.Measurement:
    """Re-express a measurement's points from the upsampled canonical grid in native pixels."""
    if not m.provenance.points_px:
        return m
    up = np.asarray(m.provenance.points_px, dtype=np.float64)
    canonical = (up + 0.5) / ax.MEASURE_UPSAMPLE - 0.5
    native = seg.frames[row].to_native(canonical)
    points = tuple((round(float(p[0]), 2), round(float(p[1]), 2)) for p in native)
    prov = replace(m.provenance, slice_index=seg.slice_indices[row], points_px=points)
    return replace(m, provenance=prov)


def _with_native_slice(m: ms.Measurement, seg: ax.AxialSegmentation) -> ms.Measurement:
    """Measurement from the level's slice row -> native slice index (and native pixel points)."""
    row = m.provenance.slice_index
    if m.provenance.points_px:
        return _native_points(m, seg, row)
    return replace(m, provenance=replace(m.provenance, slice_index=seg.slice_indices[row]))


#: The recess line lies this far medial to the pedicle's medial wall (FINDINGS.md "at the recess").
RECESS_MEDIAL_TO_PEDICLE_MM = 1.5
#: Without a pedicle on the level's slices: the superior articular process's medial edge lies
#: about this far medial to the pedicle wall in a normal spine (used as a fallback, flagged).
FACET_EDGE_MEDIAL_TO_PEDICLE_MM = 3.0


def slice_offsets_mm(volume: Volume, indices: Sequence[int], disc: DiscLocation) -> tuple[float, ...]:
    """Signed distance (mm) of each axial slice's centre from the disc centre along the disc's
    cranial normal: negative = caudal to the disc (the lower vertebra's side)."""
    rows, cols = volume.shape[1], volume.shape[2]
    out = []
    for k in indices:
        centre = volume.voxel_to_patient(np.array([float(k), (rows - 1) / 2.0, (cols - 1) / 2.0]))
        out.append(float((np.asarray(centre) - disc.centre) @ disc.normal))
    return tuple(out)


def _sac_probability(seg: ax.AxialSegmentation) -> np.ndarray | None:
    """The level's sac probability on the measurement grid (slices, 2H, 2W), or None when the
    segmentation carries no probabilities that match its labels (a stand-in in tests, a label map
    without its network output): every sac label must then have a sac probability above 0.5."""
    probs = np.asarray(seg.probs)
    if probs.ndim != 4 or probs.shape[0] != seg.labels.shape[0] or probs.shape[1] <= ax.SAC:
        return None
    up = ax.upsample2(probs[:, ax.SAC])
    if up.shape != seg.labels.shape:
        return None
    labelled = seg.labels == ax.SAC
    if labelled.any() and float((up[labelled] > 0.5).mean()) < 0.99:
        return None
    return up


def measure_level(
    seg: ax.AxialSegmentation,
    disc_height: ms.Measurement | None,
    level: Level | None = None,
    slice_offsets: Sequence[float] | None = None,
    fine: FineSac | None = None,
) -> LevelMeasurements:
    """DSCA and AP diameter on the narrowest slice, lateral recess depth per side (narrowest
    slice through the disc), foraminal area ratio per side (widest axial foramen cross-section
    against the level's unnarrowed reference, see :func:`cds.pipeline.measure.foramen_ratio_from_axial`;
    only while ``measure.FORAMEN_RATIO_VALIDATED``), disc height from the sagittal stage.

    ``slice_offsets`` (one per slice, see :func:`slice_offsets_mm`) say which slices lie caudal
    to the disc: the recess line is placed from the pedicle of the *lower* vertebra (FINDINGS.md,
    cds/synth/measure.py), which only those slices cross; without them every slice is searched.

    ``fine`` (the refine_sac stage's sac probabilities, cds/pipeline/sac_refine.py) replaces the
    DSCA and AP diameter with their measurements on the fine map; without it both come from
    axial_seg's sac."""
    spacing = seg.label_spacing_mm
    sac = seg.mask(ax.SAC)
    disc = seg.mask(ax.DISC)
    body = seg.mask(ax.BODY)
    anterior = disc | body
    facet = seg.mask(ax.FACET)
    posterior_elements = seg.mask(ax.POSTERIOR)
    bone = facet | posterior_elements
    n = sac.shape[0]
    # Scanner directions, anatomical origin: patients lie within a few degrees of the scanner
    # axes, and a disc's shape (protrusions) gives a noisier AP axis than that.
    axes = [
        ms.axial_axes(anterior[i], sac[i], spacing, POSTERIOR_RC, LEFT_RC, use_shape=False) for i in range(n)
    ]
    ap_axes = [ms.facet_midline(axes[i], facet[i], sac[i], spacing) for i in range(n)]
    dsca, ap = _dsca_and_ap(seg, sac, spacing, ap_axes, fine)
    canal: list[ms.Measurement] = [_with_native_slice(dsca, seg), _with_native_slice(ap, seg)]
    if disc_height is not None:
        canal.append(disc_height)
    groups: dict[Condition, tuple[ms.Measurement, ...]] = {Condition.SPINAL_CANAL: tuple(canal)}
    through_disc = [i for i in range(n) if disc[i].any()] or list(range(n))
    caudal = (
        [i for i in range(n) if slice_offsets[i] < 0.0]
        if slice_offsets is not None and len(slice_offsets) == n
        else list(range(n))
    )
    for side, condition in (
        (Side.LEFT, Condition.LEFT_SUBARTICULAR),
        (Side.RIGHT, Condition.RIGHT_SUBARTICULAR),
    ):
        groups[condition] = (
            _with_native_slice(
                _recess(
                    anterior, body, bone, posterior_elements, facet, spacing, axes, side, through_disc, caudal
                ),
                seg,
            ),
        )
    foramen = seg.mask(ax.FORAMEN)
    for side, condition in ((Side.LEFT, Condition.LEFT_FORAMINAL), (Side.RIGHT, Condition.RIGHT_FORAMINAL)):
        if not ms.FORAMEN_RATIO_VALIDATED:  # see the constant: not reported until it tracks the truth
            groups[condition] = ()
            continue
        ratio = ms.foramen_ratio_from_axial(foramen, sac, spacing, side, level.value if level else None)
        groups[condition] = (_with_native_slice(ratio, seg),)
    return LevelMeasurements(groups)


def _dsca_and_ap(
    seg: ax.AxialSegmentation,
    sac: np.ndarray,
    spacing: tuple[float, float],
    axes: Sequence[ms.AxialAxes],
    fine: FineSac | None,
) -> tuple[ms.Measurement, ms.Measurement]:
    """DSCA and AP diameter (rows of the level): on the fine sac map when there is one, else on
    axial_seg's sac (probability-calibrated thresholds, see the measure constants)."""
    if fine is not None:
        from cds.pipeline.sac_refine import canal_measurements

        refined = canal_measurements(fine, spacing, axes)
        if refined is not None:
            return refined
    p_sac = _sac_probability(seg)
    area_sac = sac if p_sac is None else sac & (p_sac > ms.DSCA_SAC_PROBABILITY)
    dsca = ms.dural_sac_area(area_sac, spacing)
    k = dsca.provenance.slice_index
    ap = ms.canal_ap_diameter(area_sac[k], spacing, axes[k], k, None if p_sac is None else p_sac[k])
    return dsca, ap


def _recess(
    anterior: np.ndarray,
    body: np.ndarray,
    bone: np.ndarray,
    posterior_elements: np.ndarray,
    facet: np.ndarray,
    spacing: tuple[float, float],
    axes: Sequence[ms.AxialAxes],
    side: Side,
    rows: Sequence[int],
    pedicle_rows: Sequence[int],
) -> ms.Measurement:
    """Narrowest lateral recess depth of one side over the slices through the disc.

    The pedicle wall is searched on ``pedicle_rows`` only (the slices caudal to the disc): the
    slices cranial to it cut the upper vertebra's laminae and articular processes, which the
    network partly labels as posterior elements and which then pass for a pedicle 5-20 mm too
    lateral (validation: caudal-only walls cut the recess MAE from 1.97 to 1.54 mm,
    bench/measurement_error.py)."""
    n = anterior.shape[0]
    walls = [
        w
        for i in pedicle_rows
        if (w := ms.pedicle_half_width(posterior_elements[i], body[i], spacing, axes[i], side)) is not None
    ]
    how = "lower vertebra's pedicle wall" if len(pedicle_rows) < n else "pedicle wall"
    if walls:
        # The pedicle is an oval in the craniocaudal direction: its wall is most medial on the
        # slice through its centre, so the minimum over slices is the wall.
        wall = float(min(walls))
    else:
        edges = [e for i in range(n) if (e := ms.medial_edge(facet[i], spacing, axes[i], side)) is not None]
        if not edges:
            return ms.Measurement(
                MeasurementName.LATERAL_RECESS_DEPTH_MM,
                0.0,
                ms.Provenance(ms.Plane.AXIAL, rows[0], "no pedicle or facet found"),
                side=side,
                reliable=False,
                issues=(f"no pedicle or articular process found on the {side.value} side",),
            )
        wall = float(np.median(edges)) + FACET_EDGE_MEDIAL_TO_PEDICLE_MM
        how = "articular process edge + 3 mm (no pedicle on the level's slices)"
    offset = max(wall - RECESS_MEDIAL_TO_PEDICLE_MM, 0.0)
    per_slice = [
        ms.lateral_recess_depth(anterior[i], bone[i], spacing, axes[i], side, offset, i) for i in rows
    ]
    best = ms.narrowest(per_slice)
    prov = replace(best.provenance, method=f"{best.provenance.method}; recess line located from the {how}")
    return replace(best, provenance=prov)


# ----------------------------------------------------------------------------------------------
# Stages as replaceable functions (tests swap the model-backed ones at this boundary)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stages:
    """The model-backed steps; defaults are the real ones."""

    load_models: Callable[[Path | None], Mapping[str, str]]
    segment_sagittal: Callable[[Volume, Path | None], SagittalMasks]
    label_levels: Callable[[SagittalMasks, tuple[float, float]], LevelLabelling]
    assign_axial: Callable[
        [Volume, Mapping[Level, np.ndarray], Mapping[Level, np.ndarray]], Sequence[Level | None]
    ]
    segment_axial: Callable[[Volume, Sequence[int], Path | None], ax.AxialSegmentation]
    classify: Callable[[Mapping[Level, ax.AxialSegmentation], Path | None], Sequence[LevelProbabilities]]
    #: Foraminal readings from the parasagittal model (cds.pipeline.foraminal); the default (no
    #: readings) keeps the classifier's foraminal estimates, for stand-in stages in tests.
    foraminal: Callable[
        [Volume, Mapping[Level, DiscLocation], Path | None], Mapping[tuple[Level, Side], ForaminalReading]
    ] = lambda _v, _d, _m: {}
    #: Fine dural sac probabilities per level (cds.pipeline.sac_refine) for the DSCA and AP
    #: diameter; the default (no fine maps) measures both on axial_seg's sac, for stand-in stages.
    refine_sac: Callable[
        [Mapping[Level, tuple[Volume, ax.AxialSegmentation]], Path | None], Mapping[Level, FineSac]
    ] = lambda _levels, _m: {}
    #: Lateral recess readings from the subarticular model (cds.pipeline.subarticular), from the
    #: axial segmentations and each level's slice offsets from the disc; the default (no readings)
    #: keeps the classifier's subarticular estimates, for stand-in stages in tests.
    subarticular: Callable[
        [Mapping[Level, ax.AxialSegmentation], Mapping[Level, Sequence[float] | None], Path | None],
        Mapping[tuple[Level, Side], SubarticularReading],
    ] = lambda _s, _o, _m: {}


def _load_models(models_dir: Path | None) -> dict[str, str]:
    """Load and verify every model up front; returns name -> name@version for model_versions."""
    from cds.ml.classifier import load_classifier
    from cds.ml.loading import load_model
    from cds.pipeline import classify, segment

    versions = {}
    for name in (segment.MODEL_NAME, ax.MODEL_NAME):
        versions[name] = load_model(name, models_dir).spec.tag
    versions[classify.MODEL_NAME] = load_classifier(classify.MODEL_NAME, models_dir).spec.tag
    from cds.ml.foraminal import load_foraminal
    from cds.pipeline import foraminal

    versions[foraminal.MODEL_NAME] = load_foraminal(foraminal.MODEL_NAME, models_dir).spec.tag
    from cds.pipeline import sac_refine

    versions[sac_refine.MODEL_NAME] = load_model(sac_refine.MODEL_NAME, models_dir).spec.tag
    from cds.ml.subarticular import load_subarticular
    from cds.pipeline import subarticular

    versions[subarticular.MODEL_NAME] = load_subarticular(subarticular.MODEL_NAME, models_dir).spec.tag
    return versions


#: Sagittal slices segmented either side of the stack's centre. Why not all: segmentation is the
#: dominant cost of a quick read, and levels, disc positions and heights only need the
#: mid-sagittal block (lumbar protocols centre the sagittal stack on the spine). Three slices:
#: level naming on 40 generated studies was as accurate with 3 as with 7 (bench/level_accuracy.py)
#: at less than half the cost.
SAGITTAL_HALF_WIDTH = 1


def central_block(n_slices: int, half_width: int = SAGITTAL_HALF_WIDTH) -> range:
    mid = n_slices // 2
    return range(max(0, mid - half_width), min(n_slices, mid + half_width + 1))


def _segment_sagittal(volume: Volume, models_dir: Path | None) -> SagittalMasks:
    from cds.pipeline.segment import SagittalMasks, segment_sagittal_volume

    spacing = (float(volume.spacing_mm[1]), float(volume.spacing_mm[2]))
    block = central_block(volume.shape[0])
    part = segment_sagittal_volume(
        np.asarray(volume.array[block.start : block.stop]), spacing, models_dir=models_dir
    )
    full = [np.zeros(volume.shape, dtype=bool) for _ in range(3)]
    for arr, got in zip(full, (part.disc, part.vertebra, part.canal), strict=True):
        arr[block.start : block.stop] = got
    return SagittalMasks(disc=full[0], vertebra=full[1], canal=full[2])


def _label_levels(masks: SagittalMasks, spacing: tuple[float, float]) -> LevelLabelling:
    from cds.pipeline.levels import label_levels

    return label_levels(masks, spacing)


def _assign_axial(
    volume: Volume, centres: Mapping[Level, np.ndarray], normals: Mapping[Level, np.ndarray]
) -> Sequence[Level | None]:
    from cds.dicom.levels import assign_axial_levels

    return assign_axial_levels(volume, centres, disc_normals=normals)


def _segment_axial(volume: Volume, indices: Sequence[int], models_dir: Path | None) -> ax.AxialSegmentation:
    return ax.segment_level(np.asarray(volume.array), volume.affine, indices, models_dir=models_dir)


def _refine_sac(
    levels: Mapping[Level, tuple[Volume, ax.AxialSegmentation]], models_dir: Path | None
) -> Mapping[Level, FineSac]:
    from cds.pipeline.sac_refine import refine_sac

    return refine_sac(levels, models_dir)


def _classify(
    segs: Mapping[Level, ax.AxialSegmentation], models_dir: Path | None
) -> Sequence[LevelProbabilities]:
    from cds.pipeline.classify import classify_levels, level_crop

    crops = {lv: level_crop(s.images, s.probs) for lv, s in segs.items()}
    return classify_levels(crops, models_dir=models_dir)


def _foraminal(
    sagittal: Volume, discs: Mapping[Level, DiscLocation], models_dir: Path | None
) -> Mapping[tuple[Level, Side], ForaminalReading]:
    from cds.pipeline.foraminal import estimate_foramina

    centres = {lv: d.centre for lv, d in discs.items()}
    normals = {lv: d.normal for lv, d in discs.items()}
    return estimate_foramina(sagittal, centres, normals, models_dir=models_dir)


def _with_foramina(
    probabilities: LevelProbabilities,
    measured: LevelMeasurements,
    readings: Mapping[tuple[Level, Side], ForaminalReading],
) -> tuple[LevelProbabilities, LevelMeasurements]:
    """One level's classifier estimates and measurements with the foraminal model's readings
    (severity estimate and model-estimated area ratio) in place of the foraminal ones."""
    estimates = dict(probabilities.estimates)
    groups = dict(measured.by_condition)
    for side, condition in ((Side.LEFT, Condition.LEFT_FORAMINAL), (Side.RIGHT, Condition.RIGHT_FORAMINAL)):
        reading = readings.get((probabilities.level, side))
        if reading is not None:
            estimates[condition] = reading.estimate
            groups[condition] = (reading.ratio,)
    return replace(probabilities, estimates=estimates), LevelMeasurements(groups)


def _subarticular(
    segs: Mapping[Level, ax.AxialSegmentation],
    offsets: Mapping[Level, Sequence[float] | None],
    models_dir: Path | None,
) -> Mapping[tuple[Level, Side], SubarticularReading]:
    from cds.pipeline.subarticular import estimate_recesses

    return estimate_recesses(segs, offsets, models_dir=models_dir)


def _with_recesses(
    probabilities: LevelProbabilities,
    measured: LevelMeasurements,
    readings: Mapping[tuple[Level, Side], SubarticularReading],
) -> tuple[LevelProbabilities, LevelMeasurements]:
    """One level's estimates with the subarticular model's severity estimate in place of the
    classifier's for each recess it read. The measured recess depth stays the finding's measurement
    (shown, and a rule grade that differs flags the finding uncertain), unless the model card
    validated the model's estimated depth for grading: then that estimate, labelled
    model-estimated, is the measurement (and :func:`_recess_policy` lets its rule decide)."""
    estimates = dict(probabilities.estimates)
    groups = dict(measured.by_condition)
    for side, condition in (
        (Side.LEFT, Condition.LEFT_SUBARTICULAR),
        (Side.RIGHT, Condition.RIGHT_SUBARTICULAR),
    ):
        reading = readings.get((probabilities.level, side))
        if reading is not None:
            estimates[condition] = reading.estimate
            if reading.depth.reliable:
                groups[condition] = (reading.depth,)
    return replace(probabilities, estimates=estimates), LevelMeasurements(groups)


def _recess_policy(
    policy: GradingPolicy, readings: Mapping[tuple[Level, Side], SubarticularReading]
) -> GradingPolicy:
    """The policy for this study's recesses: where the subarticular model's card validated its
    estimated depth for grading (``grade_from_depth_rule``: the FINDINGS.md rule on it had the
    higher kappa on the validation recesses), that rule decides both recess conditions, with the
    model's ordinal heads as the second opinion that flags disagreement; otherwise the policy as
    given (the heads decide)."""
    if not any(r.depth.reliable for r in readings.values()):
        return policy
    return policy.with_deciders(
        {Condition.LEFT_SUBARTICULAR: Decider.RULE, Condition.RIGHT_SUBARTICULAR: Decider.RULE}
    )


DEFAULT_STAGES = Stages(
    _load_models,
    _segment_sagittal,
    _label_levels,
    _assign_axial,
    _segment_axial,
    _classify,
    _foraminal,
    refine_sac=_refine_sac,
    subarticular=_subarticular,
)


# ----------------------------------------------------------------------------------------------
# The composition
# ----------------------------------------------------------------------------------------------


def quick_read(
    study: Study,
    *,
    models_dir: Path | None = None,
    policy: GradingPolicy = DEFAULT_POLICY,
    stages: Stages = DEFAULT_STAGES,
) -> AnalysisResult:
    """Analyse one study. Raises ModelError (weights missing/corrupt) or StageError (a stage
    failed, named); returns UNANALYSABLE with a reason when the study cannot be analysed."""
    clock = _Clock()
    with _stage(clock, "load_models"):
        versions = dict(stages.load_models(models_dir))
    try:
        return _analyse(study, clock, versions, models_dir, policy, stages)
    except Unanalysable as why:
        return AnalysisResult(
            status=AnalysisStatus.UNANALYSABLE,
            reason=why.reason,
            timings_ms=dict(clock.timings_ms),
            model_versions=versions,
        )


def _analyse(
    study: Study,
    clock: _Clock,
    versions: dict[str, str],
    models_dir: Path | None,
    policy: GradingPolicy,
    stages: Stages,
) -> AnalysisResult:
    with _stage(clock, "select_series"):
        try:
            sagittal = study.sagittal_t2
        except IngestError as exc:
            raise Unanalysable(exc.message) from exc
        axials = study.axial_t2
        if not axials:
            raise Unanalysable("study has no axial T2 series: the canal and recesses cannot be measured")
    with _stage(clock, "segment_sagittal"):
        sagittal = model_oriented(sagittal)
        masks = stages.segment_sagittal(sagittal, models_dir)
    with _stage(clock, "label_levels"):
        spacing = (float(sagittal.spacing_mm[1]), float(sagittal.spacing_mm[2]))
        labelling = stages.label_levels(masks, spacing)
        if not labelling.levels:
            raise Unanalysable(
                "lumbar levels not identifiable: " + ("; ".join(labelling.reasons) or "no disc found")
            )
        discs = disc_locations(sagittal, masks, labelling)
    with _stage(clock, "assign_axial"):
        centres = {lv: d.centre for lv, d in discs.items()}
        normals = {lv: d.normal for lv, d in discs.items()}
        per_level = slices_per_level([(v, stages.assign_axial(v, centres, normals)) for v in axials])
        if not per_level:
            raise Unanalysable("no axial T2 slice passes through an identified disc level")
    with _stage(clock, "segment_axial"):
        segs = {
            lv: stages.segment_axial(s.volume, s.indices, models_dir) for lv, s in sorted(per_level.items())
        }
    with _stage(clock, "refine_sac"):
        fine = stages.refine_sac({lv: (per_level[lv].volume, seg) for lv, seg in segs.items()}, models_dir)
    with _stage(clock, "measure"):
        offsets = {
            lv: slice_offsets_mm(per_level[lv].volume, seg.slice_indices, discs[lv]) if lv in discs else None
            for lv, seg in segs.items()
        }
        measured = {
            lv: measure_level(seg, discs[lv].height if lv in discs else None, lv, offsets[lv], fine.get(lv))
            for lv, seg in segs.items()
        }
    with _stage(clock, "classify"):
        probabilities = {p.level: p for p in stages.classify(segs, models_dir)}
        missing = set(segs) - set(probabilities)
        if missing:
            raise StageError(
                "classify", f"no probabilities for {', '.join(sorted(m.value for m in missing))}"
            )
    with _stage(clock, "foraminal"):
        readings = stages.foraminal(sagittal, {lv: discs[lv] for lv in segs if lv in discs}, models_dir)
        for lv in segs:
            probabilities[lv], measured[lv] = _with_foramina(probabilities[lv], measured[lv], readings)
    with _stage(clock, "subarticular"):
        recesses = stages.subarticular(segs, offsets, models_dir)
        for lv in segs:
            probabilities[lv], measured[lv] = _with_recesses(probabilities[lv], measured[lv], recesses)
        policy = _recess_policy(policy, recesses)
    with _stage(clock, "grade"):
        findings: list[Finding] = []
        for lv in sorted(segs, key=lambda x: x.index):
            decisions = grade_level(lv, measured[lv].by_condition, probabilities[lv].estimates, policy)
            findings.extend(d.finding for d in decisions)
    return AnalysisResult(
        status=AnalysisStatus.COMPLETE,
        findings=tuple(findings),
        reason=_coverage_note(set(segs), labelling),
        labelling_uncertain=labelling.uncertain,
        timings_ms=dict(clock.timings_ms),
        model_versions=versions,
    )


def _coverage_note(analysed: set[Level], labelling: LevelLabelling) -> str | None:
    """Say which levels were not analysed and why the labelling is uncertain (None when neither)."""
    parts = []
    missing = [lv.value for lv in Level if lv not in analysed]
    if missing:
        parts.append("not analysed (no axial slices or disc not found): " + ", ".join(missing))
    parts.extend(labelling.reasons)
    return "; ".join(parts) or None


__all__ = [
    "DEFAULT_STAGES",
    "DiscLocation",
    "LevelMeasurements",
    "LevelSlices",
    "Stages",
    "disc_locations",
    "measure_level",
    "quick_read",
    "slice_offsets_mm",
    "slices_per_level",
]
