"""The straightened spine frame: (u, v, s) -> anatomy -> (u, v, s) round trip, and the pose."""

from __future__ import annotations

import numpy as np

from cds.domain import Level
from cds.synth.anatomy import LevelDrivers, sample_anatomy
from cds.synth.curve import FrameMap, Pose, SpineCurve, rotation_xyz
from cds.synth.raster import SpineModel


def test_straightened_frame_round_trip() -> None:
    anat = sample_anatomy(np.random.default_rng(4), tuple(LevelDrivers() for _ in Level))
    model = SpineModel(anat)
    curve = SpineCurve.from_anatomy(anat, float(model.lay.body_hi[3]))
    rng = np.random.default_rng(1)
    u = rng.uniform(-60, 60, 500)
    v = rng.uniform(-40, 90, 500)  # well inside the radius of curvature
    s = rng.uniform(-60, 300, 500)
    a = curve.to_anatomy(u, v, s)
    frame = FrameMap(
        curve, (float(a[:, 1].min()), float(a[:, 1].max())), (float(a[:, 2].min()), float(a[:, 2].max()))
    )
    u2, v2, s2 = frame.to_frame(a)
    np.testing.assert_allclose(u2, u, atol=1e-9)
    # table lookup + one projection step: exact to ~0.1 mm, a sixth of the 0.6 mm volume voxel
    np.testing.assert_allclose(v2, v, atol=0.15)
    np.testing.assert_allclose(s2, s, atol=0.15)


def test_curve_is_lordotic_and_posterior_normal_points_back() -> None:
    anat = sample_anatomy(np.random.default_rng(5), tuple(LevelDrivers() for _ in Level))
    model = SpineModel(anat)
    curve = SpineCurve.from_anatomy(anat, float(model.lay.body_hi[3]))
    _, t_s1, n_s1 = curve.at(0.0)
    _, t_l1, _ = curve.at(float(model.lay.body_hi[3]))
    assert t_s1[2] > 0 and n_s1[1] > 0  # cranial tangent, posterior normal (LPS y+)
    # the sacrum is tilted forward going up (sacral slope) more than L1 is
    assert -t_s1[1] > -t_l1[1]
    np.testing.assert_allclose(np.cross([1.0, 0, 0], n_s1), t_s1, atol=1e-9)  # (u, v, s) is right-handed


def test_pose_round_trip() -> None:
    pose = Pose(rotation_xyz(5.0, -2.0, 3.0), np.array([3.0, -12.0, 40.0]))
    p = np.random.default_rng(0).normal(0, 50, (10, 3))
    np.testing.assert_allclose(pose.to_anatomy(pose.to_patient(p)), p, atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(pose.rotation), 1.0, atol=1e-12)
