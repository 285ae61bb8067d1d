"""The recorder observes every stage call and leaves the results untouched."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from cds.domain import Condition, Level
from cds.evaluation.recorder import recording_stages
from cds.pipeline.classify import LevelProbabilities
from cds.pipeline.grade import SeverityEstimate
from cds.pipeline.quick_read import Stages


def fake_stages() -> Stages:
    probs = (LevelProbabilities(Level.L4_L5, {c: SeverityEstimate(0.7, 0.2) for c in Condition}),)
    steps: dict[str, Any] = {  # stand-ins: the recorder never looks inside what it records
        "load_models": lambda d: {"m": "m@1"},
        "segment_sagittal": lambda v, d: ("masks of", v),
        "label_levels": lambda masks, spacing: "labelling",
        "assign_axial": lambda v, c, n: [None],
        "segment_axial": lambda v, idx, d: ("seg", v, tuple(idx)),
        "classify": lambda segs, d: probs,
    }
    return Stages(**steps)


def test_every_stage_is_wrapped_and_results_pass_through() -> None:
    stages, record = recording_stages(fake_stages())
    assert {f.name for f in fields(stages)} == {f.name for f in fields(Stages)}
    volume: Any = "sagittal volume"
    masks: Any = ("masks of", volume)
    axial_a: Any = "axial A"
    axial_b: Any = "axial B"
    assert stages.segment_sagittal(volume, None) == masks
    assert stages.label_levels(masks, (1.0, 1.0)) == "labelling"
    seg_a = stages.segment_axial(axial_a, [1, 2], None)
    seg_b = stages.segment_axial(axial_b, [0], None)
    got = stages.classify({Level.L4_L5: seg_a}, None)
    assert record.sagittal() == ("sagittal volume", ("masks of", "sagittal volume"))
    assert record.labelling() == "labelling"
    assert record.axial() == [("axial A", seg_a), ("axial B", seg_b)]
    assert record.axial_by_level() == {Level.L4_L5: seg_a}
    assert record.probabilities()[Level.L4_L5] is got[0]
    assert record.probabilities()[Level.L4_L5].p_present(Condition.SPINAL_CANAL) == 0.7


def test_empty_record_reports_nothing() -> None:
    _, record = recording_stages(fake_stages())
    assert record.sagittal() is None and record.labelling() is None
    assert record.axial() == [] and record.probabilities() == {}
