"""Replay of the two segmentation stages across evaluation runs.

Why: segmentation is most of a quick read's cost (seconds per study on a shared CPU), and a new
classifier or new grading/level code does not change what the U-Nets output. The outputs of
``segment_sagittal`` and ``segment_axial`` are therefore kept per study, keyed by the two U-Nets'
sha256 and the grid constants that shape their output (see :func:`replay_key`); a later run
with the same U-Nets replays them, and every other stage (level labelling, slice assignment,
measurements, classification, grading) runs live with the current code. A call whose inputs were
not seen before (e.g. new level labelling picks other axial slices) is computed and added.

Trust assumption, stated in the report: a change of the segmentation *code* that keeps the same
weights and grid constants is output-preserving (the pipeline's speed work is verified that
way); ``--no-replay`` recomputes everything.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cds.dicom.volume import Volume
    from cds.pipeline.axial import AxialSegmentation
    from cds.pipeline.quick_read import Stages
    from cds.pipeline.segment import SagittalMasks

SCHEMA = "replay-1"


def replay_key(shas: Mapping[str, str]) -> str:
    """What the segmentation outputs depend on besides the images."""
    from cds.evaluation.cache import models_key
    from cds.pipeline import axial as ax
    from cds.pipeline import quick_read as qr

    grid = (
        f"{SCHEMA}|half={qr.SAGITTAL_HALF_WIDTH}|canon={ax.CANONICAL_SIZE},{ax.CANONICAL_SPACING_MM}"
        f"|up={ax.MEASURE_UPSAMPLE}"
    )
    return models_key(shas, ("sagittal_seg", "axial_seg"), grid, schema=SCHEMA)


@dataclass
class StageStore:
    """One study's kept segmentation outputs (mutable while the study runs)."""

    path: Path
    sagittal: dict[tuple[str, int], SagittalMasks] = field(default_factory=dict)
    axial: dict[tuple[str, int, tuple[int, ...]], AxialSegmentation] = field(default_factory=dict)
    hits: int = 0
    added: int = 0

    @classmethod
    def load(cls, path: Path) -> StageStore:
        if path.is_file():
            try:
                data: dict[str, Any] = pickle.loads(path.read_bytes())
                return cls(path, dict(data["sagittal"]), dict(data["axial"]))
            except Exception:  # an unreadable or outdated file is recomputed, never trusted
                pass
        return cls(path)

    def save(self) -> None:
        if not self.added:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(pickle.dumps({"sagittal": self.sagittal, "axial": self.axial}, protocol=5))
        os.replace(tmp, self.path)


def replaying_stages(stages: Stages, store: StageStore) -> Stages:
    """``stages`` with both segmentation steps answered from ``store`` when it has the result."""

    def segment_sagittal(volume: Volume, models_dir: Path | None) -> SagittalMasks:
        key = (volume.series_uid, volume.part)
        if key in store.sagittal:
            store.hits += 1
            return store.sagittal[key]
        masks = stages.segment_sagittal(volume, models_dir)
        store.sagittal[key] = masks
        store.added += 1
        return masks

    def segment_axial(volume: Volume, indices: Any, models_dir: Path | None) -> AxialSegmentation:
        key = (volume.series_uid, volume.part, tuple(int(i) for i in indices))
        if key in store.axial:
            store.hits += 1
            return store.axial[key]
        seg = stages.segment_axial(volume, indices, models_dir)
        store.axial[key] = seg
        store.added += 1
        return seg

    return replace(stages, segment_sagittal=segment_sagittal, segment_axial=segment_axial)
