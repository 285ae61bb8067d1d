"""Fine-resolution crops around the dural sac, the input contract of the ``sac_fine`` model.

Why a second, finer look at the sac: the DSCA and the AP diameter are decided by where the sac's
boundary lies to a fraction of a millimetre, while the axial U-Net (axial_seg) sees the whole slice
at 0.8 mm pixels and places that boundary a pixel off here and there (validation DSCA MAE 7.8 mm2
against 3.3 mm2 on truth masks, ``bench/measurement_error.py``). A small network looking only at a
32 mm square around the sac, sampled at 0.4 mm straight from the native slice (one interpolation,
not two), gives a probability map whose sum is a sub-pixel area and whose profile along the
mid-sagittal line gives sub-pixel AP edges.

Geometry: the crop shares the canonical frame's orientation (rows anterior -> posterior, columns
patient right -> left, see :mod:`cds.pipeline.axial`) and is centred on a point given in canonical
(0.8 mm) pixel coordinates, in practice the centroid of axial_seg's sac on that slice. Intensities:
percentiles (1, 99) of the native slice's non-zero pixels (every second row and column: the same
window at a quarter of the cost), scaled to [0, 1] and clipped at 1.5, as axial_seg's input.

Pure NumPy/SciPy: used by the training data builder (cds/train/sac_fine_data.py) and the quick
read's refine_sac stage alike, so the network sees the same crops in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cds.pipeline import axial as ax

#: Pixel spacing of the crop (mm): half the canonical grid's, a quarter of its pixel area.
CROP_SPACING_MM = 0.4
#: Crop size (pixels): 32 mm, the widest sac (about 20 mm) plus the centring error either side.
CROP_SIZE = 80
#: Percentiles of the native slice that map to 0 and 1.
WINDOW_PERCENTILES = (1.0, 99.0)
#: Row/column stride of the pixels the window is computed from.
WINDOW_STRIDE = 2


@dataclass(frozen=True)
class SacCrop:
    """One crop: its centre in canonical (0.8 mm) pixel coordinates, size and spacing."""

    centre_uv: tuple[float, float]
    size: int = CROP_SIZE
    spacing_mm: float = CROP_SPACING_MM

    @property
    def scale(self) -> float:
        """Canonical pixels per crop pixel."""
        return self.spacing_mm / ax.CANONICAL_SPACING_MM

    def to_canonical(self, ab: np.ndarray) -> np.ndarray:
        """Crop pixel coordinates (..., 2) -> canonical pixel coordinates (..., 2)."""
        half = (self.size - 1) / 2.0
        return (np.asarray(ab, dtype=np.float64) - half) * self.scale + np.asarray(self.centre_uv)

    def from_canonical(self, uv: np.ndarray) -> np.ndarray:
        half = (self.size - 1) / 2.0
        return (np.asarray(uv, dtype=np.float64) - np.asarray(self.centre_uv)) / self.scale + half

    def grid_canonical(self) -> np.ndarray:
        """(2, size * size) canonical coordinates of every crop pixel, row-major."""
        a, b = np.meshgrid(np.arange(self.size, dtype=np.float64), np.arange(self.size), indexing="ij")
        return self.to_canonical(np.stack([a.ravel(), b.ravel()], axis=1)).T


def intensity_window(native_slice: np.ndarray) -> tuple[float, float]:
    """(lo, hi) intensities of the slice that map to 0 and 1; (0, 0) for an empty slice."""
    sub = np.asarray(native_slice[::WINDOW_STRIDE, ::WINDOW_STRIDE], dtype=np.float32)
    values = sub[sub > 0]
    if values.size < 16:
        return 0.0, 0.0
    lo, hi = np.percentile(values, WINDOW_PERCENTILES)
    return float(lo), float(hi)


def native_coords(crop: SacCrop, frame: ax.CanonicalFrame) -> np.ndarray:
    """(2, size * size) native pixel coordinates of the crop's pixels on a slice with ``frame``."""
    return np.asarray(frame.to_native(crop.grid_canonical().T).T)


def sample(native: np.ndarray, coords: np.ndarray, size: int, order: int = 1) -> np.ndarray:
    """Bilinear (or ``order``) samples of a native 2D array at ``coords``, zero outside."""
    out = ndimage.map_coordinates(
        np.asarray(native, dtype=np.float32), coords, order=order, mode="constant", cval=0.0, prefilter=False
    )
    return np.asarray(out.reshape(size, size), dtype=np.float32)


def normalised_crop(native_slice: np.ndarray, crop: SacCrop, frame: ax.CanonicalFrame) -> np.ndarray:
    """The network input for one slice: (size, size) float32 in [0, 1.5]."""
    lo, hi = intensity_window(native_slice)
    raw = sample(native_slice, native_coords(crop, frame), crop.size)
    if hi <= lo:
        return np.zeros_like(raw)
    return np.clip((raw - lo) / (hi - lo), 0.0, 1.5).astype(np.float32)


def sac_centre_uv(sac_labels: np.ndarray) -> tuple[float, float] | None:
    """Centroid of a sac mask on the measurement grid (2x canonical) in canonical pixel
    coordinates; None when the slice has no sac."""
    rows, cols = np.nonzero(sac_labels)
    if rows.size == 0:
        return None
    up = ax.MEASURE_UPSAMPLE
    return ((rows.mean() + 0.5) / up - 0.5, (cols.mean() + 0.5) / up - 0.5)


__all__ = [
    "CROP_SIZE",
    "CROP_SPACING_MM",
    "SacCrop",
    "intensity_window",
    "native_coords",
    "normalised_crop",
    "sac_centre_uv",
    "sample",
]
