"""Fine axial crops around each lateral recess at the disc level (input of the subarticular model).

Where the recess is: FINDINGS.md measures its depth on axial planes through the disc, along the
AP line 1.5 mm medial to the pedicle, from the posterior disc/vertebral margin to the superior
articular process. In the canonical axial frame of :mod:`cds.pipeline.axial` (rows anterior ->
posterior, columns patient right -> left, 0.8 mm) that line lies 7-14 mm lateral of the dural
sac's centre, a few mm anterior of it. So each crop is placed from the sac's centre of mass:

* rows run anterior -> posterior, starting ``ANTERIOR_MM`` anterior of the sac centre;
* columns run from ``MEDIAL_MM`` across the midline towards the side (patient left for the left
  recess; the right recess is *mirrored*, columns running towards patient right), so both sides
  look alike and one network serves both (twice the data);
* ``SPACING_MM`` = 0.4 mm: the grades are 2 mm apart (3 and 5 mm), so the crop is sampled at the
  measurement grid's resolution (bilinear from the 0.8 mm canonical grid), not the classifier's.

Channels, for ``N_SLICES`` slices nearest the disc centre (caudal -> cranial, nearest repeated
when the level has fewer): the normalised T2, then the axial segmentation's probabilities of the
dural sac, of disc + vertebral body (the anterior wall of the recess) and of facet + ligamentum
flavum + posterior elements (its posterior wall). Why several slices: the truth is the narrowest
plane within the disc, which need not be the slice nearest its centre.

The same functions build the training crops (cds/train/subarticular_data.py), so training and
inference cannot drift apart. :class:`RecessCrop` keeps the canonical coordinates of every crop
pixel so a heatmap on the crop can be mapped back to the native slice (Grad-CAM).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cds.domain import Side
from cds.pipeline import axial as ax

SPACING_MM = 0.4
SIZE = 64  # 25.6 mm: midline to beyond the pedicle, disc margin to the articular process
ANTERIOR_MM = 14.0
MEDIAL_MM = 1.0
N_SLICES = 3
#: Probability channels per slice, each the sum of these axial classes.
PROB_GROUPS: tuple[tuple[int, ...], ...] = (
    (ax.SAC,),
    (ax.DISC, ax.BODY),
    (ax.FACET, ax.FLAVUM, ax.POSTERIOR),
)
CHANNELS_PER_SLICE = 1 + len(PROB_GROUPS)
IN_CHANNELS = N_SLICES * CHANNELS_PER_SLICE


@dataclass(frozen=True)
class RecessCrop:
    """One side's crop: ``array`` (IN_CHANNELS, n, n); ``rows`` the level's segmentation rows used
    (caudal -> cranial); ``coords`` (2, n, n) the canonical-grid (row, col) of every crop pixel."""

    side: Side
    array: np.ndarray
    rows: tuple[int, ...]
    coords: np.ndarray

    @property
    def central_row(self) -> int:
        return self.rows[len(self.rows) // 2]


def choose_rows(n_rows: int, offsets_mm: Sequence[float] | None, n: int = N_SLICES) -> tuple[int, ...]:
    """The ``n`` rows nearest the disc centre, ordered caudal -> cranial; repeated when fewer.

    ``offsets_mm`` (signed distance of each row from the disc centre along its cranial normal,
    see :func:`cds.pipeline.quick_read.slice_offsets_mm`); without them the middle rows are used.
    """
    if n_rows < 1:
        raise ValueError("a level needs at least one axial slice")
    if offsets_mm is None or len(offsets_mm) != n_rows:
        offsets = np.arange(n_rows, dtype=np.float64) - (n_rows - 1) / 2.0
    else:
        offsets = np.asarray(offsets_mm, dtype=np.float64)
    nearest = sorted(np.argsort(np.abs(offsets), kind="stable")[:n].tolist(), key=lambda i: offsets[i])
    while len(nearest) < n:  # pad with the row nearest the centre, keeping the order
        centre = int(np.argmin(np.abs(offsets)))
        nearest.insert(nearest.index(centre), centre)
    return tuple(int(i) for i in nearest)


def sac_centre(probs: np.ndarray, rows: Sequence[int]) -> tuple[float, float]:
    """Canonical (row, col) of the sac probability mass over ``rows``; grid centre when none."""
    mass = probs[list(rows), ax.SAC].sum(axis=0)
    total = float(mass.sum())
    h, w = mass.shape
    if total < 1.0:
        return (h - 1) / 2.0, (w - 1) / 2.0
    r, c = np.indices(mass.shape)
    return float((r * mass).sum()) / total, float((c * mass).sum()) / total


def crop_coords(centre: tuple[float, float], side: Side, margin: int = 0) -> np.ndarray:
    """(2, n, n) canonical coordinates of a crop (n = SIZE + 2 margin), mirrored for the right."""
    n = SIZE + 2 * margin
    step = SPACING_MM / ax.CANONICAL_SPACING_MM
    idx = np.arange(n, dtype=np.float64) - margin
    rows = centre[0] + (-ANTERIOR_MM / ax.CANONICAL_SPACING_MM) + idx * step
    sign = 1.0 if side is Side.LEFT else -1.0  # canonical columns run towards patient left
    cols = centre[1] + sign * ((-MEDIAL_MM / ax.CANONICAL_SPACING_MM) + idx * step)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return np.stack([rr, cc])


def _channels(images: np.ndarray, probs: np.ndarray, rows: Sequence[int]) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for r in rows:
        out.append(images[r])
        out.extend(probs[r, list(group)].sum(axis=0) for group in PROB_GROUPS)
    return out


def recess_crops(
    images: np.ndarray,
    probs: np.ndarray,
    offsets_mm: Sequence[float] | None,
    margin: int = 0,
) -> dict[Side, RecessCrop]:
    """Both recess crops of one level from its axial segmentation (canonical ``images`` (S, H, W)
    and ``probs`` (S, classes, H, W)). ``margin`` > 0 only for training (shifted windows)."""
    if images.ndim != 3 or probs.ndim != 4 or images.shape[0] != probs.shape[0]:
        raise ValueError("images (S, H, W) and probs (S, C, H, W) must describe the same slices")
    rows = choose_rows(images.shape[0], offsets_mm)
    planes = _channels(images, probs, rows)
    centre = sac_centre(probs, rows)
    out: dict[Side, RecessCrop] = {}
    for side in Side:
        coords = crop_coords(centre, side, margin)
        flat = coords.reshape(2, -1)
        sampled = [
            ndimage.map_coordinates(p, flat, order=1, mode="constant", cval=0.0, prefilter=False)
            for p in planes
        ]
        array = np.stack(sampled).reshape(len(planes), *coords.shape[1:]).astype(np.float32)
        out[side] = RecessCrop(side, array, rows, coords)
    return out


__all__ = [
    "IN_CHANNELS",
    "N_SLICES",
    "SIZE",
    "SPACING_MM",
    "RecessCrop",
    "choose_rows",
    "crop_coords",
    "recess_crops",
    "sac_centre",
]
