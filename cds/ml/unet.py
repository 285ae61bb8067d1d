"""A compact 2D U-Net for sagittal lumbar spine segmentation.

Why this size: the product must segment a 15-slice sagittal stack on a shared 2-core CPU well
under a second, and be trainable there in tens of minutes. Four resolution levels with a base
width of 16 channels (about 1.9 M parameters) reach the published Dice range on SPIDER-like
data while staying CPU friendly. GroupNorm rather than BatchNorm because training batches are
small and inference runs on single stacks, where batch statistics would be noisy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class UNetConfig:
    """Architecture hyper-parameters; stored in the model card so weights and network always match."""

    in_channels: int = 1
    num_classes: int = 4
    base_channels: int = 16
    depth: int = 4
    groups: int = 8

    @property
    def divisor(self) -> int:
        """Input height and width must be multiples of this (one halving per level below the top)."""
        return 2 ** (self.depth - 1)


class _ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by GroupNorm and SiLU."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.GroupNorm(min(groups, cout), cout),
            nn.SiLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.GroupNorm(min(groups, cout), cout),
            nn.SiLU(inplace=True),
        )


class UNet2D(nn.Module):
    """Encoder-decoder with skip connections; outputs per-class logits at the input resolution."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or UNetConfig()
        c = self.config
        widths = [c.base_channels * 2**i for i in range(c.depth)]
        self.encoders = nn.ModuleList()
        cin = c.in_channels
        for w in widths:
            self.encoders.append(_ConvBlock(cin, w, c.groups))
            cin = w
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for w_skip, w_deep in zip(reversed(widths[:-1]), reversed(widths[1:]), strict=True):
            self.upsamples.append(nn.ConvTranspose2d(w_deep, w_skip, 2, stride=2))
            self.decoders.append(_ConvBlock(2 * w_skip, w_skip, c.groups))
        self.head = nn.Conv2d(widths[0], c.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.config.divisor or x.shape[-1] % self.config.divisor:
            raise ValueError(f"input size {tuple(x.shape[-2:])} not a multiple of {self.config.divisor}")
        skips: list[torch.Tensor] = []
        for i, enc in enumerate(self.encoders):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = enc(x)
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.upsamples, self.decoders, strict=True):
            x = up(x)
            x = dec(torch.cat([skips.pop(), x], dim=1))
        return self.head(x)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
