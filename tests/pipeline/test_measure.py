"""Measurements on hand-made masks whose areas and distances are known analytically."""

from __future__ import annotations

import numpy as np
import pytest

from cds.domain import MeasurementName, Side
from cds.pipeline import measure


def ellipse(
    shape: tuple[int, int],
    centre_mm: tuple[float, float],
    semi_mm: tuple[float, float],
    spacing: tuple[float, float],
    angle_rad: float = 0.0,
) -> np.ndarray:
    rows, cols = np.indices(shape, dtype=np.float64)
    y = rows * spacing[0] - centre_mm[0]
    x = cols * spacing[1] - centre_mm[1]
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    u = c * y + s * x
    v = -s * y + c * x
    return (u / semi_mm[0]) ** 2 + (v / semi_mm[1]) ** 2 <= 1.0


def rect(shape: tuple[int, int], r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


SPACING = (0.4, 0.5)  # anisotropic on purpose


def test_mask_area_counts_pixels_times_pixel_area() -> None:
    m = rect((50, 50), 10, 20, 5, 25)  # 10 x 20 pixels
    assert measure.mask_area_mm2(m, SPACING) == pytest.approx(200 * 0.2)


def test_dsca_of_ellipse_matches_pi_ab_and_picks_narrowest_slice() -> None:
    shape = (160, 160)
    big = ellipse(shape, (32.0, 40.0), (8.0, 7.0), SPACING)
    small = ellipse(shape, (32.0, 40.0), (6.0, 5.0), SPACING)
    stack = np.stack([big, small, big])
    m = measure.dural_sac_area(stack, SPACING)
    assert m.name is MeasurementName.DSCA_MM2
    assert m.provenance.slice_index == 1
    assert m.value == pytest.approx(np.pi * 6.0 * 5.0, rel=0.02)
    assert m.reliable and not m.issues


def test_dsca_restricted_to_level_slices() -> None:
    shape = (160, 160)
    big = ellipse(shape, (32.0, 40.0), (8.0, 7.0), SPACING)
    small = ellipse(shape, (32.0, 40.0), (4.0, 4.0), SPACING)
    stack = np.stack([small, big, big])
    m = measure.dural_sac_area(stack, SPACING, slice_indices=[1, 2])
    assert m.provenance.slice_index in (1, 2)
    assert m.value == pytest.approx(np.pi * 56.0, rel=0.02)


def test_dsca_flags_fragmented_and_missing_sac() -> None:
    shape = (160, 160)
    a = ellipse(shape, (20.0, 20.0), (4.0, 4.0), SPACING)
    b = ellipse(shape, (40.0, 50.0), (4.0, 4.0), SPACING)
    empty = np.zeros(shape, dtype=bool)
    m = measure.dural_sac_area(np.stack([a | b, empty]), SPACING)
    assert not m.reliable
    assert any("fragmented" in i for i in m.issues)
    assert any("missing on 1 of 2" in i for i in m.issues)
    none = measure.dural_sac_area(np.stack([empty]), SPACING)
    assert not none.reliable and none.value == 0.0


def test_dsca_flags_tiny_sac() -> None:
    tiny = ellipse((100, 100), (20.0, 20.0), (1.0, 1.0), SPACING)
    m = measure.dural_sac_area(tiny[None], SPACING)
    assert not m.reliable and any("too small" in i for i in m.issues)


@pytest.mark.parametrize("angle_deg", [0.0, 20.0, -35.0])
def test_ap_diameter_along_rotated_anatomical_axis(angle_deg: float) -> None:
    """A sac ellipse rotated with the patient: the AP diameter is its full axis (2 x 9 mm)."""
    shape = (200, 200)
    ang = np.deg2rad(angle_deg)
    ap_axis = np.array([np.cos(ang), np.sin(ang)])  # the ellipse's u axis in (row, col) mm
    sac_centre = np.array([45.0, 50.0])
    sac = ellipse(shape, tuple(sac_centre), (9.0, 6.0), SPACING, angle_rad=ang)
    disc_centre = sac_centre - 25.0 * ap_axis
    disc = ellipse(shape, tuple(disc_centre), (10.0, 18.0), SPACING, angle_rad=ang)
    direction, anatomical = measure.posterior_direction(disc, sac, SPACING, fallback=(1.0, 0.0))
    assert anatomical
    assert np.dot(direction, ap_axis) == pytest.approx(1.0, abs=1e-3)
    m = measure.canal_ap_diameter(sac, SPACING, direction, slice_index=3)
    assert m.value == pytest.approx(18.0, abs=0.5)
    assert m.provenance.slice_index == 3 and len(m.provenance.points_px) == 2
    (r0, c0), (r1, c1) = m.provenance.points_px
    assert np.hypot((r1 - r0) * SPACING[0], (c1 - c0) * SPACING[1]) == pytest.approx(m.value, abs=0.1)


def test_posterior_direction_falls_back_without_disc() -> None:
    sac = ellipse((100, 100), (20.0, 20.0), (5.0, 5.0), SPACING)
    direction, anatomical = measure.posterior_direction(np.zeros_like(sac), sac, SPACING, (0.0, 2.0))
    assert not anatomical and np.allclose(direction, (0.0, 1.0))


def test_chord_ignores_separate_blob_on_the_same_line() -> None:
    m = rect((100, 100), 10, 20, 40, 60) | rect((100, 100), 40, 50, 40, 60)
    length, _, _ = measure.chord_through(m, (1.0, 1.0), np.array([15.0, 50.0]), (1.0, 0.0))
    assert length == pytest.approx(10.0, abs=0.1)


def _recess_scene(gap_left_px: int, gap_right_px: int) -> tuple[np.ndarray, ...]:
    """Rows grow posterior, columns grow toward patient left. Disc in front (rows 20-40),
    facets behind it on each side with a chosen gap; sac in the middle behind the disc."""
    shape = (100, 120)
    disc = rect(shape, 20, 40, 20, 100)
    sac = rect(shape, 42, 60, 50, 70)
    left_facet = rect(shape, 40 + gap_left_px, 70, 80, 95)
    right_facet = rect(shape, 40 + gap_right_px, 70, 25, 40)
    return disc, left_facet | right_facet, sac


def test_lateral_recess_depth_per_side_known_gaps() -> None:
    spacing = (0.5, 0.8)
    disc, facets, sac = _recess_scene(gap_left_px=8, gap_right_px=3)
    left = (0.0, 1.0)  # patient left = increasing column
    m_left = measure.lateral_recess_depth(disc, facets, sac, spacing, left, Side.LEFT, 7)
    m_right = measure.lateral_recess_depth(disc, facets, sac, spacing, left, Side.RIGHT, 7)
    assert m_left.side is Side.LEFT and m_right.side is Side.RIGHT
    assert m_left.value == pytest.approx(8 * 0.5, abs=1e-6)
    assert m_right.value == pytest.approx(3 * 0.5, abs=1e-6)
    assert m_left.reliable and m_right.reliable
    (r0, _c0), (r1, _c1) = m_left.provenance.points_px
    assert r0 == 39 and r1 == 48  # last disc row and first facet row


def test_lateral_recess_depth_side_follows_left_direction() -> None:
    disc, facets, sac = _recess_scene(gap_left_px=8, gap_right_px=3)
    flipped = measure.lateral_recess_depth(disc, facets, sac, (1.0, 1.0), (0.0, -1.0), Side.LEFT, 0)
    assert flipped.value == pytest.approx(3.0)


def test_lateral_recess_depth_missing_facet_is_unreliable() -> None:
    disc, _facets, sac = _recess_scene(4, 4)
    m = measure.lateral_recess_depth(disc, np.zeros_like(disc), sac, (1.0, 1.0), (0.0, 1.0), Side.LEFT, 0)
    assert not m.reliable and "facet" in m.issues[0]


def test_narrowest_prefers_reliable_values() -> None:
    prov = measure.Provenance(measure.Plane.AXIAL, 0, "test")
    good = measure.Measurement(MeasurementName.DSCA_MM2, 80.0, prov)
    bad = measure.Measurement(MeasurementName.DSCA_MM2, 0.0, prov, reliable=False, issues=("x",))
    assert measure.narrowest([bad, good]) is good
    assert measure.narrowest([bad]) is bad


@pytest.mark.parametrize("tilt_deg", [0.0, 15.0])
def test_disc_height_along_minor_axis(tilt_deg: float) -> None:
    shape = (200, 200)
    disc = ellipse(shape, (40.0, 45.0), (5.0, 20.0), SPACING, angle_rad=np.deg2rad(tilt_deg))
    m = measure.disc_height(disc, SPACING, slice_index=7)
    assert m.name is MeasurementName.DISC_HEIGHT_MM
    assert m.value == pytest.approx(10.0, abs=0.5)
    assert m.reliable


def test_foraminal_area_ratio_of_known_areas() -> None:
    ref = rect((100, 100), 10, 50, 20, 40)  # 800 px
    free = rect((100, 100), 10, 30, 20, 40)  # 400 px
    m = measure.foraminal_area_ratio(free, ref, (0.5, 0.5), Side.RIGHT, 4, "test outline")
    assert m.value == pytest.approx(0.5)
    assert m.side is Side.RIGHT and m.reliable
    empty = measure.foraminal_area_ratio(free, np.zeros_like(ref), (0.5, 0.5), Side.LEFT, 4, "x")
    assert not empty.reliable
