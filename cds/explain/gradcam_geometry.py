"""Where a classifier crop lies in the original axial slice, and how a crop map goes back there.

The classifier sees a ``CROP_SIZE`` square cut from the *canonical* grid of one level's narrowest
axial slice (cds.pipeline.classify.level_crop); the canonical grid is that native slice resampled
to 0.8 mm pixels, rows anterior -> posterior, columns patient right -> left
(cds.pipeline.axial.CanonicalFrame). A saliency map on the crop therefore says nothing about the
patient until it is carried back through both steps: crop pixel -> canonical pixel (a shift)
-> native pixel of the slice (the frame's affine 2x2 map) -> patient LPS mm (the volume affine).

Why resample native -> crop instead of pasting the crop: the native grid can be rotated, flipped
or differently spaced relative to the canonical one; pulling every native pixel's value from the
crop (bilinear, zero outside the crop) is exact for any such frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from cds.pipeline.axial import CanonicalFrame


@dataclass(frozen=True)
class CropPlacement:
    """One level crop's position: the canonical pixel of crop pixel (0, 0), the frame of the
    slice it was cut from, the native slice index in the axial volume and that volume's affine."""

    origin_uv: tuple[int, int]
    size: int
    frame: CanonicalFrame
    slice_index: int
    affine: NDArray[np.float64]  # 4x4, voxel (k, i, j, 1) -> LPS mm
    series_uid: str

    def crop_to_native(self, ab: NDArray[np.float64]) -> NDArray[np.float64]:
        """(N, 2) crop pixel (row, col) -> (N, 2) native pixel (row i, col j) of the slice."""
        ab = np.asarray(ab, dtype=np.float64).reshape(-1, 2)
        return self.frame.to_native(ab + np.asarray(self.origin_uv, dtype=np.float64))

    def native_to_crop(self, ij: NDArray[np.float64]) -> NDArray[np.float64]:
        ij = np.asarray(ij, dtype=np.float64).reshape(-1, 2)
        return self.frame.to_canonical(ij) - np.asarray(self.origin_uv, dtype=np.float64)

    def native_to_patient(self, ij: NDArray[np.float64]) -> NDArray[np.float64]:
        """(N, 2) native pixel -> (N, 3) LPS mm on this slice."""
        ij = np.asarray(ij, dtype=np.float64).reshape(-1, 2)
        kij1 = np.column_stack([np.full(len(ij), float(self.slice_index)), ij, np.ones(len(ij))])
        return (kij1 @ np.asarray(self.affine, dtype=np.float64).T)[:, :3]

    def crop_map_to_native(self, crop_map: NDArray[np.floating]) -> NDArray[np.float32]:
        """A (size, size) map on the crop -> the slice's native (rows, cols) grid, 0 outside."""
        rows, cols = self.frame.native_shape
        # native_to_crop is affine: its matrix from three points, then affine_transform (the same
        # bilinear values as map_coordinates over every pixel's crop coordinates, without them).
        base, down, right = self.native_to_crop(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
        out = ndimage.affine_transform(
            np.asarray(crop_map, dtype=np.float32),
            np.column_stack([down - base, right - base]),
            offset=base,
            output_shape=(rows, cols),
            order=1,
            mode="constant",
            cval=0.0,
            prefilter=False,
        )
        return np.asarray(out, dtype=np.float32)


def placement_for(
    centre_uv: tuple[int, int],
    size: int,
    frame: CanonicalFrame,
    slice_index: int,
    affine: NDArray[np.float64],
    series_uid: str,
) -> CropPlacement:
    """The placement of a crop that ``classify._crop`` cut around ``centre_uv`` (same arithmetic)."""
    half = size // 2
    return CropPlacement(
        origin_uv=(int(centre_uv[0]) - half, int(centre_uv[1]) - half),
        size=size,
        frame=frame,
        slice_index=int(slice_index),
        affine=np.asarray(affine, dtype=np.float64),
        series_uid=series_uid,
    )


def peak_pixel(native_map: NDArray[np.floating]) -> tuple[int, int] | None:
    """Row/col of the map's maximum, or None when the map is empty (all zero)."""
    if native_map.size == 0 or float(native_map.max()) <= 0.0:
        return None
    i, j = np.unravel_index(int(np.argmax(native_map)), native_map.shape)
    return int(i), int(j)
