"""refine_sac: which slices are refined, and DSCA / AP measured on a fine sac probability map."""

from __future__ import annotations

import numpy as np
import pytest

from cds.domain import Condition, Level, MeasurementName
from cds.pipeline import axial as ax
from cds.pipeline import measure as ms
from cds.pipeline import quick_read as qr
from cds.pipeline import sac_crop as sc
from cds.pipeline import sac_refine as sr


def _soft_disk(radius_mm: float, centre_px: tuple[float, float] | None = None) -> np.ndarray:
    """A disk's coverage of each 0.4 mm crop pixel (supersampled), i.e. an ideal soft map."""
    s = sc.CROP_SIZE
    cy, cx = centre_px or ((s - 1) / 2, (s - 1) / 2)
    k = 8
    yy, xx = np.mgrid[0 : s * k, 0 : s * k]
    yy = (yy + 0.5) / k - 0.5
    xx = (xx + 0.5) / k - 0.5
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= (radius_mm / sc.CROP_SPACING_MM) ** 2
    return inside.reshape(s, k, s, k).mean(axis=(1, 3)).astype(np.float32)


def test_soft_area_and_chord_are_sub_pixel() -> None:
    r = 6.3
    prob = _soft_disk(r)
    sp = (sc.CROP_SPACING_MM, sc.CROP_SPACING_MM)
    assert ms.soft_area_mm2(prob, sp) == pytest.approx(np.pi * r * r, rel=0.005)
    centre = np.array([(sc.CROP_SIZE - 1) / 2 * sc.CROP_SPACING_MM] * 2)
    length, start, end = ms.soft_chord_mm(prob, sp, centre, (1.0, 0.0))
    assert length == pytest.approx(2 * r, abs=0.1)
    half = np.array([r, 0.0])
    assert np.allclose(start, centre - half, atol=0.1) and np.allclose(end, centre + half, atol=0.1)
    # A thresholded count of the same map is off by more than the soft measures.
    assert abs((prob > 0.5).sum() * 0.16 - np.pi * r * r) > abs(ms.soft_area_mm2(prob, sp) - np.pi * r * r)


def test_soft_chord_of_an_empty_map_is_zero() -> None:
    length, start, end = ms.soft_chord_mm(np.zeros((10, 10)), (0.4, 0.4), np.array([2.0, 2.0]), (1, 0))
    assert length == 0.0 and np.allclose(start, end)


def test_only_slices_near_the_narrowest_are_refined() -> None:
    sac = np.zeros((4, 20, 20), bool)
    sac[0, :10, :10] = True  # 100 px
    sac[1, :9, :10] = True  # 90 px: the narrowest
    sac[2, :11, :10] = True  # 110 px: within 1.25 x 90
    sac[3, :12, :12] = True  # 144 px: not
    assert sr.rows_to_refine(sac) == (0, 1, 2)
    assert sr.rows_to_refine(np.zeros((3, 5, 5), bool)) == ()


def test_grid_and_crop_coordinates_are_inverse() -> None:
    crop = sc.SacCrop((80.0, 75.5))
    pts = np.array([[3.0, 4.0], [79.0, 0.0]])
    assert np.allclose(sr.grid_to_crop(sr.crop_to_grid(pts, crop), crop), pts)
    # The crop and the measurement grid share the 0.4 mm spacing: one crop pixel = one grid pixel.
    d = sr.crop_to_grid(np.array([[1.0, 0.0]]), crop) - sr.crop_to_grid(np.array([[0.0, 0.0]]), crop)
    assert np.allclose(d, [[1.0, 0.0]])


def _segmentation(n: int = 3) -> ax.AxialSegmentation:
    """A level of n slices on the measurement grid: a disc in front of a 40 x 40 px sac."""
    h = ax.CANONICAL_SIZE * ax.MEASURE_UPSAMPLE
    labels = np.zeros((n, h, h), np.uint8)
    labels[:, 100:140, 140:180] = ax.SAC
    labels[:, 40:96, 120:200] = ax.DISC
    frame = ax.canonical_frame(np.diag([0.8, 0.8, 4.0, 1.0])[[2, 1, 0, 3]], (160, 160))
    return ax.AxialSegmentation(
        images=np.zeros((n, 160, 160), np.float32),
        probs=np.zeros(0, np.float32),
        labels=labels,
        slice_indices=tuple(range(5, 5 + n)),
        frames=tuple(frame for _ in range(n)),
    )


def test_measure_level_takes_dsca_and_ap_from_the_fine_map() -> None:
    seg = _segmentation()
    sac = seg.mask(ax.SAC)
    rows = (0, 2)
    crops = tuple(sc.SacCrop(sc.sac_centre_uv(sac[r]) or (0.0, 0.0)) for r in rows)
    probs = np.stack([_soft_disk(6.0), _soft_disk(5.0)])  # row 2 is the narrowest
    fine = sr.FineSac(rows, crops, probs)
    got = qr.measure_level(seg, None, Level.L4_L5, None, fine).by_condition[Condition.SPINAL_CANAL]
    by = {m.name: m for m in got}
    dsca, ap = by[MeasurementName.DSCA_MM2], by[MeasurementName.AP_DIAMETER_MM]
    assert dsca.value == pytest.approx(np.pi * 25.0, rel=0.01)
    assert "sac_fine" in dsca.provenance.method and dsca.provenance.slice_index == seg.slice_indices[2]
    # The line through the disc's centre column (sac and disc share it) crosses the disk's middle.
    assert ap.value == pytest.approx(10.0, abs=0.15) and ap.reliable
    # Without the fine map: axial_seg's 40 px sac (0.4 mm pixels) = 16 mm AP, 256 mm2.
    coarse = qr.measure_level(seg, None, Level.L4_L5, None).by_condition[Condition.SPINAL_CANAL]
    assert {m.name: m.value for m in coarse}[MeasurementName.DSCA_MM2] == pytest.approx(256.0)


def test_a_level_without_refined_rows_keeps_the_coarse_measurements() -> None:
    seg = _segmentation()
    empty = sr.FineSac((), (), np.zeros((0, sc.CROP_SIZE, sc.CROP_SIZE), np.float32))
    got = qr.measure_level(seg, None, Level.L4_L5, None, empty).by_condition[Condition.SPINAL_CANAL]
    assert {m.name: m.value for m in got}[MeasurementName.DSCA_MM2] == pytest.approx(256.0)


def test_fine_inputs_centre_each_crop_on_the_coarse_sac() -> None:
    seg = _segmentation(2)
    volume = np.zeros((8, 160, 160), np.float32)
    volume[:, 50:70, 70:90] = 1000.0  # the sac in native pixels (frame: native == canonical here)
    volume[:, 20:48, 60:100] = 300.0
    _, images = sr.fine_inputs(volume, seg, (0, 1))
    assert images.shape == (2, sc.CROP_SIZE, sc.CROP_SIZE)
    bright = images[0] > 0.9
    rows, cols = np.nonzero(bright)
    assert abs(rows.mean() - (sc.CROP_SIZE - 1) / 2) < 2 and abs(cols.mean() - (sc.CROP_SIZE - 1) / 2) < 2


def test_fine_sac_checks_its_lengths() -> None:
    with pytest.raises(ValueError):
        sr.FineSac((0, 1), (sc.SacCrop((1.0, 1.0)),), np.zeros((2, 4, 4), np.float32))


def test_grid_mask_draws_the_fine_sac_on_the_measurement_grid_with_the_dsca_as_its_area() -> None:
    """The viewer's DSCA outline on a refined slice: the fine map carried onto the 0.4 mm grid."""
    seg = _segmentation()
    sac = seg.mask(ax.SAC)
    crop = sc.SacCrop(sc.sac_centre_uv(sac[1]) or (0.0, 0.0))
    fine = sr.FineSac((1,), (crop,), _soft_disk(6.0)[None])
    mask = sr.grid_mask(fine, 0, sac.shape[1:])
    assert mask.shape == sac.shape[1:]
    assert mask.sum() * 0.16 == pytest.approx(np.pi * 36.0, rel=0.03)
    # centred where the crop is: the mask's centre of mass maps to the crop's centre
    rr, cc = np.nonzero(mask)
    centre_crop = sr.grid_to_crop(np.array([[rr.mean(), cc.mean()]]), crop)[0]
    assert np.allclose(centre_crop, [(sc.CROP_SIZE - 1) / 2] * 2, atol=0.5)
