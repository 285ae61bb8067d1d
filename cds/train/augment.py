"""Batch augmentation on the model grid (torch, on the training device).

Anatomically plausible only: small rotations, scales and shifts, intensity changes that MR
scanners produce (gamma, contrast, bias field, noise, blur). No flips: the input contract fixes
head up and anterior left, and a flipped spine is not a spine the model will ever be shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class AugmentConfig:
    max_rotation_deg: float = 12.0
    scale_range: tuple[float, float] = (0.85, 1.2)
    max_anisotropy: float = 0.08
    max_shift: float = 0.08
    gamma_range: tuple[float, float] = (0.7, 1.5)
    noise_max: float = 0.05
    bias_max: float = 0.35
    blur_probability: float = 0.2


def spatial(
    images: torch.Tensor, labels: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random affine per sample; images bilinear, labels nearest. images (N,1,H,W), labels (N,H,W)."""
    n = images.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    angle = u(-cfg.max_rotation_deg, cfg.max_rotation_deg) * math.pi / 180
    scale = u(*cfg.scale_range)
    aniso = u(-cfg.max_anisotropy, cfg.max_anisotropy)
    sx, sy = 1 / (scale * (1 + aniso)), 1 / (scale * (1 - aniso))
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * sx, -sin * sx
    theta[:, 1, 0], theta[:, 1, 1] = sin * sy, cos * sy
    theta[:, 0, 2], theta[:, 1, 2] = u(-cfg.max_shift, cfg.max_shift), u(-cfg.max_shift, cfg.max_shift)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    img = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    lab = F.grid_sample(
        labels[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    return img, lab[:, 0].long()


def intensity(images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Gamma, contrast/brightness, smooth multiplicative bias field, blur and Gaussian noise."""
    n, _, h, w = images.shape
    shape = (n, 1, 1, 1)
    gamma = cfg.gamma_range[0] + (cfg.gamma_range[1] - cfg.gamma_range[0]) * torch.rand(shape, generator=gen)
    x = images.clamp(0, 1) ** gamma
    coarse = torch.randn(n, 1, 4, 4, generator=gen) * cfg.bias_max / 2
    bias = torch.exp(F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False))
    x = x * bias
    contrast = 0.8 + 0.4 * torch.rand(shape, generator=gen)
    brightness = 0.1 * (torch.rand(shape, generator=gen) - 0.5)
    x = x * contrast + brightness
    blur = torch.rand(n, generator=gen) < cfg.blur_probability
    if bool(blur.any()):
        k = torch.tensor([0.25, 0.5, 0.25])
        kernel = (k[:, None] * k[None, :])[None, None]
        x[blur] = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), kernel)
    sigma = cfg.noise_max * torch.rand(shape, generator=gen)
    x = x + sigma * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1.2)


def random_crop(
    images: torch.Tensor, labels: torch.Tensor, size: tuple[int, int], gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample crops of ``size``, centred near labelled anatomy two times out of three."""
    n, _, h, w = images.shape
    ch, cw = size
    out_i = images.new_empty(n, 1, ch, cw)
    out_l = labels.new_empty(n, ch, cw)
    for k in range(n):
        fg = torch.nonzero(labels[k] > 0)
        if len(fg) and float(torch.rand(1, generator=gen)) < 0.67:
            cy, cx = fg[int(torch.randint(len(fg), (1,), generator=gen))].tolist()
        else:
            cy, cx = int(torch.randint(h, (1,), generator=gen)), int(torch.randint(w, (1,), generator=gen))
        top = min(max(0, cy - ch // 2), h - ch)
        left = min(max(0, cx - cw // 2), w - cw)
        out_i[k] = images[k, :, top : top + ch, left : left + cw]
        out_l[k] = labels[k, top : top + ch, left : left + cw]
    return out_i, out_l
