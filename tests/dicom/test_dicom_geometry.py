"""Geometry against known transforms: affine columns, round trips, oblique and sheared stacks, sorting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_factory import AX_IOP, SAG_IOP, SeriesSpec, lumbar_specs, rotated_iop, rotation_x, write_series
from pydicom.uid import generate_uid

from cds.dicom import SeriesKind, load_study
from cds.dicom.geometry import (
    Orientation,
    Plane,
    obliquity_deg,
    patient_to_voxel,
    plane_affine,
    voxel_to_patient,
)


def _write_study(tmp_path: Path, specs: dict[str, SeriesSpec], shuffle: bool = True) -> None:
    study_uid = generate_uid()
    rng = np.random.default_rng(7)
    for spec in specs.values():
        order = rng.permutation(spec.n_slices).tolist() if shuffle else None
        write_series(tmp_path, spec, study_uid, order=order)


def test_affine_columns_follow_dicom_row_column_convention() -> None:
    o = Orientation.from_iop(AX_IOP)
    a = plane_affine(o, np.array([10.0, 20.0, 30.0]), (0.5, 0.8), np.array([0.0, 0.0, 3.0]))
    # one row down moves along the column cosine by the row spacing (PixelSpacing[0])
    np.testing.assert_allclose(voxel_to_patient(a, np.array([0.0, 1.0, 0.0])), [10.0, 20.5, 30.0])
    # one column right moves along the row cosine by the column spacing (PixelSpacing[1])
    np.testing.assert_allclose(voxel_to_patient(a, np.array([0.0, 0.0, 1.0])), [10.8, 20.0, 30.0])
    np.testing.assert_allclose(voxel_to_patient(a, np.array([2.0, 0.0, 0.0])), [10.0, 20.0, 36.0])
    assert o.plane is Plane.AXIAL and Orientation.from_iop(SAG_IOP).plane is Plane.SAGITTAL


def test_round_trip_voxel_patient_voxel_on_oblique_affine() -> None:
    rot = rotation_x(27.0) @ np.array(
        [[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]]
    )
    o = Orientation.from_iop(rotated_iop(AX_IOP, rot))
    a = plane_affine(o, np.array([-80.0, -40.0, 12.0]), (0.7, 0.9), o.normal * 3.3 + np.asarray(o.row) * 0.4)
    kij = np.random.default_rng(1).uniform(0, 100, size=(50, 3))
    np.testing.assert_allclose(patient_to_voxel(a, voxel_to_patient(a, kij)), kij, atol=1e-9)


@pytest.mark.parametrize("tilt", [0.0, 18.0, -32.0])
def test_oblique_axial_stack_known_rotation_and_shuffled_files(tmp_path: Path, tilt: float) -> None:
    specs = lumbar_specs(axial_tilt_deg=tilt)
    _write_study(tmp_path, specs)
    study = load_study(tmp_path)
    (axial,) = study.axial_t2
    spec = specs["ax_t2"]
    rot = rotation_x(tilt)
    expected_normal = rot @ np.array([0.0, 0.0, 1.0])  # axial normal row x col = +z, tilted
    np.testing.assert_allclose(axial.normal, expected_normal, atol=1e-5)
    assert axial.plane is Plane.AXIAL
    assert obliquity_deg(axial.normal) == pytest.approx(abs(tilt), abs=1e-3)
    assert axial.spacing_mm == pytest.approx((4.0, 0.8, 0.8), abs=1e-4)
    # every voxel maps where the writer put it: origin + t*step*n + i*0.8*col + j*0.8*row
    for k, i, j in [(0, 0, 0), (3, 5, 7), (6, 31, 31)]:
        expected = (
            spec.position(k) + i * 0.8 * (rot @ np.array(AX_IOP[3:])) + j * 0.8 * (rot @ np.array(AX_IOP[:3]))
        )
        np.testing.assert_allclose(axial.voxel_to_patient(np.array([k, i, j], float)), expected, atol=1e-3)
        np.testing.assert_allclose(axial.patient_to_voxel(expected), [k, i, j], atol=1e-3)
    # files were shuffled: slices must come back in position order (values encode the true slice)
    np.testing.assert_array_equal(axial.array[:, 0, 0], 100.0 * np.arange(1, 8))


def test_sagittal_sorted_along_normal_not_instance_number(tmp_path: Path) -> None:
    specs = lumbar_specs()
    _write_study(tmp_path, specs)
    sag = load_study(tmp_path).sagittal_t2
    assert sag.kind is SeriesKind.SAGITTAL_T2
    np.testing.assert_array_equal(sag.array[:, 0, 0], 100.0 * np.arange(1, 12))
    # normal of (0,1,0) x (0,0,-1) is -x: k runs towards patient right
    np.testing.assert_allclose(sag.normal, [-1.0, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(sag.affine[:3, 0], [-4.0, 0.0, 0.0], atol=1e-4)
    np.testing.assert_allclose(sag.affine[:3, 1], [0.0, 0.0, -1.0], atol=1e-6)  # rows run inferior
    np.testing.assert_allclose(sag.affine[:3, 2], [0.0, 1.0, 0.0], atol=1e-6)  # columns run posterior


def test_sheared_stack_keeps_in_plane_shift_in_affine(tmp_path: Path) -> None:
    specs = lumbar_specs()
    _write_study(tmp_path, {k: v for k, v in specs.items() if k != "ax_t2"})
    shear = SeriesSpec("AX T2", AX_IOP, (-10.0, -10.0, 0.0), 6, 3.0)
    study_uid = load_study(tmp_path).study_uid
    for t in range(shear.n_slices):  # gantry-tilt-like: each slice also shifts 0.5 mm posterior
        from dicom_factory import make_instance

        ds = make_instance(shear, t, study_uid)
        ds.ImagePositionPatient = [-10.0, -10.0 + 0.5 * t, 3.0 * t]
        ds.save_as(tmp_path / f"shear_{t}.dcm", enforce_file_format=True)
    (axial,) = load_study(tmp_path).axial_t2
    np.testing.assert_allclose(axial.affine[:3, 0], [0.0, 0.5, 3.0], atol=1e-6)
    assert axial.spacing_mm[0] == pytest.approx(3.0)
    np.testing.assert_allclose(
        axial.voxel_to_patient(np.array([4.0, 2.0, 1.0])), [-9.0, -6.0, 12.0], atol=1e-6
    )


def test_orientation_rejects_non_orthonormal_vectors() -> None:
    with pytest.raises(ValueError):
        Orientation.from_iop((1.0, 0.0, 0.0, 0.7, 0.7, 0.0))
    with pytest.raises(ValueError):
        Orientation.from_iop((2.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    # 6-decimal rounding as scanners write it is accepted and re-orthogonalised
    o = Orientation.from_iop(tuple(round(v, 6) for v in rotated_iop(AX_IOP, rotation_x(13.0))))
    assert abs(float(np.dot(o.row, o.col))) < 1e-12
