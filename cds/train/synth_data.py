"""Sagittal training slices from synthetic studies written by ``cds synth`` (CONTRACTS.md).

Each study: DICOM under ``<study>/dicom``, label volumes under ``<study>/truth/labels/<series>.npz``
(key ``labels``, same (slices, rows, cols) order as cds.dicom Volume.array) and the label table in
``<study>/truth/labels.json``. The sagittal T2 volume is read with the product's own ingestion
(cds.dicom) so that the training data pass through the same geometry code as real studies.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cds.errors import CdsError
from cds.ml.spec import InputContract
from cds.pipeline.segment import SagittalOrientation
from cds.train.data import Sample, synth_class_table, synth_studies, to_sample

log = logging.getLogger(__name__)


def read_label_table(truth: Path) -> dict[int, str]:
    """value -> name from truth/labels.json (accepts a top-level table or one under a key)."""
    data = json.loads((truth / "labels.json").read_text(encoding="utf-8"))
    candidates: list[Any] = [data]
    if isinstance(data, dict):
        candidates += [data.get(k) for k in ("labels", "table", "label_table", "values")]
    for cand in candidates:
        if isinstance(cand, dict):
            table = {int(k): str(v) for k, v in cand.items() if str(k).isdigit() and isinstance(v, str)}
            if table:
                return table
    raise ValueError(f"no label table in {truth / 'labels.json'}")


def lookup(table: dict[int, int]) -> np.ndarray:
    lut = np.zeros(max(256, max(table, default=0) + 1), dtype=np.uint8)
    for value, cls in table.items():
        lut[value] = cls
    return lut


def central_indices(labels: np.ndarray, canal_class_mask: np.ndarray, n: int) -> list[int]:
    """The ``n`` slices around the one with the most canal: the mid-sagittal block SPIDER also shows."""
    area = canal_class_mask.reshape(labels.shape[0], -1).sum(1)
    if not area.any():
        return []
    mid = int(np.argmax(area))
    lo = max(0, min(mid - n // 2, labels.shape[0] - n))
    return [k for k in range(lo, min(labels.shape[0], lo + n)) if area[k] > 0 or n == 1]


def training_indices(
    labels: np.ndarray, canal_class_mask: np.ndarray, n: int, centre_half_width: int
) -> list[int]:
    """The mid-sagittal block around the largest canal plus the stack-centre block.

    Why both: quick_read (and the evaluation) segment the slices at the centre of the *stack*
    (cds.pipeline.quick_read.central_block); in a study whose spine is off the stack centre (patient
    position, rotation) those lie lateral to the largest-canal block, with a narrow or absent canal,
    and a model never shown such slices mis-segments exactly what the product scores.
    """
    from cds.pipeline.quick_read import central_block

    picked = set(central_indices(labels, canal_class_mask, n))
    if centre_half_width >= 0:
        picked.update(central_block(labels.shape[0], centre_half_width))
    return sorted(picked)


@dataclass(frozen=True)
class SynthSource:
    roots: tuple[Path, ...]
    max_studies: int = 0
    slices_per_study: int = 7
    #: only studies with these folder names (e.g. the "train" part of split.json); empty: all
    include: tuple[str, ...] = ()
    #: also the stack-centre block of this half width (-1: only the largest-canal block)
    centre_half_width: int = -1

    def studies(self) -> list[Path]:
        found = sorted({s.resolve(): s for root in self.roots for s in synth_studies(root)}.values())
        unique = list({s.name: s for s in found}.values())  # the same study name is the same seed
        if self.include:
            wanted = set(self.include)
            unique = [s for s in unique if s.name in wanted]
        return unique[: self.max_studies] if self.max_studies else unique

    def describe(self) -> dict[str, Any]:
        studies = self.studies()
        info: dict[str, Any] = {"folders": [str(r) for r in self.roots], "studies": len(studies)}
        if self.include:
            info["restricted_to_split_part"] = True
        info["slices"] = {
            "largest_canal_block": self.slices_per_study,
            "stack_centre_half_width": self.centre_half_width,
        }
        if studies:
            truth = json.loads((studies[0] / "truth" / "findings.json").read_text(encoding="utf-8"))
            info["generator_version"] = truth.get("generator_version")
            info["seeds"] = sorted(
                json.loads((s / "truth" / "findings.json").read_text(encoding="utf-8")).get("seed")
                for s in studies
            )
        return info

    def load(self, contract: InputContract) -> list[Sample]:
        from cds.dicom import load_study

        out: list[Sample] = []
        for study_dir in tqdm(self.studies(), desc="synthetic studies", leave=False):
            try:
                study = load_study(study_dir / "dicom")
                volume = study.sagittal_t2
            except CdsError as exc:
                log.warning("skipping %s: %s", study_dir.name, exc)
                continue
            truth = study_dir / "truth"
            label_file = truth / "labels" / f"{volume.series_uid}.npz"
            if not label_file.is_file():
                log.warning("skipping %s: no labels for the sagittal T2 series", study_dir.name)
                continue
            with np.load(label_file) as npz:
                raw = npz["labels"]
            classes = lookup(synth_class_table(read_label_table(truth)))[raw]
            if classes.shape != volume.shape:
                log.warning(
                    "skipping %s: label shape %s != volume %s", study_dir.name, classes.shape, volume.shape
                )
                continue
            orient = SagittalOrientation.from_affine(volume.affine)
            image = orient.apply(volume.array)
            classes = orient.apply(classes)
            spacing = orient.spacing((volume.spacing_mm[1], volume.spacing_mm[2]))
            for k in training_indices(classes, classes == 3, self.slices_per_study, self.centre_half_width):
                out.append(
                    to_sample(
                        "synth", study_dir.name, f"slice{k:03d}", image[k], classes[k], spacing, contract
                    )
                )
        return out
