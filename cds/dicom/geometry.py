"""Patient-space geometry of image stacks (DICOM LPS, millimetres).

Conventions used across the product (CONTRACTS.md):
- voxel index (k, i, j): k = slice, i = row (down the image), j = column (across the image);
- the affine A (4x4) maps (k, i, j, 1) -> (x, y, z, 1) in patient LPS mm:
  A[:3, 0] = step from slice k to k+1 (its length along the plane normal is the slice spacing;
  any in-plane component is kept, so sheared stacks such as gantry-tilted ones stay exact),
  A[:3, 1] = column direction cosine x row spacing (moving down one row),
  A[:3, 2] = row direction cosine x column spacing (moving right one column),
  A[:3, 3] = ImagePositionPatient of the first slice (centre of its first pixel).
DICOM's ImageOrientationPatient gives the row direction first (the direction of increasing
column index) and PixelSpacing gives the row spacing first; mixing those up is the classic bug,
so it happens in exactly one place: `plane_affine`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

#: Patient axes in LPS: +x patient left, +y posterior, +z superior (head).
AXES_LPS = ("left-right", "anterior-posterior", "inferior-superior")


class Plane(StrEnum):
    SAGITTAL = "sagittal"
    CORONAL = "coronal"
    AXIAL = "axial"


@dataclass(frozen=True)
class Orientation:
    """Direction cosines of one image plane, validated to be orthonormal."""

    row: tuple[float, float, float]  # direction of increasing column index j
    col: tuple[float, float, float]  # direction of increasing row index i

    @classmethod
    def from_iop(cls, iop: tuple[float, ...], tolerance: float = 1e-3) -> Orientation:
        """Validate ImageOrientationPatient; renormalise small rounding errors, reject the rest."""
        if len(iop) != 6 or not all(np.isfinite(iop)):
            raise ValueError("ImageOrientationPatient must hold 6 finite numbers")
        r = np.asarray(iop[:3], dtype=np.float64)
        c = np.asarray(iop[3:], dtype=np.float64)
        nr, nc = float(np.linalg.norm(r)), float(np.linalg.norm(c))
        if abs(nr - 1.0) > 0.01 or abs(nc - 1.0) > 0.01:
            raise ValueError("ImageOrientationPatient vectors are not unit length")
        r, c = r / nr, c / nc
        if abs(float(r @ c)) > max(tolerance, 0.01):
            raise ValueError("ImageOrientationPatient vectors are not orthogonal")
        # Gram-Schmidt: scanners write 6-decimal strings, keep the affine exactly orthogonal.
        c = c - (r @ c) * r
        c = c / np.linalg.norm(c)
        return cls(row=_tuple3(r), col=_tuple3(c))

    @property
    def normal(self) -> NDArray[np.float64]:
        """Unit plane normal row x col: the direction in which slices are sorted."""
        n = np.cross(np.asarray(self.row), np.asarray(self.col))
        return np.asarray(n / np.linalg.norm(n), dtype=np.float64)

    @property
    def plane(self) -> Plane:
        return plane_of_normal(self.normal)

    def angle_to(self, other: Orientation) -> float:
        """Largest angle (degrees) between corresponding direction vectors."""
        a = float(np.dot(self.row, other.row))
        b = float(np.dot(self.col, other.col))
        return float(np.degrees(np.arccos(np.clip(min(a, b), -1.0, 1.0))))


def _tuple3(v: NDArray[np.float64]) -> tuple[float, float, float]:
    return (float(v[0]), float(v[1]), float(v[2]))


def plane_of_normal(normal: NDArray[np.float64]) -> Plane:
    """Sagittal / coronal / axial by the patient axis the normal is closest to.

    Oblique axial stacks angled along a lordotic disc (often 20-35 degrees) stay axial because
    the superior-inferior component still dominates.
    """
    axis = int(np.argmax(np.abs(normal)))
    return (Plane.SAGITTAL, Plane.CORONAL, Plane.AXIAL)[axis]


def obliquity_deg(normal: NDArray[np.float64]) -> float:
    """Angle between the plane normal and its closest patient axis (0 = a true orthogonal plane)."""
    return float(np.degrees(np.arccos(np.clip(np.max(np.abs(normal)), -1.0, 1.0))))


def plane_affine(
    orientation: Orientation,
    first_position: NDArray[np.float64],
    pixel_spacing: tuple[float, float],
    slice_step: NDArray[np.float64],
) -> NDArray[np.float64]:
    """The 4x4 voxel (k, i, j) -> patient LPS affine (see module docstring).

    `pixel_spacing` is DICOM PixelSpacing: (row spacing = between rows, column spacing = between columns).
    """
    row_spacing, col_spacing = pixel_spacing
    a = np.eye(4, dtype=np.float64)
    a[:3, 0] = slice_step
    a[:3, 1] = np.asarray(orientation.col) * row_spacing
    a[:3, 2] = np.asarray(orientation.row) * col_spacing
    a[:3, 3] = first_position
    return a


def voxel_to_patient(affine: NDArray[np.float64], kij: NDArray[np.float64]) -> NDArray[np.float64]:
    """Map voxel indices (..., 3) as (k, i, j) to patient LPS mm (..., 3). Fractional indices allowed."""
    pts = np.asarray(kij, dtype=np.float64)
    return np.asarray(pts @ affine[:3, :3].T + affine[:3, 3], dtype=np.float64)


def patient_to_voxel(affine: NDArray[np.float64], xyz: NDArray[np.float64]) -> NDArray[np.float64]:
    """Inverse of voxel_to_patient: patient LPS mm (..., 3) -> fractional (k, i, j) (..., 3)."""
    pts = np.asarray(xyz, dtype=np.float64)
    inv = np.linalg.inv(affine)
    return np.asarray(pts @ inv[:3, :3].T + inv[:3, 3], dtype=np.float64)
