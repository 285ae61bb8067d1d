"""Grad-CAM of the foraminal model: batched, hooks released, maps placed on the sagittal slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cds.dicom.selection import SeriesKind
from cds.dicom.volume import Volume
from cds.domain import AnalysisResult, AnalysisStatus, Condition, Finding, Grade, Level, Side
from cds.explain import gradcam_foramen as gf
from cds.explain.gradcam import CamTarget
from cds.explain.gradcam_study import heatmaps_for_study
from cds.ml import foraminal as fm
from cds.ml.loading import save_weights
from cds.ml.spec import InputContract, ModelSpec, write_card
from cds.pipeline import foramen_crop as fc


def write_model(root: Path, *, rule: bool, tamper: bool = False) -> Path:
    torch.manual_seed(0)
    net = fm.ForaminalNet(fm.ForaminalConfig(in_channels=fc.IN_CHANNELS, stem=4, widths=(4, 6)))
    net.eval()
    directory = root / "foraminal"
    sha = save_weights(net, directory / "model.safetensors")
    spec = ModelSpec(
        name="foraminal",
        version="0.0.1",
        sha256=("0" * 64) if tamper else sha,
        architecture={"type": fm.ARCHITECTURE, "in_channels": fc.IN_CHANNELS, "stem": 4, "widths": [4, 6]},
        input=InputContract("parasagittal", (0.875, 0.875), (fc.SIZE, fc.SIZE), "p1/p99", (1.0, 99.0)),
        labels=fm.OUTPUT_LABELS,
        thresholds={"present": 0.5, "grade_from_ratio_rule": 1.0 if rule else 0.0},
    )
    write_card(spec, directory)
    fm.clear_cache()
    return root


def sagittal() -> Volume:
    a = np.eye(4)
    a[:3, 0] = (3.0, 0.0, 0.0)
    a[:3, 1] = (0.0, 0.0, -1.0)
    a[:3, 2] = (0.0, 1.0, 0.0)
    a[:3, 3] = (-30.0, -60.0, 80.0)
    arr = np.random.default_rng(1).random((21, 160, 120)).astype(np.float32)
    return Volume(arr, a, (3.0, 1.0, 1.0), "1.2.3", "SAG T2", SeriesKind.SAGITTAL_T2)


CENTRES = {Level.L3_L4: np.array([0.0, -20.0, 40.0]), Level.L4_L5: np.array([0.0, -18.0, 5.0])}
NORMALS = dict.fromkeys(CENTRES, np.array([0.0, 0.0, 1.0]))


def test_all_targets_in_one_pass_and_the_hooks_are_released(tmp_path: Path) -> None:
    root = write_model(tmp_path, rule=True)
    loaded = fm.load_foraminal("foraminal", root)
    inputs = gf.foramen_inputs(sagittal(), CENTRES, NORMALS)
    targets = [(Level.L3_L4, Side.LEFT), (Level.L4_L5, Side.RIGHT)]
    cams = gf.compute_foramen_maps(loaded, inputs, targets)
    assert [(c.level, c.side) for c in cams] == targets
    for cam in cams:
        assert cam.crop_map.shape == (fc.SIZE, fc.SIZE)
        assert float(cam.crop_map.min()) >= 0.0 and float(cam.crop_map.max()) <= 1.0 + 1e-6
    from cds.explain.gradcam import private_copy

    net, _lock = private_copy(loaded.network)
    assert not any(m._forward_hooks for m in net.modules())
    assert not any(p.grad is not None for p in loaded.network.parameters())


def test_crop_map_lands_on_the_native_slice_inside_the_crop_footprint(tmp_path: Path) -> None:
    inputs = gf.foramen_inputs(sagittal(), CENTRES, NORMALS)
    inp = inputs[(Level.L4_L5, Side.LEFT)]
    crop_map = np.zeros((fc.SIZE, fc.SIZE), np.float32)
    crop_map[20, 30] = 1.0  # one hot pixel: 12.5 mm cranial, 30.75 mm posterior of the centroid
    cam = gf.ForamenCam(Level.L4_L5, Side.LEFT, crop_map, crop_map, 0.0)
    native = gf.native_map(cam, inp)
    found = gf.peak(native, inp)
    assert found is not None
    _ij, mm = found
    centre = CENTRES[Level.L4_L5]
    assert abs(mm[2] - (centre[2] + 30.0 - 20 * fc.SPACING_MM)) <= 1.0  # cranial (z up)
    assert abs(mm[1] - (centre[1] + fc.POSTERIOR_START_MM + 30 * fc.SPACING_MM)) <= 1.0  # posterior
    assert mm[0] > 0  # on the left (slices run toward patient left here)


def test_foraminal_findings_of_the_foraminal_model_get_its_heatmaps(tmp_path: Path) -> None:
    root = write_model(tmp_path, rule=True)
    inputs = gf.foramen_inputs(sagittal(), CENTRES, NORMALS)
    finding = Finding(Level.L4_L5, Condition.LEFT_FORAMINAL, Grade.SEVERE, 0.9, {}, False)
    result = AnalysisResult(
        status=AnalysisStatus.COMPLETE, findings=(finding,), model_versions={"foraminal": "foraminal@0.0.1"}
    )
    target = CamTarget(Level.L4_L5, Condition.LEFT_FORAMINAL)
    out = heatmaps_for_study(result, {}, tmp_path / "out", targets=[target], models_dir=root, foramina=inputs)
    (h,) = out.heatmaps
    assert h.overlay.is_file() and h.raw.is_file()
    assert "foramen" in h.region and not any(ch.isdigit() for ch in h.region)
    assert h.series_uid == "1.2.3"
    # without the foraminal inputs the finding gets no heatmap at all (not the classifier's)
    none = heatmaps_for_study(result, {}, tmp_path / "out2", targets=[target], models_dir=root)
    assert none.heatmaps == ()


def test_the_map_is_read_at_the_last_block_before_the_final_pooling(tmp_path: Path) -> None:
    # the test network: stride-2 stem (24 x 24), blocks[0] (24 x 24), pool, last_conv (12 x 12)
    root = write_model(tmp_path, rule=True)
    loaded = fm.load_foraminal("foraminal", root)
    assert isinstance(loaded.network, fm.ForaminalNet)
    assert gf.cam_layers(loaded.network) == [loaded.network.blocks[-1]]
    inputs = gf.foramen_inputs(sagittal(), CENTRES, NORMALS)
    (cam,) = gf.compute_foramen_maps(loaded, inputs, [(Level.L3_L4, Side.LEFT)])
    stride, _offset = gf.layer_grid(loaded.network)
    assert cam.raw.shape == (fc.SIZE // stride, fc.SIZE // stride) == (24, 24)


@pytest.mark.parametrize(
    ("widths", "grid"),
    [((24, 32, 48), (4, 1)), ((4, 6), (2, 0)), ((8,), (2, 0)), ((4, 6, 8, 10), (8, 3))],
)
def test_layer_grid_follows_the_poolings(widths: tuple[int, ...], grid: tuple[int, int]) -> None:
    net = fm.ForaminalNet(fm.ForaminalConfig(in_channels=fc.IN_CHANNELS, stem=4, widths=widths)).eval()
    assert gf.layer_grid(net) == grid
    stride, _ = grid
    store: list[torch.Tensor] = []
    (layer,) = gf.cam_layers(net)
    handle = layer.register_forward_hook(lambda _m, _i, out: store.append(out))
    with torch.no_grad():
        net(torch.zeros(1, fc.IN_CHANNELS, fc.SIZE, fc.SIZE))
    handle.remove()
    assert tuple(store[0].shape[-2:]) == (fc.SIZE // stride, fc.SIZE // stride)
    ensemble = fm.ForaminalEnsemble(fm.ForaminalConfig(in_channels=fc.IN_CHANNELS, stem=4, widths=widths), 2)
    assert gf.layer_grid(ensemble) == grid and len(gf.cam_layers(ensemble)) == 2


def test_a_layer_cell_lands_on_its_receptive_field_centre_in_the_crop() -> None:
    # a stride-2 stem centres cell u on pixel 2u; a 2x pooling then centres cell v between
    # pixels 4v and 4v + 2, i.e. on 4v + 1 (the library's resize would put it on 4v + 1.5)
    raw = np.zeros((12, 12), np.float32)
    raw[5, 7] = 2.0
    crop_map = gf.layer_to_crop(raw, 4, 1)
    assert crop_map.shape == (fc.SIZE, fc.SIZE)
    assert np.unravel_index(int(np.argmax(crop_map)), crop_map.shape) == (21, 29)
    assert float(crop_map.max()) == pytest.approx(1.0) and float(crop_map.min()) == 0.0
    assert float(gf.layer_to_crop(np.zeros((12, 12)), 4, 1).max()) == 0.0  # empty stays empty
