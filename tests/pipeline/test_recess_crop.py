"""Lateral recess crops: slice choice, placement from the dural sac, mirroring of the right side."""

from __future__ import annotations

import numpy as np
import pytest

from cds.domain import Side
from cds.pipeline import axial as ax
from cds.pipeline import recess_crop as rc


def test_rows_nearest_the_disc_centre_in_caudal_to_cranial_order() -> None:
    assert rc.choose_rows(5, [-8.0, -4.0, 0.5, 4.0, 8.0]) == (1, 2, 3)
    assert rc.choose_rows(4, [3.0, -1.0, 7.0, -6.0]) == (3, 1, 0)
    assert rc.choose_rows(2, [-1.0, 2.5]) == (0, 0, 1)  # the nearest repeated, order kept
    assert rc.choose_rows(1, None) == (0, 0, 0)
    assert rc.choose_rows(5, None) == (1, 2, 3)
    with pytest.raises(ValueError):
        rc.choose_rows(0, None)


def _level(n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    size = ax.CANONICAL_SIZE
    images = np.zeros((n, size, size), np.float32)
    probs = np.zeros((n, len(ax.AXIAL_CLASSES), size, size), np.float32)
    probs[:, ax.SAC, 90:100, 75:85] = 1.0  # sac centre (94.5, 79.5)
    # a marker 10 mm lateral to the left (columns run patient left) and one to the right
    images[:, 94:96, 79 + 12 : 79 + 14] = 1.0
    images[:, 94:96, 79 - 13 : 79 - 11] = 0.5
    return images, probs


def test_crops_start_anterior_of_the_sac_and_mirror_the_right_side() -> None:
    images, probs = _level()
    assert rc.sac_centre(probs, (0, 1, 2)) == pytest.approx((94.5, 79.5))
    crops = rc.recess_crops(images, probs, None)
    left, right = crops[Side.LEFT], crops[Side.RIGHT]
    assert left.array.shape == right.array.shape == (rc.IN_CHANNELS, rc.SIZE, rc.SIZE)
    # both markers (10 mm lateral) land on the same crop column: the right side is mirrored
    lr, lc = np.unravel_index(np.argmax(left.array[0]), left.array[0].shape)
    rr, rcol = np.unravel_index(np.argmax(right.array[0] > 0.25), right.array[0].shape)
    assert abs(lc - rcol) <= 2 and abs(lr - rr) <= 1
    expected_col = (10.0 + rc.MEDIAL_MM) / rc.SPACING_MM
    assert abs(lc - expected_col) <= 4
    expected_row = rc.ANTERIOR_MM / rc.SPACING_MM
    assert abs(lr - expected_row) <= 4
    # coordinates say where each crop pixel lies on the canonical grid
    assert left.coords[:, 0, 0] == pytest.approx((94.5 - rc.ANTERIOR_MM / 0.8, 79.5 - rc.MEDIAL_MM / 0.8))
    assert right.coords[1, 0, 1] < right.coords[1, 0, 0]  # right crop columns run towards patient right


def test_channels_are_t2_then_probabilities_per_slice() -> None:
    images, probs = _level()
    probs[2, ax.FACET] = 0.25
    probs[2, ax.POSTERIOR] = 0.5
    crop = rc.recess_crops(images, probs, [-3.0, 0.0, 3.0])[Side.LEFT].array
    last = 2 * rc.CHANNELS_PER_SLICE
    assert crop[last + 3, 10, 10] == pytest.approx(0.75)  # facet + flavum + posterior of slice 2
    assert crop[3, 10, 10] == pytest.approx(0.0)


def test_margin_widens_the_crop_around_the_same_window() -> None:
    images, probs = _level()
    plain = rc.recess_crops(images, probs, None)[Side.LEFT].array
    wide = rc.recess_crops(images, probs, None, margin=6)[Side.LEFT].array
    assert wide.shape[-1] == rc.SIZE + 12
    assert np.allclose(wide[:, 6:-6, 6:-6], plain, atol=1e-6)
