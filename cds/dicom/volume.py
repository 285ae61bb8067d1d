"""A decoded image stack with its patient-space geometry (the unit every later stage works on)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cds.dicom import geometry
from cds.dicom.geometry import Plane
from cds.dicom.selection import SeriesKind


@dataclass(frozen=True, eq=False)
class Volume:
    """float32 array (slices, rows, cols) and the affine (k, i, j, 1) -> patient LPS mm.

    spacing_mm = (distance between slice planes, row spacing, column spacing). Slice k = 0 is the
    one with the smallest position along the plane normal (row x column direction), so k runs
    towards patient right for standard sagittal stacks and towards the head for axial ones.
    """

    array: NDArray[np.float32]
    affine: NDArray[np.float64]
    spacing_mm: tuple[float, float, float]
    series_uid: str
    description: str
    kind: SeriesKind
    sop_uids: tuple[str, ...] = ()
    part: int = 0  # > 0 when the series was split into several stacks (e.g. one per disc angle)
    frame_of_reference_uid: str = ""  # patient coordinates are comparable only within one frame

    def __post_init__(self) -> None:
        if self.array.ndim != 3 or self.array.dtype != np.float32:
            raise ValueError("Volume.array must be float32 (slices, rows, cols)")
        if self.affine.shape != (4, 4):
            raise ValueError("Volume.affine must be 4x4")
        self.array.setflags(write=False)
        self.affine.setflags(write=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        s = self.array.shape
        return (int(s[0]), int(s[1]), int(s[2]))

    @property
    def normal(self) -> NDArray[np.float64]:
        """Unit normal of the slice planes (row direction x column direction)."""
        n = np.cross(self.affine[:3, 2], self.affine[:3, 1])
        return np.asarray(n / np.linalg.norm(n), dtype=np.float64)

    @property
    def plane(self) -> Plane:
        return geometry.plane_of_normal(self.normal)

    def voxel_to_patient(self, kij: NDArray[np.float64]) -> NDArray[np.float64]:
        return geometry.voxel_to_patient(self.affine, kij)

    def patient_to_voxel(self, xyz: NDArray[np.float64]) -> NDArray[np.float64]:
        return geometry.patient_to_voxel(self.affine, xyz)

    def slice_centre(self, k: int) -> NDArray[np.float64]:
        """Patient position of the centre of slice k."""
        _, rows, cols = self.shape
        return self.voxel_to_patient(np.array([k, (rows - 1) / 2.0, (cols - 1) / 2.0]))
