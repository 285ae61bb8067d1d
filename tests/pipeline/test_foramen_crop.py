"""Parasagittal foramen crops: geometry in patient space, side symmetry, per-study scaling."""

from __future__ import annotations

import numpy as np

from cds.dicom.selection import SeriesKind
from cds.dicom.volume import Volume
from cds.domain import Level, Side
from cds.pipeline import foramen_crop as fc


def sagittal(array: np.ndarray) -> Volume:
    """Slices 2 mm apart toward patient left, rows toward the feet, columns toward posterior."""
    a = np.eye(4)
    a[:3, 0] = (2.0, 0.0, 0.0)
    a[:3, 1] = (0.0, 0.0, -1.0)
    a[:3, 2] = (0.0, 1.0, 0.0)
    a[:3, 3] = (-32.0, -60.0, 60.0)  # slice 16 is x = 0 (the midline)
    return Volume(array.astype(np.float32), a, (2.0, 1.0, 1.0), "1.2.3", "SAG T2", SeriesKind.SAGITTAL_T2)


def test_frame_axes_point_left_cranial_posterior_and_follow_the_disc_tilt() -> None:
    vol = sagittal(np.zeros((33, 120, 120)))
    tilt = np.deg2rad(20.0)
    normal = np.array([0.0, -np.sin(tilt), np.cos(tilt)])  # cranial, leaning anterior
    frame = fc.frame_for(vol, np.zeros(3), normal)
    assert np.allclose(frame.lateral_left, (1.0, 0.0, 0.0))
    assert np.allclose(frame.cranial, normal)
    assert frame.posterior[1] > 0.9 and abs(float(frame.posterior @ frame.cranial)) < 1e-9


def test_a_bright_spot_in_the_left_foramen_lands_where_the_frame_says() -> None:
    array = np.zeros((33, 120, 120), np.float32)
    # Patient point: 17 mm left (between the 16.5 mm channel's slices), 10 mm cranial, 25 mm posterior.
    # x = -32 + 2k -> k = 24.5; z = 60 - row -> row 50; y = -60 + col -> col 85.
    array[24:26, 49:52, 84:87] = 100.0
    vol = sagittal(array)
    centre = np.array([0.0, 0.0, 0.0])
    crops = fc.foramen_crops(vol, {Level.L4_L5: centre}, {Level.L4_L5: np.array([0.0, 0.0, 1.0])})
    left, right = crops[(Level.L4_L5, Side.LEFT)], crops[(Level.L4_L5, Side.RIGHT)]
    assert left.shape == (fc.IN_CHANNELS, fc.SIZE, fc.SIZE)
    ch = int(np.argmax(left.reshape(fc.IN_CHANNELS, -1).max(axis=1)))
    assert fc.LATERAL_OFFSETS_MM[ch] == 16.5
    rows, cols = np.indices(left[ch].shape)
    w = left[ch] / left[ch].sum()
    r, c = float((rows * w).sum()), float((cols * w).sum())
    assert abs((fc.CRANIAL_TOP_MM - r * fc.SPACING_MM) - 10.0) <= 1.0
    assert abs((fc.POSTERIOR_START_MM + c * fc.SPACING_MM) - 25.0) <= 1.0
    assert float(right.max()) < float(left.max())  # the spot is on the left only


def test_mirrored_anatomy_gives_the_same_crop_on_both_sides() -> None:
    rng = np.random.default_rng(0)
    half = rng.random((16, 120, 120)).astype(np.float32)
    array = np.concatenate([half[::-1], rng.random((1, 120, 120)).astype(np.float32), half])
    vol = sagittal(array)
    crops = fc.foramen_crops(vol, {Level.L3_L4: np.zeros(3)}, {Level.L3_L4: np.array([0.0, 0.0, 1.0])})
    assert np.allclose(crops[(Level.L3_L4, Side.LEFT)], crops[(Level.L3_L4, Side.RIGHT)], atol=1e-5)


def test_normalise_scales_the_study_together_and_clips() -> None:
    crops = {
        (Level.L1_L2, Side.LEFT): np.linspace(0, 100, 7 * 4 * 4, dtype=np.float32).reshape(7, 4, 4),
        (Level.L1_L2, Side.RIGHT): np.full((7, 4, 4), 1000.0, np.float32),
    }
    out = fc.normalise(crops)
    assert float(out[(Level.L1_L2, Side.RIGHT)].max()) <= 1.5
    assert float(out[(Level.L1_L2, Side.LEFT)].min()) == 0.0
    assert fc.normalise({}) == {}
