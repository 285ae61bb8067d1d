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
from cds.synth.softtissue import soft_tissue


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

    def lookup(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient points (N, 3) -> (internal label, cause id, v coordinate)."""
        a = self.pose.to_anatomy(p)
        u, v, s = self.frame.to_frame(a)
        g = self.grid
        du = float(g.u[1] - g.u[0])
        iu = np.rint((u - g.u[0]) / du).astype(np.int64)
        iv = np.rint((v - g.v[0]) / du).astype(np.int64)
        is_ = np.rint((s - g.s[0]) / du).astype(np.int64)
        nu, nv, ns = g.shape
        ok = (iu >= 0) & (iu < nu) & (iv >= 0) & (iv < nv) & (is_ >= 0) & (is_ < ns)
        lab = np.zeros(u.shape, np.uint8)
        cau = np.zeros(u.shape, np.uint8)
        flat = (iu[ok] * nv + iv[ok]) * ns + is_[ok]
        lab[ok] = self.labels.ravel()[flat]
        cau[ok] = self.causes.ravel()[flat]
        empty = lab == 0
        if empty.any():
            lab[empty] = soft_tissue(self.model, u[empty], v[empty], s[empty])
        return lab, cau, v


@dataclass(frozen=True)
class SampledSeries:
    sub_labels: np.ndarray  # (n, rows, cols, n_sub) internal ids for partial-volume signal
    labels: np.ndarray  # (n, rows, cols) internal id at the pixel centre
    causes: np.ndarray  # (n, rows, cols) cause id at the pixel centre
    v: np.ndarray  # (n, rows, cols) posterior coordinate (for the coil profile)


def sample_series(geom: SeriesGeometry, scene: Scene) -> SampledSeries:
    th = geom.slice_thickness
    through = [-th / 3, 0.0, th / 3] if th > 1.8 else [0.0]
    inplane = [(-0.25, -0.25), (-0.25, 0.25), (0.25, -0.25), (0.25, 0.25)]
    n, r, c = geom.n_slices, geom.rows, geom.cols
    nsub = len(through) * len(inplane)
    sub = np.zeros((n, r, c, nsub), np.uint8)
    lab = np.zeros((n, r, c), np.uint8)
    cau = np.zeros((n, r, c), np.uint8)
    vv = np.zeros((n, r, c), np.float32)
    for k in range(n):
        m = 0
        for dt in through:
            kk = k + dt / geom.slice_spacing
            for di, dj in inplane:
                lb, _, _ = scene.lookup(geom.points(kk, di, dj).reshape(-1, 3))
                sub[k, :, :, m] = lb.reshape(r, c)
                m += 1
        lb, cb, v = scene.lookup(geom.points(k).reshape(-1, 3))
        lab[k], cau[k], vv[k] = lb.reshape(r, c), cb.reshape(r, c), v.reshape(r, c)
    return SampledSeries(sub, lab, cau, vv)
