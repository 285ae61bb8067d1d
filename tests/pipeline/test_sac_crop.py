"""Fine sac crops: geometry against the canonical frame, intensity window, centring."""

from __future__ import annotations

import numpy as np

from cds.pipeline import axial as ax
from cds.pipeline import sac_crop as sc


def _axial_affine(pixel_mm: float) -> np.ndarray:
    """An axial stack: native rows run anterior->posterior (+y), columns right->left (+x)."""
    a = np.eye(4)
    a[:3, 0] = [0.0, 0.0, 4.0]  # slice step (k)
    a[:3, 1] = [0.0, pixel_mm, 0.0]  # one native row
    a[:3, 2] = [pixel_mm, 0.0, 0.0]  # one native column
    return a


def test_crop_and_canonical_coordinates_round_trip() -> None:
    crop = sc.SacCrop((70.0, 90.0))
    ab = np.array([[0.0, 0.0], [10.0, 70.0], [79.0, 79.0]])
    assert np.allclose(crop.from_canonical(crop.to_canonical(ab)), ab)
    centre = np.array([[(sc.CROP_SIZE - 1) / 2] * 2])
    assert np.allclose(crop.to_canonical(centre), [[70.0, 90.0]])
    # One crop pixel is half a canonical pixel.
    assert crop.scale == sc.CROP_SPACING_MM / ax.CANONICAL_SPACING_MM == 0.5


def test_a_disk_keeps_its_area_and_lands_where_it_is() -> None:
    pixel = 0.9
    n = 64  # the disk must be more than 1 % of the slice to set the window's top
    yy, xx = np.mgrid[0:n, 0:n]
    cy, cx, r_mm = 30.0, 35.0, 7.0
    image = np.where((yy - cy) ** 2 + (xx - cx) ** 2 <= (r_mm / pixel) ** 2, 1000.0, 200.0)
    frame = ax.canonical_frame(_axial_affine(pixel), (n, n))
    centre_uv = frame.to_canonical(np.array([[cy, cx]]))[0]
    crop = sc.SacCrop((float(centre_uv[0]), float(centre_uv[1])))
    x = sc.normalised_crop(image, crop, frame)
    assert x.shape == (sc.CROP_SIZE, sc.CROP_SIZE) and x.min() >= 0.0 and x.max() <= 1.5
    bright = x > 0.5
    area = bright.sum() * sc.CROP_SPACING_MM**2
    assert abs(area - np.pi * r_mm**2) < 0.05 * np.pi * r_mm**2
    rows, cols = np.nonzero(bright)
    assert abs(rows.mean() - (sc.CROP_SIZE - 1) / 2) < 1.0 and abs(cols.mean() - (sc.CROP_SIZE - 1) / 2) < 1.0


def test_intensity_window_ignores_padding_and_empty_slices() -> None:
    image = np.zeros((64, 64), np.float32)
    image[16:48, 16:48] = np.linspace(100, 300, 32 * 32).reshape(32, 32)
    lo, hi = sc.intensity_window(image)
    assert 100 <= lo < 110 and 290 < hi <= 300
    assert sc.intensity_window(np.zeros((64, 64))) == (0.0, 0.0)


def test_sac_centre_is_given_in_canonical_pixels() -> None:
    labels = np.zeros((320, 320), bool)
    labels[100:110, 200:220] = True  # measurement grid (2x canonical)
    u, v = sc.sac_centre_uv(labels) or (0.0, 0.0)
    assert np.isclose(u, (104.5 + 0.5) / 2 - 0.5) and np.isclose(v, (209.5 + 0.5) / 2 - 0.5)
    assert sc.sac_centre_uv(np.zeros((4, 4), bool)) is None
