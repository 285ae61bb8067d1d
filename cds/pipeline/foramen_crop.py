"""Parasagittal crops through the neural foramina, cut from the sagittal T2 the quick read loaded.

Why parasagittal: FINDINGS.md grades foraminal narrowing by the foramen's cross-section on the
parasagittal plane through it (perineural fat around the exiting root); the axial stack of a level
(3-5 slices around the disc) sees only part of the foramen, the sagittal stack sees it whole.

Geometry, per (level, side), in patient space (LPS mm):

* origin: the labelled disc's centroid (it lies on the mid-sagittal block that was segmented);
* lateral axis: the sagittal slice normal, signed towards the side (patient left = +x);
* cranial axis: the disc normal (cranial) made orthogonal to the lateral axis, so the crop turns
  with the lordosis and every level is seen the same way up;
* posterior axis: completes the frame (patient posterior = +y).

Each crop is ``(len(LATERAL_OFFSETS_MM), SIZE, SIZE)``: one channel per lateral offset from the
disc centroid, medial to lateral, linearly interpolated between the native sagittal slices
(slice spacing 1.2-5.4 mm). Several offsets because the foramen's plane lies at the canal's
half-width + ~4 mm (13-19 mm on the synthetic anatomy) and the canal width is not measured on
the sagittal block; the network sees the whole band. Medial-to-lateral channel order is the same
for both sides, so one network with shared weights serves left and right (a left and a right
foramen look alike on a sagittal plane: the mirror of a sagittal view about the midline is a
view of the other side with the same in-plane orientation).

Rows run cranial -> caudal, columns anterior -> posterior. Intensities are scaled per study by
the 1st/99th percentiles over all of the study's foraminal crops, so the network sees tissue
contrast, not scanner gain. The same function builds the training crops (cds/train/foraminal.py)
and the quick read's inputs, so the two cannot drift apart.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cds.domain import Condition, Level, Side

if TYPE_CHECKING:
    from cds.dicom.volume import Volume

#: Lateral offsets (mm from the disc centroid) sampled as channels, medial to lateral.
LATERAL_OFFSETS_MM: tuple[float, ...] = (6.0, 9.5, 13.0, 16.5, 20.0, 23.5, 27.0)
SIZE = 48
SPACING_MM = 0.875  # 48 px = 42 mm
#: Crop window relative to the disc centroid (mm). The foramen lies behind the disc's posterior
#: margin (15-35 mm behind the centroid) and mostly above the disc (the generator's foramen box
#: runs from 16 mm below the disc to 22 mm above it); 42 mm either way covers it with room for
#: the centroid's error.
CRANIAL_TOP_MM = 30.0  # row 0 lies this far cranial of the disc centroid
POSTERIOR_START_MM = 4.5  # column 0 lies this far posterior of the centroid
IN_CHANNELS = len(LATERAL_OFFSETS_MM)
SIDES: tuple[Side, ...] = (Side.LEFT, Side.RIGHT)
CONDITION_OF_SIDE: Mapping[Side, Condition] = {
    Side.LEFT: Condition.LEFT_FORAMINAL,
    Side.RIGHT: Condition.RIGHT_FORAMINAL,
}


@dataclass(frozen=True)
class ForamenFrame:
    """Where one level's crops lie: origin and the three unit axes in patient LPS mm."""

    origin: np.ndarray  # (3,)
    lateral_left: np.ndarray  # (3,) towards patient left
    cranial: np.ndarray  # (3,)
    posterior: np.ndarray  # (3,)

    def points(self, side: Side, margin: int = 0) -> np.ndarray:
        """Patient coordinates of every crop pixel: (channels, SIZE + 2 margin, SIZE + 2 margin, 3).

        ``margin`` > 0 only for training, which cuts shifted SIZE windows out of the wider crop.
        """
        sign = 1.0 if side is Side.LEFT else -1.0
        lat = np.asarray(LATERAL_OFFSETS_MM, dtype=np.float64) * sign
        steps = np.arange(-margin, SIZE + margin, dtype=np.float64) * SPACING_MM
        z = CRANIAL_TOP_MM - steps
        p = POSTERIOR_START_MM + steps
        return (
            self.origin
            + lat[:, None, None, None] * self.lateral_left
            + z[None, :, None, None] * self.cranial
            + p[None, None, :, None] * self.posterior
        )


def frame_for(sagittal: Volume, centre: np.ndarray, disc_normal: np.ndarray) -> ForamenFrame:
    """The crop frame of one level from its disc centroid and cranial disc normal (patient mm)."""
    lateral = np.asarray(sagittal.normal, dtype=np.float64)
    if lateral[0] < 0:
        lateral = -lateral
    cranial = np.asarray(disc_normal, dtype=np.float64)
    cranial = cranial - float(cranial @ lateral) * lateral
    norm = float(np.linalg.norm(cranial))
    if norm < 1e-6:  # degenerate normal: fall back to the patient's head direction
        cranial = np.array([0.0, 0.0, 1.0]) - lateral[2] * lateral
        norm = float(np.linalg.norm(cranial))
    cranial = cranial / norm
    posterior = np.cross(cranial, lateral)
    if posterior[1] < 0:
        posterior = -posterior
    return ForamenFrame(np.asarray(centre, dtype=np.float64), lateral, cranial, posterior)


def _grid_matrix(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """4x4: patient LPS mm -> grid_sample's normalised (x=j, y=i, z=k) in [-1, 1]."""
    scale = 2.0 / np.maximum(np.asarray(shape, dtype=np.float64) - 1.0, 1.0)
    to_index = np.diag(np.append(scale, 1.0))
    to_index[:3, 3] = -1.0
    reorder = np.eye(4)[[2, 1, 0, 3]]  # (k, i, j) -> (x=j, y=i, z=k)
    return np.asarray(reorder @ to_index @ np.linalg.inv(affine))


def _grid(frame: ForamenFrame, side: Side, margin: int, m: np.ndarray) -> np.ndarray:
    """grid_sample coordinates of one crop, (channels, n, n, 3) float32.

    The frame's origin and axes are mapped once (4 vectors), then broadcast: no per-pixel
    matrix product (numpy hands those to a multi-threaded BLAS, which stalls on a busy CPU).
    """
    sign = 1.0 if side is Side.LEFT else -1.0
    lin = m[:3, :3]
    origin = (lin @ frame.origin + m[:3, 3]).astype(np.float32)
    lateral = (lin @ frame.lateral_left * sign).astype(np.float32)
    cranial = (lin @ frame.cranial).astype(np.float32)
    posterior = (lin @ frame.posterior).astype(np.float32)
    lat = np.asarray(LATERAL_OFFSETS_MM, dtype=np.float32)
    steps = np.arange(-margin, SIZE + margin, dtype=np.float32) * np.float32(SPACING_MM)
    z = np.float32(CRANIAL_TOP_MM) - steps
    p = np.float32(POSTERIOR_START_MM) + steps
    return np.asarray(
        origin
        + lat[:, None, None, None] * lateral
        + z[None, :, None, None] * cranial
        + p[None, None, :, None] * posterior,
        dtype=np.float32,
    )


def raw_crops(
    sagittal: Volume, frames: Mapping[Level, ForamenFrame], margin: int = 0
) -> dict[tuple[Level, Side], np.ndarray]:
    """Un-normalised crops (channels, SIZE, SIZE) for every level and side: trilinear samples of
    the sagittal volume (0 outside it), all in one torch ``grid_sample`` call."""
    import torch

    keys = [(lv, side) for lv in sorted(frames, key=lambda x: x.index) for side in SIDES]
    if not keys:
        return {}
    array = sagittal.array
    m = _grid_matrix(array.shape, np.asarray(sagittal.affine, dtype=np.float64))
    grid = np.stack([_grid(frames[lv], side, margin, m) for lv, side in keys])
    with warnings.catch_warnings():  # read-only Volume array: grid_sample only reads it
        warnings.simplefilter("ignore", UserWarning)
        volume = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    g = torch.from_numpy(grid).view(1, 1, 1, -1, 3)
    with torch.inference_mode():
        values = torch.nn.functional.grid_sample(
            volume, g, mode="bilinear", padding_mode="zeros", align_corners=True
        )
    out = values.numpy().reshape(grid.shape[:-1])
    return {key: out[i] for i, key in enumerate(keys)}


def intensity_window(crops: Mapping[tuple[Level, Side], np.ndarray]) -> tuple[float, float]:
    """(low, scale) of one study's crops: their 1st/99th percentiles (every 2nd pixel)."""
    if not crops:
        return 0.0, 1.0
    stacked = np.stack(list(crops.values()))
    lo, hi = np.percentile(stacked[:, :, ::2, ::2], (1.0, 99.0))
    return float(lo), float(hi - lo) if hi > lo else 1.0


def apply_window(crop: np.ndarray, lo: float, scale: float) -> np.ndarray:
    return np.clip((crop - lo) / scale, 0.0, 1.5).astype(np.float32)


def normalise(crops: Mapping[tuple[Level, Side], np.ndarray]) -> dict[tuple[Level, Side], np.ndarray]:
    """Scale all of one study's crops together to [0, 1] by their 1st/99th percentiles."""
    lo, scale = intensity_window(crops)
    return {k: apply_window(v, lo, scale) for k, v in crops.items()}


def foramen_crops(
    sagittal: Volume,
    centres: Mapping[Level, np.ndarray],
    normals: Mapping[Level, np.ndarray],
) -> dict[tuple[Level, Side], np.ndarray]:
    """The model inputs of every labelled level and both sides, normalised per study.

    ``sagittal`` must be the model-oriented volume whose segmentation gave ``centres`` and
    ``normals`` (cds.pipeline.quick_read.disc_locations).
    """
    frames = {lv: frame_for(sagittal, centres[lv], normals[lv]) for lv in centres}
    return normalise(raw_crops(sagittal, frames))


__all__ = [
    "CONDITION_OF_SIDE",
    "IN_CHANNELS",
    "LATERAL_OFFSETS_MM",
    "SIDES",
    "SIZE",
    "ForamenFrame",
    "apply_window",
    "foramen_crops",
    "frame_for",
    "intensity_window",
    "normalise",
    "raw_crops",
]
