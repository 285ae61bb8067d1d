"""The axial trainer's sac-boundary loss: the band is where DSCA errors come from."""

from __future__ import annotations

import torch

from cds.pipeline import axial as ax
from cds.train.axial_seg import boundary_weighted_loss, sac_boundary_band
from cds.train.sagittal import dice_ce_loss


def _labels() -> torch.Tensor:
    labels = torch.zeros(1, 16, 16, dtype=torch.int64)
    labels[0, 5:11, 5:11] = ax.SAC
    return labels


def test_band_is_the_ring_around_the_sac_edge() -> None:
    band = sac_boundary_band(_labels())[0]
    assert bool(band[5, 5]) and bool(band[4, 8]) and bool(band[10, 8]) and bool(band[11, 8])
    assert not bool(band[8, 8])  # sac interior
    assert not bool(band[0, 0])  # far background
    assert int(band.sum()) == 8 * 8 - 4 * 4  # 1-pixel ring inside + outside a 6x6 square


def test_zero_weight_is_the_shared_loss_and_weight_penalises_edge_errors() -> None:
    labels = _labels()
    assert boundary_weighted_loss(0.0) is dice_ce_loss
    good = torch.full((1, len(ax.AXIAL_CLASSES), 16, 16), -4.0)
    good[:, 0] = 4.0
    good[0, 0, 5:11, 5:11] = -4.0
    good[0, ax.SAC, 5:11, 5:11] = 4.0
    sloppy = good.clone()  # sac grown by one pixel: wrong only on the outer ring
    sloppy[0, 0, 4:12, 4:12] = -4.0
    sloppy[0, ax.SAC, 4:12, 4:12] = 4.0
    weighted = boundary_weighted_loss(2.0)
    gap_plain = float(dice_ce_loss(sloppy, labels) - dice_ce_loss(good, labels))
    gap_weighted = float(weighted(sloppy, labels) - weighted(good, labels))
    assert gap_plain > 0
    assert gap_weighted > 3 * gap_plain
