"""Level labelling from sagittal masks: discs ordered cranio-caudally, counted up from the sacrum.

FINDINGS.md: a level is identified by counting discs up from the sacrum; the lowest mobile disc is
L5-S1. Transitional anatomy (six lumbar vertebrae, sacralised L5, lumbarised S1) cannot be told
apart with certainty from a lumbar sagittal field of view, so instead of guessing silently this
module labels the discs by the rule and raises an ``uncertain`` flag with the reasons whenever the
evidence contradicts a plain five-lumbar spine:

- fewer than five discs found (levels missing);
- a rudimentary lowest disc (much thinner than the discs above: sacralised L5 / lumbarised S1);
- an irregular gap between discs (a disc probably missed);
- a sixth disc above L5-S1 as tall as the lumbar ones (thoracic discs are clearly thinner than
  lumbar ones, so a tall disc above "L1-L2" suggests a sixth lumbar vertebra).

The sacrum itself is not used: the real training masks (SPIDER) do not label it consistently.
These are heuristics with a deliberately high threshold; the flag means "check the count", not
"transitional anatomy present".

Pure NumPy/SciPy; works on one slice (rows, cols) or a stack (slices, rows, cols).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cds.domain import Level
from cds.pipeline.segment import SagittalMasks

#: Discs smaller than this (mm2 on the projected mid-sagittal mask) are treated as noise.
MIN_DISC_AREA_MM2 = 25.0
#: Lowest disc thinner than this fraction of the discs above: rudimentary (transitional) disc.
RUDIMENTARY_HEIGHT_RATIO = 0.75
#: Lowest disc-like band thinner than this fraction of the discs above: the S1-S2 remnant.
SACRAL_REMNANT_RATIO = 0.5
#: A disc above L1-L2 at least this fraction as tall as the L1-L2..L4-L5 median: lumbar-type.
#: Above 1 on purpose: on the projected mid-sagittal mask T12-L1 measures 0.9-1.1 of the lumbar
#: median (partial volume thickens the thin thoracic discs), so a lower ratio flagged two thirds
#: of normal spines (40 generated studies) and the flag meant nothing.
LUMBAR_HEIGHT_RATIO = 1.15
#: Weaker evidence used together with a thin lowest band (see _drop_sacral_remnant).
TOP_COUNT_RATIO = 0.9
#: Gap between neighbouring discs above this multiple of the median gap: a disc was probably missed.
GAP_RATIO = 1.6
#: How many slices either side of the most central (largest canal) slice are projected.
CENTRAL_HALF_WIDTH = 2
#: How far beyond half a disc's height vertebral bone must appear on its cranial or caudal side.
BONE_REACH_MM = 6.0
#: A disc centre further than this from the spinal curve through the other discs is not a disc.
CHAIN_TOLERANCE_MM = 10.0
#: ... times this for the cranial- and caudal-most discs (see _chain_inliers).
END_TOLERANCE_FACTOR = 2.0
#: A lowest disc longer than this multiple of the discs above is suspect (flagged, still counted).
LONG_LOWEST_RATIO = 1.5
#: A component shorter than this fraction of the median disc length is a fragment, not a disc.
MIN_LENGTH_FRACTION = 0.5


@dataclass(frozen=True)
class DiscLabel:
    """One disc found on the masks, cranial to caudal order in LevelLabelling.discs."""

    level: Level | None  # None: above L1-L2 (thoracic) or not assignable
    centroid_voxel: tuple[float, float, float]  # (slice, row, col); slice 0 for a single slice
    axis_rc: tuple[float, float]  # unit vector of the disc's long axis in (row, col)
    area_mm2: float
    height_mm: float


@dataclass(frozen=True)
class LevelLabelling:
    discs: tuple[DiscLabel, ...]
    uncertain: bool
    reasons: tuple[str, ...] = ()
    #: Disc-like regions the labelling did not count, and why (for logs and the evaluation).
    set_aside: tuple[str, ...] = ()

    def by_level(self) -> dict[Level, DiscLabel]:
        return {d.level: d for d in self.discs if d.level is not None}

    @property
    def levels(self) -> tuple[Level, ...]:
        return tuple(d.level for d in self.discs if d.level is not None)


def central_slices(masks: SagittalMasks) -> np.ndarray:
    """Indices of the slices around the one with the largest canal (the mid-sagittal block)."""
    if masks.disc.ndim == 2:
        return np.array([0])
    canal_area = masks.canal.reshape(masks.canal.shape[0], -1).sum(1)
    disc_area = masks.disc.reshape(masks.disc.shape[0], -1).sum(1)
    score = canal_area if canal_area.any() else disc_area
    mid = int(np.argmax(score))
    lo, hi = max(0, mid - CENTRAL_HALF_WIDTH), min(len(score), mid + CENTRAL_HALF_WIDTH + 1)
    return np.arange(lo, hi)


def _as_stack(mask: np.ndarray) -> np.ndarray:
    return mask[np.newaxis] if mask.ndim == 2 else mask


#: (centroid (slice, row, col), long axis (row, col) unit, area mm2, mean height mm)
_Geometry = tuple[tuple[float, float, float], tuple[float, float], float, float]


def _disc_geometry(
    comp: np.ndarray, stack: np.ndarray, sel: np.ndarray, spacing: tuple[float, float]
) -> _Geometry:
    rows, cols = np.nonzero(comp)
    pts = np.stack([rows * spacing[0], cols * spacing[1]], axis=1)
    centred = pts - pts.mean(0)
    cov = centred.T @ centred / max(1, len(pts) - 1)
    evals, evecs = np.linalg.eigh(cov)
    axis_mm = evecs[:, int(np.argmax(evals))]
    proj = centred @ axis_mm
    length = float(proj.max() - proj.min()) + min(spacing)
    area = float(len(rows) * spacing[0] * spacing[1])
    axis_px = np.array([axis_mm[0] / spacing[0], axis_mm[1] / spacing[1]])
    axis_px /= np.linalg.norm(axis_px)
    voxels = np.nonzero(stack[sel] & comp[np.newaxis])
    k = float(np.mean(sel[voxels[0]])) if len(voxels[0]) else float(sel[len(sel) // 2])
    centroid = (k, float(rows.mean()), float(cols.mean()))
    return centroid, (float(axis_px[0]), float(axis_px[1])), area, area / length


def _project(stack: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """Pixels marked on at least two of the central slices (one when only one or two are used).

    Why not any(): the network's false positives (bowel, psoas, posterior elements) come and go from
    slice to slice, while a disc spans several slices of a mid-sagittal block.
    """
    need = 1 if len(sel) <= 2 else 2
    return np.asarray(stack[sel].sum(axis=0) >= need)


def _bone_beside(
    vertebra2d: np.ndarray, geometry: _Geometry, spacing: tuple[float, float]
) -> tuple[bool, bool]:
    """Whether vertebral bone lies next to a disc on its cranial and on its caudal side.

    Walks along the disc's normal from its centre line (at the centre and a quarter of its length
    either side) up to half its height plus ``BONE_REACH_MM``: an intervertebral disc lies between
    two vertebral bodies, a false positive in the abdomen or the posterior muscles does not.
    """
    centroid, axis_px, _, height = geometry
    axis_mm = np.array([axis_px[0] * spacing[0], axis_px[1] * spacing[1]])
    axis_mm /= np.linalg.norm(axis_mm)
    normal = np.array([axis_mm[1], -axis_mm[0]])
    if normal[0] > 0:  # rows run caudal: make the normal point cranial
        normal = -normal
    length = geometry_length(geometry)
    centre = np.array([centroid[1] * spacing[0], centroid[2] * spacing[1]])
    steps = np.arange(0.0, height / 2.0 + BONE_REACH_MM, 0.5)
    found = []
    for sign in (1.0, -1.0):
        hit = False
        for shift in (-0.25 * length, 0.0, 0.25 * length):
            pts = centre + shift * axis_mm + sign * steps[:, None] * normal
            r = np.round(pts[:, 0] / spacing[0]).astype(int)
            c = np.round(pts[:, 1] / spacing[1]).astype(int)
            ok = (r >= 0) & (r < vertebra2d.shape[0]) & (c >= 0) & (c < vertebra2d.shape[1])
            if vertebra2d[r[ok], c[ok]].any():
                hit = True
                break
        found.append(hit)
    return found[0], found[1]


def geometry_length(geometry: _Geometry) -> float:
    """Long-axis length (mm) of a disc from its area and mean height."""
    _, _, area, height = geometry
    return area / max(height, 1e-6)


def _chain_inliers(geoms: list[_Geometry], spacing: tuple[float, float]) -> list[bool]:
    """Which discs lie on one smooth spinal curve (column as a quadratic of row, area-weighted),
    dropping the worst outlier while it lies more than ``CHAIN_TOLERANCE_MM`` off the curve."""
    keep = [True] * len(geoms)
    rows = np.array([g[0][1] * spacing[0] for g in geoms])
    cols = np.array([g[0][2] * spacing[1] for g in geoms])
    weights = np.sqrt(np.array([g[2] for g in geoms]))
    while sum(keep) > 3:
        idx = np.flatnonzero(np.array(keep, dtype=bool))
        deg = 2 if len(idx) > 4 else 1
        coef = np.polyfit(rows[idx], cols[idx], deg, w=weights[idx])
        resid = np.abs(cols[idx] - np.polyval(coef, rows[idx]))
        # The curve turns sharply at the lumbosacral junction, where a quadratic through the
        # lumbar discs fits worst: the cranial- and caudal-most discs get twice the tolerance.
        tolerance = np.full(len(idx), CHAIN_TOLERANCE_MM)
        tolerance[[int(np.argmin(rows[idx])), int(np.argmax(rows[idx]))]] *= END_TOLERANCE_FACTOR
        worst = int(np.argmax(resid / tolerance))
        if resid[worst] <= tolerance[worst]:
            break
        keep[int(idx[worst])] = False
    return keep


@dataclass(frozen=True)
class SetAside:
    """A disc-labelled region the labelling did not count, and why."""

    geometry: _Geometry
    why: str


def find_discs(masks: SagittalMasks, spacing: tuple[float, float]) -> tuple[list[_Geometry], list[SetAside]]:
    """Intervertebral discs on the mid-sagittal block, cranial first, with what was set aside.

    A disc-labelled component counts only if it is large enough, has vertebral bone on its cranial
    or caudal side, lies on the spinal curve through the other discs, and is not a fragment (its
    long axis at least ``MIN_LENGTH_FRACTION`` of the median disc's). Each rejection is a plausible
    false positive that would otherwise shift every level above it by one.
    """
    disc_stack = _as_stack(masks.disc)
    sel = central_slices(masks)
    disc2d = _project(disc_stack, sel)
    vert2d = _as_stack(masks.vertebra)[sel].any(axis=0)
    comps, n = ndimage.label(disc2d)
    min_px = MIN_DISC_AREA_MM2 / (spacing[0] * spacing[1])
    sizes = np.bincount(comps.ravel(), minlength=n + 1)
    big = [idx for idx in range(1, n + 1) if sizes[idx] >= min_px]
    geoms = [_disc_geometry(comps == idx, disc_stack, sel, spacing) for idx in big]
    aside: list[SetAside] = []
    beside = [_bone_beside(vert2d, g, spacing) for g in geoms]
    with_bone = [g for g, (cranial, caudal) in zip(geoms, beside, strict=True) if cranial or caudal]
    if len(with_bone) >= 3:  # too few to tell: keep everything and let the flags speak
        aside += [SetAside(g, "away from vertebral bone") for g in geoms if g not in with_bone]
        geoms = with_bone
    if len(geoms) >= 4:
        keep = _chain_inliers(geoms, spacing)
        aside += [SetAside(g, "off the spinal curve") for g, k in zip(geoms, keep, strict=True) if not k]
        geoms = [g for g, k in zip(geoms, keep, strict=True) if k]
    if len(geoms) >= 3:
        median_length = float(np.median([geometry_length(g) for g in geoms]))
        whole = [g for g in geoms if geometry_length(g) >= MIN_LENGTH_FRACTION * median_length]
        aside += [SetAside(g, "a fragment") for g in geoms if g not in whole]
        geoms = whole
    geoms.sort(key=lambda g: g[0][1])  # cranial (row 0) first
    return geoms, aside


def _set_aside_below(
    found: list[_Geometry], aside: list[SetAside], spacing: tuple[float, float]
) -> str | None:
    """A disc-sized region set aside just below the lowest counted disc may have been L5-S1: say so."""
    if len(found) < 3:
        return None
    rows = np.array([g[0][1] for g in found]) * spacing[0]
    gap = float(np.median(np.diff(rows)))
    median_area = float(np.median([g[2] for g in found]))
    for item in aside:
        below = item.geometry[0][1] * spacing[0] - rows[-1]
        if 0.3 * gap < below < 1.6 * gap and item.geometry[2] >= 0.4 * median_area:
            return (
                f"a disc-sized region {below:.0f} mm below the lowest counted disc was set aside "
                f"({item.why}): the count from the sacrum may be one level off"
            )
    return None


def _drop_sacral_remnant(found: list[_Geometry]) -> tuple[list[_Geometry], str | None]:
    """Leave out a lowest disc-like band that is the fused S1-S2 remnant, not the L5-S1 disc.

    The sacrum's segments are fused, but the line between S1 and S2 can look like a thin disc; taken
    for L5-S1 it shifts every level up by one. The band is left out when it is much thinner than
    the discs above (``SACRAL_REMNANT_RATIO``), or moderately thin while the count from the top
    agrees (the disc that would then sit above L1-L2 is nearly as tall as a lumbar one). Either way
    the labelling is flagged, because a severely degenerated L5-S1 can look the same (4 of the 29
    SPIDER patients' truth masks: their lowest disc is 30-70 % as tall as the ones above).
    """
    if len(found) < 4:
        return found, None
    heights = np.array([g[3] for g in found])
    above = float(np.median(heights[-5:-1]))
    ratio = float(heights[-1]) / above
    counted_from_top = len(found) >= len(Level) + 2 and heights[-7] >= TOP_COUNT_RATIO * float(
        np.median(heights[-6:-2])
    )
    if ratio < SACRAL_REMNANT_RATIO or (ratio < RUDIMENTARY_HEIGHT_RATIO and counted_from_top):
        return found[:-1], (
            f"a thin disc-like band ({ratio:.0%} of the height of the discs above) below the lowest disc "
            "was read as the fused S1-S2 remnant and not counted: check the count from the sacrum"
        )
    return found, None


def label_levels(masks: SagittalMasks, spacing_mm: tuple[float, float]) -> LevelLabelling:
    """Discs (cranial to caudal) with their level, counted up from the sacrum, plus an uncertainty flag."""
    spacing = (float(spacing_mm[0]), float(spacing_mm[1]))
    found, aside = find_discs(masks, spacing)
    set_aside = tuple(f"{a.why} at row {a.geometry[0][1]:.0f}" for a in aside)
    reasons: list[str] = []
    if not found:
        return LevelLabelling(
            discs=(), uncertain=True, reasons=("no intervertebral disc found",), set_aside=set_aside
        )
    below = _set_aside_below(found, aside, spacing)
    if below:
        reasons.append(below)

    found, remnant_reason = _drop_sacral_remnant(found)
    if remnant_reason:
        reasons.append(remnant_reason)
    levels = list(Level)
    discs = []
    for pos, (centroid, axis, area, height) in enumerate(found):
        from_bottom = len(found) - 1 - pos  # 0 = lowest disc = L5-S1
        level = levels[len(levels) - 1 - from_bottom] if from_bottom < len(levels) else None
        discs.append(DiscLabel(level, centroid, axis, area, height))

    if len(discs) < len(levels):
        reasons.append(f"only {len(discs)} discs found; fewer than five lumbar levels visible")
    heights = np.array([d.height_mm for d in discs])
    if len(discs) >= 3:
        above = float(np.median(heights[-4:-1]))
        if heights[-1] < RUDIMENTARY_HEIGHT_RATIO * above:
            reasons.append("rudimentary lowest disc: possible transitional lumbosacral vertebra")
    if len(discs) > len(levels):
        lumbar_median = float(np.median(heights[-5:-1]))
        if heights[-6] >= LUMBAR_HEIGHT_RATIO * lumbar_median:
            reasons.append("a lumbar-type disc above L1-L2: possible sixth lumbar vertebra")
    if len(found) >= 4:
        lengths = np.array([geometry_length(g) for g in found])
        typical = float(np.median(lengths[-5:-1]))
        if lengths[-1] > LONG_LOWEST_RATIO * typical:
            reasons.append(
                f"the lowest disc is {lengths[-1] / typical:.1f} times as long as the discs above: "
                "it may be a merged or false region, check L5-S1"
            )
    if len(discs) >= 3:
        rows = np.array([d.centroid_voxel[1] for d in discs]) * spacing[0]
        gaps = np.diff(rows)
        if gaps.max() > GAP_RATIO * float(np.median(gaps)):
            reasons.append("irregular spacing between discs: a disc may be missing")
    return LevelLabelling(
        discs=tuple(discs), uncertain=bool(reasons), reasons=tuple(reasons), set_aside=set_aside
    )
