"""Heatmaps of one study: which findings, Grad-CAM in one batched pass, maps back on the slices,
overlays and raw maps written, peaks in patient millimetres.

``heatmaps_for_study`` is what the explain job and ``cds explain`` call after a traced quick read
(cds.explain.gradcam_inputs); each Heatmap knows how to describe itself for the store (paths
relative to data_dir, per CONTRACTS.md) and for the rationale (the structure under the peak).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cds.domain import AnalysisResult, Condition, Finding, Grade, Level
from cds.explain.gradcam import CamMap, CamTarget, compute_maps
from cds.explain.gradcam_geometry import peak_pixel
from cds.explain.gradcam_inputs import LevelInput
from cds.explain.gradcam_render import OverlayLabel, render_overlay
from cds.pipeline import axial as ax

#: Structure names for the segmentation class under a heatmap's peak (rationale wording).
STRUCTURE_NAMES: Mapping[int, str] = {
    ax.BACKGROUND: "soft tissue outside the canal",
    ax.SAC: "dural sac",
    ax.DISC: "disc margin",
    ax.BODY: "vertebral body margin",
    ax.FACET: "facet joint",
    ax.POSTERIOR: "posterior elements",
    ax.FLAVUM: "ligamentum flavum",
    ax.FORAMEN: "neural foramen",
}
#: Radius (mm) around the peak within which the most frequent structure names the region.
REGION_RADIUS_MM = 2.0


def select_targets(result: AnalysisResult, *, all_findings: bool = False) -> list[CamTarget]:
    """Moderate/severe findings (or every finding on request), cranial to caudal."""
    chosen = [f for f in result.findings if all_findings or f.grade.present]
    chosen.sort(key=lambda f: (f.level.index, list(Condition).index(f.condition)))
    return [CamTarget(f.level, f.condition) for f in chosen]


@dataclass(frozen=True)
class Heatmap:
    """One finding's heatmap on its native axial slice, with the files written for it."""

    level: Level
    condition: Condition
    grade: Grade | None
    overlay: Path
    raw: Path
    series_uid: str
    slice_index: int
    peak_ij: tuple[int, int] | None
    peak_mm: tuple[float, float, float] | None
    region: str
    logit: float

    def record(self, data_dir: Path) -> dict[str, Any]:
        """The ExplanationRecord.heatmaps entry (CONTRACTS.md), paths relative to data_dir."""
        base = data_dir.resolve()
        return {
            "overlay": self.overlay.resolve().relative_to(base).as_posix(),
            "raw": self.raw.resolve().relative_to(base).as_posix(),
            "series_uid": self.series_uid,
            "slice_index": self.slice_index,
            "peak_mm": list(self.peak_mm) if self.peak_mm is not None else None,
            "level": self.level.value,
            "condition": self.condition.value,
            "region": self.region,
        }

    @property
    def key(self) -> str:
        return f"{self.level.value}/{self.condition.value}"


@dataclass(frozen=True)
class StudyHeatmaps:
    heatmaps: tuple[Heatmap, ...]
    timings_ms: Mapping[str, float] = field(default_factory=dict)

    def notes(self) -> dict[str, dict[str, str]]:
        """Region notes for write_rationale: {"L4-L5": {"spinal_canal": "ligamentum flavum ..."}}."""
        out: dict[str, dict[str, str]] = {}
        for h in self.heatmaps:
            if h.peak_ij is not None:
                out.setdefault(h.level.value, {})[h.condition.value] = h.region
        return out


def region_at_peak(inp: LevelInput, peak_ij: tuple[int, int]) -> str:
    """The most frequent segmented structure within REGION_RADIUS_MM of the peak, with its side."""
    uv = inp.placement.frame.to_canonical(np.asarray([peak_ij], dtype=np.float64))[0]
    labels = inp.labels
    up = labels.shape[0] / ax.CANONICAL_SIZE
    r, c = (uv + 0.5) * up - 0.5
    radius = REGION_RADIUS_MM / (ax.CANONICAL_SPACING_MM / up)
    rr, cc = np.indices(labels.shape)
    near = labels[(rr - r) ** 2 + (cc - c) ** 2 <= radius**2]
    if near.size == 0:
        structure = STRUCTURE_NAMES[ax.BACKGROUND]
    else:
        counts = np.bincount(near, minlength=len(ax.AXIAL_CLASSES))
        if counts[1:].sum() > 0:
            counts[ax.BACKGROUND] = 0
        structure = STRUCTURE_NAMES.get(int(np.argmax(counts)), STRUCTURE_NAMES[ax.BACKGROUND])
    # Midline = the crop's centre column (the crop is centred on the dural sac); columns run to
    # patient left, so a larger column is further left.
    midline = inp.placement.origin_uv[1] + inp.placement.size / 2.0 - 0.5
    offset_mm = (uv[1] - midline) * ax.CANONICAL_SPACING_MM
    side = (
        "at the midline"
        if abs(offset_mm) < 3.0
        else ("left of midline" if offset_mm > 0 else "right of midline")
    )
    return f"{structure} {side}"


def _finding_grade(findings: Iterable[Finding], target: CamTarget) -> Grade | None:
    for f in findings:
        if f.level is target.level and f.condition is target.condition:
            return f.grade
    return None


def _label(target: CamTarget, grade: Grade | None) -> OverlayLabel:
    graded = f": {grade.display}" if grade is not None else ""
    return OverlayLabel(
        title=f"{target.level.value} {target.condition.display}{graded}",
        subtitle="Grad-CAM of the classifier's 'present' output (+ = peak; decision support only)",
    )


def heatmaps_for_study(
    result: AnalysisResult,
    inputs: Mapping[Level, LevelInput],
    out_dir: Path,
    *,
    targets: Sequence[CamTarget] | None = None,
    models_dir: Path | None = None,
    foramina: Mapping[Any, Any] | None = None,
    recesses: Mapping[Any, Any] | None = None,
) -> StudyHeatmaps:
    """Grad-CAM for ``targets`` (default: the moderate/severe findings) in one batched pass;
    writes ``<level>_<condition>.png`` and ``.npz`` under ``out_dir``. Targets at levels that
    were not analysed raise ValueError.

    Foraminal findings graded by the foraminal model (``foraminal`` in the analysis's model
    versions) are explained by that model's Grad-CAM on its parasagittal crops (``foramina``,
    from the traced read; cds.explain.gradcam_foramen), never by the classifier's; without
    ``foramina`` they get no heatmap. Likewise lateral recess findings graded by the subarticular
    model (``subarticular`` in the model versions) get that model's Grad-CAM on its recess crops
    (``recesses``; cds.explain.gradcam_subarticular) or none."""
    from cds.explain.gradcam_foramen import SIDE_OF, foramen_heatmaps
    from cds.explain.gradcam_subarticular import SIDE_OF as RECESS_SIDE_OF
    from cds.explain.gradcam_subarticular import recess_heatmaps
    from cds.ml.classifier import load_classifier
    from cds.pipeline.classify import MODEL_NAME

    chosen = list(select_targets(result) if targets is None else targets)
    by_foramen_model = [t for t in chosen if t.condition in SIDE_OF and "foraminal" in result.model_versions]
    by_recess_model = [
        t for t in chosen if t.condition in RECESS_SIDE_OF and "subarticular" in result.model_versions
    ]
    chosen = [t for t in chosen if t not in by_foramen_model and t not in by_recess_model]
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    crops = {lv: i.crop for lv, i in inputs.items()}
    maps = compute_maps(load_classifier(MODEL_NAME, models_dir), crops, chosen) if chosen else []
    timings["gradcam_ms"] = (time.perf_counter() - t0) * 1000.0
    t1 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    heatmaps = tuple(_one(m, inputs[m.target.level], result, out_dir) for m in maps)
    timings["map_render_ms"] = (time.perf_counter() - t1) * 1000.0
    t2 = time.perf_counter()
    heatmaps += foramen_heatmaps(result, foramina or {}, by_foramen_model, out_dir, models_dir=models_dir)
    timings["gradcam_foramen_ms"] = (time.perf_counter() - t2) * 1000.0
    if by_recess_model:
        t3 = time.perf_counter()
        heatmaps += recess_heatmaps(result, recesses or {}, by_recess_model, out_dir, models_dir=models_dir)
        timings["gradcam_subarticular_ms"] = (time.perf_counter() - t3) * 1000.0
    return StudyHeatmaps(heatmaps, timings)


def native_map_and_peak(
    cam: CamMap, inp: LevelInput
) -> tuple[NDArray[np.float32], tuple[int, int] | None, tuple[float, float, float] | None]:
    native = inp.placement.crop_map_to_native(cam.crop_map)
    peak = peak_pixel(native)
    if peak is None:
        return native, None, None
    mm = inp.placement.native_to_patient(np.asarray([peak], dtype=np.float64))[0]
    return native, peak, (round(float(mm[0]), 2), round(float(mm[1]), 2), round(float(mm[2]), 2))


def _one(cam: CamMap, inp: LevelInput, result: AnalysisResult, out_dir: Path) -> Heatmap:
    target = cam.target
    stem = f"{target.level.value}_{target.condition.value}"
    native, peak, peak_mm = native_map_and_peak(cam, inp)
    grade = _finding_grade(result.findings, target)
    overlay = render_overlay(
        inp.slice_image, native, inp.placement, peak, _label(target, grade), out_dir / f"{stem}.png"
    )
    raw_path = out_dir / f"{stem}.npz"
    p = inp.placement
    np.savez_compressed(
        raw_path,
        raw=cam.raw,  # unscaled ReLU(sum w A) at the layer's resolution
        crop_map=cam.crop_map,  # library map on the crop, [0, 1]
        native_map=native.astype(np.float16),  # on the native slice, [0, 1]
        crop_origin_uv=np.asarray(p.origin_uv),
        frame_matrix=p.frame.matrix,
        frame_native_centre=p.frame.native_centre,
        frame_canonical_centre=p.frame.canonical_centre,
        slice_index=np.asarray(p.slice_index),
        affine=p.affine,
        logit=np.asarray(cam.logit),
    )
    region = region_at_peak(inp, peak) if peak is not None else "no region (empty map)"
    return Heatmap(
        level=target.level,
        condition=target.condition,
        grade=grade,
        overlay=overlay,
        raw=raw_path,
        series_uid=p.series_uid,
        slice_index=p.slice_index,
        peak_ij=peak,
        peak_mm=peak_mm,
        region=region,
        logit=cam.logit,
    )
