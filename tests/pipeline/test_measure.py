"""Measurements on hand-made masks whose areas and distances are known analytically."""

from __future__ import annotations

import numpy as np
import pytest

from cds.dicom.volume import SeriesKind, Volume
from cds.domain import MeasurementName, Side
from cds.pipeline import measure
from cds.pipeline.axial import AxialSegmentation


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


@pytest.mark.parametrize("angle_deg", [0.0, 15.0, -20.0])
def test_ap_diameter_along_rotated_anatomical_axis(angle_deg: float) -> None:
    """A spine rotated in the slice: the AP diameter is the sac's full axis (2 x 9 mm)."""
    shape = (200, 200)
    ang = np.deg2rad(angle_deg)
    ap_axis = np.array([np.cos(ang), np.sin(ang)])  # the ellipses' u axis in (row, col) mm
    sac_centre = np.array([45.0, 50.0])
    sac = ellipse(shape, tuple(sac_centre), (9.0, 6.0), SPACING, angle_rad=ang)
    disc_centre = sac_centre - 25.0 * ap_axis
    disc = ellipse(shape, tuple(disc_centre), (10.0, 18.0), SPACING, angle_rad=ang)
    axes = measure.axial_axes(disc, sac, SPACING, posterior=(1.0, 0.0), left=(0.0, 1.0))
    assert axes.anatomical
    assert np.dot(axes.posterior, ap_axis) == pytest.approx(1.0, abs=1e-3)
    assert np.dot(axes.left, (0.0, 1.0)) > 0.8
    m = measure.canal_ap_diameter(sac, SPACING, axes, slice_index=3)
    assert m.value == pytest.approx(18.0, abs=0.5)
    assert m.provenance.slice_index == 3 and len(m.provenance.points_px) == 2
    (r0, c0), (r1, c1) = m.provenance.points_px
    assert np.hypot((r1 - r0) * SPACING[0], (c1 - c0) * SPACING[1]) == pytest.approx(m.value, abs=0.1)


def test_axes_fall_back_to_scanner_axes_without_disc_or_when_skewed() -> None:
    sac = ellipse((100, 100), (20.0, 20.0), (5.0, 5.0), SPACING)
    axes = measure.axial_axes(np.zeros_like(sac), sac, SPACING, (2.0, 0.0), (0.0, 1.0))
    assert not axes.anatomical and np.allclose(axes.posterior, (1.0, 0.0))
    skewed = ellipse((200, 200), (30.0, 40.0), (10.0, 18.0), SPACING, angle_rad=np.deg2rad(50))
    axes = measure.axial_axes(skewed, sac, SPACING, (1.0, 0.0), (0.0, 1.0))
    assert not axes.anatomical and np.allclose(axes.posterior, (1.0, 0.0))


def test_ap_diameter_is_taken_on_the_midline_not_the_sac_centroid() -> None:
    """A sac pushed to one side (paracentral protrusion): the AP line stays on the spine's midline."""
    spacing = (0.5, 0.5)
    disc = rect((120, 120), 10, 40, 20, 100)  # centre col 59.5
    sac = rect((120, 120), 45, 65, 50, 90)  # 20 rows deep (10 mm) at the midline column
    sac[45:55, 50:65] = False  # shallower (5 mm) on the midline
    axes = measure.axial_axes(disc, sac, spacing, (1.0, 0.0), (0.0, 1.0))
    m = measure.canal_ap_diameter(sac, spacing, axes, 0)
    assert m.value == pytest.approx(5.0, abs=0.1)


def test_ap_diameter_edges_at_the_calibrated_sac_probability() -> None:
    """With the network's sac probability, the chord's edges sit where the probability crosses
    AP_EDGE_PROBABILITY: a rim of probability 0.4 around the mask (above the 0.3 edge) lengthens the
    chord by the rim on both ends; a rim below the edge does not; the area mask is untouched."""
    spacing = (0.5, 0.5)
    disc = rect((120, 120), 10, 40, 20, 100)
    sac = rect((120, 120), 45, 65, 50, 70)  # 20 rows = 10 mm deep on the midline (col 59.5)
    axes = measure.axial_axes(disc, sac, spacing, (1.0, 0.0), (0.0, 1.0))
    prob = np.where(sac, 0.9, 0.0).astype(np.float32)
    prob[43:45, 50:70] = prob[65:67, 50:70] = 0.4  # 2 rows (1 mm) each side above the edge
    assert measure.AP_EDGE_PROBABILITY < 0.4
    plain = measure.canal_ap_diameter(sac, spacing, axes, 0)
    edged = measure.canal_ap_diameter(sac, spacing, axes, 0, sac_probability=prob)
    assert plain.value == pytest.approx(10.0, abs=0.1)
    assert edged.value == pytest.approx(12.0, abs=0.1)
    assert "probability" in edged.provenance.method and edged.reliable
    low = np.where(sac, 0.9, 0.0).astype(np.float32)
    low[43:45, 50:70] = measure.AP_EDGE_PROBABILITY / 2
    assert measure.canal_ap_diameter(sac, spacing, axes, 0, sac_probability=low).value == pytest.approx(
        10.0, abs=0.1
    )
    with pytest.raises(ValueError, match="shape"):
        measure.canal_ap_diameter(sac, spacing, axes, 0, sac_probability=prob[:10])


def test_chord_ignores_separate_blob_on_the_same_line() -> None:
    m = rect((100, 100), 10, 20, 40, 60) | rect((100, 100), 40, 50, 40, 60)
    length, _, _ = measure.chord_through(m, (1.0, 1.0), np.array([15.0, 50.0]), (1.0, 0.0))
    assert length == pytest.approx(10.0, abs=0.1)


def _recess_scene(gap_left_px: int, gap_right_px: int) -> tuple[np.ndarray, ...]:
    """Rows grow posterior, columns grow toward patient left. Disc in front (rows 20-40, centre
    column 59.5), articular processes behind it on each side with a chosen gap, pedicles lateral
    to the recess just behind the disc, a lamina far behind."""
    shape = (100, 120)
    disc = rect(shape, 20, 40, 20, 100)
    sac = rect(shape, 42, 60, 50, 70)
    left_facet = rect(shape, 40 + gap_left_px, 70, 80, 95)
    right_facet = rect(shape, 40 + gap_right_px, 70, 25, 40)
    pedicles = rect(shape, 38, 50, 96, 105) | rect(shape, 38, 50, 15, 24)
    lamina = rect(shape, 75, 80, 30, 90)
    return disc, left_facet | right_facet, sac, pedicles | lamina


SCENE_SPACING = (0.5, 0.8)


def test_lateral_recess_depth_per_side_known_gaps() -> None:
    disc, facets, sac, posterior = _recess_scene(gap_left_px=8, gap_right_px=3)
    axes = measure.axial_axes(disc, sac, SCENE_SPACING, (1.0, 0.0), (0.0, 1.0))
    left = measure.lateral_recess_depth(disc, facets | posterior, SCENE_SPACING, axes, Side.LEFT, 20.0, 7)
    right = measure.lateral_recess_depth(disc, facets | posterior, SCENE_SPACING, axes, Side.RIGHT, 20.0, 7)
    assert left.side is Side.LEFT and right.side is Side.RIGHT
    assert left.value == pytest.approx(8 * 0.5, abs=0.06)
    assert right.value == pytest.approx(3 * 0.5, abs=0.06)
    assert left.reliable and right.reliable and left.provenance.slice_index == 7
    (r0, _c0), (r1, _c1) = left.provenance.points_px
    assert r0 == pytest.approx(39.5, abs=0.1) and r1 == pytest.approx(47.5, abs=0.1)  # the two boundaries


def test_lateral_recess_open_recess_and_missing_margin() -> None:
    disc, _facets, sac, _posterior = _recess_scene(4, 4)
    axes = measure.axial_axes(disc, sac, SCENE_SPACING, (1.0, 0.0), (0.0, 1.0))
    open_recess = measure.lateral_recess_depth(
        disc, np.zeros_like(disc), SCENE_SPACING, axes, Side.LEFT, 20.0, 0
    )
    assert (
        open_recess.reliable and open_recess.value > 20.0 and "open recess" in open_recess.provenance.method
    )
    far = measure.lateral_recess_depth(disc, disc, SCENE_SPACING, axes, Side.LEFT, 45.0, 0)
    assert not far.reliable and "no disc/vertebral margin" in far.issues[0]


def test_pedicle_wall_and_facet_edge_offsets() -> None:
    disc, facets, sac, posterior = _recess_scene(4, 4)
    axes = measure.axial_axes(disc, sac, SCENE_SPACING, (1.0, 0.0), (0.0, 1.0))
    origin_col = 59.5 * 0.8
    left = measure.pedicle_half_width(posterior, disc, SCENE_SPACING, axes, Side.LEFT)
    right = measure.pedicle_half_width(posterior, disc, SCENE_SPACING, axes, Side.RIGHT)
    assert left == pytest.approx(96 * 0.8 - origin_col)  # the lamina behind is not a pedicle
    assert right == pytest.approx(origin_col - 23 * 0.8)
    assert measure.pedicle_half_width(np.zeros_like(disc), disc, SCENE_SPACING, axes, Side.LEFT) is None
    assert measure.medial_edge(facets, SCENE_SPACING, axes, Side.LEFT) == pytest.approx(80 * 0.8 - origin_col)


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


def _foramina(left_px: int, right_px: int, slices: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Canonical-grid masks (columns run patient right -> left): a sac in the middle, one square
    foramen each side, the left one widest on the middle slice."""
    foramen = np.zeros((slices, 100, 100), bool)
    sac = np.zeros_like(foramen)
    sac[:, 40:60, 45:55] = True
    for i in range(slices):
        shrink = 0 if i == slices // 2 else 2
        lw = max(left_px - shrink, 0)
        foramen[i, 40 : 40 + lw, 80 : 80 + lw] = True  # patient left: high columns
        foramen[i, 40 : 40 + right_px, 10 : 10 + right_px] = True
    return foramen, sac


def test_axial_foramen_areas_split_sides_at_the_sac() -> None:
    foramen, sac = _foramina(left_px=10, right_px=6)
    left = measure.axial_foramen_areas(foramen, sac, (0.5, 0.5), Side.LEFT)
    right = measure.axial_foramen_areas(foramen, sac, (0.5, 0.5), Side.RIGHT)
    assert left.tolist() == [64 * 0.25, 100 * 0.25, 64 * 0.25]
    assert right.tolist() == [36 * 0.25] * 3


def test_foramen_ratio_from_axial_maps_the_widest_fraction_and_flags_a_missing_foramen() -> None:
    spacing = (1.0, 1.0)
    reference = measure.UNNARROWED_AXIAL_FORAMEN_MM2["L4-L5"]
    side_px = round(float(np.sqrt(reference)))  # about the unnarrowed area
    foramen, sac = _foramina(left_px=side_px, right_px=0)
    left = measure.foramen_ratio_from_axial(foramen, sac, spacing, Side.LEFT, "L4-L5")
    expected = measure.FORAMEN_RATIO_INTERCEPT + measure.FORAMEN_RATIO_SLOPE * side_px**2 / reference
    assert left.name is MeasurementName.FORAMINAL_AREA_RATIO and left.side is Side.LEFT
    assert left.reliable and left.value == pytest.approx(min(1.0, max(0.0, expected)))
    assert left.provenance.slice_index == 1  # the widest cross-section
    assert left.value > 0.6  # an unnarrowed foramen grades normal
    right = measure.foramen_ratio_from_axial(foramen, sac, spacing, Side.RIGHT, "L4-L5")
    assert not right.reliable and right.value == 0.0
    assert "no right foramen" in right.issues[0]
    smaller, _ = _foramina(left_px=round(side_px * 0.8), right_px=0)
    narrowed = measure.foramen_ratio_from_axial(smaller, sac, spacing, Side.LEFT, "L4-L5")
    assert narrowed.value < left.value  # monotone in the measured area


def _level_seg_with_false_cranial_pedicle() -> tuple[Volume, AxialSegmentation]:
    """Three canonical slices of one level: caudal (lower vertebra: body + pedicles, medial walls
    12 mm from the midline), disc (disc + articular processes 2 mm behind the disc margin, 9-16 mm
    out), cranial (upper vertebra: body + posterior-element pixels 6 mm out that are no pedicle)."""
    from cds.pipeline import axial as ax

    size = ax.CANONICAL_SIZE * ax.MEASURE_UPSAMPLE
    sp = ax.CANONICAL_SPACING_MM / ax.MEASURE_UPSAMPLE
    rows, cols = np.indices((size, size)) * sp
    cr = cc = size * sp / 2
    x = np.abs(cols - cc)
    front = (rows > cr - 30) & (rows < cr - 10) & (x < 20)
    behind = (rows >= cr - 10) & (rows < cr)
    labels = np.zeros((3, size, size), np.uint8)
    labels[0][front] = ax.BODY
    labels[0][behind & (x >= 12) & (x < 17)] = ax.POSTERIOR
    labels[1][front] = ax.DISC
    labels[1][(rows >= cr - 8) & (rows < cr + 4) & (x >= 9) & (x < 16)] = ax.FACET
    labels[2][front] = ax.BODY
    labels[2][behind & (x >= 6) & (x < 9)] = ax.POSTERIOR
    a = np.eye(4)
    a[:3, 0] = (0.0, 0.0, 4.0)  # slices toward the head, 4 mm apart
    a[:3, 1] = (0.0, 0.5, 0.0)
    a[:3, 2] = (0.5, 0.0, 0.0)
    volume = Volume(
        np.zeros((3, 160, 160), np.float32), a, (4.0, 0.5, 0.5), "1.2.3", "AX", SeriesKind.AXIAL_T2
    )
    frame = ax.canonical_frame(volume.affine, volume.shape[1:])
    seg = AxialSegmentation(
        images=np.zeros((3, ax.CANONICAL_SIZE, ax.CANONICAL_SIZE), np.float32),
        probs=np.zeros((3, len(ax.AXIAL_CLASSES), ax.CANONICAL_SIZE, ax.CANONICAL_SIZE), np.float32),
        labels=labels,
        slice_indices=(0, 1, 2),
        frames=(frame, frame, frame),
    )
    return volume, seg


def test_recess_line_is_placed_from_the_lower_vertebras_pedicle() -> None:
    """The recess line lies 1.5 mm medial to the lower vertebra's pedicle (FINDINGS.md, the
    generator's definition): with the slices' offsets from the disc, only caudal slices are searched
    for the pedicle, so posterior-element pixels of the upper vertebra cannot pass for one."""
    from cds.domain import Condition, Level
    from cds.pipeline import quick_read as qr

    volume, seg = _level_seg_with_false_cranial_pedicle()
    disc = qr.DiscLocation(
        centre=np.asarray(volume.voxel_to_patient(np.array([1.0, 79.5, 79.5]))),
        normal=np.array([0.0, 0.0, 1.0]),
        height=measure.Measurement(
            MeasurementName.DISC_HEIGHT_MM, 10.0, measure.Provenance(measure.Plane.SAGITTAL, 0, "test")
        ),
    )
    offsets = qr.slice_offsets_mm(volume, seg.slice_indices, disc)
    assert offsets == pytest.approx((-4.0, 0.0, 4.0))
    with_offsets = qr.measure_level(seg, None, Level.L4_L5, offsets).by_condition
    for condition in (Condition.LEFT_SUBARTICULAR, Condition.RIGHT_SUBARTICULAR):
        (m,) = with_offsets[condition]
        assert m.value == pytest.approx(2.0, abs=0.1)  # line ~10.5 mm out meets the articular process
        assert m.reliable and m.provenance.slice_index == 1
        assert "lower vertebra" in m.provenance.method
    # Without offsets every slice is searched: the cranial pixels 6 mm out win, the line (4.5 mm
    # out) passes medial to the articular process and the recess reads as open.
    (blind,) = qr.measure_level(seg, None, Level.L4_L5).by_condition[Condition.LEFT_SUBARTICULAR]
    assert blind.value > 5.0 and "open recess" in blind.provenance.method


def test_dsca_counts_pixels_above_the_calibrated_sac_probability() -> None:
    """With the network's probabilities, DSCA counts sac pixels above DSCA_SAC_PROBABILITY: a block
    the network calls sac at 0.51 (labelled sac at 0.5) is left out; without matching
    probabilities (a label map alone) the labels are measured as they are."""
    from cds.domain import Condition, Level
    from cds.pipeline import axial as ax
    from cds.pipeline import quick_read as qr

    n, size = 1, ax.CANONICAL_SIZE
    probs = np.zeros((n, len(ax.AXIAL_CLASSES), size, size), np.float32)
    probs[:, ax.BACKGROUND] = 1.0
    probs[:, ax.SAC, 60:80, 70:90] = 0.9  # 20 x 20 coarse pixels of 0.64 mm2: 256 mm2
    probs[:, ax.SAC, 80:100, 70:90] = 0.51  # labelled sac at 0.5, below the calibrated 0.52
    probs[:, ax.BACKGROUND] -= probs[:, ax.SAC]
    labels = ax.postprocess(probs)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = (0, 0, 4.0), (0, 0.8, 0), (0.8, 0, 0)  # axial
    frame = ax.canonical_frame(affine, (size, size))
    seg = AxialSegmentation(np.zeros((n, size, size), np.float32), probs, labels, (0,), (frame,))
    assert measure.DSCA_SAC_PROBABILITY > 0.51
    (dsca, *_rest) = qr.measure_level(seg, None, Level.L4_L5).by_condition[Condition.SPINAL_CANAL]
    assert dsca.value == pytest.approx(256.0, rel=0.06)
    label_area = float((labels == ax.SAC).sum()) * 0.4 * 0.4
    assert label_area == pytest.approx(512.0, rel=0.06)
    no_probs = AxialSegmentation(seg.images, np.zeros(0, np.float32), labels, (0,), (frame,))
    (plain, *_rest) = qr.measure_level(no_probs, None, Level.L4_L5).by_condition[Condition.SPINAL_CANAL]
    assert plain.value == pytest.approx(label_area)


def test_facet_midline_moves_the_ap_line_between_the_facets_not_to_a_protruding_disc() -> None:
    """A lateral disc protrusion pulls the disc centroid sideways; the AP line is put midway
    between the facet joints instead (only the left-right position changes)."""
    sp = (0.5, 0.5)
    shape = (80, 80)
    sac = np.zeros(shape, bool)
    sac[40:60, 30:50] = True  # sac centred on column 39.5 (19.75 mm)
    facet = np.zeros(shape, bool)
    facet[45:60, 14:20] = True  # right facet, columns 14-19
    facet[45:60, 60:66] = True  # left facet, columns 60-65 (midpoint 39.5)
    disc = np.zeros(shape, bool)
    disc[10:35, 20:60] = True
    disc[30:45, 45:62] = True  # protrusion towards the left
    axes = measure.axial_axes(disc, sac, sp, np.array([1.0, 0.0]), np.array([0.0, 1.0]), use_shape=False)
    assert axes.origin_mm[1] > 20.5  # pulled left by the protrusion (the sac is centred on 19.75)
    moved = measure.facet_midline(axes, facet, sac, sp)
    assert moved.origin_mm[1] == pytest.approx(19.75)
    assert moved.origin_mm[0] == axes.origin_mm[0] and np.array_equal(moved.posterior, axes.posterior)
    # one side's facet missing: unchanged
    one_side = facet.copy()
    one_side[:, 55:] = False
    assert measure.facet_midline(axes, one_side, sac, sp) is axes
