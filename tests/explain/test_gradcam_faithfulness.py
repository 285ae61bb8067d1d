"""Faithfulness scoring pieces: distance to a voxel region, the cause mask on a crop, the report."""

from __future__ import annotations

import numpy as np
import pytest

from cds.dicom.selection import SeriesKind
from cds.dicom.volume import Volume
from cds.domain import Condition, Grade, Level
from cds.explain.faithfulness import (
    FaithfulnessReport,
    FindingScore,
    Rate,
    crop_cause_mask,
    distance_to_region_mm,
)
from cds.explain.gradcam_geometry import placement_for
from cds.pipeline import axial as ax


def _axial_volume() -> Volume:
    affine = np.eye(4)
    affine[:3, 0] = [0.0, 0.0, 4.0]  # slices 4 mm apart along +z
    affine[:3, 1] = [0.0, 0.8, 0.0]  # rows run posterior
    affine[:3, 2] = [0.8, 0.0, 0.0]  # columns run to patient left
    affine[:3, 3] = [-50.0, -60.0, 10.0]
    return Volume(
        np.zeros((3, 120, 120), dtype=np.float32), affine, (4.0, 0.8, 0.8), "1.2.3", "ax", SeriesKind.AXIAL_T2
    )


def test_distance_is_zero_inside_and_counts_box_edges() -> None:
    vol = _axial_volume()
    mask = np.zeros(vol.shape, dtype=np.uint8)
    mask[1, 50, 60] = 1
    centre = vol.voxel_to_patient(np.array([1.0, 50.0, 60.0]))
    assert distance_to_region_mm(centre, mask, vol) == 0.0
    # 3 columns away: 2.5 voxels outside the box of 0.8 mm -> 2.0 mm.
    off = vol.voxel_to_patient(np.array([1.0, 50.0, 63.0]))
    assert distance_to_region_mm(off, mask, vol) == pytest.approx(2.0)
    # One slice up: 0.5 slice outside the box (4 mm slices) -> 2.0 mm.
    up = vol.voxel_to_patient(np.array([2.0, 50.0, 60.0]))
    assert distance_to_region_mm(up, mask, vol) == pytest.approx(2.0)
    assert distance_to_region_mm(centre, np.zeros_like(mask), vol) == float("inf")


def test_crop_cause_mask_lands_where_the_cause_is() -> None:
    vol = _axial_volume()
    mask = np.zeros(vol.shape, dtype=np.uint8)
    mask[1, 40:44, 70:74] = 1  # posterior-left of the slice centre
    frame = ax.canonical_frame(vol.affine, vol.shape[1:])
    placement = placement_for((80, 80), 96, frame, 1, vol.affine, vol.series_uid)
    crop_mask = crop_cause_mask(mask, vol, placement)
    assert crop_mask.shape == (96, 96) and crop_mask.any()
    rows, cols = np.nonzero(crop_mask)
    native = placement.crop_to_native(np.column_stack([rows, cols]).astype(float))
    assert np.all((native[:, 0] > 39) & (native[:, 0] < 44.5) & (native[:, 1] > 69) & (native[:, 1] < 74.5))
    other_slice = placement_for((80, 80), 96, frame, 0, vol.affine, vol.series_uid)
    assert not crop_cause_mask(mask, vol, other_slice).any()


def _score(cond: Condition, hit: bool, top: float, rand: float) -> FindingScore:
    return FindingScore(
        "s", Level.L4_L5, cond, Grade.SEVERE, Level.L4_L5, hit, 0.0 if hit else 9.0, 0.8, top, rand
    )


def test_report_json_figures() -> None:
    scores = (
        _score(Condition.SPINAL_CANAL, True, 0.3, 0.01),
        _score(Condition.SPINAL_CANAL, True, 0.2, 0.02),
        _score(Condition.LEFT_SUBARTICULAR, False, 0.0, 0.05),
    )
    report = FaithfulnessReport(2, scores, scores[:1], Rate(3, 4), {"true_level_not_analysed": 1})
    js = report.to_json()
    assert js["pointing_game"] == {"hits": 2, "n": 3, "rate": round(2 / 3, 4)}
    assert js["pointing_game_by_condition"]["spinal_canal"]["rate"] == 1.0
    assert js["pointing_game_by_condition"]["right_foraminal"] == {"hits": 0, "n": 0, "rate": None}
    assert js["pointing_game_end_to_end"]["n"] == 1
    assert js["deletion"]["holds"]["hits"] == 2 and js["deletion"]["score"] == "present logit"
    assert js["deletion"]["changes_more"]["hits"] == 2 and js["deletion"]["raises"] == 0
    assert js["deletion_by_condition"]["spinal_canal"]["holds"] == {"hits": 2, "n": 2, "rate": 1.0}
    assert js["deletion_by_condition"]["left_subarticular"]["holds"]["hits"] == 0
    assert js["deletion_by_condition"]["left_foraminal"]["mean_drop_top"] is None
    assert js["level_agreement"]["rate"] == 0.75
    assert "findings" not in js and len(report.to_json(include_findings=True)["findings"]) == 3


def test_deletion_batch_deletes_the_top_decile_and_random_places() -> None:
    from cds.explain.faithfulness import (
        DELETION_RANDOM_REPEATS,
        deletion_batch,
        deletion_result,
    )

    crop = np.zeros((2, 40, 40), np.float32)
    crop[:, 10:14, 10:14] = 100.0  # a bright blob: what the toy "class score" counts
    crop_map = np.zeros((40, 40), np.float32)
    crop_map[8:16, 8:16] = 1.0  # the map marks the blob (and a bit around it): top decile = 64 px
    crop_map[0, 0] = 0.5
    batch = deletion_batch(crop, crop_map, np.random.default_rng(0))
    assert batch.shape == (2 + DELETION_RANDOM_REPEATS, 2, 40, 40)
    assert np.array_equal(batch[0], crop)
    changed = np.any(batch[1] != crop, axis=0)
    # Only the map's non-zero pixels (65, fewer than the decile's 160) may change: a mostly-zero
    # ReLU map must not make the whole crop its "top region".
    assert changed.sum() <= 65 and changed[10:14, 10:14].all() and not changed[20:, 20:].any()
    scores = batch[:, :, 10:14, 10:14].mean(axis=(1, 2, 3))
    base, top, rand = deletion_result(scores)
    assert base == 100.0 and top > 50.0 and top > rand  # blurring the blob away removes its evidence


def test_top_region_is_the_highest_decile_of_nonzero_pixels() -> None:
    from cds.explain.faithfulness import top_region

    dense = np.arange(100, dtype=np.float32).reshape(10, 10)
    top = top_region(dense)
    assert top.sum() == 10 and top.ravel()[90:].all()
    sparse = np.zeros((10, 10), np.float32)
    sparse[0, :3] = 1.0
    assert top_region(sparse).sum() == 3
    assert not top_region(np.zeros((10, 10), np.float32)).any()
