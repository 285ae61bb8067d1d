"""Scan planning: the series a lumbar spine protocol acquires, placed on this patient's anatomy.

A technologist plans the sagittal stacks on the localiser to cover T12 to the sacrum and angles each axial
stack along its disc; ``plan_sagittal`` and ``plan_axial`` do the same from the known anatomy, with the
random field of view, matrix, slice thickness/gap and small angulation errors real protocols show.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cds.domain import Level
from cds.synth.anatomy import V_INDEX
from cds.synth.curve import Pose, SpineCurve, rotation_xyz
from cds.synth.raster import SpineModel
from cds.synth.series import SeriesGeometry, SynthSeriesKind


@dataclass(frozen=True)
class StudyOptions:
    """Size knobs (tests use small images to stay fast)."""

    sag_matrix: tuple[int, ...] = (256, 288, 320)
    ax_matrix: tuple[int, ...] = (224, 256)
    min_sag_slices: int = 13


DESCRIPTIONS = {
    "SIEMENS": ("t2_tse_sag", "t1_tse_sag", "t2_tse_tra"),
    "GE MEDICAL SYSTEMS": ("Sag T2 FSE", "Sag T1 FSE", "Ax T2 FSE"),
    "Philips": ("T2W_TSE SAG", "T1W_TSE SAG", "T2W_TSE TRA"),
}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


def plan_sagittal(
    rng: np.random.Generator, curve: SpineCurve, model: SpineModel, pose: Pose, opts: StudyOptions
) -> SeriesGeometry:
    """Sagittal stack covering T12 to S2 (+ margins), mid-sagittal +- ~32 mm, anterior left, head up."""
    lay = model.lay
    top = pose.to_patient(curve.at(float(lay.body_hi[V_INDEX["T12"]]))[0])
    bot = pose.to_patient(curve.at(float(lay.body_lo[V_INDEX["S2"]]))[0])
    span = abs(top[2] - bot[2]) + 40.0
    fov = max(float(rng.uniform(280, 340)), span)
    m = int(rng.choice(opts.sag_matrix))
    ps = fov / m
    centre = 0.5 * (top + bot)
    # operators centre the field on the vertebral bodies or a little in front of them, so the spine lies in
    # the posterior half and the abdomen fills the anterior half (as in SPIDER); the T12-S2 chord midpoint
    # lies behind the lordotic L3, so take the anteroposterior centre from L3 itself
    l3 = pose.to_patient(curve.at(float(0.5 * (lay.body_lo[V_INDEX["L3"]] + lay.body_hi[V_INDEX["L3"]])))[0])
    centre[1] = float(l3[1] - rng.uniform(0, 25))
    centre[2] += float(rng.uniform(-10, 10))
    centre[0] = float(pose.translation[0] + rng.uniform(-2, 2))
    rz = np.deg2rad(rng.uniform(-3, 3))
    row = np.array([np.sin(rz), np.cos(rz), 0.0])  # anterior -> posterior across columns
    col = np.array([0.0, 0.0, -1.0])  # head -> feet down the rows
    if rng.random() < 0.25:  # thin contiguous slices, like a 3D SPACE/CUBE acquisition reformatted
        th = float(rng.uniform(1.2, 2.0))
        sp = th
    else:
        th = float(rng.uniform(2.5, 4.5))
        sp = th * float(rng.uniform(1.0, 1.2))
    n = max(opts.min_sag_slices, int(np.ceil(min(64.0, 40 * sp) / sp)) | 1)
    normal = np.cross(row, col)
    origin = centre - (n - 1) / 2 * sp * normal - (m - 1) / 2 * ps * (row + col)
    return SeriesGeometry(SynthSeriesKind.SAGITTAL_T2, m, m, (ps, ps), th, sp, n, row, col, origin)


def plan_axial(
    rng: np.random.Generator,
    curve: SpineCurve,
    model: SpineModel,
    pose: Pose,
    level: Level,
    opts: StudyOptions,
) -> SeriesGeometry:
    """Stack parallel to the disc plane of `level`, centred on the disc (a few degrees of operator error)."""
    s_mid = model.lay.disc_mid(level)
    p, t, n_ = curve.at(s_mid)
    jitter = rotation_xyz(float(rng.uniform(-3, 3)), 0.0, float(rng.uniform(-2, 2)))
    normal = _unit(pose.direction_to_patient(jitter @ t))
    row = _unit(pose.direction_to_patient(np.array([1.0, 0.0, 0.0])))
    row = _unit(row - (row @ normal) * normal)
    col = np.cross(normal, row)
    centre = pose.to_patient(p + n_ * float(rng.uniform(5, 30)))
    fov = float(rng.uniform(160, 220))
    m = int(rng.choice(opts.ax_matrix))
    ps = fov / m
    th = float(rng.uniform(3.0, 4.0))
    sp = th * float(rng.uniform(1.0, 1.15))
    n = int(rng.integers(3, 6))
    origin = centre - (n - 1) / 2 * sp * normal - (m - 1) / 2 * ps * (row + col)
    return SeriesGeometry(SynthSeriesKind.AXIAL_T2, m, m, (ps, ps), th, sp, n, row, col, origin, level)
