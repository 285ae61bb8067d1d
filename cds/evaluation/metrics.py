"""Metric maths of the evaluation, in plain NumPy.

Why not scikit-learn: it is not a runtime dependency of the product, and every figure here must be
checkable by hand (tests/evaluation computes reference values on small hand-made cases). Each
function states its convention (ties, empty classes, binning) because the headline figures of the
report depend on them.

Grades are ordinal ranks 0 = normal_mild, 1 = moderate, 2 = severe (cds.domain.Grade.rank).
A function returns None where its figure is undefined (e.g. AUROC with a single class present),
never a made-up 0.5 or 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: RSNA 2024 lumbar challenge sample weights per true grade (normal_mild, moderate, severe).
RSNA_WEIGHTS: tuple[float, float, float] = (1.0, 2.0, 4.0)
#: Probabilities are clipped away from 0 and 1 before the log, as the RSNA metric does.
LOG_EPS = 1e-15


#: Binary truth: booleans or 0/1 integers.
Labels = Sequence[bool] | Sequence[int] | np.ndarray


def _binary(y_true: Labels) -> np.ndarray:
    return np.asarray(y_true, dtype=bool).ravel()


def _scores(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(scores, dtype=np.float64).ravel()


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks (the Mann-Whitney convention)."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_vals = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def auroc(y_true: Labels, scores: Sequence[float] | np.ndarray) -> float | None:
    """Area under the ROC curve = P(score of a random positive > score of a random negative), ties
    counting one half (Mann-Whitney U / (n_pos * n_neg)). None with no positive or no negative."""
    y, s = _binary(y_true), _scores(scores)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = average_ranks(s)
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def roc_curve(y_true: Labels, scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) from (0, 0) to (1, 1), one point per distinct score
    (predicting positive at score >= threshold, thresholds descending)."""
    y, s = _binary(y_true), _scores(scores)
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    last_of_tie = np.r_[np.diff(s_sorted) != 0, True] if len(s_sorted) else np.zeros(0, dtype=bool)
    tpr = np.r_[0.0, tp[last_of_tie] / n_pos]
    fpr = np.r_[0.0, fp[last_of_tie] / n_neg]
    return fpr, tpr


@dataclass(frozen=True)
class BinaryRates:
    """Sensitivity and specificity of ``score >= threshold`` (None where the class is absent)."""

    threshold: float
    sensitivity: float | None
    specificity: float | None
    tp: int
    fp: int
    tn: int
    fn: int

    def to_json(self) -> dict[str, float | int | None]:
        return {
            "threshold": self.threshold,
            "sensitivity": self.sensitivity,
            "specificity": self.specificity,
            "tp": self.tp,
            "fp": self.fp,
            "tn": self.tn,
            "fn": self.fn,
        }


def rates_at(y_true: Labels, scores: Sequence[float] | np.ndarray, threshold: float) -> BinaryRates:
    y, s = _binary(y_true), _scores(scores)
    pred = s >= threshold
    tp, fn = int((pred & y).sum()), int((~pred & y).sum())
    tn, fp = int((~pred & ~y).sum()), int((pred & ~y).sum())
    return BinaryRates(
        threshold=float(threshold),
        sensitivity=tp / (tp + fn) if tp + fn else None,
        specificity=tn / (tn + fp) if tn + fp else None,
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
    )


@dataclass(frozen=True)
class ReliabilityBin:
    lower: float
    upper: float
    count: int
    mean_probability: float | None
    observed_rate: float | None


def reliability_bins(
    y_true: Labels, probs: Sequence[float] | np.ndarray, n_bins: int = 10
) -> tuple[ReliabilityBin, ...]:
    """Equal-width bins over [0, 1]; bin b holds lower <= p < upper, the last bin also p == 1."""
    y, p = _binary(y_true), _scores(probs)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        sel = idx == b
        n = int(sel.sum())
        out.append(
            ReliabilityBin(
                lower=float(edges[b]),
                upper=float(edges[b + 1]),
                count=n,
                mean_probability=float(p[sel].mean()) if n else None,
                observed_rate=float(y[sel].mean()) if n else None,
            )
        )
    return tuple(out)


def expected_calibration_error(
    y_true: Labels, probs: Sequence[float] | np.ndarray, n_bins: int = 10
) -> float | None:
    """ECE = sum over bins of (bin count / N) * |mean predicted probability - observed rate|."""
    bins = reliability_bins(y_true, probs, n_bins)
    total = sum(b.count for b in bins)
    if total == 0:
        return None
    gap = 0.0
    for b in bins:
        if b.count and b.mean_probability is not None and b.observed_rate is not None:
            gap += b.count / total * abs(b.mean_probability - b.observed_rate)
    return gap


def confusion_matrix(
    true_ranks: Sequence[int] | np.ndarray, pred_ranks: Sequence[int] | np.ndarray, k: int = 3
) -> np.ndarray:
    """(k, k) counts, rows = truth, columns = prediction."""
    t = np.asarray(true_ranks, dtype=np.int64).ravel()
    p = np.asarray(pred_ranks, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError("truth and prediction must have the same length")
    if len(t) and (t.min() < 0 or p.min() < 0 or t.max() >= k or p.max() >= k):
        raise ValueError(f"ranks must lie in 0..{k - 1}")
    out = np.zeros((k, k), dtype=np.int64)
    np.add.at(out, (t, p), 1)
    return out


def quadratic_weighted_kappa(
    true_ranks: Sequence[int] | np.ndarray, pred_ranks: Sequence[int] | np.ndarray, k: int = 3
) -> float | None:
    """Cohen's kappa with quadratic weights w_ij = (i - j)^2 / (k - 1)^2:
    1 - sum(w * observed) / sum(w * expected), expected = outer(truth histogram, prediction
    histogram) / N. None when the expected disagreement is zero (e.g. a single grade everywhere)."""
    observed = confusion_matrix(true_ranks, pred_ranks, k).astype(np.float64)
    n = observed.sum()
    if n == 0:
        return None
    i, j = np.indices((k, k))
    weights = (i - j) ** 2 / float((k - 1) ** 2)
    expected = np.outer(observed.sum(1), observed.sum(0)) / n
    denominator = float((weights * expected).sum())
    if denominator == 0.0:
        return None
    return 1.0 - float((weights * observed).sum()) / denominator


def weighted_log_loss(
    true_ranks: Sequence[int] | np.ndarray,
    probs: Sequence[Sequence[float]] | np.ndarray,
    weights: Sequence[float] = RSNA_WEIGHTS,
) -> float | None:
    """Sample-weighted multi-class log loss (RSNA 2024 lumbar style): each row's probabilities are
    normalised to sum 1 and clipped to [eps, 1 - eps]; a row weighs ``weights[true grade]``;
    result = sum(w * -log p_true) / sum(w). Works for 2 classes too (e.g. any-severe: (1, 4))."""
    t = np.asarray(true_ranks, dtype=np.int64).ravel()
    if len(t) == 0:
        return None
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != len(t) or p.shape[1] != len(weights):
        raise ValueError("probs must be (N, classes) with one column per weight")
    p = p / np.clip(p.sum(axis=1, keepdims=True), LOG_EPS, None)
    p = np.clip(p, LOG_EPS, 1.0 - LOG_EPS)
    w = np.asarray(weights, dtype=np.float64)[t]
    return float((w * -np.log(p[np.arange(len(t)), t])).sum() / w.sum())


@dataclass(frozen=True)
class ErrorSummary:
    """Absolute and signed error of a measurement against the ground truth."""

    n: int
    mae: float | None
    median_ae: float | None
    bias: float | None
    p90_ae: float | None

    def to_json(self) -> dict[str, float | int | None]:
        return {
            "n": self.n,
            "mae": self.mae,
            "median_ae": self.median_ae,
            "bias": self.bias,
            "p90_ae": self.p90_ae,
        }


def error_summary(
    predicted: Sequence[float] | np.ndarray, truth: Sequence[float] | np.ndarray
) -> ErrorSummary:
    """MAE, median and 90th percentile of |error|, and bias = mean(predicted - truth)."""
    pr, tr = _scores(predicted), _scores(truth)
    if pr.shape != tr.shape:
        raise ValueError("predicted and truth must have the same length")
    if len(pr) == 0:
        return ErrorSummary(0, None, None, None, None)
    err = pr - tr
    ae = np.abs(err)
    return ErrorSummary(
        n=len(pr),
        mae=float(ae.mean()),
        median_ae=float(np.median(ae)),
        bias=float(err.mean()),
        p90_ae=float(np.percentile(ae, 90)),
    )


@dataclass(frozen=True)
class OverlapCounts:
    """Voxel counts behind a Dice score, additive over slices and levels of one study."""

    intersection: int = 0
    predicted: int = 0
    truth: int = 0

    def __add__(self, other: OverlapCounts) -> OverlapCounts:
        return OverlapCounts(
            self.intersection + other.intersection,
            self.predicted + other.predicted,
            self.truth + other.truth,
        )

    @property
    def dice(self) -> float | None:
        """2|P & T| / (|P| + |T|); None when both are empty (nothing to score)."""
        total = self.predicted + self.truth
        return None if total == 0 else 2.0 * self.intersection / total

    @classmethod
    def of(cls, predicted: np.ndarray, truth: np.ndarray) -> OverlapCounts:
        p = np.asarray(predicted, dtype=bool)
        t = np.asarray(truth, dtype=bool)
        if p.shape != t.shape:
            raise ValueError(f"mask shapes differ: {p.shape} vs {t.shape}")
        return cls(int((p & t).sum()), int(p.sum()), int(t.sum()))


def mean_or_none(values: Sequence[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None
