"""The sagittal trainer's canal-weighted loss: the canal's errors get a larger share of the loss."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from cds.pipeline.segment import CANAL, LABELS, VERTEBRA
from cds.train.sagittal import TrainConfig, class_weighted_dice_ce_loss, dice_ce_loss, sagittal_loss


def _labels() -> torch.Tensor:
    labels = torch.zeros(1, 24, 24, dtype=torch.int64)
    labels[0, 2:10, 2:10] = VERTEBRA
    labels[0, 12:22, 14:18] = CANAL
    return labels


def _logits_of(labels: torch.Tensor) -> torch.Tensor:
    """Confident logits that reproduce ``labels``."""
    logits = torch.full((1, len(LABELS), *labels.shape[1:]), -4.0)
    logits.scatter_(1, labels[:, None], 4.0)
    return logits


def _missing(labels: torch.Tensor, cls: int, n: int) -> torch.Tensor:
    """Logits with the first ``n`` pixels of class ``cls`` called background instead."""
    wrong = labels.clone()
    rows, cols = torch.nonzero(labels[0] == cls, as_tuple=True)
    wrong[0, rows[:n], cols[:n]] = 0
    return _logits_of(wrong)


def test_unit_weight_is_the_plain_loss() -> None:
    labels = _labels()
    logits = _missing(labels, CANAL, 8)
    assert sagittal_loss(1.0) is dice_ce_loss
    assert TrainConfig().canal_weight == 1.0
    same = class_weighted_dice_ce_loss([1.0] * len(LABELS))
    assert float(same(logits, labels)) == pytest.approx(float(dice_ce_loss(logits, labels)), rel=1e-5)


def test_canal_weight_raises_the_cost_of_canal_errors_more_than_of_vertebra_errors() -> None:
    labels = _labels()
    perfect = _logits_of(labels)
    weighted = sagittal_loss(2.0)

    def gap(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], logits: torch.Tensor) -> float:
        return float(loss(logits, labels) - loss(perfect, labels))

    canal_miss, vertebra_miss = _missing(labels, CANAL, 8), _missing(labels, VERTEBRA, 8)
    canal_ratio = gap(weighted, canal_miss) / gap(dice_ce_loss, canal_miss)
    vertebra_ratio = gap(weighted, vertebra_miss) / gap(dice_ce_loss, vertebra_miss)
    assert canal_ratio > 1.2
    assert vertebra_ratio < 1.0  # the vertebra's share falls when the canal's rises
    assert canal_ratio > 1.5 * vertebra_ratio


@pytest.mark.parametrize("weights", [[1.0, 1.0, 0.0, 1.0], [1.0], [-1.0, 1.0, 1.0, 1.0]])
def test_invalid_weights_are_rejected(weights: list[float]) -> None:
    with pytest.raises(ValueError, match="class weights"):
        class_weighted_dice_ce_loss(weights)
