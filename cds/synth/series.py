"""Series geometry (what the DICOM tags say) and sampling of the anatomy onto it (partial volume).

A series is a stack of parallel slices: ``row_dir`` / ``col_dir`` are the DICOM ImageOrientationPatient
vectors (row_dir = direction of increasing column index), slice k's first pixel is at
``origin + k * spacing * normal`` with ``normal = row_dir x col_dir``, so instance order, the slice normal
and ImagePositionPatient always agree. ``affine`` maps (k, i, j, 1) -> LPS mm, i = row, j = column,
the index order of the label volumes written beside the DICOM files.

Partial volume: each pixel averages the tissue signal of 2 x 2 in-plane sub-samples times up to three
through-plane sub-samples spread over the slice thickness; the ground-truth label is the label at the
pixel centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from cds.domain import Level
from cds.synth.curve import FrameMap, Pose
from cds.synth.raster import Grid, SpineModel
from cds.synth.softtissue import TrunkOutline, soft_tissue


class SynthSeriesKind(StrEnum):
    SAGITTAL_T2 = "sagittal_t2"
    SAGITTAL_T1 = "sagittal_t1"
    AXIAL_T2 = "axial_t2"


@dataclass(frozen=True)
class SeriesGeometry:
    kind: SynthSeriesKind
    rows: int
    cols: int
    pixel_spacing: tuple[float, float]  # (between rows, between columns) as DICOM PixelSpacing
    slice_thickness: float
    slice_spacing: float
    n_slices: int
    row_dir: np.ndarray  # unit, patient LPS
    col_dir: np.ndarray
    origin: np.ndarray  # centre of pixel (0, 0) of slice 0
    level: Level | None = None

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    @property
    def affine(self) -> np.ndarray:
        """(k, i, j, 1) -> LPS mm."""
        m = np.eye(4)
        m[:3, 0] = self.normal * self.slice_spacing
        m[:3, 1] = self.col_dir * self.pixel_spacing[0]
        m[:3, 2] = self.row_dir * self.pixel_spacing[1]
        m[:3, 3] = self.origin
        return m

    def slice_position(self, k: int) -> np.ndarray:
        return self.origin + k * self.slice_spacing * self.normal

    def points(self, k: float, di: float = 0.0, dj: float = 0.0) -> np.ndarray:
        """LPS coordinates (rows, cols, 3) of slice k's pixel centres shifted by (di, dj) pixels."""
        i = (np.arange(self.rows, dtype=np.float64) + di) * self.pixel_spacing[0]
        j = (np.arange(self.cols, dtype=np.float64) + dj) * self.pixel_spacing[1]
        base = self.origin + k * self.slice_spacing * self.normal
        return base + i[:, None, None] * self.col_dir + j[None, :, None] * self.row_dir

    def corners(self) -> np.ndarray:
        out = []
        for k in (0, self.n_slices - 1):
            for i in (0, self.rows - 1):
                for j in (0, self.cols - 1):
                    out.append(self.affine @ np.array([k, i, j, 1.0]))
        return np.array(out)[:, :3]


@dataclass(frozen=True)
class Scene:
    """Everything needed to look up the tissue at any patient-space point."""

    model: SpineModel
    pose: Pose
    frame: FrameMap
    grid: Grid
    labels: np.ndarray  # internal ids on grid
    causes: np.ndarray
    trunk: TrunkOutline

    def volume_labels(self, u: np.ndarray, v: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest-voxel (internal label, cause id) of the spine volume; 0 outside it."""
        # The grid's outermost voxels are empty (see study.py), so clipping out-of-volume indices onto the
        # border returns 0 without a validity mask.
        g = self.grid
        inv = 1.0 / float(g.u[1] - g.u[0])
        nu, nv, ns = g.shape
        iu = np.clip(np.rint((u - g.u[0]) * inv), 0, nu - 1).astype(np.int32)
        iv = np.clip(np.rint((v - g.v[0]) * inv), 0, nv - 1).astype(np.int32)
        is_ = np.clip(np.rint((s - g.s[0]) * inv), 0, ns - 1).astype(np.int32)
        flat = (iu.astype(np.int64) * nv + iv) * ns + is_
        return self.labels.ravel()[flat], self.causes.ravel()[flat]


@dataclass(frozen=True)
class SampledSeries:
    sub_labels: np.ndarray  # (n, rows, cols, n_sub) internal ids for partial-volume signal
    labels: np.ndarray  # (n, rows, cols) internal id at the pixel centre
    causes: np.ndarray  # (n, rows, cols) cause id at the pixel centre
    v: np.ndarray  # (n, rows, cols) posterior coordinate (for the coil profile)


def sample_series(geom: SeriesGeometry, scene: Scene) -> SampledSeries:
    """Sample the scene on the series grid.

    Sub-sample offsets are applied to the straightened coordinates to first order (local tangent and
    normal of the centre line), which is exact to well under a voxel for offsets of a few millimetres,
    and soft tissue (smooth, large structures) is evaluated at the pixel centre only: both keep the cost
    at about one full coordinate transform per pixel.
    """
    th = geom.slice_thickness
    through = [-th / 3, 0.0, th / 3] if th > 1.8 else [0.0]
    # two diagonal in-plane sub-samples per through-plane position, rotated between positions
    inplane = (
        [(-0.25, -0.25), (0.25, 0.25)]
        if len(through) > 1
        else [(-0.25, -0.25), (-0.25, 0.25), (0.25, -0.25), (0.25, 0.25)]
    )
    n, r, c = geom.n_slices, geom.rows, geom.cols
    nsub = len(through) * len(inplane)
    sub = np.zeros((n, r, c, nsub), np.uint8)
    lab = np.zeros((n, r, c), np.uint8)
    cau = np.zeros((n, r, c), np.uint8)
    vv = np.zeros((n, r, c), np.float32)
    rot_t = scene.pose.rotation.T
    offsets = []
    for n_t, dt in enumerate(through):
        for di, dj in inplane:
            if n_t % 2 == 1:
                di = -di
            dp = di * geom.pixel_spacing[0] * geom.col_dir + dj * geom.pixel_spacing[1] * geom.row_dir
            offsets.append(rot_t @ (dp + dt * geom.normal))
    for k in range(n):
        a = scene.pose.to_anatomy(geom.points(k).reshape(-1, 3))
        u, v, s, t, nn = scene.frame.to_frame_with_basis(a)
        spine, cb = scene.volume_labels(u, v, s)
        soft = soft_tissue(scene.model, scene.trunk, a, u, v, s)
        centre = np.where(spine > 0, spine, soft)
        lab[k], cau[k], vv[k] = centre.reshape(r, c), cb.reshape(r, c), v.reshape(r, c)
        for m, d in enumerate(offsets):
            dv = d[1] * nn[:, 0] + d[2] * nn[:, 1]
            ds = d[1] * t[:, 0] + d[2] * t[:, 1]
            lb, _ = scene.volume_labels(u + d[0], v + dv, s + ds)
            sub[k, :, :, m] = np.where(lb > 0, lb, soft).reshape(r, c)
    return SampledSeries(sub, lab, cau, vv)
