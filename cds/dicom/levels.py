"""Which disc level each axial slice shows, decided in patient coordinates.

The sagittal segmentation gives each disc's centre (and, optionally, its normal: the direction of
the spine's axis through the disc) in patient LPS mm. Both series share the scanner's frame of
reference, so an axial slice plane can be intersected with each disc directly - no slice-index
arithmetic, no assumption that the axial stack is parallel to anything.

For a slice plane (point p, unit normal n) and a disc (centre c, normal d):
- with d: the offset is where the line c + t d meets the plane, t = ((p - c) . n) / (d . n),
  i.e. how far along the spine's axis the slice passes from the disc centre; this stays right
  for axial blocks tilted relative to the disc;
- without d: the offset is the plain distance (p - c) . n of the disc centre from the plane.
The slice gets the level with the smallest |offset| whose centre projects inside the image, if
that offset is within the tolerance (by default 8 mm, and never more than half the distance to
the neighbouring disc, so a slice through a vertebral body gets None rather than a guess).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cds.dicom.errors import IngestKind, ingest_error
from cds.dicom.volume import Volume
from cds.domain import Level

DEFAULT_TOLERANCE_MM = 8.0
_MIN_COS = 0.2  # below this the disc axis runs almost within the slice plane: use plane distance


@dataclass(frozen=True)
class SliceLevel:
    slice_index: int
    level: Level | None
    offset_mm: float | None  # signed offset from that level's disc centre (None when no level)


def slice_levels(
    axial: Volume,
    disc_centres_patient: Mapping[Level, NDArray[np.float64]],
    disc_normals: Mapping[Level, NDArray[np.float64]] | None = None,
    *,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    discs_frame_of_reference_uid: str | None = None,
) -> tuple[SliceLevel, ...]:
    frame = axial.frame_of_reference_uid
    if discs_frame_of_reference_uid and frame and discs_frame_of_reference_uid != frame:
        raise ingest_error(
            IngestKind.FRAME_OF_REFERENCE_MISMATCH,
            "axial and sagittal series have different frames of reference; levels cannot be mapped",
        )
    centres = {lv: _point(c, f"disc centre {lv}") for lv, c in disc_centres_patient.items()}
    normals = {lv: _unit(d, f"disc normal {lv}") for lv, d in (disc_normals or {}).items()}
    limits = _tolerances(centres, tolerance_mm)
    n = axial.normal
    n_slices, rows, cols = axial.shape
    out = []
    for k in range(n_slices):
        p = axial.slice_centre(k)
        best: tuple[float, Level] | None = None
        for level, c in centres.items():
            distance = float((p - c) @ n)
            d = normals.get(level)
            offset = distance
            if d is not None and abs(float(d @ n)) >= _MIN_COS:
                offset = distance / float(d @ n)
            projected = axial.patient_to_voxel(c + distance * n)
            inside = -0.5 <= projected[1] <= rows - 0.5 and -0.5 <= projected[2] <= cols - 0.5
            if inside and abs(offset) <= limits[level] and (best is None or abs(offset) < abs(best[0])):
                best = (offset, level)
        out.append(SliceLevel(k, best[1], best[0]) if best else SliceLevel(k, None, None))
    return tuple(out)


def assign_axial_levels(
    axial: Volume,
    disc_centres_patient: Mapping[Level, NDArray[np.float64]],
    disc_normals: Mapping[Level, NDArray[np.float64]] | None = None,
    *,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    discs_frame_of_reference_uid: str | None = None,
) -> tuple[Level | None, ...]:
    """Per axial slice (k order) the disc level it passes through, or None.

    Pass the sagittal volume's frame_of_reference_uid as `discs_frame_of_reference_uid`: when
    both are known and differ (patient repositioned between series), patient coordinates are not
    comparable and an IngestError(frame_of_reference_mismatch) is raised instead of a wrong level.
    """
    found = slice_levels(
        axial,
        disc_centres_patient,
        disc_normals,
        tolerance_mm=tolerance_mm,
        discs_frame_of_reference_uid=discs_frame_of_reference_uid,
    )
    return tuple(s.level for s in found)


def _tolerances(centres: Mapping[Level, NDArray[np.float64]], tolerance_mm: float) -> dict[Level, float]:
    out = {}
    for level, c in centres.items():
        gaps = [float(np.linalg.norm(c - other)) for lv, other in centres.items() if lv is not level]
        out[level] = min([tolerance_mm, *(g / 2.0 for g in gaps)])
    return out


def _point(value: NDArray[np.float64], what: str) -> NDArray[np.float64]:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} must be 3 finite patient coordinates (mm)")
    return arr


def _unit(value: NDArray[np.float64], what: str) -> NDArray[np.float64]:
    arr = _point(value, what)
    norm = float(np.linalg.norm(arr))
    if norm < 1e-9:
        raise ValueError(f"{what} must not be the zero vector")
    return arr / norm
