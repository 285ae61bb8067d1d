"""Subarticular network version 2: evidence maps, the localisation loss, aligned augmentation and the
cause regions of the training crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cds.dicom.selection import SeriesKind
from cds.dicom.volume import Volume
from cds.domain import Side
from cds.ml import subarticular as sm
from cds.ml.loading import save_weights
from cds.ml.spec import InputContract, ModelSpec, write_card
from cds.pipeline import axial as ax
from cds.pipeline import recess_crop as rc
from cds.train import subarticular as ts
from cds.train.subarticular_data import MARGIN, cause_on_crop

TINY = (4, 4, 6, 8)


def test_evidence_network_pools_its_maps_into_the_ordinal_logits() -> None:
    torch.manual_seed(0)
    net = sm.SubarticularNet(
        sm.SubarticularConfig(in_channels=rc.IN_CHANNELS, widths=TINY, evidence=True)
    ).eval()
    x = torch.rand(3, rc.IN_CHANNELS, rc.SIZE, rc.SIZE)
    out, log_e = net.forward_with_evidence(x)
    assert out.shape == (3, 3) and log_e is not None and log_e.shape == (3, 2, 16, 16)
    # each ordinal logit is log(mean exp(E)) + bias, divided by the temperature (1 here)
    expected = torch.log(torch.exp(log_e).mean(dim=(-2, -1))) + net.bias
    torch.testing.assert_close(out[:, :2], expected)
    assert net.cam_layers == [net.evidence]
    torch.testing.assert_close(net(x), out)


def test_evidence_network_loads_from_its_card(tmp_path: Path) -> None:
    net = sm.SubarticularNet(
        sm.SubarticularConfig(in_channels=rc.IN_CHANNELS, widths=TINY, evidence=True)
    ).eval()
    sha = save_weights(net, tmp_path / "subarticular" / "model.safetensors")
    arch = {"type": sm.ARCHITECTURE, "in_channels": rc.IN_CHANNELS, "widths": list(TINY), "evidence": True}
    spec = ModelSpec(
        name="subarticular",
        version="2.0.0",
        sha256=sha,
        architecture=arch,
        input=InputContract("axial recess crop", (0.4, 0.4), (rc.SIZE, rc.SIZE), "p1/p99", (1.0, 99.0)),
        labels=sm.OUTPUT_LABELS,
        thresholds={"present": 0.5, "grade_from_depth_rule": 0.0},
    )
    write_card(spec, tmp_path / "subarticular")
    sm.clear_cache()
    loaded = sm.load_subarticular("subarticular", tmp_path)
    assert loaded.network.evidence is not None
    sm.clear_cache()


def test_localisation_loss_rewards_mass_inside_the_cause_region() -> None:
    region = torch.zeros(2, rc.SIZE, rc.SIZE, dtype=torch.bool)
    region[:, 8:16, 8:16] = True  # map cells (2-3, 2-3) of the 16 x 16 grid
    inside = torch.full((2, 2, 16, 16), -10.0)
    inside[:, 0, 2:4, 2:4] = 10.0
    outside = torch.full((2, 2, 16, 16), -10.0)
    outside[:, 0, 10:12, 10:12] = 10.0
    present = torch.tensor([1.0, 1.0])
    assert float(ts.localisation_loss(inside, present, region)) < 1e-3
    assert float(ts.localisation_loss(outside, present, region)) > 10.0
    # no truth-present recess with a region: no loss (and no NaN)
    assert float(ts.localisation_loss(outside, torch.zeros(2), region)) == 0.0
    assert float(ts.localisation_loss(outside, present, torch.zeros_like(region))) == 0.0


def test_augment_cuts_the_cause_regions_with_the_same_windows() -> None:
    rng = np.random.default_rng(0)
    width = rc.SIZE + 2 * MARGIN
    causes = rng.random((5, width, width)) > 0.7
    x = np.zeros((5, rc.IN_CHANNELS, width, width), np.float16)
    x[:, 1] = causes  # a probability channel: no intensity augmentation
    out, cut = ts.augment(x, np.random.default_rng(1), causes)
    assert cut is not None and cut.shape == (5, rc.SIZE, rc.SIZE)
    assert np.array_equal(out[:, 1] > 0.5, cut)
    plain, none = ts.augment(x, np.random.default_rng(1))
    assert none is None and np.array_equal(plain[:, 1], out[:, 1])


def _level() -> tuple[ax.AxialSegmentation, Volume]:
    a = np.eye(4)
    a[:3, 0] = (0.0, 0.0, 4.0)
    a[:3, 1] = (0.0, 0.75, 0.0)
    a[:3, 2] = (0.75, 0.0, 0.0)
    a[:3, 3] = (-90.0, -90.0, 0.0)
    array = np.random.default_rng(5).random((4, 240, 240)).astype(np.float32)
    volume = Volume(array, a, (4.0, 0.75, 0.75), "1.2.9", "AX T2", SeriesKind.AXIAL_T2)
    images, frames = ax.preprocess(array, a, range(4))
    probs = np.zeros((4, len(ax.AXIAL_CLASSES), ax.CANONICAL_SIZE, ax.CANONICAL_SIZE), np.float32)
    probs[:, ax.SAC, 76:86, 70:82] = 1.0
    labels = np.zeros((4, 2 * ax.CANONICAL_SIZE, 2 * ax.CANONICAL_SIZE), np.uint8)
    return ax.AxialSegmentation(images, probs, labels, (0, 1, 2, 3), frames), volume


@pytest.mark.parametrize("side", list(Side))
def test_cause_region_on_the_crop_is_the_union_over_its_slices(side: Side) -> None:
    seg, volume = _level()
    crop = rc.recess_crops(seg.images, seg.probs, None, MARGIN)[side]
    mask = np.zeros(volume.shape, np.uint8)
    mask[crop.rows[0], :, 120:] = 1  # patient-left half, on the crop's first slice only
    region = cause_on_crop(mask, volume.series_uid, seg, volume, crop)
    assert region.shape == crop.coords.shape[1:]
    if side is Side.LEFT:  # the left recess lies in the patient-left half
        assert region.mean() > 0.5
    else:
        assert region.mean() < 0.5
    assert not cause_on_crop(np.zeros_like(mask), volume.series_uid, seg, volume, crop).any()
    assert not cause_on_crop(mask, "another series", seg, volume, crop).any()
