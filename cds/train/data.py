"""Training samples for the sagittal segmentation: real SPIDER slices and synthetic studies.

Every sample is brought onto the model grid by the very pre-processing the product runs at
inference (cds.pipeline.segment), so training and serving cannot drift apart.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cds.errors import BadRequest
from cds.ml.spec import InputContract
from cds.pipeline.segment import CANAL, DISC, VERTEBRA, SliceGeometry, preprocess_slice, to_model_grid

#: SPIDER PNG mask values (README of the data set) -> network classes.
SPIDER_CLASSES = {29: DISC, 76: VERTEBRA, 150: CANAL}
#: SPIDER's nominal in-plane pixel spacing (series.csv), row and column.
SPIDER_SPACING_MM = (0.46875, 0.46875)


@dataclass(frozen=True)
class Sample:
    """One slice on the model grid: image float16 in [0, 1], labels uint8 (network classes)."""

    source: str
    patient: str
    slice_name: str
    image: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class RealSlice:
    """One SPIDER slice on its own grid, for evaluation through the full inference path."""

    patient: str
    slice_name: str
    image: np.ndarray
    labels: np.ndarray


def spider_patients(root: Path) -> list[str]:
    if not root.is_dir():
        raise BadRequest(f"SPIDER folder not found: {root}")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("slice*_image.png")))


def map_spider_mask(mask: np.ndarray) -> np.ndarray:
    out = np.zeros(mask.shape, dtype=np.uint8)
    for value, cls in SPIDER_CLASSES.items():
        out[mask == value] = cls
    return out


def read_spider_patient(root: Path, patient: str) -> list[RealSlice]:
    out = []
    for img_path in sorted((root / patient).glob("slice*_image.png")):
        mask_path = img_path.with_name(img_path.name.replace("_image", "_mask"))
        image = np.asarray(Image.open(img_path).convert("L"), dtype=np.float32)
        mask = np.asarray(Image.open(mask_path))
        out.append(RealSlice(patient, img_path.name.split("_")[0], image, map_spider_mask(mask)))
    return out


def to_sample(
    source: str,
    patient: str,
    name: str,
    image: np.ndarray,
    labels: np.ndarray,
    spacing: tuple[float, float],
    contract: InputContract,
) -> Sample:
    grid, geometry = preprocess_slice(image, spacing, contract)
    lab = labels_to_grid(labels, geometry, contract)
    return Sample(source, patient, name, grid.astype(np.float16), lab)


def labels_to_grid(labels: np.ndarray, geometry: SliceGeometry, contract: InputContract) -> np.ndarray:
    return to_model_grid(labels.astype(np.uint8), geometry, contract.input_size, order=0)


def load_spider_samples(root: Path, patients: Iterable[str], contract: InputContract) -> list[Sample]:
    return [
        to_sample("spider", s.patient, s.slice_name, s.image, s.labels, SPIDER_SPACING_MM, contract)
        for p in patients
        for s in read_spider_patient(root, p)
    ]


def split_patients(patients: Sequence[str], n_holdout: int, seed: int) -> tuple[list[str], list[str]]:
    """Patient-level split: (train, held-out); never slices of one patient on both sides."""
    order = sorted(patients)
    random.Random(seed).shuffle(order)
    return sorted(order[n_holdout:]), sorted(order[:n_holdout])


# --------------------------------------------------------------------------------------------
# synthetic studies (cds synth output; CONTRACTS.md "Data on disk")
# --------------------------------------------------------------------------------------------


def synth_class_table(label_names: dict[int, str]) -> dict[int, int]:
    """Synthetic label values -> network classes, by the label table's names (SPIDER conventions).

    SPIDER's "vertebra" covers body and posterior elements (facets included) of the mobile spine but
    not the sacrum (its masks stop at the L5-S1 disc), so sacral segments map to background; its
    "spinal canal" is the thecal sac with its contents (CSF, cauda equina, cord).
    """
    table: dict[int, int] = {}
    for value, name in label_names.items():
        low = name.lower()
        segment = low.rsplit("_", 1)[-1]
        if low.startswith("disc_"):
            table[value] = DISC
        elif low.startswith(("vertebra_", "posterior_elements_", "facets_")) and not segment.startswith("s"):
            table[value] = VERTEBRA
        elif low in {"dural_sac", "cauda_equina", "spinal_cord"}:
            table[value] = CANAL
    return table


def synth_studies(root: Path) -> list[Path]:
    return sorted(p.parent.parent for p in root.glob("*/truth/labels.json"))
