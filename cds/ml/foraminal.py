"""The foraminal network: a small CNN over one foramen's parasagittal crop.

Input: ``(channels, 64, 64)`` from :mod:`cds.pipeline.foramen_crop` (one channel per lateral
offset from the disc centroid, medial to lateral; rows cranial -> caudal, columns anterior ->
posterior). Outputs, per crop: two ordinal logits, P(grade >= moderate) ("present") and
P(grade = severe), and a regression of the foraminal area ratio (FINDINGS.md: the foramen's
parasagittal cross-section as a fraction of its unnarrowed area).

Why one network for both sides: a left and a right foramen look alike on a sagittal plane and
the crops order their channels medial to lateral, so the sides share weights (twice the data).
Why BatchNorm (not GroupNorm): the amount of bright perineural fat is the signal; per-sample
normalisation would erase it, running statistics keep it.
Why small: ten crops per study, one batched pass, tens of milliseconds on a shared 2-core CPU.

``last_conv`` names the last convolution block for Grad-CAM (cds/explain/gradcam_foramen.py).
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

ARCHITECTURE = "ForaminalNet"
ENSEMBLE = "ForaminalEnsemble"
OUTPUT_LABELS = ("foraminal:present", "foraminal:severe", "foraminal_area_ratio")


@dataclass(frozen=True)
class ForaminalConfig:
    in_channels: int = 7
    #: Stem width (a strided convolution halving the crop), then one conv block per width.
    stem: int = 12
    widths: tuple[int, ...] = (16, 24, 32)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ForaminalNet(nn.Module):
    """Conv blocks with max-pooling between them; average + max pooling; one linear layer.

    ``temperature`` (a buffer saved with the weights) divides the two ordinal logits; it is fitted
    on the validation split after training (temperature scaling) and does not change rankings.
    """

    def __init__(self, config: ForaminalConfig | None = None) -> None:
        super().__init__()
        self.config = config or ForaminalConfig()
        c = self.config
        # Strided stem: the crop's 0.875 mm pixels are finer than the foramen's features need, and
        # the quick read (and training on a shared CPU) cannot afford full-resolution blocks.
        self.stem = nn.Sequential(
            nn.Conv2d(c.in_channels, c.stem, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c.stem),
            nn.ReLU(inplace=True),
        )
        blocks = []
        cin = c.stem
        for w in c.widths:
            blocks.append(_block(cin, w))
            cin = w
        self.blocks = nn.ModuleList(blocks[:-1])
        self.last_conv = blocks[-1]
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(2 * cin, len(OUTPUT_LABELS))
        self.temperature: torch.Tensor
        self.register_buffer("temperature", torch.ones(2))

    def set_temperature(self, values: Sequence[float] | np.ndarray) -> None:
        """Set the two ordinal logits' temperatures (fitted on validation data after training)."""
        with torch.no_grad():
            self.temperature.copy_(torch.as_tensor(np.asarray(values, dtype=np.float32)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = nn.functional.max_pool2d(block(x), 2)
        return self.last_conv(x)

    @property
    def cam_layers(self) -> list[nn.Module]:
        """The layers Grad-CAM explains (cds/explain/gradcam_foramen.py)."""
        return [self.last_conv]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, 3): calibrated present and severe logits, then the area ratio (linear)."""
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(-2, -1)), f.amax(dim=(-2, -1))], dim=1)
        out = self.head(self.dropout(pooled))
        return torch.cat([out[:, :2] / self.temperature, out[:, 2:]], dim=1)


class ForaminalEnsemble(nn.Module):
    """Several ForaminalNets trained with different seeds; outputs are the members' mean.

    Why: a few thousand training foramina leave each small network's ranking noisy; the mean of
    independently seeded members is steadier, and each member costs only ~2 ms per study.
    ``temperature`` (fitted on validation data) divides the mean ordinal logits.
    """

    def __init__(self, config: ForaminalConfig | None = None, members: int = 2) -> None:
        super().__init__()
        self.config = config or ForaminalConfig()
        self.members = nn.ModuleList([ForaminalNet(self.config) for _ in range(members)])
        self.temperature: torch.Tensor
        self.register_buffer("temperature", torch.ones(2))

    def set_temperature(self, values: Sequence[float] | np.ndarray) -> None:
        with torch.no_grad():
            self.temperature.copy_(torch.as_tensor(np.asarray(values, dtype=np.float32)))

    @property
    def cam_layers(self) -> list[nn.Module]:
        return [layer for m in self.members if isinstance(m, ForaminalNet) for layer in m.cam_layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.stack([m(x) for m in self.members]).mean(dim=0)
        return torch.cat([out[:, :2] / self.temperature, out[:, 2:]], dim=1)


def build_foraminal(spec: ModelSpec) -> ForaminalNet | ForaminalEnsemble:
    arch = dict(spec.architecture)
    if arch.get("type") not in (ARCHITECTURE, ENSEMBLE):
        raise ModelError(f"{spec.name}: expected architecture {ARCHITECTURE}, got {arch.get('type')!r}")
    try:
        config = ForaminalConfig(
            in_channels=int(arch["in_channels"]),
            stem=int(arch["stem"]),
            widths=tuple(int(w) for w in arch["widths"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{spec.name}: architecture does not match ForaminalConfig: {exc!r}") from exc
    if tuple(spec.labels) != OUTPUT_LABELS:
        raise ModelError(f"{spec.name}: card labels do not match the foraminal network's outputs")
    if arch["type"] == ENSEMBLE:
        return ForaminalEnsemble(config, members=int(arch.get("members", 2)))
    return ForaminalNet(config)


@dataclass(frozen=True)
class LoadedForaminal:
    spec: ModelSpec
    network: ForaminalNet | ForaminalEnsemble
    device: torch.device


_LOADED: VerifiedModelCache[ForaminalNet | ForaminalEnsemble, LoadedForaminal] = VerifiedModelCache(
    build_foraminal, LoadedForaminal, freeze=True
)


def load_foraminal(name: str, models_dir: Path | None = None, device: str | None = None) -> LoadedForaminal:
    """Verified (sha256 from the card), loaded once per process, eval mode, CPU unless CUDA."""
    return _LOADED.get(name, models_dir, device)


def clear_cache() -> None:
    _LOADED.clear()
