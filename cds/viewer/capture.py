"""Job side of the viewer artifacts: record what quick_read computed and write what the viewer shows.

Runs in the ANALYZE job only (it imports cds.pipeline, never loaded by the web process). The
quick read's model-backed steps are replaceable (``quick_read(study, stages=...)``); the recorder
wraps the default ones to keep their outputs (the model-oriented sagittal volume and its masks,
the level labelling, the axial slice assignment and segmentations), so nothing is computed twice:
only the measurement geometry is re-derived with the pipeline's own measure_level (pure NumPy,
~0.1 s), and a measurement is drawn only when its value equals the stored finding's, so the
picture can never disagree with the table.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cds.domain import AnalysisResult, AnalysisStatus, Condition, Level
from cds.viewer import artifacts as art

if TYPE_CHECKING:
    from cds.dicom.volume import Volume
    from cds.pipeline.axial import AxialSegmentation
    from cds.pipeline.levels import LevelLabelling
    from cds.pipeline.quick_read import Stages
    from cds.pipeline.sac_refine import FineSac
    from cds.pipeline.segment import SagittalMasks

log = logging.getLogger(__name__)

#: Half length (mm) of the line marking an axial slice's position on the sagittal image.
SLICE_LINE_HALF_MM = 45.0
#: A drawn measurement must equal the stored finding's value to this tolerance.
VALUE_TOLERANCE = 1e-3


class StageRecorder:
    """Wraps quick_read's stages and keeps their outputs for the viewer.

    The wrappers reach the recorder through a weak reference: a closure holding `self` while
    `self.stages` holds the closure would be a reference cycle, and the study's arrays it keeps
    (~50 MB) would then outlive the job until the cyclic collector's rare full pass, growing a
    worker process's memory job after job.
    """

    def __init__(self, base: Stages) -> None:
        self.sagittal: Volume | None = None
        self.masks: SagittalMasks | None = None
        self.labelling: LevelLabelling | None = None
        self.assignments: list[tuple[Volume, Sequence[Level | None]]] = []
        self.segmentations: list[tuple[Volume, tuple[int, ...], AxialSegmentation]] = []
        #: The refine_sac stage's fine sac maps per level: the DSCA and AP diameter were measured
        #: on them, so the viewer draws those measurements and the DSCA outline from them too.
        self.fine: dict[Level, FineSac] = {}
        self.stages = dataclasses.replace(
            base,
            segment_sagittal=self._wrap_sagittal(base.segment_sagittal),
            label_levels=self._wrap_labels(base.label_levels),
            assign_axial=self._wrap_assign(base.assign_axial),
            segment_axial=self._wrap_axial(base.segment_axial),
            refine_sac=self._wrap_fine(base.refine_sac),
        )

    def run(self, quick_read: Callable[..., AnalysisResult], study: Any) -> AnalysisResult:
        """quick_read(study) with the recording stages."""
        return quick_read(study, stages=self.stages)

    def _wrap_sagittal(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        ref = weakref.ref(self)

        def wrapped(volume: Volume, models_dir: Path | None) -> Any:
            out = fn(volume, models_dir)
            if (rec := ref()) is not None:
                rec.sagittal, rec.masks = volume, out
            return out

        return wrapped

    def _wrap_labels(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        ref = weakref.ref(self)

        def wrapped(masks: Any, spacing: tuple[float, float]) -> Any:
            out = fn(masks, spacing)
            if (rec := ref()) is not None:
                rec.labelling = out
            return out

        return wrapped

    def _wrap_assign(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        ref = weakref.ref(self)

        def wrapped(volume: Volume, centres: Any, normals: Any) -> Any:
            out = fn(volume, centres, normals)
            if (rec := ref()) is not None:
                rec.assignments.append((volume, tuple(out)))
            return out

        return wrapped

    def _wrap_axial(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        ref = weakref.ref(self)

        def wrapped(volume: Volume, indices: Sequence[int], models_dir: Path | None) -> Any:
            out = fn(volume, indices, models_dir)
            if (rec := ref()) is not None:
                rec.segmentations.append((volume, tuple(int(k) for k in indices), out))
            return out

        return wrapped

    def _wrap_fine(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        ref = weakref.ref(self)

        def wrapped(levels: Any, models_dir: Path | None) -> Any:
            out = fn(levels, models_dir)
            if (rec := ref()) is not None:
                rec.fine.update(out)
            return out

        return wrapped


def recorder_for(quick_read: Callable[..., Any]) -> StageRecorder | None:
    """A recorder when ``quick_read`` accepts ``stages=`` (the real one), else None (a stand-in)."""
    try:
        params = inspect.signature(quick_read).parameters
    except (TypeError, ValueError):
        return None
    if "stages" not in params:
        return None
    from cds.pipeline.quick_read import DEFAULT_STAGES

    default = params["stages"].default
    return StageRecorder(default if default is not inspect.Parameter.empty else DEFAULT_STAGES)


# --- building the artifacts -----------------------------------------------------------------------


def _normalise(image: np.ndarray) -> np.ndarray:
    from cds.pipeline.axial import normalise

    return normalise(np.asarray(image, dtype=np.float32))


def _sagittal(rec: StageRecorder, shown: Mapping[Level, tuple[Volume, int]]) -> tuple[Any, Any]:
    vol, masks = rec.sagittal, rec.masks
    if vol is None or masks is None:
        return None, None
    k = vol.shape[0] // 2
    labels = np.zeros(vol.shape[1:], dtype=np.uint8)
    labels[np.asarray(masks.vertebra[k], dtype=bool)] = art.SAG_VERTEBRA
    labels[np.asarray(masks.disc[k], dtype=bool)] = art.SAG_DISC
    labels[np.asarray(masks.canal[k], dtype=bool)] = art.SAG_CANAL
    marks = []
    if rec.labelling is not None:
        for level, disc in sorted(rec.labelling.by_level().items(), key=lambda kv: kv[0].index):
            marks.append(art.LevelMark(level, (float(disc.centroid_voxel[1]), float(disc.centroid_voxel[2]))))
    lines = []
    for level, (axial, k_ax) in sorted(shown.items(), key=lambda kv: kv[0].index):
        line = _slice_line(vol, k, axial, k_ax)
        if line is not None:
            lines.append(art.SliceLine(level, line[0], line[1]))
    info = art.SagittalInfo(
        series_uid=vol.series_uid,
        slice_index=int(k),
        shape=(int(vol.shape[1]), int(vol.shape[2])),
        pixel_mm=(float(vol.spacing_mm[1]), float(vol.spacing_mm[2])),
        levels=tuple(marks),
        slice_lines=tuple(lines),
    )
    return info, art.SagittalPixels(_normalise(vol.array[k]), labels)


def _slice_line(sag: Volume, k_sag: int, axial: Volume, k_ax: int) -> tuple[art.Point, art.Point] | None:
    """Intersection of an axial slice plane with the shown sagittal slice, as two (row, col) points."""
    n_ax = np.asarray(axial.normal, dtype=np.float64)
    n_sag = np.asarray(sag.normal, dtype=np.float64)
    direction = np.cross(n_ax, n_sag)
    if np.linalg.norm(direction) < 1e-6:
        return None
    direction /= np.linalg.norm(direction)
    centre = np.array([k_ax, (axial.shape[1] - 1) / 2.0, (axial.shape[2] - 1) / 2.0])
    p_ax = axial.voxel_to_patient(centre)
    p_sag = sag.voxel_to_patient(np.array([k_sag, 0.0, 0.0]))
    u = np.cross(direction, n_ax)  # in the axial plane, across the line
    denom = float(n_sag @ u)
    if abs(denom) < 1e-6:
        return None
    on_both = p_ax + u * float(n_sag @ (p_sag - p_ax)) / denom
    ends = []
    for sign in (-1.0, 1.0):
        vox = sag.patient_to_voxel(on_both + sign * SLICE_LINE_HALF_MM * direction)
        ends.append((round(float(vox[1]), 2), round(float(vox[2]), 2)))
    return ends[0], ends[1]


def _to_mask_grid(
    seg: AxialSegmentation, row: int, native: Sequence[Sequence[float]]
) -> tuple[art.Point, ...]:
    from cds.pipeline.axial import MEASURE_UPSAMPLE

    if not native:
        return ()
    canonical = seg.frames[row].to_canonical(np.asarray(native, dtype=np.float64))
    up = (canonical + 0.5) * MEASURE_UPSAMPLE - 0.5
    return tuple((round(float(p[0]), 2), round(float(p[1]), 2)) for p in up)


def _axial(
    level: Level, volume: Volume, seg: AxialSegmentation, result: AnalysisResult, fine: FineSac | None = None
) -> tuple[art.AxialInfo, art.AxialPixels]:
    """What the viewer draws on one level's axial slices: the measurements as stored (re-measured
    with the same inputs: the fine sac maps where the refine_sac stage made them) and the dural sac
    outline, from the fine map on the refined slices (its area is the DSCA shown)."""
    from cds.pipeline.axial import CANONICAL_SPACING_MM, SAC
    from cds.pipeline.quick_read import measure_level
    from cds.pipeline.sac_refine import grid_mask

    measured = measure_level(seg, None, level, None, fine)
    drawn: list[art.DrawnMeasurement] = []
    for condition, group in measured.by_condition.items():
        finding = result.finding(level, Condition(condition))
        if finding is None:
            continue
        for m in group:
            stored = finding.measurements.get(m.name)
            if stored is None or abs(float(stored) - float(m.value)) > VALUE_TOLERANCE:
                continue  # not what the table shows (dropped as unreliable, or not this finding's)
            if m.provenance.slice_index not in seg.slice_indices:
                continue  # a sagittal measurement (disc height): not drawn on the axial slice
            row = seg.slice_indices.index(m.provenance.slice_index)
            drawn.append(
                art.DrawnMeasurement(
                    m.name, m.side, float(stored), row, _to_mask_grid(seg, row, m.provenance.points_px)
                )
            )
    default_row = next((d.row for d in drawn if d.name.value == "dsca_mm2"), len(seg.slice_indices) // 2)
    info = art.AxialInfo(
        level=level,
        series_uid=volume.series_uid,
        slice_indices=seg.slice_indices,
        default_row=int(default_row),
        image_shape=(int(seg.images.shape[1]), int(seg.images.shape[2])),
        image_pixel_mm=float(CANONICAL_SPACING_MM),
        measurements=tuple(drawn),
    )
    sac = seg.mask(SAC).copy()
    if fine is not None:
        for n, row in enumerate(fine.rows):
            sac[row] = grid_mask(fine, n, sac.shape[1:])
    return info, art.AxialPixels(np.asarray(seg.images, dtype=np.float32), sac)


def build_artifacts(
    rec: StageRecorder, result: AnalysisResult
) -> tuple[art.Manifest, art.SagittalPixels | None, dict[Level, art.AxialPixels]]:
    from cds.pipeline.quick_read import slices_per_level

    per_level = slices_per_level(rec.assignments)
    axial_info: dict[Level, art.AxialInfo] = {}
    axial_px: dict[Level, art.AxialPixels] = {}
    shown: dict[Level, tuple[Volume, int]] = {}
    for level, chosen in per_level.items():
        seg = next(
            (s for v, idx, s in rec.segmentations if v is chosen.volume and idx == tuple(chosen.indices)),
            None,
        )
        if seg is None:
            continue
        info, px = _axial(level, chosen.volume, seg, result, rec.fine.get(level))
        axial_info[level], axial_px[level] = info, px
        shown[level] = (chosen.volume, info.slice_indices[info.default_row])
    sag_info, sag_px = _sagittal(rec, shown)
    return art.Manifest(sagittal=sag_info, axial=axial_info), sag_px, axial_px


def write_viewer_artifacts(
    rec: StageRecorder, result: AnalysisResult, data_dir: Path, analysis_id: str
) -> bool:
    """Write the viewer files of a COMPLETE analysis; False (logged) when they cannot be written.

    Best effort on purpose: the findings are already stored, and a viewer without pictures
    (it says so) is better than losing the analysis over a drawing problem.
    """
    if result.status is not AnalysisStatus.COMPLETE:
        return False
    try:
        manifest, sag, axial = build_artifacts(rec, result)
        art.write_artifacts(art.viewer_dir(data_dir, analysis_id), manifest, sag, axial)
    except Exception:
        log.exception("viewer artifacts could not be written for analysis %s", analysis_id)
        return False
    return True
