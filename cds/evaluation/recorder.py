"""Observe the pipeline's intermediate results without re-implementing any of it.

quick_read takes its model-backed steps from a :class:`cds.pipeline.quick_read.Stages` value (the
seam the pipeline's own tests use). :func:`recording_stages` wraps every step so that each call's
arguments and result are kept, then quick_read runs exactly as in production. The evaluation
reads the sagittal masks (Dice), the level labelling (level identification), the axial
segmentations (Dice) and the classifier's probabilities (AUROC, calibration, log loss) from the
record: the figures describe the very outputs that produced the findings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from cds.domain import Level, Side

if TYPE_CHECKING:
    from cds.dicom.volume import Volume
    from cds.pipeline.axial import AxialSegmentation
    from cds.pipeline.classify import LevelProbabilities
    from cds.pipeline.grade import SeverityEstimate
    from cds.pipeline.levels import LevelLabelling
    from cds.pipeline.quick_read import Stages
    from cds.pipeline.segment import SagittalMasks


@dataclass(frozen=True)
class Call:
    args: tuple[Any, ...]
    result: Any


@dataclass
class StageRecord:
    """Calls per stage name, in call order (mutable: filled while quick_read runs)."""

    calls: dict[str, list[Call]] = field(default_factory=dict)

    def _last(self, name: str) -> Call | None:
        got = self.calls.get(name)
        return got[-1] if got else None

    def sagittal(self) -> tuple[Volume, SagittalMasks] | None:
        """The model-oriented sagittal volume and its masks (same array order)."""
        call = self._last("segment_sagittal")
        return (call.args[0], call.result) if call else None

    def labelling(self) -> LevelLabelling | None:
        call = self._last("label_levels")
        return call.result if call else None

    def axial(self) -> list[tuple[Volume, AxialSegmentation]]:
        return [(c.args[0], c.result) for c in self.calls.get("segment_axial", [])]

    def axial_by_level(self) -> Mapping[Level, AxialSegmentation]:
        """The segmentations quick_read classified, keyed by the level it assigned them to."""
        call = self._last("classify")
        return dict(call.args[0]) if call else {}

    def probabilities(self) -> Mapping[Level, LevelProbabilities]:
        call = self._last("classify")
        return {p.level: p for p in call.result} if call else {}

    def foraminal(self) -> Mapping[tuple[Level, Side], SeverityEstimate]:
        """The foraminal model's estimates per (level, side), which replace the classifier's
        foraminal estimates in the findings (empty when the stage gave none)."""
        call = self._last("foraminal")
        return {key: reading.estimate for key, reading in call.result.items()} if call else {}

    def subarticular(self) -> Mapping[tuple[Level, Side], SeverityEstimate]:
        """The subarticular model's estimates per (level, side), which replace the classifier's
        lateral recess estimates in the findings (empty when the stage gave none)."""
        call = self._last("subarticular")
        return {key: reading.estimate for key, reading in call.result.items()} if call else {}


def _wrap(name: str, fn: Callable[..., Any], record: StageRecord) -> Callable[..., Any]:
    def wrapped(*args: Any) -> Any:
        result = fn(*args)
        record.calls.setdefault(name, []).append(Call(tuple(args), result))
        return result

    wrapped.__name__ = f"recorded_{name}"
    return wrapped


def recording_stages(stages: Stages) -> tuple[Stages, StageRecord]:
    """A copy of ``stages`` whose every step records its calls into the returned record."""
    record = StageRecord()
    wrapped = {f.name: _wrap(f.name, getattr(stages, f.name), record) for f in fields(stages)}
    return replace(stages, **wrapped), record
