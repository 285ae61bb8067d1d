"""The shipped sagittal model: verified load, and sensible masks on real held-out SPIDER slices."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cds.ml.spec import read_card
from cds.pipeline.levels import label_levels
from cds.pipeline.segment import MODEL_NAME, segment_sagittal_slice, segment_sagittal_volume
from cds.train.data import SPIDER_SPACING_MM, read_spider_patient
from cds.train.metrics import dice

SPIDER = Path(
    os.environ.get("CDS_SPIDER_DIR", Path(__file__).resolve().parents[3] / "shared/data/spider-t2-sagittal")
)
#: Floor for two central slices of a held-out patient; the card holds the full hold-out figures.
DICE_FLOOR = 0.75


@pytest.fixture(scope="module")
def held_out_slices() -> list:
    if not SPIDER.is_dir():
        pytest.skip(f"SPIDER data not present at {SPIDER}")
    patient = read_card(MODEL_NAME).training["spider"]["held_out_patients"][0]
    slices = read_spider_patient(SPIDER, patient)
    mid = len(slices) // 2
    return slices[mid - 1 : mid + 1]


def test_card_describes_the_shipped_weights() -> None:
    card = read_card(MODEL_NAME)
    assert card.labels == ("background", "disc", "vertebra", "canal")
    assert len(card.sha256) == 64
    assert card.training["spider"]["held_out_patients"]
    assert "SPIDER" in card.training["spider"]["credit"]


def test_real_slices_are_segmented_above_the_dice_floor(held_out_slices: list) -> None:
    for s in held_out_slices:
        masks = segment_sagittal_slice(s.image, SPIDER_SPACING_MM)
        assert masks.shape == s.image.shape
        scores = [
            dice(masks.disc, s.labels == 1),
            dice(masks.vertebra, s.labels == 2),
            dice(masks.canal, s.labels == 3),
        ]
        assert float(np.mean(scores)) > DICE_FLOOR, scores


def test_stack_masks_give_five_lumbar_levels(held_out_slices: list) -> None:
    stack = np.stack([s.image for s in held_out_slices])
    masks = segment_sagittal_volume(stack, SPIDER_SPACING_MM)
    assert masks.shape == stack.shape
    labelling = label_levels(masks, SPIDER_SPACING_MM)
    assert len(labelling.levels) == 5
