"""Segmentation metrics shared by training logs, the evaluation and the tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cds.pipeline.segment import LABELS

FOREGROUND = tuple(range(1, len(LABELS)))


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean arrays; 1.0 when both are empty (nothing to find, nothing found)."""
    inter = np.logical_and(pred, truth).sum()
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * inter / total)


def dice_per_class(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Label maps (any shape, same classes as the network) -> Dice per foreground class name."""
    return {LABELS[c]: dice(pred == c, truth == c) for c in FOREGROUND}


def summarise(per_patient: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean over patients per class, plus ``mean`` over the classes (the headline figure)."""
    names = [LABELS[c] for c in FOREGROUND]
    out = {n: float(np.mean([d[n] for d in per_patient.values()])) for n in names}
    out["mean"] = float(np.mean([out[n] for n in names]))
    return out


def mean_of(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")
