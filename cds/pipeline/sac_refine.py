"""Stage ``refine_sac``: the dural sac at 0.4 mm on the slices where the level is narrowest.

Coarse to fine. axial_seg (0.8 mm, whole slice) finds the sac on every slice of the level and its
outputs feed the classifier unchanged; this stage then looks again, with the small ``sac_fine``
U-Net, at a 32 mm crop around that sac sampled at 0.4 mm from the native slice
(:mod:`cds.pipeline.sac_crop`), and gives the sac probability there. The DSCA and the canal AP
diameter are measured on that probability map (:func:`canal_measurements`), the rest of the level's
measurements stay on axial_seg's labels.

Only the slices whose coarse sac area is within REFINE_WITHIN of the level's smallest are refined:
the DSCA is the smallest area of the level, and a slice whose coarse area is a quarter larger than
the smallest is not the narrowest one (the fine and coarse areas differ by a few mm2, not by a
quarter); this keeps the stage to one or two crops per level.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from cds.domain import MeasurementName
from cds.errors import StageError
from cds.pipeline import axial as ax
from cds.pipeline import measure as ms
from cds.pipeline import sac_crop as sc

if TYPE_CHECKING:
    from cds.dicom.volume import Volume

STAGE = "refine_sac"
MODEL_NAME = "sac_fine"
#: Refine the slices whose coarse sac area is at most this multiple of the level's smallest.
REFINE_WITHIN = 1.25

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class FineSac:
    """Fine sac probabilities of some slices of one level.

    ``rows`` index the level's slices as in :class:`cds.pipeline.axial.AxialSegmentation` (row i is
    native slice ``seg.slice_indices[i]``); ``probs[n]`` is the sac probability on ``crops[n]``.
    """

    rows: tuple[int, ...]
    crops: tuple[sc.SacCrop, ...]
    probs: np.ndarray  # (len(rows), CROP_SIZE, CROP_SIZE) float32

    def __post_init__(self) -> None:
        if not (len(self.rows) == len(self.crops) == len(self.probs)):
            raise ValueError("rows, crops and probabilities must have the same length")


def rows_to_refine(sac_labels: np.ndarray, within: float = REFINE_WITHIN) -> tuple[int, ...]:
    """Rows (slices) whose coarse sac area is positive and within ``within`` x the smallest."""
    areas = sac_labels.reshape(sac_labels.shape[0], -1).sum(axis=1)
    present = areas > 0
    if not present.any():
        return ()
    smallest = float(areas[present].min())
    return tuple(int(i) for i in np.nonzero(present & (areas <= within * smallest))[0])


def fine_inputs(
    volume_array: np.ndarray, seg: ax.AxialSegmentation, rows: Sequence[int]
) -> tuple[tuple[sc.SacCrop, ...], np.ndarray]:
    """The crops of ``rows`` (centred on axial_seg's sac centroid) and the network inputs."""
    sac = seg.mask(ax.SAC)
    crops: list[sc.SacCrop] = []
    images: list[np.ndarray] = []
    for row in rows:
        centre = sc.sac_centre_uv(sac[row])
        if centre is None:
            raise ValueError(f"row {row} has no coarse sac to centre a crop on")
        crop = sc.SacCrop(centre)
        crops.append(crop)
        images.append(sc.normalised_crop(volume_array[seg.slice_indices[row]], crop, seg.frames[row]))
    shape = (0, sc.CROP_SIZE, sc.CROP_SIZE)
    return tuple(crops), np.stack(images) if images else np.zeros(shape, np.float32)


def refine_sac(
    levels: Mapping[K, tuple[Volume, ax.AxialSegmentation]], models_dir: Path | None = None
) -> dict[K, FineSac]:
    """Fine sac probabilities of each level's narrowest slices (see the module docstring), all
    levels' crops in one batched pass (one call per study: a pass costs more than a crop)."""
    from cds.ml.loading import load_model
    from cds.pipeline.inference import softmax_forward

    model = load_model(MODEL_NAME, models_dir)
    try:
        inputs = {}
        for key, (volume, seg) in levels.items():
            rows = rows_to_refine(seg.mask(ax.SAC))
            inputs[key] = (rows, *fine_inputs(np.asarray(volume.array), seg, rows))
        images = [im for _, _, im in inputs.values() if len(im)]
        probs = (
            softmax_forward(model.network, model.device, np.concatenate(images))[:, 1]
            if images
            else np.zeros((0, sc.CROP_SIZE, sc.CROP_SIZE), np.float32)
        )
    except Exception as exc:
        raise StageError(STAGE, f"{type(exc).__name__}: {exc}") from exc
    out: dict[K, FineSac] = {}
    start = 0
    for key, (rows, crops, _) in inputs.items():
        part = probs[start : start + len(rows)]
        start += len(rows)
        out[key] = FineSac(rows, crops, np.ascontiguousarray(part, dtype=np.float32))
    return out


# ----------------------------------------------------------------------------------------------
# Measurements on the fine map
# ----------------------------------------------------------------------------------------------


def crop_to_grid(points: np.ndarray, crop: sc.SacCrop) -> np.ndarray:
    """Crop pixel coordinates -> measurement-grid pixel coordinates (the 2x canonical grid)."""
    uv = crop.to_canonical(points)
    return (uv + 0.5) * ax.MEASURE_UPSAMPLE - 0.5


def grid_to_crop(points: np.ndarray, crop: sc.SacCrop) -> np.ndarray:
    uv = (np.asarray(points, dtype=np.float64) + 0.5) / ax.MEASURE_UPSAMPLE - 0.5
    return crop.from_canonical(uv)


def grid_mask(fine: FineSac, n: int, shape: Sequence[int], threshold: float = 0.5) -> np.ndarray:
    """The fine sac of refined row ``n`` on the measurement grid (``shape``, 0.4 mm like the
    crop): the crop's probability sampled bilinearly at every grid pixel the crop covers, above
    ``threshold``. For drawing the outline whose area is the DSCA (cds/viewer/capture.py)."""
    from scipy import ndimage

    crop, prob = fine.crops[n], fine.probs[n]
    size = prob.shape[0]
    corners = crop_to_grid(
        np.array([[0.0, 0.0], [0.0, size - 1.0], [size - 1.0, 0.0], [size - 1.0, size - 1.0]]), crop
    )
    lo = np.maximum(np.floor(corners.min(axis=0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + 2, np.asarray(shape[:2]))
    out = np.zeros(tuple(int(x) for x in shape[:2]), dtype=bool)
    if np.any(hi <= lo):
        return out
    rr, cc = np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), indexing="ij")
    at = grid_to_crop(np.column_stack([rr.ravel(), cc.ravel()]).astype(np.float64), crop)
    p = ndimage.map_coordinates(prob, at.T, order=1, mode="constant", cval=0.0, prefilter=False)
    out[lo[0] : hi[0], lo[1] : hi[1]] = (p > threshold).reshape(rr.shape)
    return out


def canal_measurements(
    fine: FineSac, grid_spacing_mm: Sequence[float], axes: Sequence[ms.AxialAxes]
) -> tuple[ms.Measurement, ms.Measurement] | None:
    """DSCA (smallest soft area over the refined rows) and the AP diameter on that row (soft
    chord along the mid-sagittal line of ``axes[row]``, given in measurement-grid millimetres).

    Provenance slice indices are rows of the level and points are measurement-grid pixels, like
    the coarse measurements, so the caller maps both to native slices the same way. None when no
    row was refined (no sac on the level: the coarse path reports it).
    """
    if not fine.rows:
        return None
    spacing = (sc.CROP_SPACING_MM, sc.CROP_SPACING_MM)
    areas = [ms.soft_area_mm2(p, spacing) for p in fine.probs]
    n = int(np.argmin(areas))
    row, crop, prob = fine.rows[n], fine.crops[n], fine.probs[n]
    quality = ms.mask_quality(prob > 0.5, spacing, what="dural sac", min_area_mm2=ms.MIN_SAC_AREA_MM2)
    issues = tuple(i for i in quality.issues if "touches the image edge" not in i)
    if (prob[[0, -1], :] > 0.5).any() or (prob[:, [0, -1]] > 0.5).any():
        issues += ("dural sac reaches the edge of the fine crop",)
    dsca = ms.Measurement(
        MeasurementName.DSCA_MM2,
        areas[n],
        ms.Provenance(
            ms.Plane.AXIAL,
            row,
            f"smallest dural sac area over {len(fine.rows)} axial slices, summed sac probability of "
            f"the {MODEL_NAME} model at {sc.CROP_SPACING_MM:g} mm",
        ),
        reliable=not issues,
        issues=issues,
    )
    a = axes[row]
    gsp = np.asarray(grid_spacing_mm, dtype=np.float64)
    origin_crop = grid_to_crop(a.origin_mm / gsp, crop) * sc.CROP_SPACING_MM
    # The grid and the crop share orientation (and square pixels), so directions carry over.
    length, start, end = ms.soft_chord_mm(prob, spacing, origin_crop, a.posterior)
    ends = crop_to_grid(np.stack([start, end]) / sc.CROP_SPACING_MM, crop)
    ap_issues = issues + (("the mid-sagittal line misses the dural sac",) if length == 0.0 else ())
    ap = ms.Measurement(
        MeasurementName.AP_DIAMETER_MM,
        length,
        ms.Provenance(
            ms.Plane.AXIAL,
            row,
            "dural sac extent along the mid-sagittal line (midway between the facet joints, else the "
            "disc/body centre; AP axis): summed sac "
            f"probability of the {MODEL_NAME} model along the line",
            tuple((round(float(p[0]), 2), round(float(p[1]), 2)) for p in ends),
        ),
        reliable=not ap_issues,
        issues=ap_issues,
    )
    return dsca, ap


__all__ = [
    "MODEL_NAME",
    "STAGE",
    "FineSac",
    "canal_measurements",
    "fine_inputs",
    "grid_mask",
    "refine_sac",
    "rows_to_refine",
]
