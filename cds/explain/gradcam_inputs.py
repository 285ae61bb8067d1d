"""The classifier's inputs of one study, with where each crop came from: a traced quick read.

Grad-CAM must explain the exact crops the classifier graded, and place the maps on the slices
those crops were cut from. quick_read keeps neither, so the explain path runs it with two stage
wrappers (quick_read's ``Stages`` boundary) that record each level's axial segmentation and its
volume while the real stages run unchanged. The crop and its placement are then rebuilt with
the same functions the classify stage uses (``narrowest_slice``, ``crop_centre``,
``level_crop``), which are deterministic, so they equal what the classifier saw.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from cds.domain import AnalysisResult, Level, Side
from cds.explain.gradcam_geometry import CropPlacement, placement_for
from cds.pipeline import axial as ax

if TYPE_CHECKING:
    from cds.dicom.study import Study
    from cds.dicom.volume import Volume
    from cds.explain.gradcam_foramen import ForamenInput
    from cds.explain.gradcam_subarticular import RecessInput
    from cds.pipeline.classify import LevelProbabilities
    from cds.pipeline.foraminal import ForaminalReading
    from cds.pipeline.quick_read import DiscLocation, Stages
    from cds.pipeline.subarticular import SubarticularReading


@dataclass(frozen=True)
class LevelInput:
    """One level's classifier crop, its placement, the native slice it was cut from (for the
    overlay) and the segmentation labels of that slice (canonical grid, 2x upsampled; used to name
    the structure under a heatmap's peak)."""

    level: Level
    crop: NDArray[np.float32]  # (channels, size, size)
    placement: CropPlacement
    slice_image: NDArray[np.float32]  # native (rows, cols) of the axial slice
    labels: NDArray[np.uint8]  # (2H, 2W) canonical labels of that slice


@dataclass(frozen=True)
class TracedRead:
    result: AnalysisResult
    inputs: Mapping[Level, LevelInput]
    seconds: float
    #: The foraminal model's inputs (cds.explain.gradcam_foramen), when that stage ran: the
    #: foraminal findings it graded are explained from these, never from the classifier's crops.
    foramina: Mapping[tuple[Level, Side], ForamenInput] = field(default_factory=dict)
    #: The subarticular model's inputs (cds.explain.gradcam_subarticular), when that stage ran:
    #: the lateral recess findings it graded are explained from these.
    recesses: Mapping[tuple[Level, Side], RecessInput] = field(default_factory=dict)


def level_input(level: Level, seg: ax.AxialSegmentation, volume: Volume) -> LevelInput:
    """Rebuild the crop of one level exactly as the classify stage does, plus its placement."""
    from cds.pipeline.classify import CROP_SIZE, crop_centre, level_crop, narrowest_slice

    k = narrowest_slice(seg.probs)
    centre = crop_centre(seg.probs[k, ax.SAC])
    native_k = seg.slice_indices[k]
    placement = placement_for(centre, CROP_SIZE, seg.frames[k], native_k, volume.affine, volume.series_uid)
    return LevelInput(
        level=level,
        crop=level_crop(seg.images, seg.probs),
        placement=placement,
        slice_image=np.asarray(volume.array[native_k], dtype=np.float32),
        labels=np.asarray(seg.labels[k], dtype=np.uint8),
    )


def traced_quick_read(
    study: Study, *, models_dir: Path | None = None, stages: Stages | None = None
) -> TracedRead:
    """quick_read(study) plus every analysed level's classifier input.

    ``stages``: the stages to trace (default: the real ones); callers that wrap stages
    themselves (the evaluation records their outputs) pass theirs and get one run for both.
    """
    from cds.pipeline.quick_read import DEFAULT_STAGES, quick_read

    base = stages or DEFAULT_STAGES

    seen: list[tuple[ax.AxialSegmentation, Volume]] = []
    classified: dict[Level, ax.AxialSegmentation] = {}

    def segment_axial(volume: Volume, indices: Sequence[int], mdir: Path | None) -> ax.AxialSegmentation:
        seg = base.segment_axial(volume, indices, mdir)
        seen.append((seg, volume))
        return seg

    def classify(
        segs: Mapping[Level, ax.AxialSegmentation], mdir: Path | None
    ) -> Sequence[LevelProbabilities]:
        classified.update(segs)
        return base.classify(segs, mdir)

    read_foramina: list[tuple[Volume, Mapping[Level, DiscLocation]]] = []

    def foraminal(
        sagittal: Volume, discs: Mapping[Level, DiscLocation], mdir: Path | None
    ) -> Mapping[tuple[Level, Side], ForaminalReading]:
        readings = base.foraminal(sagittal, discs, mdir)
        if readings:
            read_foramina.append((sagittal, discs))
        return readings

    read_recesses: list[
        tuple[Mapping[Level, ax.AxialSegmentation], Mapping[Level, Sequence[float] | None]]
    ] = []

    def subarticular(
        segs: Mapping[Level, ax.AxialSegmentation],
        offsets: Mapping[Level, Sequence[float] | None],
        mdir: Path | None,
    ) -> Mapping[tuple[Level, Side], SubarticularReading]:
        readings = base.subarticular(segs, offsets, mdir)
        if readings:
            read_recesses.append((segs, offsets))
        return readings

    traced = replace(
        base, segment_axial=segment_axial, classify=classify, foraminal=foraminal, subarticular=subarticular
    )
    start = time.perf_counter()
    result = quick_read(study, models_dir=models_dir, stages=traced)
    seconds = time.perf_counter() - start
    inputs = {}
    for level, seg in classified.items():
        volume = next(v for s, v in seen if s is seg)
        inputs[level] = level_input(level, seg, volume)
    foramina = {}
    if read_foramina:
        from cds.explain.gradcam_foramen import foramen_inputs

        sagittal, discs = read_foramina[-1]
        centres = {lv: d.centre for lv, d in discs.items()}
        foramina = foramen_inputs(sagittal, centres, {lv: d.normal for lv, d in discs.items()})
    recesses = {}
    if read_recesses:
        from cds.explain.gradcam_subarticular import recess_inputs

        segs, offsets = read_recesses[-1]
        volumes = {lv: next(v for s, v in seen if s is seg) for lv, seg in segs.items()}
        recesses = recess_inputs(segs, offsets, volumes)
    return TracedRead(result, inputs, seconds, foramina, recesses)
