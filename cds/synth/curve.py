"""The spine centre line, the straightened frame built on it, and the patient pose.

Coordinate conventions (used throughout cds.synth):

* **Patient frame**: DICOM LPS, millimetres. x grows to the patient's Left, y to Posterior, z to Superior.
  Every DICOM geometry tag we write (ImagePositionPatient, ImageOrientationPatient) is in this frame.
* **Anatomy frame**: LPS-aligned frame of the patient's body before it is placed in the scanner. The
  vertebral-body centre line lies in its mid-sagittal plane x = 0 and passes through the origin at the S1
  superior endplate. ``Pose`` maps anatomy -> patient: p = R @ a + t (in-plane rotation, small obliquity,
  table position).
* **Straightened frame (u, v, s)**: u = x (left +), s = arc length along the centre line (cranial +),
  v = signed distance from the centre line along its in-plane normal (posterior +). The point is
  a = (u, 0, 0) + c(s) + v * n(s). A constant-s plane is the plane perpendicular to the centre line, so
  at a disc centre it is the plane parallel to the disc (where FINDINGS.md measures DSCA).

Lordosis is an angle phi(s) between the centre line's tangent and the patient's superior axis,
positive when the line runs anteriorly going up (the sacrum and lower lumbar spine).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from cds.synth.anatomy import Anatomy

_DS = 0.25  # curve sampling step (mm)
S_MIN, S_MAX = -140.0, 440.0


@dataclass(frozen=True)
class SpineCurve:
    """Centre line samples c(s), tangent t(s), posterior normal n(s) in the anatomy frame (y, z only)."""

    s: np.ndarray  # (n,)
    c: np.ndarray  # (n, 2) (y, z)
    t: np.ndarray  # (n, 2)
    n: np.ndarray  # (n, 2)

    @classmethod
    def from_anatomy(cls, anat: Anatomy, lumbar_length: float) -> SpineCurve:
        s = np.arange(S_MIN, S_MAX + _DS / 2, _DS)
        ss = np.deg2rad(anat.sacral_slope_deg)
        ll = np.deg2rad(anat.lordosis_deg)
        x = np.clip(s / lumbar_length, 0.0, 1.0)
        # most of the lordosis sits in L3-S1 (as in SPIDER), the thoracolumbar junction is nearly straight:
        # F(x) = 1 - (1 - x)^2.6
        phi = ss - ll * (1.0 - (1.0 - x) ** 2.6)
        above = s > lumbar_length
        # thoracic kyphosis starts gently above L1 (ramps in over 60 mm) instead of continuing one C curve
        ramp = np.clip((s[above] - lumbar_length) / 60.0, 0.0, 1.0)
        phi[above] -= np.deg2rad(anat.kyphosis_deg_per_100mm) * ramp * (s[above] - lumbar_length) / 100.0
        below = s < 0
        phi[below] += np.deg2rad(anat.sacral_kyphosis_deg_per_100mm) * (-s[below]) / 100.0
        t = np.stack([-np.sin(phi), np.cos(phi)], axis=1)
        n = np.stack([np.cos(phi), np.sin(phi)], axis=1)
        # integrate the tangent (trapezoid) with c(0) = 0
        steps = 0.5 * (t[1:] + t[:-1]) * _DS
        c = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
        c -= c[np.argmin(np.abs(s))]
        return cls(s=s, c=c, t=t, n=n)

    def at(self, s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(point, tangent, normal) at arc length s, as 3-vectors in the anatomy frame."""
        k = int(np.clip(np.round((s - S_MIN) / _DS), 0, len(self.s) - 1))
        ds = s - self.s[k]
        p = self.c[k] + ds * self.t[k]
        return (np.array([0.0, p[0], p[1]]), np.array([0.0, *self.t[k]]), np.array([0.0, *self.n[k]]))

    def to_anatomy(self, u: np.ndarray, v: np.ndarray, s: np.ndarray) -> np.ndarray:
        """Straightened (u, v, s) -> anatomy-frame points (..., 3)."""
        k = np.clip(np.round((s - S_MIN) / _DS).astype(int), 0, len(self.s) - 1)
        ds = s - self.s[k]
        yz = self.c[k] + ds[..., None] * self.t[k] + v[..., None] * self.n[k]
        return np.stack([u, yz[..., 0], yz[..., 1]], axis=-1)


@dataclass(frozen=True)
class Pose:
    """Rigid placement of the anatomy in the scanner: patient = R @ anatomy + t."""

    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,)

    def to_patient(self, a: np.ndarray) -> np.ndarray:
        return a @ self.rotation.T + self.translation

    def to_anatomy(self, p: np.ndarray) -> np.ndarray:
        return (p - self.translation) @ self.rotation

    def direction_to_patient(self, d: np.ndarray) -> np.ndarray:
        return self.rotation @ d


def rotation_xyz(rx_deg: float, ry_deg: float, rz_deg: float) -> np.ndarray:
    """Rotation about x (sagittal in-plane tilt), then y, then z (degrees)."""
    rx, ry, rz = np.deg2rad([rx_deg, ry_deg, rz_deg])
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return mz @ my @ mx


class FrameMap:
    """Anatomy (y, z) -> straightened (s, v), tabulated on a 1 mm grid and refined by projection.

    Why a table: the nearest centre-line point of millions of sample points would cost a KD-tree query
    each; the map depends on (y, z) only, so a small 2-D table interpolated bilinearly is exact enough
    after one projection step onto the local tangent.
    """

    def __init__(self, curve: SpineCurve, y_range: tuple[float, float], z_range: tuple[float, float]):
        self.curve = curve
        step = 2.0
        self.y0, self.z0 = y_range[0] - 2, z_range[0] - 2
        ny = int(np.ceil((y_range[1] - y_range[0] + 4) / step)) + 1
        nz = int(np.ceil((z_range[1] - z_range[0] + 4) / step)) + 1
        yy, zz = np.meshgrid(self.y0 + np.arange(ny) * step, self.z0 + np.arange(nz) * step, indexing="ij")
        tree = cKDTree(curve.c)
        _, k = tree.query(np.stack([yy.ravel(), zz.ravel()], axis=1))
        self.s_index = k.reshape(ny, nz).astype(np.float32)
        self.step = step

    def to_frame(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Anatomy points (..., 3) -> (u, v, s) arrays of shape (...)."""
        u, v, s, _, _ = self.to_frame_with_basis(a)
        return u, v, s

    def to_frame_with_basis(
        self, a: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(u, v, s) plus the local tangent and normal (..., 2) in (y, z), for first-order offsets."""
        y, z = a[..., 1], a[..., 2]
        coords = np.stack([((y - self.y0) / self.step).ravel(), ((z - self.z0) / self.step).ravel()])
        kf = ndimage.map_coordinates(self.s_index, coords, order=1, mode="nearest").reshape(y.shape)
        k = np.clip(np.round(kf).astype(np.int64), 0, len(self.curve.s) - 1)
        c, t, n = self.curve.c[k], self.curve.t[k], self.curve.n[k]
        dy, dz = y - c[..., 0], z - c[..., 1]
        s = self.curve.s[k] + dy * t[..., 0] + dz * t[..., 1]
        v = dy * n[..., 0] + dz * n[..., 1]
        return a[..., 0], v, s, t, n
