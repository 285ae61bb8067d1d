"""Grad-CAM of the stage-2 classifier (pytorch-grad-cam), all targets of a study in one pass.

Target: the "present" logit of a finding's condition (P(grade >= moderate), the classifier's
stage-2 output), at ``LevelClassifier.cam_layer``: the per-output evidence map computed from the
last convolutional block (classifier 2.x), or the last block itself (1.x). Why the evidence map:
with a shared last block every condition's Grad-CAM was a weighted sum of the same features, and
those answered to the dural sac whatever the condition (pointing game 0.6 % with 1.2.0); the
evidence map of an output is by construction what that output pools, so its Grad-CAM equals that
map (see cds/ml/classifier.py) and training pushes it into the condition's cause region.

Batching: every target gets its own batch row holding its level's crop (a crop repeated once per
target at that level), and the library's single forward + backward computes all maps at once:
the loss it back-propagates is the sum of each row's own target, and rows never interact in this
network in eval mode (GroupNorm is per sample, the summary BatchNorm uses running statistics,
dropout is off), so each row's gradient is exactly that of its own target alone. Summing several
targets on ONE row would mix their gradients, which is why targets are not summed per crop.

No weight gradients, no mutation of the shared model: the classifier cached by
cds.ml.classifier.load_classifier serves quick reads (possibly in other threads), so Grad-CAM
runs on a private copy whose parameters are frozen, and a forward hook makes the Grad-CAM
layer's output a fresh leaf that requires grad. Back-propagation then runs only through the
pooling and the head -- the gradients w.r.t. the activations that Grad-CAM needs -- never
through the convolutions, and never writes ``.grad`` on any parameter.

Hooks: the library registers forward hooks on the target layer and leaks them unless released;
:func:`gradcam_session` is a context manager that always releases them (and, unlike the
library's own ``__exit__``, never swallows an IndexError raised inside the block).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from cds.domain import Condition, Level

if TYPE_CHECKING:
    from pytorch_grad_cam import GradCAM
    from torch import nn

    from cds.ml.classifier import LoadedClassifier


@dataclass(frozen=True)
class CamTarget:
    """One heatmap to compute: the "present" output of ``condition`` on ``level``'s crop."""

    level: Level
    condition: Condition

    @property
    def key(self) -> str:
        return f"{self.level.value}/{self.condition.value}"


@dataclass(frozen=True)
class CamMap:
    """One target's Grad-CAM on its crop.

    ``crop_map``: the library's map, ReLU'd, min-max scaled to [0, 1] and resized to the crop;
    ``raw``: the unscaled ReLU(sum_c w_c A_c) at the layer's resolution (kept with the artifact);
    ``logit``: the target's present logit on that crop (calibrated).
    """

    target: CamTarget
    crop_map: NDArray[np.float32]
    raw: NDArray[np.float32]
    logit: float


def output_index(condition: Condition) -> int:
    """Column of ``condition``'s present logit in the classifier output."""
    from cds.ml.classifier import output_labels

    return output_labels().index(f"{condition.value}:present")


_COPY_LOCK = threading.Lock()
_COPIES: dict[int, tuple[tuple[nn.Module, nn.Module], threading.Lock]] = {}


def private_copy(network: nn.Module) -> tuple[nn.Module, threading.Lock]:
    """A frozen copy of a loaded network (one per loaded network per process) and its lock.

    Why a lock: the session adds hooks to the copy; two concurrent explain jobs must not share
    them. A Grad-CAM call takes tens of milliseconds, so serialising them costs little. Every
    explained model (the classifier, the foraminal model) goes through this one cache.
    """
    key = id(network)
    with _COPY_LOCK:
        entry = _COPIES.get(key)
        if entry is None or entry[0][1] is not network:
            net = copy.deepcopy(network).eval()
            for p in net.parameters():
                p.requires_grad_(False)
            entry = ((net, network), threading.Lock())
            _COPIES[key] = entry
        (net, _source), lock = entry
        return net, lock


def _activation_leaf(_module: nn.Module, _inputs: Any, output: Any) -> Any:
    """Forward hook: the block's output as a leaf that requires grad (gradient stops here)."""
    return output.detach().requires_grad_(True)


@contextmanager
def frozen_cam_session(
    network: nn.Module, layers_of: Callable[[Any], Sequence[nn.Module]]
) -> Iterator[GradCAM]:
    """A GradCAM at ``layers_of(copy)`` of the private frozen copy of ``network``, its hooks
    (the library's and ours) released on exit, also on errors."""
    import torch

    from cds.explain.torchvision_compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from pytorch_grad_cam import GradCAM

    net, lock = private_copy(network)
    with lock, torch.enable_grad():
        layers = list(layers_of(net))
        leaves = [layer.register_forward_hook(_activation_leaf) for layer in layers]  # before the library's
        cam = GradCAM(model=net, target_layers=layers)
        try:
            yield cam.__enter__()
        finally:
            cam.__exit__(None, None, None)  # releases the library's hooks; never swallows errors
            for leaf in leaves:
                leaf.remove()


@contextmanager
def gradcam_session(loaded: LoadedClassifier) -> Iterator[GradCAM]:
    """A GradCAM at the classifier's ``cam_layer`` on its private frozen copy."""
    with frozen_cam_session(loaded.network, lambda net: [net.cam_layer]) as cam:
        yield cam


def _maps_from_session(
    cam: GradCAM, batch: NDArray[np.float32], targets: Sequence[CamTarget]
) -> list[CamMap]:
    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    columns = [output_index(t.condition) for t in targets]
    x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
    maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in columns])
    acts = cam.activations_and_grads.activations[0].numpy()
    grads = cam.activations_and_grads.gradients[0].numpy()
    raw = np.maximum((grads.mean(axis=(2, 3))[:, :, None, None] * acts).sum(axis=1), 0.0)
    logits = cam.outputs.detach().cpu().numpy()
    return [
        CamMap(t, np.asarray(maps[i], dtype=np.float32), raw[i].astype(np.float32), float(logits[i, c]))
        for i, (t, c) in enumerate(zip(targets, columns, strict=True))
    ]


def _check(crops: Mapping[Level, NDArray[np.float32]], targets: Sequence[CamTarget]) -> None:
    missing = sorted({t.level.value for t in targets if t.level not in crops})
    if missing:
        raise ValueError(f"no classifier crop for level(s) {', '.join(missing)}")


def compute_maps(
    loaded: LoadedClassifier, crops: Mapping[Level, NDArray[np.float32]], targets: Sequence[CamTarget]
) -> list[CamMap]:
    """All targets in one forward + one backward pass (a batch row per target)."""
    _check(crops, targets)
    if not targets:
        return []
    batch = np.stack([crops[t.level] for t in targets]).astype(np.float32)
    with gradcam_session(loaded) as cam:
        return _maps_from_session(cam, batch, targets)


def compute_maps_naive(
    loaded: LoadedClassifier, crops: Mapping[Level, NDArray[np.float32]], targets: Sequence[CamTarget]
) -> list[CamMap]:
    """The reference the issue rules out for production: one full pass per target (bench/tests)."""
    _check(crops, targets)
    out: list[CamMap] = []
    for t in targets:
        with gradcam_session(loaded) as cam:
            out.extend(_maps_from_session(cam, crops[t.level][None].astype(np.float32), [t]))
    return out


def present_probabilities(loaded: LoadedClassifier, batch: NDArray[np.float32]) -> NDArray[np.float32]:
    """(N, C, H, W) -> (N, 5) P(present) per condition, from the shared inference model."""
    from cds.pipeline.classify import predict

    present, _severe = predict(loaded, np.ascontiguousarray(batch, dtype=np.float32))
    return np.asarray(present, dtype=np.float32)
