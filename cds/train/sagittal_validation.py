"""Per-epoch validation of the sagittal U-Net on synthetic studies, scored as the evaluation scores it.

Why a separate validation figure: the per-epoch SPIDER figure measures real anatomy, but the
product's synthetic target (issue 4: Dice >= 0.90) is scored by ``cds evaluate`` on the slices
quick_read segments (the stack-centre block, cds.pipeline.quick_read.central_block), on each
series' own grid, after the product's post-processing, with the synthetic label table mapped by
cds.train.data.synth_class_table, as the mean over studies of the per-study Dice. Selecting the
epoch on anything else (model-grid Dice, other slices) would optimise a different number. The
studies come from the *validation* part of a ``cds synth`` split, never from the evaluation split.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from cds.errors import BadRequest, CdsError
from cds.evaluation.metrics import OverlapCounts
from cds.ml.spec import InputContract
from cds.pipeline.segment import LABELS, SagittalOrientation, postprocess_slice, preprocess_slice
from cds.train.data import synth_class_table
from cds.train.synth_data import lookup, read_label_table

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"


@dataclass(frozen=True)
class ValidationStudy:
    """The slices of one study that quick_read segments, with their truth in network classes."""

    name: str
    images: np.ndarray  # (slices, rows, cols) float32, model orientation, series' own grid
    truth: np.ndarray  # same shape, uint8 network classes
    spacing_mm: tuple[float, float]


def split_names(root: Path, part: str) -> list[str]:
    """Study names of one part ("train", "validation", ...) of ``root/split.json``."""
    path = root / SPLIT_FILE
    if not path.is_file():
        raise BadRequest(f"no {SPLIT_FILE} in {root}")
    data = json.loads(path.read_text(encoding="utf-8"))
    if part not in data:
        raise BadRequest(f"{path} has no part {part!r} (parts: {sorted(data)})")
    return [str(n) for n in data[part]]


def load_validation(root: Path, names: Sequence[str]) -> list[ValidationStudy]:
    """Read the stack-centre block of each study's sagittal T2 and its truth (skips unusable ones)."""
    from cds.dicom import load_study
    from cds.pipeline.quick_read import central_block

    out: list[ValidationStudy] = []
    for name in tqdm(names, desc="validation studies", leave=False):
        study_dir = root / name
        try:
            volume = load_study(study_dir / "dicom").sagittal_t2
        except CdsError as exc:
            log.warning("validation: skipping %s: %s", name, exc)
            continue
        label_file = study_dir / "truth" / "labels" / f"{volume.series_uid}.npz"
        if not label_file.is_file():
            log.warning("validation: skipping %s: no sagittal labels", name)
            continue
        with np.load(label_file) as npz:
            raw = np.asarray(npz["labels"])
        if raw.shape != volume.shape:
            log.warning("validation: skipping %s: label shape %s != %s", name, raw.shape, volume.shape)
            continue
        classes = lookup(synth_class_table(read_label_table(study_dir / "truth")))[raw]
        orient = SagittalOrientation.from_affine(volume.affine)
        block = central_block(volume.shape[0])
        images = orient.apply(np.asarray(volume.array))[block.start : block.stop]
        truth = orient.apply(classes)[block.start : block.stop]
        # quick_read passes the model-oriented volume's (row, col) spacing
        spacing = orient.spacing((float(volume.spacing_mm[1]), float(volume.spacing_mm[2])))
        out.append(ValidationStudy(name, images.astype(np.float32), truth, spacing))
    return out


def predict_labels(
    network: torch.nn.Module,
    study: ValidationStudy,
    contract: InputContract,
    thresholds: dict[str, float],
    device: torch.device,
) -> np.ndarray:
    """Label maps of the study's slices through the product's pre- and post-processing."""
    import torch

    prepared = [preprocess_slice(s, study.spacing_mm, contract) for s in study.images]
    batch = torch.from_numpy(np.stack([p[0] for p in prepared]))[:, None].to(device)
    with torch.inference_mode():
        probs = torch.softmax(network(batch), dim=1).cpu().numpy()
    return np.stack(
        [postprocess_slice(pr, g, thresholds).label_map() for pr, (_, g) in zip(probs, prepared, strict=True)]
    )


def study_dice(pred: np.ndarray, truth: np.ndarray) -> dict[str, float | None]:
    """Dice per class over the study's slices (voxel counts pooled, as cds.evaluation counts them)."""
    return {LABELS[c]: OverlapCounts.of(pred == c, truth == c).dice for c in range(1, len(LABELS))}


def summarise_studies(per_study: dict[str, dict[str, float | None]]) -> dict[str, Any]:
    """Mean (the evaluation's headline), median and 10th percentile over studies, per class."""
    out: dict[str, Any] = {}
    means = []
    for c in range(1, len(LABELS)):
        name = LABELS[c]
        values = [d[name] for d in per_study.values() if d.get(name) is not None]
        if not values:
            continue
        arr = np.asarray(values, dtype=np.float64)
        out[name] = float(arr.mean())
        out[f"{name}_median"] = float(np.median(arr))
        out[f"{name}_p10"] = float(np.percentile(arr, 10))
        means.append(float(arr.mean()))
    out["mean"] = float(np.mean(means)) if means else 0.0
    out["n_studies"] = len(per_study)
    return out


def validation_dice(
    network: torch.nn.Module,
    studies: Sequence[ValidationStudy],
    contract: InputContract,
    thresholds: dict[str, float],
    device: torch.device,
) -> tuple[dict[str, Any], dict[str, dict[str, float | None]]]:
    """(summary, per-study Dice) of ``network`` on ``studies``; the network is left in train mode."""
    network.eval()
    try:
        per_study = {
            s.name: study_dice(predict_labels(network, s, contract, thresholds, device), s.truth)
            for s in tqdm(studies, desc="validate", leave=False)
        }
    finally:
        network.train()
    return summarise_studies(per_study), per_study


__all__ = [
    "ValidationStudy",
    "load_validation",
    "predict_labels",
    "split_names",
    "study_dice",
    "summarise_studies",
    "validation_dice",
]
