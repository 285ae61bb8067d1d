"""Stage 2: crops, ordinal post-processing, and hash-verified classifier loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cds.domain import Condition, Level
from cds.errors import ModelError
from cds.ml import classifier as mc
from cds.ml.loading import save_weights
from cds.ml.spec import InputContract, ModelSpec, write_card
from cds.pipeline import axial as ax
from cds.pipeline import classify as cl


def level_probs(sac_areas: list[int]) -> tuple[np.ndarray, np.ndarray]:
    n, size = len(sac_areas), ax.CANONICAL_SIZE
    probs = np.zeros((n, len(ax.AXIAL_CLASSES), size, size), np.float32)
    probs[:, 0] = 1.0
    for k, half in enumerate(sac_areas):
        probs[k, 0, 90 - half : 90 + half, 70 - half : 70 + half] = 0.0
        probs[k, ax.SAC, 90 - half : 90 + half, 70 - half : 70 + half] = 1.0
    images = np.stack([np.full((size, size), float(k), np.float32) for k in range(n)])
    return images, probs


def test_narrowest_slice_skips_slices_without_sac() -> None:
    _, probs = level_probs([10, 6, 0, 8])
    assert cl.narrowest_slice(probs) == 1


def test_level_crop_channels_and_centre() -> None:
    images, probs = level_probs([10, 6, 8])
    crop = cl.level_crop(images, probs)
    assert crop.shape == (cl.IN_CHANNELS, cl.CROP_SIZE, cl.CROP_SIZE)
    assert crop.dtype == np.float32
    # image channels: slices k-1, k, k+1 around the narrowest (k = 1)
    assert [float(crop[i, 0, 0]) for i in range(3)] == [0.0, 1.0, 2.0]
    # sac probability channel is centred on the sac (rows 84-96, cols 64-76 -> crop centre)
    sac = crop[cl.N_IMAGE_CHANNELS]
    rows, cols = np.nonzero(sac > 0.5)
    assert rows.mean() == pytest.approx(cl.CROP_SIZE / 2 - 0.5, abs=1.0)
    assert cols.mean() == pytest.approx(cl.CROP_SIZE / 2 - 0.5, abs=1.0)


def test_crop_near_the_edge_is_zero_padded() -> None:
    arr = np.ones((2, 20, 20), np.float32)
    out = cl._crop(arr, (0, 0), 10)
    assert out.shape == (2, 10, 10) and out[:, :5, :5].sum() == 0 and out[:, 5:, 5:].sum() == 2 * 25


def test_postprocess_gives_ordinal_estimates_per_condition() -> None:
    present = np.array([[0.9, 0.1, 0.2, 0.3, 0.4]])
    severe = np.array([[0.95, 0.05, 0.1, 0.1, 0.1]])  # severe > present is clipped
    (out,) = cl.postprocess([Level.L4_L5], present, severe)
    assert out.level is Level.L4_L5
    assert out.p_present(Condition.SPINAL_CANAL) == pytest.approx(0.9)
    assert out.estimates[Condition.SPINAL_CANAL].p_severe == pytest.approx(0.9)


def test_classifier_output_layout_and_last_conv() -> None:
    net = mc.LevelClassifier(mc.ClassifierConfig(in_channels=cl.IN_CHANNELS, widths=(8, 8, 8, 8))).eval()
    x = torch.zeros(2, cl.IN_CHANNELS, cl.CROP_SIZE, cl.CROP_SIZE)
    logits = net(x)
    assert logits.shape == (2, 10)
    present, severe = net.split(logits)
    assert present.shape == severe.shape == (2, 5)
    assert isinstance(net.last_conv[0], torch.nn.Conv2d)
    assert mc.output_labels()[:2] == ("spinal_canal:present", "spinal_canal:severe")


def _write_model(directory: Path) -> ModelSpec:
    torch.manual_seed(0)
    config = mc.ClassifierConfig(in_channels=cl.IN_CHANNELS, widths=(8, 8, 8, 8))
    net = mc.LevelClassifier(config)
    sha = save_weights(net, directory / "model.safetensors")
    spec = ModelSpec(
        name=directory.name,
        version="0.0.1",
        sha256=sha,
        architecture={
            "type": mc.ARCHITECTURE,
            "in_channels": cl.IN_CHANNELS,
            "widths": [8, 8, 8, 8],
            "groups": 8,
            "summary_features": True,
        },
        input=InputContract("test", (0.8, 0.8), (96, 96), "test", (1.0, 99.0)),
        labels=mc.output_labels(),
    )
    write_card(spec, directory)
    return spec


def test_classify_levels_with_verified_weights(tmp_path: Path) -> None:
    mc.clear_cache()
    _write_model(tmp_path / "classifier")
    images, probs = level_probs([10, 6, 8])
    crop = cl.level_crop(images, probs)
    out = cl.classify_levels({Level.L5_S1: crop, Level.L1_L2: crop}, models_dir=tmp_path)
    assert [p.level for p in out] == [Level.L1_L2, Level.L5_S1]
    for p in out:
        for c in Condition:
            est = p.estimates[c]
            assert 0.0 <= est.p_severe <= est.p_present <= 1.0
    mc.clear_cache()


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    mc.clear_cache()
    directory = tmp_path / "classifier"
    _write_model(directory)
    data = bytearray((directory / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (directory / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="hash mismatch"):
        mc.load_classifier("classifier", tmp_path)


def test_card_with_wrong_labels_is_refused(tmp_path: Path) -> None:
    mc.clear_cache()
    directory = tmp_path / "classifier"
    _write_model(directory)
    card = json.loads((directory / "card.json").read_text())
    card["labels"] = card["labels"][::-1]
    (directory / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="labels"):
        mc.load_classifier("classifier", tmp_path)


def test_level_crop_level_max_channels_see_every_slice() -> None:
    """The foramen channel carries the foramen of a slice other than the narrowest one."""
    images, probs = level_probs([10, 6, 8])
    probs[2, ax.FORAMEN, 60:70, 100:110] = 1.0  # only on slice 2; the narrowest is slice 1
    probs[2, ax.BACKGROUND, 60:70, 100:110] = 0.0
    crop = cl.level_crop(images, probs)
    n_slice_k = cl.N_IMAGE_CHANNELS + len(cl.PROB_CHANNELS)
    assert crop.shape[0] == n_slice_k + len(cl.LEVEL_MAX_CHANNELS)
    foramen_at_k = crop[cl.N_IMAGE_CHANNELS + 3]
    foramen_max = crop[n_slice_k]
    assert foramen_at_k.sum() == 0.0
    assert foramen_max.sum() == pytest.approx(100.0)
    wide = cl.level_crop(images, probs, size=cl.CROP_SIZE + 8)
    np.testing.assert_array_equal(wide[:, 4:-4, 4:-4], crop)
