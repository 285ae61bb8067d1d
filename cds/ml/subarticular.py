"""The subarticular network: a small CNN over one lateral recess's fine axial crop.

Input: ``(12, 64, 64)`` from :mod:`cds.pipeline.recess_crop` (three axial slices through the disc,
each as T2 + the axial segmentation's sac, disc/body and posterior-bone probabilities; 0.4 mm
pixels; rows anterior -> posterior, columns from the midline towards the side, the right recess
mirrored). Outputs per crop: two ordinal logits, P(grade >= moderate) ("present") and
P(grade = severe), and an estimate of the lateral recess depth in mm (FINDINGS.md).

Why one network for both sides: the crops are mirrored so a left and a right recess look alike.
Why full resolution in the stem and a 16 x 16 last block: the grades are 2 mm apart and the
recess is a few pixels deep, so the first convolution sees 0.4 mm pixels, and the last block
(1.6 mm cells) is fine enough for a Grad-CAM map to point inside the recess.
Why BatchNorm: the probability channels are on an absolute scale that per-sample normalisation
would blur.

``last_conv`` is the block Grad-CAM explains (cds/explain/gradcam_subarticular.py) in the plain
network (version 1). Evidence head (version 2, ``SubarticularConfig.evidence``), as in classifier
2.x: a 1x1 convolution on the last block gives one log-evidence map per ordinal output, the module
``evidence`` outputs S = exp(E), and each ordinal logit is log(mean of its S) + a bias (a smooth
maximum); the depth comes from the pooled features. Why: Grad-CAM at ``evidence`` is then exactly
the output's own map, and its spatial softmax is what the training's localisation loss pushes into
the recess's cause region (cds/train/subarticular.py), so the heatmap users see and the training
objective agree. The plain network's maps hit the cause region for 84 % of findings against the
classifier's 100 % (evaluation of session 12).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cds.errors import ModelError
from cds.ml.loading import VerifiedModelCache
from cds.ml.spec import ModelSpec

ARCHITECTURE = "SubarticularNet"
OUTPUT_LABELS = ("subarticular:present", "subarticular:severe", "lateral_recess_depth_mm")


@dataclass(frozen=True)
class SubarticularConfig:
    in_channels: int = 12
    widths: tuple[int, int, int, int] = (16, 24, 32, 48)
    evidence: bool = False


class Evidence(nn.Module):
    """Per-output evidence S = exp(E) from a 1x1 convolution (the layer Grad-CAM explains)."""

    def __init__(self, channels: int, outputs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, outputs, 1)

    def log_evidence(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv(features).clamp(-30.0, 30.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_evidence(features))


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SubarticularNet(nn.Module):
    """stem (64 px) -> pool -> block (32 px) -> pool -> block (16 px) -> last block (16 px) ->
    mean + max pooling -> linear (present, severe, depth).

    ``temperature`` (a buffer saved with the weights) divides the two ordinal logits; it is fitted
    on the validation split after training and does not change rankings.
    """

    def __init__(self, config: SubarticularConfig | None = None) -> None:
        super().__init__()
        self.config = config or SubarticularConfig()
        w0, w1, w2, w3 = self.config.widths
        self.stem = nn.Sequential(*_conv_bn(self.config.in_channels, w0))
        self.mid = nn.Sequential(
            nn.MaxPool2d(2),
            *_conv_bn(w0, w1),
            *_conv_bn(w1, w1),
            nn.MaxPool2d(2),
            *_conv_bn(w1, w2),
            *_conv_bn(w2, w2),
        )
        self.last_conv = nn.Sequential(*_conv_bn(w2, w3), *_conv_bn(w3, w3))
        self.dropout = nn.Dropout(0.2)
        self.evidence: Evidence | None = None
        if self.config.evidence:
            self.evidence = Evidence(w3, 2)
            self.bias = nn.Parameter(torch.zeros(2))
            self.head = nn.Linear(2 * w3, 1)  # depth only
        else:
            self.head = nn.Linear(2 * w3, len(OUTPUT_LABELS))
        self.temperature: torch.Tensor
        self.register_buffer("temperature", torch.ones(2))

    def set_temperature(self, values: Sequence[float] | np.ndarray) -> None:
        """Set the two ordinal logits' temperatures (fitted on validation data after training)."""
        with torch.no_grad():
            self.temperature.copy_(torch.as_tensor(np.asarray(values, dtype=np.float32)))

    @property
    def cam_layers(self) -> list[nn.Module]:
        """The layers Grad-CAM explains (cds/explain/gradcam_subarticular.py)."""
        return [self.evidence if self.evidence is not None else self.last_conv]

    def forward_with_evidence(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The outputs of :meth:`forward` and, with the evidence head, the log-evidence maps
        (batch, 2, h, w) the localisation loss needs."""
        f = self.last_conv(self.mid(self.stem(x)))
        pooled = torch.cat([f.mean(dim=(-2, -1)), f.amax(dim=(-2, -1))], dim=1)
        out = self.head(self.dropout(pooled))
        if self.evidence is None:
            return torch.cat([out[:, :2] / self.temperature, out[:, 2:]], dim=1), None
        log_e = self.evidence.log_evidence(f)
        evidence = self.evidence(f)  # the module call, so Grad-CAM's hooks see this output
        ordinal = torch.log(evidence.mean(dim=(-2, -1))) + self.bias
        return torch.cat([ordinal / self.temperature, out], dim=1), log_e

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, 3): calibrated present and severe logits, then the recess depth (mm, linear)."""
        return self.forward_with_evidence(x)[0]


def build_subarticular(spec: ModelSpec) -> SubarticularNet:
    arch = dict(spec.architecture)
    if arch.get("type") != ARCHITECTURE:
        raise ModelError(f"{spec.name}: expected architecture {ARCHITECTURE}, got {arch.get('type')!r}")
    try:
        widths = tuple(int(w) for w in arch["widths"])
        if len(widths) != 4:
            raise ValueError(f"four widths expected, got {len(widths)}")
        config = SubarticularConfig(
            in_channels=int(arch["in_channels"]), widths=widths, evidence=bool(arch.get("evidence", False))
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{spec.name}: architecture does not match SubarticularConfig: {exc!r}") from exc
    if tuple(spec.labels) != OUTPUT_LABELS:
        raise ModelError(f"{spec.name}: card labels do not match the subarticular network's outputs")
    return SubarticularNet(config)


@dataclass(frozen=True)
class LoadedSubarticular:
    spec: ModelSpec
    network: SubarticularNet
    device: torch.device


_LOADED: VerifiedModelCache[SubarticularNet, LoadedSubarticular] = VerifiedModelCache(
    build_subarticular, LoadedSubarticular, freeze=True
)


def load_subarticular(
    name: str, models_dir: Path | None = None, device: str | None = None
) -> LoadedSubarticular:
    """Verified (sha256 from the card), loaded once per process, eval mode, CPU unless CUDA."""
    return _LOADED.get(name, models_dir, device)


def clear_cache() -> None:
    _LOADED.clear()
