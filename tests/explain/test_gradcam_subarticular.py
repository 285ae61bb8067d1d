"""Grad-CAM of the subarticular model: one batched pass, maps carried back to the native slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cds.dicom.selection import SeriesKind
from cds.dicom.volume import Volume
from cds.domain import Condition, Level, Side
from cds.explain import gradcam_subarticular as gs
from cds.ml import subarticular as sm
from cds.ml.loading import save_weights
from cds.ml.spec import InputContract, ModelSpec, write_card
from cds.pipeline import axial as ax
from cds.pipeline import recess_crop as rc


def write_model(root: Path) -> Path:
    """An untrained tiny subarticular model with a valid card (Grad-CAM needs only the wiring)."""
    import torch

    torch.manual_seed(0)
    widths = (4, 4, 6, 8)
    net = sm.SubarticularNet(sm.SubarticularConfig(in_channels=rc.IN_CHANNELS, widths=widths)).eval()
    sha = save_weights(net, root / "subarticular" / "model.safetensors")
    spec = ModelSpec(
        name="subarticular",
        version="0.0.1",
        sha256=sha,
        architecture={"type": sm.ARCHITECTURE, "in_channels": rc.IN_CHANNELS, "widths": list(widths)},
        input=InputContract("axial recess crop", (0.4, 0.4), (rc.SIZE, rc.SIZE), "p1/p99", (1.0, 99.0)),
        labels=sm.OUTPUT_LABELS,
        thresholds={"present": 0.5, "grade_from_depth_rule": 1.0},
    )
    write_card(spec, root / "subarticular")
    sm.clear_cache()
    return root


def axial_level() -> tuple[ax.AxialSegmentation, Volume]:
    """A 4-slice axial stack (LPS axes, 0.75 mm pixels) segmented by hand: a sac in the middle."""
    rng = np.random.default_rng(5)
    a = np.eye(4)
    a[:3, 0] = (0.0, 0.0, 4.0)  # slices along +z
    a[:3, 1] = (0.0, 0.75, 0.0)  # rows posterior
    a[:3, 2] = (0.75, 0.0, 0.0)  # cols left
    a[:3, 3] = (-90.0, -90.0, 0.0)
    array = rng.random((4, 240, 240)).astype(np.float32)
    volume = Volume(array, a, (4.0, 0.75, 0.75), "1.2.9", "AX T2", SeriesKind.AXIAL_T2)
    images, frames = ax.preprocess(array, a, range(4))
    probs = np.zeros((4, len(ax.AXIAL_CLASSES), ax.CANONICAL_SIZE, ax.CANONICAL_SIZE), np.float32)
    probs[:, ax.BACKGROUND] = 1.0
    probs[:, ax.SAC, 76:86, 70:82] = 1.0
    probs[:, ax.BACKGROUND, 76:86, 70:82] = 0.0
    labels = np.zeros((4, 2 * ax.CANONICAL_SIZE, 2 * ax.CANONICAL_SIZE), np.uint8)
    return ax.AxialSegmentation(images, probs, labels, (0, 1, 2, 3), frames), volume


@pytest.mark.parametrize("side", list(Side))
def test_crop_map_goes_back_to_the_canonical_pixel_it_was_sampled_at(side: Side) -> None:
    seg, _volume = axial_level()
    crop = rc.recess_crops(seg.images, seg.probs, None)[side]
    crop_map = np.zeros((rc.SIZE, rc.SIZE), np.float32)
    crop_map[20, 30] = 1.0
    canonical = gs.canonical_map(crop_map, crop)
    u, v = np.unravel_index(int(np.argmax(canonical)), canonical.shape)
    assert abs(u - crop.coords[0, 20, 30]) <= 0.5 and abs(v - crop.coords[1, 20, 30]) <= 0.5
    # the left recess lies towards patient left (higher canonical columns), the right one mirrored
    assert (v > 76) if side is Side.LEFT else (v < 76)


def test_heatmaps_of_both_recesses_in_one_pass_with_peaks_on_the_native_slice(tmp_path: Path) -> None:
    from cds.domain import AnalysisResult, AnalysisStatus
    from cds.explain.gradcam import CamTarget

    root = write_model(tmp_path / "models")
    seg, volume = axial_level()
    inputs = gs.recess_inputs(
        {Level.L4_L5: seg}, {Level.L4_L5: [-7.0, -2.0, 2.0, 6.0]}, {Level.L4_L5: volume}
    )
    assert set(inputs) == {(Level.L4_L5, Side.LEFT), (Level.L4_L5, Side.RIGHT)}
    assert inputs[(Level.L4_L5, Side.LEFT)].placement.slice_index == 2  # rows 1-3 nearest the disc
    targets = [
        CamTarget(Level.L4_L5, Condition.LEFT_SUBARTICULAR),
        CamTarget(Level.L4_L5, Condition.RIGHT_SUBARTICULAR),
    ]
    result = AnalysisResult(status=AnalysisStatus.COMPLETE)
    maps = gs.recess_heatmaps(result, inputs, targets, tmp_path / "out", models_dir=root)
    assert [(h.level, h.condition) for h in maps] == [(t.level, t.condition) for t in targets]
    for h in maps:
        assert h.overlay.is_file() and h.raw.is_file() and h.series_uid == "1.2.9"
        if h.peak_mm is not None:  # a peak lies on the slice the map was drawn on
            k = volume.patient_to_voxel(np.asarray(h.peak_mm))[0]
            assert k == pytest.approx(h.slice_index, abs=1e-6)


def test_recess_findings_of_the_subarticular_model_get_its_heatmaps_not_the_classifiers(
    tmp_path: Path,
) -> None:
    """heatmaps_for_study routes lateral recess findings graded by the subarticular model to that
    model's Grad-CAM; without its recess inputs they get no heatmap at all (never the classifier's)."""
    from cds.domain import AnalysisResult, AnalysisStatus
    from cds.explain.gradcam import CamTarget
    from cds.explain.gradcam_study import heatmaps_for_study

    root = write_model(tmp_path / "models")
    seg, volume = axial_level()
    inputs = gs.recess_inputs({Level.L4_L5: seg}, {Level.L4_L5: None}, {Level.L4_L5: volume})
    result = AnalysisResult(
        status=AnalysisStatus.COMPLETE, model_versions={"subarticular": "subarticular@0.0.1"}
    )
    target = CamTarget(Level.L4_L5, Condition.RIGHT_SUBARTICULAR)
    # no classifier inputs at all: a classifier map would need them, so any heatmap is the model's
    made = heatmaps_for_study(
        result, {}, tmp_path / "out", targets=[target], models_dir=root, recesses=inputs
    )
    ((h,),) = (made.heatmaps,)
    assert (h.level, h.condition) == (Level.L4_L5, Condition.RIGHT_SUBARTICULAR)
    assert "gradcam_subarticular_ms" in made.timings_ms
    assert np.load(h.raw)["crop_coords"].shape == (2, rc.SIZE, rc.SIZE)  # drawn from the recess crop
    none = heatmaps_for_study(result, {}, tmp_path / "out2", targets=[target], models_dir=root)
    assert none.heatmaps == ()
