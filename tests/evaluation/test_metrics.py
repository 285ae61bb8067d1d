"""Metric maths against values worked out by hand (comments show the arithmetic)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cds.evaluation import metrics as m


def test_auroc_counts_correctly_ordered_pairs() -> None:
    # positives 0.9, 0.4; negatives 0.6, 0.1: pairs (0.9>0.6, 0.9>0.1, 0.4<0.6, 0.4>0.1) -> 3/4
    assert m.auroc([1, 1, 0, 0], [0.9, 0.4, 0.6, 0.1]) == pytest.approx(0.75)


def test_auroc_ties_count_one_half() -> None:
    # positive 0.5 vs negatives 0.5 (tie: 1/2) and 0.2 (win: 1) -> 1.5 / 2
    assert m.auroc([1, 0, 0], [0.5, 0.5, 0.2]) == pytest.approx(0.75)


def test_auroc_undefined_with_one_class() -> None:
    assert m.auroc([1, 1], [0.2, 0.3]) is None
    assert m.auroc([], []) is None


def test_roc_curve_points_and_area_match_auroc() -> None:
    fpr, tpr = m.roc_curve([1, 1, 0, 0], [0.9, 0.4, 0.6, 0.1])
    # thresholds 0.9 (P), 0.6 (N), 0.4 (P), 0.1 (N)
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(0.75)


def test_roc_curve_groups_tied_scores() -> None:
    fpr, tpr = m.roc_curve([1, 0], [0.5, 0.5])
    assert fpr.tolist() == [0.0, 1.0] and tpr.tolist() == [0.0, 1.0]


def test_rates_at_threshold() -> None:
    r = m.rates_at([1, 1, 0, 0], [0.9, 0.4, 0.6, 0.1], 0.5)
    assert (r.tp, r.fn, r.fp, r.tn) == (1, 1, 1, 1)
    assert r.sensitivity == 0.5 and r.specificity == 0.5
    # score equal to the threshold counts as positive
    assert m.rates_at([1], [0.5], 0.5).sensitivity == 1.0
    assert m.rates_at([1], [0.9], 0.5).specificity is None


def test_ece_weights_bin_gaps_by_bin_size() -> None:
    # bin [0.1, 0.2): mean 0.15, observed 1/2 -> gap 0.35, weight 1/2
    # bin [0.8, 0.9): mean 0.85, observed 1   -> gap 0.15, weight 1/2  => ECE 0.25
    assert m.expected_calibration_error([0, 1, 1, 1], [0.15, 0.15, 0.85, 0.85]) == pytest.approx(0.25)
    assert m.expected_calibration_error([], []) is None


def test_reliability_puts_probability_one_in_the_last_bin() -> None:
    bins = m.reliability_bins([1, 0], [1.0, 0.0], n_bins=10)
    assert bins[-1].count == 1 and bins[-1].observed_rate == 1.0
    assert bins[0].count == 1 and bins[0].observed_rate == 0.0
    assert sum(b.count for b in bins) == 2


def test_confusion_matrix_rows_truth_columns_prediction() -> None:
    cm = m.confusion_matrix([0, 0, 1, 2], [0, 1, 1, 1])
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    with pytest.raises(ValueError):
        m.confusion_matrix([0, 3], [0, 0])


def test_quadratic_weighted_kappa_by_hand() -> None:
    # observed off-diagonal cells (0,1) and (2,1), weights 1/4 each -> 0.5
    # histograms truth [2,1,1], prediction [1,3,0]; expected = outer / 4
    # sum w*E = .25*1.5 + .25*.25 + 1*.25 + .25*.75 = 0.875 -> kappa = 1 - 0.5/0.875 = 3/7
    assert m.quadratic_weighted_kappa([0, 0, 1, 2], [0, 1, 1, 1]) == pytest.approx(3 / 7)
    assert m.quadratic_weighted_kappa([0, 1, 2], [0, 1, 2]) == pytest.approx(1.0)
    # reversed order on 3 grades: observed = expected-maximal disagreement -> -1
    assert m.quadratic_weighted_kappa([0, 2], [2, 0]) == pytest.approx(-1.0)


def test_kappa_undefined_when_no_disagreement_is_possible() -> None:
    assert m.quadratic_weighted_kappa([1, 1], [1, 1]) is None
    assert m.quadratic_weighted_kappa([], []) is None


def test_weighted_log_loss_uses_rsna_weights() -> None:
    # (1 * -ln .5 + 4 * -ln .5) / (1 + 4) = ln 2
    got = m.weighted_log_loss([0, 2], [[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]])
    assert got == pytest.approx(math.log(2))
    # weights matter: -ln(.8)*1 and -ln(.1)*2 -> (0.2231 + 4.6052) / 3
    got = m.weighted_log_loss([0, 1], [[0.8, 0.1, 0.1], [0.8, 0.1, 0.1]])
    assert got == pytest.approx((-math.log(0.8) - 2 * math.log(0.1)) / 3)


def test_weighted_log_loss_normalises_and_clips() -> None:
    assert m.weighted_log_loss([0], [[2.0, 1.0, 1.0]]) == pytest.approx(math.log(2))
    assert m.weighted_log_loss([1], [[1.0, 0.0, 0.0]]) == pytest.approx(-math.log(m.LOG_EPS))
    assert m.weighted_log_loss([1], [[0.5, 0.5]], (1.0, 4.0)) == pytest.approx(math.log(2))
    with pytest.raises(ValueError):
        m.weighted_log_loss([0], [[1.0, 0.0]])


def test_error_summary() -> None:
    s = m.error_summary([1.0, 2.0, 3.0], [2.0, 2.0, 5.0])  # errors -1, 0, -2
    assert (s.n, s.mae, s.median_ae, s.bias) == (3, 1.0, 1.0, -1.0)
    assert m.error_summary([], []).mae is None


def test_overlap_counts_add_up_to_dice() -> None:
    a = np.array([[1, 1, 0, 0]], dtype=bool)
    b = np.array([[0, 1, 1, 0]], dtype=bool)
    c = m.OverlapCounts.of(a, b)
    assert (c.intersection, c.predicted, c.truth) == (1, 2, 2)
    assert c.dice == pytest.approx(0.5)
    total = c + m.OverlapCounts.of(a, a)  # (1+2) * 2 / (4 + 4)
    assert total.dice == pytest.approx(0.75)
    assert m.OverlapCounts().dice is None
