"""Per-study faithfulness reports merge field-wise into one report."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from cds.evaluation.explanation import faithfulness_section, merge_reports


@dataclass(frozen=True)
class Rate:
    hits: int
    n: int


@dataclass(frozen=True)
class Report:
    n_studies: int
    scores: tuple[str, ...]
    agreement: Rate = Rate(0, 0)
    skipped: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"n_studies": self.n_studies, "hits": self.agreement.hits, "scores": list(self.scores)}


def test_counts_add_scores_concatenate_nested_rates_merge() -> None:
    a = Report(1, ("a1", "a2"), Rate(1, 2), {"level_not_analysed": 1})
    b = Report(1, ("b1",), Rate(1, 1), {"level_not_analysed": 2, "no_cause_mask": 1})
    merged = merge_reports([a, b])
    assert merged == Report(2, ("a1", "a2", "b1"), Rate(2, 3), {"level_not_analysed": 3, "no_cause_mask": 1})


def test_unmergeable_field_is_refused() -> None:
    @dataclass(frozen=True)
    class Odd:
        label: str

    with pytest.raises(TypeError):
        merge_reports([Odd("x"), Odd("y")])


def test_section_uses_the_merged_reports_own_json() -> None:
    blobs = [pickle.dumps(Report(1, ("a",), Rate(1, 1))), pickle.dumps(Report(1, ("b",), Rate(0, 1)))]
    out = faithfulness_section(blobs, ["S1", "S2"])
    assert out["available"] is True
    assert out["n_studies"] == 2 and out["hits"] == 1 and out["scores"] == ["a", "b"]
    assert faithfulness_section([], [])["available"] is False
