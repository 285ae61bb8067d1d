"""Subarticular network: outputs, card contract, hash-verified loading, and the pipeline stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cds.domain import Level, MeasurementName, Side
from cds.errors import ModelError
from cds.ml import subarticular as sm
from cds.ml.loading import save_weights
from cds.ml.spec import InputContract, ModelSpec, write_card
from cds.pipeline import axial as ax
from cds.pipeline import recess_crop as rc
from cds.pipeline import subarticular as stage
from cds.pipeline.axial import AxialSegmentation, canonical_frame

TINY = (4, 4, 6, 8)


def write_model(root: Path, *, rule: bool, tamper: bool = False) -> Path:
    torch.manual_seed(0)
    net = sm.SubarticularNet(sm.SubarticularConfig(in_channels=rc.IN_CHANNELS, widths=TINY)).eval()
    directory = root / "subarticular"
    sha = save_weights(net, directory / "model.safetensors")
    spec = ModelSpec(
        name="subarticular",
        version="0.0.1",
        sha256=("0" * 64) if tamper else sha,
        architecture={"type": sm.ARCHITECTURE, "in_channels": rc.IN_CHANNELS, "widths": list(TINY)},
        input=InputContract("axial recess crop", (0.4, 0.4), (rc.SIZE, rc.SIZE), "p1/p99", (1.0, 99.0)),
        labels=sm.OUTPUT_LABELS,
        thresholds={"present": 0.5, "grade_from_depth_rule": 1.0 if rule else 0.0},
    )
    write_card(spec, directory)
    sm.clear_cache()
    return root


def segmentation(n: int = 4) -> AxialSegmentation:
    rng = np.random.default_rng(3)
    size = ax.CANONICAL_SIZE
    images = rng.random((n, size, size)).astype(np.float32)
    probs = np.zeros((n, len(ax.AXIAL_CLASSES), size, size), np.float32)
    probs[:, ax.BACKGROUND] = 1.0
    probs[:, ax.SAC, 70:90, 70:90], probs[:, ax.BACKGROUND, 70:90, 70:90] = 1.0, 0.0
    frame = canonical_frame(np.diag([0.7, 0.7, 4.0, 1.0])[[2, 0, 1, 3]][:, [0, 1, 2, 3]], (224, 224))
    labels = np.zeros((n, 2 * size, 2 * size), np.uint8)
    return AxialSegmentation(images, probs, labels, tuple(range(10, 10 + n)), tuple(frame for _ in range(n)))


def test_network_gives_two_ordinal_logits_and_a_depth_per_crop() -> None:
    net = sm.SubarticularNet(sm.SubarticularConfig(in_channels=rc.IN_CHANNELS, widths=TINY)).eval()
    out = net(torch.rand(3, rc.IN_CHANNELS, rc.SIZE, rc.SIZE))
    assert out.shape == (3, len(sm.OUTPUT_LABELS))
    x = torch.rand(1, rc.IN_CHANNELS, rc.SIZE, rc.SIZE)
    plain = net(x)
    net.set_temperature([2.0, 4.0])
    scaled = net(x)
    assert torch.allclose(scaled[0, :2] * torch.tensor([2.0, 4.0]), plain[0, :2], atol=1e-5)
    assert torch.allclose(scaled[0, 2], plain[0, 2])  # temperature never touches the depth


def test_cam_layer_keeps_a_16_pixel_grid() -> None:
    net = sm.SubarticularNet(sm.SubarticularConfig(in_channels=rc.IN_CHANNELS, widths=TINY)).eval()
    seen: list[tuple[int, ...]] = []
    net.cam_layers[0].register_forward_hook(lambda _m, _i, o: seen.append(tuple(o.shape)))
    net(torch.rand(2, rc.IN_CHANNELS, rc.SIZE, rc.SIZE))
    assert seen == [(2, TINY[-1], rc.SIZE // 4, rc.SIZE // 4)]


def test_loading_refuses_weights_other_than_the_cards(tmp_path: Path) -> None:
    root = write_model(tmp_path, rule=True, tamper=True)
    with pytest.raises(ModelError, match="hash mismatch"):
        sm.load_subarticular("subarticular", root)


def test_card_with_other_labels_or_architecture_is_refused(tmp_path: Path) -> None:
    root = write_model(tmp_path, rule=True)
    card = root / "subarticular" / "card.json"
    data = json.loads(card.read_text())
    card.write_text(json.dumps({**data, "labels": ["a", "b", "c"]}))
    with pytest.raises(ModelError, match="labels"):
        sm.load_subarticular("subarticular", root)
    card.write_text(json.dumps({**data, "architecture": {**data["architecture"], "widths": [4, 4]}}))
    sm.clear_cache()
    with pytest.raises(ModelError, match="architecture"):
        sm.load_subarticular("subarticular", root)


def test_loaded_once_per_process(tmp_path: Path) -> None:
    root = write_model(tmp_path, rule=True)
    assert sm.load_subarticular("subarticular", root) is sm.load_subarticular("subarticular", root)


@pytest.mark.parametrize("rule", [True, False])
def test_stage_reads_both_recesses_of_every_level_in_one_pass(tmp_path: Path, rule: bool) -> None:
    root = write_model(tmp_path, rule=rule)
    segs = {Level.L4_L5: segmentation(), Level.L5_S1: segmentation(3)}
    offsets = {Level.L4_L5: [-6.0, -2.0, 2.0, 6.0], Level.L5_S1: None}
    readings = stage.estimate_recesses(segs, offsets, models_dir=root)
    assert set(readings) == {(lv, s) for lv in segs for s in Side}
    r = readings[(Level.L4_L5, Side.RIGHT)]
    assert r.depth.name is MeasurementName.LATERAL_RECESS_DEPTH_MM and r.depth.side is Side.RIGHT
    assert stage.DEPTH_RANGE_MM[0] <= r.depth.value <= stage.DEPTH_RANGE_MM[1]
    assert "model-estimated" in r.depth.provenance.method
    assert r.depth.reliable is rule
    # rows 1 and 2 are nearest the disc centre (offsets -2, +2); the central of the three chosen
    assert r.depth.provenance.slice_index in segs[Level.L4_L5].slice_indices
    assert 0.0 <= r.estimate.p_severe <= r.estimate.p_present <= 1.0


def test_stage_without_weights_refuses(tmp_path: Path) -> None:
    with pytest.raises(ModelError):
        stage.estimate_recesses({Level.L4_L5: segmentation()}, {}, models_dir=tmp_path)
