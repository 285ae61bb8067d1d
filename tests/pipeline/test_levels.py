"""Level labelling: discs counted up from the sacrum, uncertainty flagged for odd anatomy."""

from __future__ import annotations

import numpy as np

from cds.domain import Level
from cds.pipeline.levels import label_levels
from cds.pipeline.segment import SagittalMasks

SPACING = (1.0, 1.0)


def _spine(disc_heights: list[int], gap: int = 26, shape: tuple[int, int] = (320, 200)) -> SagittalMasks:
    """A straight synthetic spine: vertebral bodies of height ``gap`` separated by discs (cranial first)."""
    disc = np.zeros(shape, bool)
    vert = np.zeros(shape, bool)
    canal = np.zeros(shape, bool)
    row = 10
    for h in disc_heights:
        vert[row : row + gap, 60:100] = True
        row += gap
        disc[row : row + h, 60:100] = True
        row += h
    vert[row : row + 30, 60:100] = True  # the segment below the lowest disc
    canal[5 : row + 20, 105:118] = True
    return SagittalMasks(disc=disc, vertebra=vert, canal=canal)


def test_five_lumbar_below_thoracic_discs_are_labelled_from_the_sacrum() -> None:
    result = label_levels(_spine([4, 4, 9, 10, 10, 11, 10]), SPACING)
    assert not result.uncertain, result.reasons
    assert [d.level for d in result.discs] == [None, None, *list(Level)]
    rows = [d.centroid_voxel[1] for d in result.discs]
    assert rows == sorted(rows)  # cranial to caudal
    l5s1 = result.by_level()[Level.L5_S1]
    assert abs(l5s1.height_mm - 10) < 1.5
    assert abs(abs(l5s1.axis_rc[1]) - 1.0) < 1e-6  # horizontal disc: long axis along columns


def test_a_disc_above_l1_l2_taller_than_the_lumbar_ones_is_flagged() -> None:
    # Only clearly taller: on projected masks thoracic discs read 0.9-1.1 of the lumbar height.
    result = label_levels(_spine([4, 12, 10, 10, 10, 10, 10]), SPACING)
    assert result.uncertain
    assert any("sixth lumbar" in r for r in result.reasons)
    assert result.levels == tuple(Level)


def test_a_thoracic_disc_as_tall_as_the_lumbar_ones_is_not_flagged() -> None:
    result = label_levels(_spine([4, 10, 10, 10, 10, 10, 10]), SPACING)
    assert not result.uncertain, result.reasons


def test_thin_band_below_the_lowest_disc_is_the_sacral_remnant_not_l5_s1() -> None:
    # 3 px under 10 px discs: the fused S1-S2 line, not a disc; counting it would shift every level.
    result = label_levels(_spine([4, 9, 10, 10, 11, 10, 3]), SPACING)
    assert result.uncertain
    assert any("S1-S2 remnant" in r for r in result.reasons)
    assert result.levels == tuple(Level)
    assert result.by_level()[Level.L5_S1].height_mm > 8  # the 10 px disc, not the 3 px band


def test_moderately_thin_lowest_disc_is_counted_but_flagged() -> None:
    result = label_levels(_spine([4, 5, 10, 10, 10, 11, 7]), SPACING)
    assert result.uncertain
    assert any("rudimentary" in r for r in result.reasons)
    assert result.by_level()[Level.L5_S1].height_mm < 8


def test_disc_like_false_positive_away_from_the_spine_is_not_counted() -> None:
    masks = _spine([4, 4, 9, 10, 10, 11, 10])
    disc = masks.disc.copy()
    disc[300:312, 5:30] = True  # a bright bowel loop below and in front of the sacrum
    result = label_levels(SagittalMasks(disc, masks.vertebra, masks.canal), SPACING)
    assert result.levels == tuple(Level)
    assert result.by_level()[Level.L5_S1].centroid_voxel[1] < 300


def test_too_few_discs_give_partial_levels_and_a_flag() -> None:
    result = label_levels(_spine([10, 10, 11]), SPACING)
    assert result.uncertain
    assert result.levels == (Level.L3_L4, Level.L4_L5, Level.L5_S1)


def test_no_discs_do_not_crash() -> None:
    empty = np.zeros((50, 50), bool)
    result = label_levels(SagittalMasks(empty, empty, empty), SPACING)
    assert result.uncertain and result.discs == ()


def test_stack_uses_the_central_slices_and_reports_the_slice_coordinate() -> None:
    mid = _spine([4, 4, 9, 10, 10, 11, 10])
    blank = np.zeros_like(mid.disc)
    stack = SagittalMasks(
        disc=np.stack([blank, mid.disc, mid.disc, blank, blank, blank, blank]),
        vertebra=np.stack([blank, mid.vertebra, mid.vertebra, blank, blank, blank, blank]),
        canal=np.stack([blank, mid.canal, mid.canal, blank, blank, blank, blank]),
    )
    result = label_levels(stack, SPACING)
    assert not result.uncertain
    assert result.by_level()[Level.L4_L5].centroid_voxel[0] == 1.5
