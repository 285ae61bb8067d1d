"""Measurements behind every grade (FINDINGS.md), computed from segmentation masks.

Pure NumPy/SciPy on purpose: the numbers that decide a grade must be checkable by hand, so they
come from plain geometry on masks (pixel counts times pixel area, distances in millimetres),
never from a network. Each function returns a :class:`Measurement` that carries its provenance
(plane, slice, method, the points to draw) so the viewer can show exactly what was measured, and
a reliability verdict (mask too small, fragmented, touching the image edge...) that the grading
stage uses to decide when the rule may be trusted.

Conventions: 2D masks are boolean arrays indexed (row, col); ``spacing_mm`` is (row, col) pixel
spacing in millimetres; directions are unit vectors in millimetre (row, col) space. A 3D stack is
indexed (slice, row, col) like ``cds.dicom`` volumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from scipy import ndimage

from cds.domain import MeasurementName, Side

#: A 2-vector in millimetre (row, col) space: a tuple or an array.
Vector = Sequence[float] | np.ndarray

#: A mask whose largest connected component holds less than this share of its pixels is
#: "fragmented": the area or distance would depend on which fragment is right.
MIN_LARGEST_COMPONENT_SHARE = 0.9
#: Below these sizes a structure is too small to measure reliably (a few pixels of noise).
MIN_SAC_AREA_MM2 = 15.0
MIN_STRUCTURE_AREA_MM2 = 4.0
#: Step of the line sampling (mm): well below any pixel spacing seen in lumbar MRI (>= 0.3 mm).
LINE_STEP_MM = 0.05


class Plane(StrEnum):
    AXIAL = "axial"
    SAGITTAL = "sagittal"


@dataclass(frozen=True)
class Provenance:
    """Where and how a value was measured, so that it can be drawn and audited.

    ``points_px`` are (row, col) pixel coordinates in the measured slice: the two end points of
    a distance, or the end points of the line along which a diameter/height was taken. Areas
    carry no points (the viewer draws the mask itself).
    """

    plane: Plane
    slice_index: int
    method: str
    points_px: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class Measurement:
    """One measured value with its unit (from the name), side, provenance and reliability."""

    name: MeasurementName
    value: float
    provenance: Provenance
    side: Side | None = None
    reliable: bool = True
    issues: tuple[str, ...] = ()

    @property
    def unit(self) -> str:
        return self.name.unit


@dataclass(frozen=True)
class MaskQuality:
    """Why a mask may not be trusted: size and fragmentation, checked the same way everywhere."""

    area_mm2: float
    components: int
    largest_share: float
    issues: tuple[str, ...]

    @property
    def reliable(self) -> bool:
        return not self.issues


def pixel_area_mm2(spacing_mm: Sequence[float]) -> float:
    return float(spacing_mm[0]) * float(spacing_mm[1])


def mask_area_mm2(mask: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Area of a 2D boolean mask: pixel count times pixel area."""
    return float(np.count_nonzero(mask)) * pixel_area_mm2(spacing_mm)


def mask_quality(
    mask: np.ndarray, spacing_mm: Sequence[float], *, what: str, min_area_mm2: float
) -> MaskQuality:
    """Size, fragmentation and edge contact of a 2D mask, as human-readable issues."""
    area = mask_area_mm2(mask, spacing_mm)
    issues: list[str] = []
    if area < min_area_mm2:
        issues.append(f"{what} mask too small ({area:.1f} mm2 < {min_area_mm2:g} mm2)")
    labelled, n = ndimage.label(mask)
    share = 1.0
    if n > 1:
        sizes = np.bincount(labelled.ravel())[1:]
        share = float(sizes.max() / sizes.sum())
        if share < MIN_LARGEST_COMPONENT_SHARE:
            issues.append(f"{what} mask fragmented ({n} parts, largest {share:.0%})")
    if n and (mask[0, :].any() or mask[-1, :].any() or mask[:, 0].any() or mask[:, -1].any()):
        issues.append(f"{what} mask touches the image edge")
    return MaskQuality(area_mm2=area, components=int(n), largest_share=share, issues=tuple(issues))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component (empty mask stays empty)."""
    labelled, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool, copy=True)
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == int(np.argmax(sizes))


def centroid_mm(mask: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    """Centre of mass of a 2D mask in millimetre (row, col) coordinates."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise ValueError("centroid of an empty mask")
    return np.array([rows.mean() * spacing_mm[0], cols.mean() * spacing_mm[1]], dtype=np.float64)


def _unit(vec: Vector) -> np.ndarray:
    v = np.asarray(vec, dtype=np.float64)
    n = float(np.linalg.norm(v))
    if n == 0.0 or not np.isfinite(n):
        raise ValueError("direction vector has zero length")
    return v / n


def chord_through(
    mask: np.ndarray, spacing_mm: Sequence[float], point_mm: np.ndarray, direction_mm: Vector
) -> tuple[float, np.ndarray, np.ndarray]:
    """Length (mm) of the mask's run along a line through ``point_mm``, and the run's end points.

    The line is sampled every LINE_STEP_MM with nearest-pixel lookup, and only the contiguous
    run containing the point counts (a separate blob further along the line is not the same
    structure). If the point itself is outside the mask, the run nearest to it is used.
    """
    d = _unit(direction_mm)
    sp = np.asarray(spacing_mm, dtype=np.float64)
    extent = float(np.hypot(mask.shape[0] * sp[0], mask.shape[1] * sp[1]))
    t = np.arange(-extent, extent + LINE_STEP_MM, LINE_STEP_MM)
    pts = point_mm[None, :] + t[:, None] * d[None, :]
    idx = np.floor(pts / sp[None, :] + 0.5).astype(np.int64)
    inside = (idx[:, 0] >= 0) & (idx[:, 0] < mask.shape[0]) & (idx[:, 1] >= 0) & (idx[:, 1] < mask.shape[1])
    hit = np.zeros(t.shape, dtype=bool)
    hit[inside] = mask[idx[inside, 0], idx[inside, 1]]
    if not hit.any():
        return 0.0, point_mm.copy(), point_mm.copy()
    runs, _n = ndimage.label(hit)
    centre = int(np.argmin(np.abs(t)))
    run_id = runs[centre]
    if run_id == 0:
        hits = np.nonzero(hit)[0]
        run_id = runs[hits[np.argmin(np.abs(hits - centre))]]
    members = np.nonzero(runs == run_id)[0]
    # A run of m samples spans (m) steps once each end sample is credited half a step outward.
    length = members.size * LINE_STEP_MM
    start = pts[members[0]] - 0.5 * LINE_STEP_MM * d
    end = pts[members[-1]] + 0.5 * LINE_STEP_MM * d
    return float(length), start, end


def soft_area_mm2(probability: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Area of a structure from its probability map: summed probability times pixel area.

    Why not a thresholded count: a pixel half covered by the structure is worth half a pixel, so
    a calibrated probability map gives the area to a fraction of a pixel, where a count is off by
    up to half the boundary's pixels (cds/pipeline/sac_refine.py, models/sac_fine/card.json).
    """
    return float(np.asarray(probability, dtype=np.float64).sum()) * pixel_area_mm2(spacing_mm)


def soft_chord_mm(
    probability: np.ndarray, spacing_mm: Sequence[float], point_mm: np.ndarray, direction_mm: Vector
) -> tuple[float, np.ndarray, np.ndarray]:
    """Extent (mm) of a structure along a line from its probability map, and the end points to draw.

    The map is sampled bilinearly every LINE_STEP_MM along the whole line through ``point_mm`` and
    the probabilities are summed (times the step): the structure's length on that line counted as
    the generator counts it (every structure sample on the line, cds/synth/measure.py), with edges
    at sub-pixel precision. The end points are centred on the probability's centre of mass along
    the line, one length apart.
    """
    d = _unit(direction_mm)
    sp = np.asarray(spacing_mm, dtype=np.float64)
    extent = float(np.hypot(probability.shape[0] * sp[0], probability.shape[1] * sp[1]))
    t = np.arange(-extent, extent + LINE_STEP_MM, LINE_STEP_MM)
    pts = point_mm[None, :] + t[:, None] * d[None, :]
    px = pts / sp[None, :]
    p = ndimage.map_coordinates(
        np.asarray(probability, dtype=np.float64), px.T, order=1, mode="constant", cval=0.0, prefilter=False
    )
    total = float(p.sum())
    if total <= 0.0:
        return 0.0, point_mm.copy(), point_mm.copy()
    length = total * LINE_STEP_MM
    tc = float((t * p).sum() / total)
    return length, point_mm + (tc - length / 2) * d, point_mm + (tc + length / 2) * d


def _to_px(point_mm: np.ndarray, spacing_mm: Sequence[float]) -> tuple[float, float]:
    return (round(float(point_mm[0] / spacing_mm[0]), 2), round(float(point_mm[1] / spacing_mm[1]), 2))


# --------------------------------------------------------------------------------------------
# Axial measurements
# --------------------------------------------------------------------------------------------


def dural_sac_area(
    sac: np.ndarray, spacing_mm: Sequence[float], slice_indices: Sequence[int] | None = None
) -> Measurement:
    """DSCA: the smallest dural sac area over the axial slices of one level (FINDINGS.md).

    ``sac`` is a (slices, rows, cols) boolean stack; ``slice_indices`` restricts the search to
    the slices assigned to the level (all slices when None). Slices with no sac at all are
    skipped rather than read as 0 mm2: an empty mask there means the segmentation lost the
    sac (or the slice is outside the canal), and the reliability check reports it instead.
    """
    if sac.ndim != 3:
        raise ValueError(f"sac must be (slices, rows, cols), got shape {sac.shape}")
    indices = list(range(sac.shape[0])) if slice_indices is None else [int(i) for i in slice_indices]
    if not indices:
        raise ValueError("no slices to measure the dural sac on")
    areas = {i: mask_area_mm2(sac[i], spacing_mm) for i in indices}
    present = {i: a for i, a in areas.items() if a > 0}
    if not present:
        return Measurement(
            MeasurementName.DSCA_MM2,
            0.0,
            Provenance(Plane.AXIAL, indices[0], "no dural sac segmented on the level's slices"),
            reliable=False,
            issues=("dural sac not found on any slice of the level",),
        )
    narrowest = min(present, key=lambda i: present[i])
    quality = mask_quality(sac[narrowest], spacing_mm, what="dural sac", min_area_mm2=MIN_SAC_AREA_MM2)
    issues = list(quality.issues)
    missing = len(indices) - len(present)
    if missing:
        issues.append(f"dural sac missing on {missing} of {len(indices)} slices of the level")
    return Measurement(
        MeasurementName.DSCA_MM2,
        present[narrowest],
        Provenance(
            Plane.AXIAL,
            narrowest,
            f"smallest dural sac area (pixel count x pixel area) over {len(indices)} axial slices",
        ),
        reliable=not issues,
        issues=tuple(issues),
    )


@dataclass(frozen=True)
class AxialAxes:
    """The patient's own axes on one axial slice, in millimetre (row, col) space.

    ``origin_mm`` lies on the mid-sagittal line (centre of the disc/vertebral body), ``posterior``
    and ``left`` are unit vectors. Why anatomy rather than the scanner axes: patients lie slightly
    rotated, and FINDINGS.md measures along the spine's own mid-sagittal line.
    """

    origin_mm: np.ndarray
    posterior: np.ndarray
    left: np.ndarray
    anatomical: bool


#: The disc/body's minor axis is trusted as the AP axis only within this angle of the scanner's.
MAX_AXIS_DEVIATION_DEG = 25.0


def axial_axes(
    anterior: np.ndarray,
    sac: np.ndarray,
    spacing_mm: Sequence[float],
    posterior: Vector,
    left: Vector,
    *,
    use_shape: bool = True,
) -> AxialAxes:
    """Mid-sagittal line of a slice from the disc/vertebral body (``anterior``) mask.

    Origin: the centroid of the largest disc/body component (the spine's centre line). AP axis:
    that component's minor principal axis (a vertebral body or disc is wider than deep), signed
    to point posterior; used only when within MAX_AXIS_DEVIATION_DEG of the scanner's posterior
    direction ``posterior`` (a protrusion can skew the shape), which is the fallback. ``left``
    (scanner) only fixes the sign of the left axis. ``use_shape=False`` keeps the scanner's
    directions and takes only the origin from the anatomy.
    """
    post0, left0 = _unit(posterior), _unit(left)
    if np.count_nonzero(anterior) >= 3:
        main = largest_component(anterior)
        origin = centroid_mm(main, spacing_mm)
        _, minor = principal_axes(main, spacing_mm)
        minor = minor if float(minor @ post0) >= 0 else -minor
        if use_shape and float(minor @ post0) >= np.cos(np.deg2rad(MAX_AXIS_DEVIATION_DEG)):
            lft = np.array([-minor[1], minor[0]])
            lft = lft if float(lft @ left0) >= 0 else -lft
            return AxialAxes(origin, minor, lft, True)
        return AxialAxes(origin, post0, left0, False)
    origin = (
        centroid_mm(sac, spacing_mm)
        if sac.any()
        else np.array([(sac.shape[0] - 1) * spacing_mm[0] / 2, (sac.shape[1] - 1) * spacing_mm[1] / 2])
    )
    return AxialAxes(origin, post0, left0, False)


def facet_midline(
    axes: AxialAxes, facet: np.ndarray, sac: np.ndarray, spacing_mm: Sequence[float]
) -> AxialAxes:
    """The slice's axes with the origin moved sideways onto the midpoint of the two facet joints.

    Why: FINDINGS.md takes the AP diameter on the spine's mid-sagittal line, and the disc/body
    centroid (``axial_axes``) is pulled sideways by a lateral disc protrusion, which is often what
    narrows the sac, so the AP line then runs through the sac's edge (gross AP errors of 2-12 mm).
    The facet joints flank the canal symmetrically: the mean column of the facet pixels on each
    side of the sac's centre, averaged, gives the midline. On the 34 validation studies axial_seg
    never saw (170 levels, bench/measurement_error.py and the fine sac map) the AP MAE fell from
    0.76 mm (disc/body centre) to 0.49 mm; the ligamentum flavum's midpoint (0.73), the posterior
    elements' (1.88), the sac's own centroid (0.95) and the median of three (0.50) did worse.
    Only the left-right position changes (the chord runs along the whole line); without facet
    pixels on both sides the axes are returned unchanged.
    """
    if not facet.any() or not sac.any():
        return axes
    sac_col = centroid_mm(largest_component(sac), spacing_mm)[1]
    cols = np.nonzero(facet)[1] * float(spacing_mm[1])
    right, left = cols[cols < sac_col], cols[cols >= sac_col]
    if not right.size or not left.size:
        return axes
    origin = np.array([axes.origin_mm[0], 0.5 * (float(right.mean()) + float(left.mean()))])
    return AxialAxes(origin, axes.posterior, axes.left, axes.anatomical)


#: Dural sac probability above which a pixel counts toward the DSCA, when the network's sac
#: probability map is available (the label map's sac uses 0.5). Why: on the training part of
#: /work/data/synth-train (40 studies the axial U-Net never saw) the area at 0.5 is biased by
#: +1.35 mm2 and unbiased at 0.52 (grid 0.50-0.60; MAE 9.16 -> 8.95 mm2); checked on 34 validation
#: studies: MAE 7.96 -> 7.75 mm2, bias +2.74 -> +1.52 (bench/measurement_error.py). A calibration
#: of axial_seg 1.1.0, to be re-fitted with a new network. The remaining error is per-study
#: segmentation error (pred vs the same code on truth masks: 7.96 vs 3.30 mm2), not geometry:
#: interpolating the area between slices (parabola through the narrowest three) did not help.
DSCA_SAC_PROBABILITY = 0.52

#: Dural sac probability at which the AP chord's two edges are placed, when the network's sac
#: probability map is available. Why not the 0.5 of the area mask: the axial U-Net (axial_seg 1.1.0)
#: puts the sac's anterior (disc) and posterior (ligamentum flavum) boundaries inside the true
#: sac, so the chord of the 0.5 mask is short by about 0.8 mm (validation bias -0.85 mm) while the
#: area is unbiased (the sac is over-wide laterally). The iso-probability contour where the chord is
#: unbiased was fitted on 40 training studies the U-Net never saw (grid 0.2-0.5: 0.3 best, MAE
#: 1.23 -> 1.09 mm) and checked on 34 validation studies (MAE 1.26 -> 0.98 mm, bias -0.85 -> +0.08):
#: ``bench/measurement_error.py``. A calibration of this network, to be re-fitted with a new one.
AP_EDGE_PROBABILITY = 0.3


def canal_ap_diameter(
    sac: np.ndarray,
    spacing_mm: Sequence[float],
    axes: AxialAxes,
    slice_index: int,
    sac_probability: np.ndarray | None = None,
) -> Measurement:
    """Canal AP diameter: the dural sac's extent along the mid-sagittal line (FINDINGS.md).

    With ``sac_probability`` (the network's sac probability on the same grid as ``sac``) the
    chord's edges are placed at AP_EDGE_PROBABILITY instead of the mask's boundary.
    """
    quality = mask_quality(sac, spacing_mm, what="dural sac", min_area_mm2=MIN_SAC_AREA_MM2)
    if not sac.any():
        return Measurement(
            MeasurementName.AP_DIAMETER_MM,
            0.0,
            Provenance(Plane.AXIAL, slice_index, "no dural sac on the slice"),
            reliable=False,
            issues=quality.issues,
        )
    edges = "mask boundary"
    chord_mask = sac
    if sac_probability is not None:
        if sac_probability.shape != sac.shape:
            raise ValueError(f"sac probability shape {sac_probability.shape} != mask shape {sac.shape}")
        chord_mask = sac | (sac_probability > AP_EDGE_PROBABILITY)
        edges = f"edges at sac probability {AP_EDGE_PROBABILITY:g}"
    length, start, end = chord_through(chord_mask, spacing_mm, axes.origin_mm, axes.posterior)
    issues = list(quality.issues)
    if length == 0.0:
        issues.append("the mid-sagittal line misses the dural sac")
    return Measurement(
        MeasurementName.AP_DIAMETER_MM,
        length,
        Provenance(
            Plane.AXIAL,
            slice_index,
            "dural sac extent along the mid-sagittal line (midway between the facet joints, else the "
            f"disc/body centre; AP axis; {edges})",
            (_to_px(start, spacing_mm), _to_px(end, spacing_mm)),
        ),
        reliable=not issues,
        issues=tuple(issues),
    )


def pixel_coords(
    shape: tuple[int, ...], spacing_mm: Sequence[float], axes: AxialAxes
) -> tuple[np.ndarray, np.ndarray]:
    """(AP, left) coordinates in mm of every pixel, relative to the axes' origin."""
    rows, cols = np.indices(shape[:2], dtype=np.float64)
    dr = rows * spacing_mm[0] - axes.origin_mm[0]
    dc = cols * spacing_mm[1] - axes.origin_mm[1]
    return dr * axes.posterior[0] + dc * axes.posterior[1], dr * axes.left[0] + dc * axes.left[1]


#: Depth of the band behind the disc/body margin in which posterior-element pixels are pedicles
#: (laminae start further back, about 13 mm behind the margin at the pedicle's medial wall).
PEDICLE_BAND_MM = (-4.0, 10.0)


def pedicle_half_width(
    posterior_elements: np.ndarray, body: np.ndarray, spacing_mm: Sequence[float], axes: AxialAxes, side: Side
) -> float | None:
    """Distance (mm) from the mid-sagittal line to the medial wall of the pedicle on ``side``.

    The pedicles are the posterior-element pixels just behind the vertebral body (within
    PEDICLE_BAND_MM of the body's posterior margin at the midline; the body rather than the disc,
    whose protrusions would push the band back into the laminae); the medial-most of them on the
    side is the pedicle's medial wall, which bounds the lateral recess laterally. None when the
    slice does not pass through a vertebral body and its pedicle.
    """
    if not posterior_elements.any() or not body.any():
        return None
    ap, lr = pixel_coords(body.shape, spacing_mm, axes)
    near_mid = body & (np.abs(lr) < 3.0)
    if not near_mid.any():
        return None
    margin = float(ap[near_mid].max())
    sign = 1.0 if side is Side.LEFT else -1.0
    band = (
        posterior_elements
        & (ap >= margin + PEDICLE_BAND_MM[0])
        & (ap <= margin + PEDICLE_BAND_MM[1])
        & (sign * lr > 2.0)
    )
    if not band.any():
        return None
    return float((sign * lr[band]).min())


def medial_edge(mask: np.ndarray, spacing_mm: Sequence[float], axes: AxialAxes, side: Side) -> float | None:
    """Distance (mm) from the mid-sagittal line to the medial-most pixel of ``mask`` on ``side``."""
    if not mask.any():
        return None
    _, lr = pixel_coords(mask.shape, spacing_mm, axes)
    sign = 1.0 if side is Side.LEFT else -1.0
    on_side = mask & (sign * lr > 2.0)
    return float((sign * lr[on_side]).min()) if on_side.any() else None


def lateral_recess_depth(
    anterior: np.ndarray,
    bone: np.ndarray,
    spacing_mm: Sequence[float],
    axes: AxialAxes,
    side: Side,
    offset_mm: float,
    slice_index: int,
) -> Measurement:
    """Lateral recess depth on one side of one slice (FINDINGS.md): along the AP line
    ``offset_mm`` lateral of the mid-sagittal line (callers put it 1.5 mm medial to the pedicle's
    medial wall, where the recess lies), the distance from the posterior disc/vertebral margin
    (last ``anterior`` sample) to the superior articular process (first ``bone`` sample behind it).

    When no bone follows (an open recess), the distance to the end of the image along the line is
    returned; it is a lower bound, and anything over the 5 mm cut-off grades the same.
    """
    sign = 1.0 if side is Side.LEFT else -1.0
    point = axes.origin_mm + sign * offset_mm * axes.left
    d = axes.posterior
    sp = np.asarray(spacing_mm, dtype=np.float64)
    extent = float(np.hypot(anterior.shape[0] * sp[0], anterior.shape[1] * sp[1]))
    t = np.arange(-extent, extent + LINE_STEP_MM, LINE_STEP_MM)
    pts = point[None, :] + t[:, None] * d[None, :]
    idx = np.floor(pts / sp[None, :] + 0.5).astype(np.int64)
    inside = (
        (idx[:, 0] >= 0)
        & (idx[:, 0] < anterior.shape[0])
        & (idx[:, 1] >= 0)
        & (idx[:, 1] < anterior.shape[1])
    )
    front = np.zeros(t.shape, dtype=bool)
    back = np.zeros(t.shape, dtype=bool)
    front[inside] = anterior[idx[inside, 0], idx[inside, 1]]
    back[inside] = bone[idx[inside, 0], idx[inside, 1]]
    if not front.any():
        return _missing_recess(side, slice_index, f"no disc/vertebral margin on the {side.value} recess line")
    k0 = int(np.nonzero(front)[0].max())
    behind = np.nonzero(back[k0 + 1 :])[0]
    last_inside = int(np.nonzero(inside)[0].max())
    k1 = k0 + 1 + int(behind[0]) if behind.size else last_inside
    depth = (k1 - k0 - 1) * LINE_STEP_MM + (LINE_STEP_MM if behind.size else 0.0)
    margin_pt, bone_pt = pts[k0] + 0.5 * LINE_STEP_MM * d, pts[k1] - 0.5 * LINE_STEP_MM * d
    return Measurement(
        MeasurementName.LATERAL_RECESS_DEPTH_MM,
        float(max(depth, 0.0)),
        Provenance(
            Plane.AXIAL,
            slice_index,
            f"AP gap from the disc/vertebral margin to the articular process, {offset_mm:.1f} mm "
            f"{side.value} of the midline"
            + ("" if behind.size else " (no bone behind: open recess, lower bound)"),
            (_to_px(margin_pt, spacing_mm), _to_px(bone_pt, spacing_mm)),
        ),
        side=side,
    )


def _missing_recess(side: Side, slice_index: int, why: str) -> Measurement:
    return Measurement(
        MeasurementName.LATERAL_RECESS_DEPTH_MM,
        0.0,
        Provenance(Plane.AXIAL, slice_index, why),
        side=side,
        reliable=False,
        issues=(why,),
    )


def narrowest(measurements: Sequence[Measurement]) -> Measurement:
    """The smallest value among measurements (the FINDINGS.md 'narrowest point within the level'),
    preferring reliable ones: an unreliable zero must not beat a real measurement."""
    if not measurements:
        raise ValueError("no measurements to choose from")
    reliable = [m for m in measurements if m.reliable]
    pool = reliable or list(measurements)
    return min(pool, key=lambda m: m.value)


# --------------------------------------------------------------------------------------------
# Sagittal / parasagittal measurements
# --------------------------------------------------------------------------------------------


def principal_axes(mask: np.ndarray, spacing_mm: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(major, minor) unit axes of a 2D mask in mm space, from the covariance of its pixels."""
    rows, cols = np.nonzero(mask)
    pts = np.stack([rows * spacing_mm[0], cols * spacing_mm[1]], axis=1).astype(np.float64)
    if pts.shape[0] < 3:
        raise ValueError("too few pixels for principal axes")
    cov = np.cov(pts, rowvar=False)
    _evals, evecs = np.linalg.eigh(cov)
    return evecs[:, 1], evecs[:, 0]


def disc_height(disc: np.ndarray, spacing_mm: Sequence[float], slice_index: int) -> Measurement:
    """Disc height (sagittal): the disc's extent along its minor axis through its centroid.

    Why the minor axis: the disc lies tilted by the lordosis, so the craniocaudal image axis
    would overestimate; its principal axes follow the endplates. Measured at the centre, the
    usual mid-disc height.
    """
    quality = mask_quality(disc, spacing_mm, what="disc", min_area_mm2=MIN_STRUCTURE_AREA_MM2)
    if np.count_nonzero(disc) < 3:
        return Measurement(
            MeasurementName.DISC_HEIGHT_MM,
            0.0,
            Provenance(Plane.SAGITTAL, slice_index, "no disc segmented"),
            reliable=False,
            issues=quality.issues or ("no disc segmented",),
        )
    main = largest_component(disc)
    _, minor = principal_axes(main, spacing_mm)
    length, start, end = chord_through(main, spacing_mm, centroid_mm(main, spacing_mm), minor)
    return Measurement(
        MeasurementName.DISC_HEIGHT_MM,
        length,
        Provenance(
            Plane.SAGITTAL,
            slice_index,
            "disc extent along its minor axis through the centroid",
            (_to_px(start, spacing_mm), _to_px(end, spacing_mm)),
        ),
        reliable=quality.reliable,
        issues=quality.issues,
    )


def foraminal_area_ratio(
    free: np.ndarray,
    reference: np.ndarray,
    spacing_mm: Sequence[float],
    side: Side,
    slice_index: int,
    reference_method: str,
) -> Measurement:
    """Foraminal area ratio: free foraminal area (perineural fat + exiting root) over the area the
    same foramen would have without narrowing (``reference``), clipped to [0, 1].

    How the reference is estimated is the caller's choice and is recorded in the provenance
    (see :func:`foramen_reference`).
    """
    ref_area = mask_area_mm2(reference, spacing_mm)
    free_area = mask_area_mm2(free & reference, spacing_mm) if reference.any() else 0.0
    issues: list[str] = []
    if ref_area < MIN_STRUCTURE_AREA_MM2:
        issues.append(f"{side.value} foramen outline too small ({ref_area:.1f} mm2)")
    ratio = float(np.clip(free_area / ref_area, 0.0, 1.0)) if ref_area > 0 else 0.0
    return Measurement(
        MeasurementName.FORAMINAL_AREA_RATIO,
        ratio,
        Provenance(Plane.SAGITTAL, slice_index, f"free foraminal area / {reference_method}"),
        side=side,
        reliable=not issues,
        issues=tuple(issues),
    )


#: Foramen area (mm2) on the axial slice through its widest part, per level, in spines without
#: narrowing: the median over the synthetic generator's foramina graded normal (ratio >= 0.6),
#: from the generator's truth labels (bench/foramen_calibration.py prints it). Population values,
#: not this patient's own unnarrowed foramen: the main source of this measurement's error.
UNNARROWED_AXIAL_FORAMEN_MM2: dict[str, float] = {
    "L1-L2": 106.0,
    "L2-L3": 114.0,
    "L3-L4": 110.0,
    "L4-L5": 115.6,
    "L5-S1": 111.7,
}
#: Linear map from the axial area fraction to the parasagittal area ratio FINDINGS.md defines,
#: fitted by bench/foramen_calibration.py on synthetic studies other than the ones it is scored on.
#: Why a map and not the fraction itself: the axial slices cross only the lower (disc-level) part
#: of the foramen, so a foramen narrowed to a third of its parasagittal area keeps about three
#: quarters of its widest axial cross-section.
FORAMEN_RATIO_INTERCEPT = -0.669
FORAMEN_RATIO_SLOPE = 1.325
#: Whether the estimate may be reported. False for axial_seg 1.0.0: on the generator's truth labels
#: the widest axial cross-section tracks the ratio (corr 0.72, MAE 0.14 after the linear map, 400
#: foramina), but the network's foramen class does not (it segments 80-200 mm2 where the truth has
#: 30-100 mm2; corr 0.00, MAE 0.43 on 200 foramina, bench/foramen_calibration.py). A number known
#: not to track the anatomy must not decide a grade or be shown, so foraminal findings stay graded
#: by the learned model (flagged uncertain) until a retrained axial model passes the calibration.
FORAMEN_RATIO_VALIDATED = False


def axial_foramen_areas(
    foramen: np.ndarray, sac: np.ndarray, spacing_mm: Sequence[float], side: Side
) -> np.ndarray:
    """Foramen area (mm2) on one side of each axial slice (slices, rows, cols) of the canonical
    grid, whose columns run patient right -> left; sides split at the dural sac's centre column."""
    n, _, w = foramen.shape
    px = pixel_area_mm2(spacing_mm)
    cols = np.arange(w)
    out = np.zeros(n)
    for i in range(n):
        centre = float(np.nonzero(sac[i])[1].mean()) if sac[i].any() else (w - 1) / 2.0
        half = cols > centre if side is Side.LEFT else cols < centre
        out[i] = float(foramen[i][:, half].sum()) * px
    return out


def foramen_ratio_from_axial(
    foramen: np.ndarray, sac: np.ndarray, spacing_mm: Sequence[float], side: Side, level: str | None
) -> Measurement:
    """Foraminal area ratio estimated from the axial foramen segmentation of one level.

    The widest axial cross-section of the foramen (over the level's slices) as a fraction of the
    unnarrowed population value for the level, mapped linearly to the parasagittal ratio and
    clipped to [0, 1]. Unreliable when no foramen is found on that side.
    """
    areas = axial_foramen_areas(foramen, sac, spacing_mm, side)
    k = int(np.argmax(areas)) if len(areas) else 0
    widest = float(areas[k]) if len(areas) else 0.0
    typical = float(np.median(list(UNNARROWED_AXIAL_FORAMEN_MM2.values())))
    reference = UNNARROWED_AXIAL_FORAMEN_MM2.get(level, typical) if level else typical
    fraction = widest / reference
    ratio = float(np.clip(FORAMEN_RATIO_INTERCEPT + FORAMEN_RATIO_SLOPE * fraction, 0.0, 1.0))
    issues: list[str] = []
    if widest < MIN_STRUCTURE_AREA_MM2:
        issues.append(f"no {side.value} foramen found on the level's axial slices")
    method = (
        f"widest axial foramen cross-section {widest:.0f} mm2 / unnarrowed reference {reference:.0f} mm2 "
        f"for {level}, mapped to the parasagittal area ratio"
    )
    return Measurement(
        MeasurementName.FORAMINAL_AREA_RATIO,
        ratio,
        Provenance(Plane.AXIAL, k, method),
        side=side,
        reliable=not issues,
        issues=tuple(issues),
    )
