"""Grad-CAM core: batched == per-target, == a hand-written Grad-CAM, no weight grads, hooks released."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cds.domain import Condition, Level
from cds.explain.gradcam import (
    CamTarget,
    compute_maps,
    compute_maps_naive,
    gradcam_session,
    output_index,
)
from cds.ml.classifier import ClassifierConfig, LevelClassifier, LoadedClassifier, output_labels


def _loaded(seed: int = 0) -> LoadedClassifier:
    torch.manual_seed(seed)
    net = LevelClassifier(ClassifierConfig(in_channels=7, widths=(8, 16, 16, 24), groups=4))
    # Non-trivial running statistics, so the summary BatchNorm matters in eval mode.
    net.summary_norm.running_mean.uniform_(0.0, 0.2)  # type: ignore[union-attr,operator]
    net.eval()
    return LoadedClassifier(spec=None, network=net, device=torch.device("cpu"))  # type: ignore[arg-type]


def _crops(seed: int = 1) -> dict[Level, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {lv: rng.random((7, 96, 96), dtype=np.float32) for lv in (Level.L3_L4, Level.L4_L5, Level.L5_S1)}


TARGETS = [
    CamTarget(Level.L3_L4, Condition.SPINAL_CANAL),
    CamTarget(Level.L4_L5, Condition.SPINAL_CANAL),
    CamTarget(Level.L4_L5, Condition.LEFT_SUBARTICULAR),
    CamTarget(Level.L4_L5, Condition.RIGHT_FORAMINAL),
    CamTarget(Level.L5_S1, Condition.LEFT_FORAMINAL),
]


def test_output_index_is_the_present_column() -> None:
    labels = output_labels()
    for c in Condition:
        assert labels[output_index(c)] == f"{c.value}:present"


def test_batched_maps_equal_per_target_maps() -> None:
    loaded, crops = _loaded(), _crops()
    batched = compute_maps(loaded, crops, TARGETS)
    naive = compute_maps_naive(loaded, crops, TARGETS)
    assert [m.target for m in batched] == TARGETS == [m.target for m in naive]
    for b, n in zip(batched, naive, strict=True):
        assert b.crop_map.shape == (96, 96)
        np.testing.assert_allclose(b.crop_map, n.crop_map, atol=1e-5)
        np.testing.assert_allclose(b.raw, n.raw, rtol=1e-4, atol=1e-7)
        assert b.logit == pytest.approx(n.logit, abs=1e-5)
    # Different conditions on the same crop give different maps (targets are not mixed).
    assert not np.allclose(batched[1].raw, batched[2].raw)


def test_matches_a_hand_written_gradcam_on_the_original_network() -> None:
    loaded, crops = _loaded(), _crops()
    target = TARGETS[2]
    (cam,) = compute_maps(loaded, crops, [target])
    net = loaded.network
    x = torch.from_numpy(crops[target.level][None])
    saved: dict[str, torch.Tensor] = {}

    def keep(_m: torch.nn.Module, _i: object, out: torch.Tensor) -> None:
        out.retain_grad()
        saved["a"] = out

    handle = net.last_conv.register_forward_hook(keep)
    try:
        logit = net(x)[0, output_index(target.condition)]
        logit.backward()
    finally:
        handle.remove()
        net.zero_grad(set_to_none=True)
    a, g = saved["a"].detach()[0], saved["a"].grad[0]  # type: ignore[index]
    manual = torch.relu((g.mean(dim=(1, 2))[:, None, None] * a).sum(dim=0)).numpy()
    np.testing.assert_allclose(cam.raw, manual, rtol=1e-4, atol=1e-7)
    assert cam.logit == pytest.approx(float(logit.detach()), abs=1e-5)


def test_shared_model_is_not_touched() -> None:
    loaded, crops = _loaded(), _crops()
    before = {k: v.clone() for k, v in loaded.network.state_dict().items()}
    compute_maps(loaded, crops, TARGETS)
    for p in loaded.network.parameters():
        assert p.grad is None
        assert p.requires_grad  # the cached model keeps its own settings
    for k, v in loaded.network.state_dict().items():
        assert torch.equal(v, before[k])
    assert not loaded.network.last_conv._forward_hooks


def test_session_releases_hooks_and_never_swallows_errors() -> None:
    loaded = _loaded()
    with gradcam_session(loaded) as cam:
        layer = cam.target_layers[0]
        assert len(layer._forward_hooks) == 3  # our activation leaf + the library's two
    assert not layer._forward_hooks
    with pytest.raises(IndexError), gradcam_session(loaded) as cam:
        raise IndexError("inside the block")  # the library's own __exit__ would swallow this
    assert not cam.target_layers[0]._forward_hooks
    assert not cam.activations_and_grads.handles


def test_missing_level_is_an_error() -> None:
    with pytest.raises(ValueError, match="L1-L2"):
        compute_maps(_loaded(), _crops(), [CamTarget(Level.L1_L2, Condition.SPINAL_CANAL)])


def test_no_targets_no_work() -> None:
    assert compute_maps(_loaded(), _crops(), []) == []
