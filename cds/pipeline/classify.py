"""Stage 2: probability that each condition is present at a level, from the level's axial crop.

pre-process (NumPy, :func:`level_crop`): the axial segmentation already put the level's slices
into the canonical frame (rows anterior -> posterior, columns patient right -> left, 0.8 mm);
the crop is ``CROP_SIZE`` pixels centred on the dural sac of the level's narrowest slice, with
channels = T2 of that slice and its two neighbours + the segmentation's probabilities of the
structures that narrow the canal, recesses and foramina on that slice + the per-pixel maximum
over all the level's slices of the foramen and of the facet/flavum/posterior-element
probabilities. predict (torch) runs the calibrated :class:`cds.ml.classifier.LevelClassifier`;
post-process turns the ordinal sigmoids into :class:`cds.pipeline.grade.SeverityEstimate` values.

The same ``level_crop`` builds the training crops (cds/train/classifier.py), so training and
inference cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cds.domain import Condition, Level
from cds.errors import StageError
from cds.pipeline import axial as ax
from cds.pipeline.grade import SeverityEstimate

if TYPE_CHECKING:
    from cds.ml.classifier import LoadedClassifier

STAGE = "classify"
MODEL_NAME = "classifier"
CROP_SIZE = 96  # 77 mm at 0.8 mm: canal, both recesses and both foramina
#: Probability channels, each the sum of these axial classes.
PROB_CHANNELS: tuple[tuple[int, ...], ...] = (
    (ax.SAC,),
    (ax.DISC, ax.BODY),
    (ax.FACET, ax.FLAVUM, ax.POSTERIOR),
    (ax.FORAMEN,),
)
#: Level-wide channels: per-pixel maximum over ALL the level's slices of these class sums. Why:
#: the foramen is widest (and its narrowing visible) 1-2 slices away from the sac-narrowest slice k
#: in most levels, and the facet/flavum overgrowth narrowing a lateral recess need not peak at k.
LEVEL_MAX_CHANNELS: tuple[tuple[int, ...], ...] = (
    (ax.FORAMEN,),
    (ax.FACET, ax.FLAVUM, ax.POSTERIOR),
)
N_IMAGE_CHANNELS = 3
IN_CHANNELS = N_IMAGE_CHANNELS + len(PROB_CHANNELS) + len(LEVEL_MAX_CHANNELS)


def narrowest_slice(probs: np.ndarray) -> int:
    """Row (within the level's slices) with the smallest dural sac probability mass, ignoring
    slices where the sac is essentially absent (outside the canal or lost)."""
    mass = probs[:, ax.SAC].sum(axis=(-2, -1))
    valid = mass > 0.05 * float(mass.max()) if mass.max() > 0 else np.ones_like(mass, dtype=bool)
    candidates = np.nonzero(valid)[0]
    return int(candidates[np.argmin(mass[candidates])])


def crop_centre(sac_prob: np.ndarray) -> tuple[int, int]:
    """Centre of the sac probability mass, or the grid centre when there is none."""
    total = float(sac_prob.sum())
    h, w = sac_prob.shape
    if total < 1.0:
        return h // 2, w // 2
    rows, cols = np.indices(sac_prob.shape)
    return round(float((rows * sac_prob).sum()) / total), round(float((cols * sac_prob).sum()) / total)


def _crop(arr: np.ndarray, centre: tuple[int, int], size: int) -> np.ndarray:
    """(C, H, W) -> (C, size, size) around centre, zero-padded where it leaves the grid."""
    half = size // 2
    out = np.zeros((arr.shape[0], size, size), dtype=np.float32)
    r0, c0 = centre[0] - half, centre[1] - half
    rs, cs = max(r0, 0), max(c0, 0)
    re, ce = min(r0 + size, arr.shape[1]), min(c0 + size, arr.shape[2])
    if re > rs and ce > cs:
        out[:, rs - r0 : re - r0, cs - c0 : ce - c0] = arr[:, rs:re, cs:ce]
    return out


def level_crop(
    images: np.ndarray, probs: np.ndarray, centre_row: int | None = None, size: int = CROP_SIZE
) -> np.ndarray:
    """The classifier input for one level: (IN_CHANNELS, size, size) float32.

    ``images`` (slices, H, W) and ``probs`` (slices, classes, H, W) on the canonical grid.
    ``size`` other than CROP_SIZE only for training, which cuts shifted CROP_SIZE windows out of
    a wider crop made by this same function.
    """
    if images.ndim != 3 or probs.ndim != 4 or images.shape[0] != probs.shape[0]:
        raise ValueError("images (S, H, W) and probs (S, C, H, W) must describe the same slices")
    k = narrowest_slice(probs) if centre_row is None else int(centre_row)
    n = images.shape[0]
    rows = [min(max(k + d, 0), n - 1) for d in (-1, 0, 1)]
    channels = [images[r] for r in rows]
    channels += [probs[k, list(group)].sum(axis=0) for group in PROB_CHANNELS]
    channels += [probs[:, list(group)].sum(axis=1).max(axis=0) for group in LEVEL_MAX_CHANNELS]
    stacked = np.stack(channels).astype(np.float32)
    return _crop(stacked, crop_centre(probs[k, ax.SAC]), size)


@dataclass(frozen=True)
class LevelProbabilities:
    """Classifier output for one level: a severity estimate per condition."""

    level: Level
    estimates: Mapping[Condition, SeverityEstimate]

    def p_present(self, condition: Condition) -> float:
        return self.estimates[condition].p_present


def predict(model: LoadedClassifier, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W) -> (present, severe) probabilities, each (N, 5) in Condition order."""
    import torch

    with torch.inference_mode():
        logits = model.network(torch.from_numpy(crops).to(model.device))
        present, severe = model.network.split(logits)
        return torch.sigmoid(present).cpu().numpy(), torch.sigmoid(severe).cpu().numpy()


def postprocess(
    levels: Sequence[Level], present: np.ndarray, severe: np.ndarray
) -> tuple[LevelProbabilities, ...]:
    out = []
    for i, level in enumerate(levels):
        est = {
            c: SeverityEstimate(p_present=float(present[i, j]), p_severe=float(severe[i, j]))
            for j, c in enumerate(Condition)
        }
        out.append(LevelProbabilities(level, est))
    return tuple(out)


def classify_levels(
    crops: Mapping[Level, np.ndarray], *, models_dir: Path | None = None
) -> tuple[LevelProbabilities, ...]:
    """One batched forward pass over all levels' crops."""
    from cds.ml.classifier import load_classifier

    if not crops:
        raise StageError(STAGE, "no level crops to classify")
    model = load_classifier(MODEL_NAME, models_dir)
    levels = sorted(crops, key=lambda lv: lv.index)
    try:
        batch = np.stack([crops[lv] for lv in levels]).astype(np.float32)
        if batch.shape[1] != model.network.config.in_channels:
            raise ValueError(
                f"crop has {batch.shape[1]} channels, model expects {model.network.config.in_channels}"
            )
        present, severe = predict(model, batch)
    except Exception as exc:
        raise StageError(STAGE, f"{type(exc).__name__}: {exc}") from exc
    return postprocess(levels, present, severe)
