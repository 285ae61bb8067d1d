"""Axial slice -> disc level through patient coordinates."""

from __future__ import annotations

import numpy as np
import pytest
from dicom_factory import AX_IOP, rotated_iop, rotation_x

from cds.dicom import SeriesKind, Volume
from cds.dicom.geometry import Orientation, plane_affine
from cds.dicom.levels import assign_axial_levels, slice_levels
from cds.domain import Level

# Disc centres along a lordotic curve (LPS mm): cranial discs higher (+z), lower ones more anterior.
DISCS = {
    Level.L1_L2: np.array([0.0, 10.0, 140.0]),
    Level.L2_L3: np.array([0.0, 6.0, 105.0]),
    Level.L3_L4: np.array([0.0, 2.0, 70.0]),
    Level.L4_L5: np.array([0.0, 0.0, 35.0]),
    Level.L5_S1: np.array([0.0, 4.0, 0.0]),
}


def axial_stack(
    centre_z: float, tilt_deg: float, n: int = 5, step: float = 4.0, centre_y: float = 0.0
) -> Volume:
    """A stack of n slices centred on (0, centre_y, centre_z), rows/cols 64 x 1 mm, tilted about x."""
    o = Orientation.from_iop(rotated_iop(AX_IOP, rotation_x(tilt_deg)))
    centre = np.array([0.0, centre_y, centre_z])
    first = centre - (n - 1) / 2 * step * o.normal - 31.5 * np.asarray(o.row) - 31.5 * np.asarray(o.col)
    affine = plane_affine(o, first, (1.0, 1.0), o.normal * step)
    return Volume(
        np.zeros((n, 64, 64), np.float32), affine, (step, 1.0, 1.0), "1.2.3", "AX T2", SeriesKind.AXIAL_T2
    )


def test_block_through_one_disc_gets_that_level() -> None:
    stack = axial_stack(35.0, tilt_deg=0.0, n=5, step=5.0)  # slices at z = 25, 30, 35, 40, 45
    assert assign_axial_levels(stack, DISCS) == (None, Level.L4_L5, Level.L4_L5, Level.L4_L5, None)


def test_tilted_block_with_disc_normals_uses_offset_along_the_spine_axis() -> None:
    tilt = 30.0
    stack = axial_stack(0.0, tilt_deg=tilt, n=5, step=3.0, centre_y=4.0)
    normal = rotation_x(tilt) @ np.array([0.0, 0.0, 1.0])  # the disc is parallel to the slices
    normals = {lv: normal for lv in DISCS}
    found = slice_levels(stack, DISCS, normals)
    assert [s.level for s in found] == [Level.L5_S1] * 5
    np.testing.assert_allclose([s.offset_mm or 0.0 for s in found], [-6.0, -3.0, 0.0, 3.0, 6.0], atol=1e-9)


def test_stack_covering_the_whole_lumbar_spine() -> None:
    stack = axial_stack(70.0, tilt_deg=0.0, n=71, step=2.0)  # z from 0 to 140 mm
    levels = assign_axial_levels(stack, DISCS)
    z = [stack.slice_centre(k)[2] for k in range(71)]
    for zk, level in zip(z, levels, strict=True):
        nearest = min(DISCS, key=lambda lv: abs(DISCS[lv][2] - zk))
        expected = nearest if abs(DISCS[nearest][2] - zk) <= 8.0 else None
        assert level == expected, (zk, level)
    assert {lv for lv in levels if lv} == set(DISCS)


def test_disc_outside_the_image_is_not_assigned() -> None:
    stack = axial_stack(
        35.0, tilt_deg=0.0, n=3, step=4.0, centre_y=200.0
    )  # FOV 200 mm posterior of the discs
    assert assign_axial_levels(stack, DISCS) == (None, None, None)


def test_tolerance_is_capped_by_neighbouring_discs() -> None:
    close = {Level.L4_L5: np.array([0.0, 0.0, 10.0]), Level.L5_S1: np.array([0.0, 0.0, 0.0])}
    stack = axial_stack(5.0, tilt_deg=0.0, n=1)
    # exactly half-way: both at 5 mm = half the 10 mm gap; the nearest wins deterministically, never beyond
    assert assign_axial_levels(stack, close, tolerance_mm=20.0)[0] in {Level.L4_L5, Level.L5_S1}
    stack2 = axial_stack(-6.0, tilt_deg=0.0, n=1)
    assert assign_axial_levels(stack2, close, tolerance_mm=20.0) == (None,)


def test_invalid_inputs_raise_value_error() -> None:
    stack = axial_stack(35.0, 0.0)
    with pytest.raises(ValueError):
        assign_axial_levels(stack, {Level.L4_L5: np.array([0.0, np.nan, 1.0])})
    with pytest.raises(ValueError):
        assign_axial_levels(stack, DISCS, {Level.L4_L5: np.zeros(3)})
    assert assign_axial_levels(stack, {}) == (None,) * 5


def test_different_frames_of_reference_are_refused() -> None:
    from dataclasses import replace

    from cds.errors import IngestError

    stack = replace(axial_stack(35.0, 0.0), frame_of_reference_uid="1.2.3.1")
    assert assign_axial_levels(stack, DISCS, discs_frame_of_reference_uid="1.2.3.1")[2] is Level.L4_L5
    with pytest.raises(IngestError) as info:
        assign_axial_levels(stack, DISCS, discs_frame_of_reference_uid="1.2.3.2")
    assert info.value.kind == "frame_of_reference_mismatch"
