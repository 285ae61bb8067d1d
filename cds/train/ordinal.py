"""Ordinal severity heads shared by the trainers that predict P(>= moderate) and P(severe).

Why shared: the foraminal and the subarticular models both grade with two ordinal logits that
are calibrated by temperature scaling on the validation split and read as the most probable
grade exactly as :class:`cds.pipeline.grade.SeverityEstimate` does at inference; one copy keeps
training-time metrics and the product's grading identical.
"""

from __future__ import annotations

import random

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


def ordinal_grade(p_present: np.ndarray, p_severe: np.ndarray) -> np.ndarray:
    """Most probable grade (0 normal/mild, 1 moderate, 2 severe) of the ordinal pair, as
    cds.pipeline.grade.SeverityEstimate.grade (P(severe) clipped to P(present))."""
    ps = np.minimum(p_severe, p_present)
    dist = np.stack([1 - p_present, p_present - ps, ps], axis=1)
    return np.argmax(dist, axis=1)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-output temperature minimising the validation binary NLL (grid over 0.25..8)."""
    grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 121))
    out = np.ones(logits.shape[1])
    for j in range(logits.shape[1]):
        best, best_t = np.inf, 1.0
        for t in grid:
            p = np.clip(sigmoid(logits[:, j] / t), 1e-6, 1 - 1e-6)
            nll = -np.mean(y[:, j] * np.log(p) + (1 - y[:, j]) * np.log(1 - p))
            if nll < best:
                best, best_t = nll, float(t)
        out[j] = best_t
    return out


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch generators (torch imported here: callers are trainers)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
