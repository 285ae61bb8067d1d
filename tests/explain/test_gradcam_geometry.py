"""Crop -> native slice -> patient mm: a bright spot cut into a crop by the pipeline's own
resampling and cropping comes back to its native pixel and its LPS position."""

from __future__ import annotations

import numpy as np
import pytest

from cds.explain.gradcam_geometry import peak_pixel, placement_for
from cds.pipeline import axial as ax
from cds.pipeline.classify import CROP_SIZE, _crop


def _oblique_affine(flip_cols: bool) -> np.ndarray:
    """Axial stack tilted 12 degrees about x, 0.7 mm pixels, 4 mm slices; optionally columns
    running to patient right (a flipped native grid)."""
    t = np.deg2rad(12.0)
    row_dir = np.array([0.0, np.cos(t), np.sin(t)])  # down one native row: posterior (+y), tilted
    col_dir = np.array([-1.0 if flip_cols else 1.0, 0.0, 0.0])
    normal = np.cross(col_dir, row_dir)
    a = np.eye(4)
    a[:3, 0] = normal * 4.0
    a[:3, 1] = row_dir * 0.7
    a[:3, 2] = col_dir * 0.7
    a[:3, 3] = [-60.0, -80.0, 30.0]
    return a


def _spot(shape: tuple[int, int], ij: tuple[float, float], sigma: float = 1.5) -> np.ndarray:
    ii, jj = np.indices(shape, dtype=np.float64)
    return np.exp(-((ii - ij[0]) ** 2 + (jj - ij[1]) ** 2) / (2 * sigma**2)).astype(np.float32)


@pytest.mark.parametrize("flip_cols", [False, True])
def test_spot_in_crop_maps_back_to_its_slice_pixel_and_mm(flip_cols: bool) -> None:
    affine = _oblique_affine(flip_cols)
    native_shape = (200, 180)
    spot_ij = (112.0, 64.0)
    k = 3
    frame = ax.canonical_frame(affine, native_shape)
    canonical = ax.to_canonical(_spot(native_shape, spot_ij), frame)
    centre = (84, 77)  # the crop is not centred on the grid, as for a real sac
    crop = _crop(canonical[None], centre, CROP_SIZE)[0]
    placement = placement_for(centre, CROP_SIZE, frame, k, affine, "1.2.3")

    # The spot's pixel in the crop (sub-pixel centroid) maps to its native pixel.
    w = np.where(crop > 0.5 * crop.max(), crop, 0.0)
    ab = np.array([(np.indices(crop.shape)[d] * w).sum() / w.sum() for d in (0, 1)])
    np.testing.assert_allclose(placement.crop_to_native(ab)[0], spot_ij, atol=0.3)
    np.testing.assert_allclose(placement.native_to_crop(placement.crop_to_native(ab))[0], ab, atol=1e-9)

    # A heatmap equal to the crop comes back onto the native grid peaking at the spot.
    native_map = placement.crop_map_to_native(crop / crop.max())
    assert native_map.shape == native_shape
    peak = peak_pixel(native_map)
    assert peak is not None
    assert abs(peak[0] - spot_ij[0]) <= 1 and abs(peak[1] - spot_ij[1]) <= 1

    # ... at the right place in the patient: the affine applied to (k, i, j).
    mm = placement.native_to_patient(np.asarray([spot_ij]))[0]
    np.testing.assert_allclose(mm, (affine @ np.array([k, *spot_ij, 1.0]))[:3], atol=1e-9)

    # Crop columns run to patient left (+x) whatever the native orientation.
    left = placement.native_to_patient(placement.crop_to_native(np.array([[48.0, 90.0]])))[0]
    right = placement.native_to_patient(placement.crop_to_native(np.array([[48.0, 5.0]])))[0]
    assert left[0] > right[0] + 50.0


def test_outside_the_crop_is_zero_and_empty_map_has_no_peak() -> None:
    affine = _oblique_affine(False)
    frame = ax.canonical_frame(affine, (200, 180))
    placement = placement_for((80, 80), CROP_SIZE, frame, 0, affine, "1.2.3")
    native = placement.crop_map_to_native(np.ones((CROP_SIZE, CROP_SIZE), dtype=np.float32))
    assert native[0, 0] == 0.0 and native.max() == pytest.approx(1.0)
    assert peak_pixel(np.zeros((4, 4), dtype=np.float32)) is None
