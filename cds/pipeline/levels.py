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
RUDIMENTARY_HEIGHT_RATIO = 0.4
#: A disc above L1-L2 at least this fraction as tall as the L1-L2..L4-L5 median: lumbar-type.
LUMBAR_HEIGHT_RATIO = 0.9
#: Gap between neighbouring discs above this multiple of the median gap: a disc was probably missed.
GAP_RATIO = 1.6
#: How many slices either side of the most central (largest canal) slice are projected.
CENTRAL_HALF_WIDTH = 2


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


def _disc_geometry(
    comp: np.ndarray, stack: np.ndarray, sel: np.ndarray, spacing: tuple[float, float]
) -> tuple[tuple[float, float, float], tuple[float, float], float, float]:
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


def label_levels(masks: SagittalMasks, spacing_mm: tuple[float, float]) -> LevelLabelling:
    """Discs (cranial to caudal) with their level, counted up from the sacrum, plus an uncertainty flag."""
    spacing = (float(spacing_mm[0]), float(spacing_mm[1]))
    disc_stack = _as_stack(masks.disc)
    sel = central_slices(masks)
    disc2d = disc_stack[sel].any(axis=0)
    comps, n = ndimage.label(disc2d)
    min_px = MIN_DISC_AREA_MM2 / (spacing[0] * spacing[1])
    found = []
    for idx in range(1, n + 1):
        comp = comps == idx
        if comp.sum() < min_px:
            continue
        found.append(_disc_geometry(comp, disc_stack, sel, spacing))
    found.sort(key=lambda g: g[0][1])  # cranial (row 0) first
    reasons: list[str] = []
    if not found:
        return LevelLabelling(discs=(), uncertain=True, reasons=("no intervertebral disc found",))

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
    if len(discs) >= 3:
        rows = np.array([d.centroid_voxel[1] for d in discs]) * spacing[0]
        gaps = np.diff(rows)
        if gaps.max() > GAP_RATIO * float(np.median(gaps)):
            reasons.append("irregular spacing between discs: a disc may be missing")
    return LevelLabelling(discs=tuple(discs), uncertain=bool(reasons), reasons=tuple(reasons))
