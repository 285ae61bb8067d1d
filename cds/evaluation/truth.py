"""Ground truth of one synthetic study as written by `cds synth` (CONTRACTS.md "Data on disk").

Read once per study into frozen values: the grade of every (level, condition), the generator's
measurements per level, the label table and which label file belongs to which series. The
generator's grades come from its own measurements under FINDINGS.md thresholds, so they are the
reference the pipeline's grades and measurements are compared with.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from cds.domain import Condition, Grade, Level, MeasurementName, Side
from cds.errors import BadRequest

FINDINGS_FILE = "findings.json"
LABELS_FILE = "labels.json"


@dataclass(frozen=True)
class StudyTruth:
    name: str
    folder: Path
    study_uid: str
    seed: int | None
    generator_version: str | None
    grades: Mapping[tuple[Level, Condition], Grade]
    #: (level, measurement name, side or None) -> value, e.g. (L4-L5, dsca_mm2, None) -> 61.8
    measurements: Mapping[tuple[Level, MeasurementName, Side | None], float]
    label_names: Mapping[int, str]
    label_files: Mapping[str, Path]  # series uid -> label volume file
    digest: str  # sha256 of findings.json + labels.json: a regenerated study invalidates its cache

    def grade(self, level: Level, condition: Condition) -> Grade | None:
        return self.grades.get((level, condition))

    def measurement(self, level: Level, name: MeasurementName, side: Side | None = None) -> float | None:
        return self.measurements.get((level, name, side))

    def labels_of(self, series_uid: str) -> np.ndarray | None:
        """The label volume of one series ((slices, rows, cols), as cds.dicom reads the series)."""
        path = self.label_files.get(series_uid)
        if path is None or not path.is_file():
            return None
        with np.load(path) as npz:
            return np.asarray(npz["labels"])


def _measurements(levels: Mapping[str, Any]) -> dict[tuple[Level, MeasurementName, Side | None], float]:
    out: dict[tuple[Level, MeasurementName, Side | None], float] = {}
    for level_name, values in levels.items():
        try:
            level = Level(level_name)
        except ValueError:
            continue
        for key, value in dict(values).items():
            try:
                name = MeasurementName(key)
            except ValueError:
                continue  # e.g. foraminal_area_mm2: not a product measurement
            if isinstance(value, Mapping):
                for side_name, v in value.items():
                    out[(level, name, Side(side_name))] = float(v)
            elif value is not None:
                out[(level, name, None)] = float(value)
    return out


def read_truth(study_dir: Path) -> StudyTruth:
    """Parse ``study_dir/truth``; BadRequest when the folder is not a generated study."""
    truth_dir = study_dir / "truth"
    findings_path, labels_path = truth_dir / FINDINGS_FILE, truth_dir / LABELS_FILE
    if not findings_path.is_file() or not labels_path.is_file():
        raise BadRequest(f"{study_dir} has no truth/{FINDINGS_FILE} and truth/{LABELS_FILE}")
    raw_findings = findings_path.read_bytes()
    raw_labels = labels_path.read_bytes()
    findings = json.loads(raw_findings)
    labels = json.loads(raw_labels)
    grades: dict[tuple[Level, Condition], Grade] = {}
    for level_name, conditions in dict(findings.get("levels", {})).items():
        for condition_name, finding in dict(conditions).items():
            grades[(Level(level_name), Condition(condition_name))] = Grade(finding["grade"])
    files = {
        str(uid): truth_dir / str(info["file"])
        for uid, info in dict(labels.get("series", {})).items()
        if isinstance(info, Mapping) and "file" in info
    }
    names = {int(k): str(v) for k, v in dict(labels.get("labels", {})).items() if str(k).isdigit()}
    seed = findings.get("seed")
    return StudyTruth(
        name=study_dir.name,
        folder=study_dir,
        study_uid=str(findings.get("study_uid", "")),
        seed=int(seed) if seed is not None else None,
        generator_version=findings.get("generator_version"),
        grades=MappingProxyType(grades),
        measurements=MappingProxyType(_measurements(dict(findings.get("measurements", {})))),
        label_names=MappingProxyType(names),
        label_files=MappingProxyType(files),
        digest=hashlib.sha256(raw_findings + b"\0" + raw_labels).hexdigest(),
    )


def study_folders(root: Path) -> list[Path]:
    """Generated studies under ``root`` (sorted by name, so ``--n`` picks a stable prefix)."""
    if not root.is_dir():
        raise BadRequest(f"test data folder not found: {root} (generate it with `cds synth`)")
    return sorted(p.parent.parent for p in root.glob(f"*/truth/{FINDINGS_FILE}"))
