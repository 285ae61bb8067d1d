"""The input boundary: the analyze JSON `levels` object parsed into domain findings with clear errors."""

from __future__ import annotations

from typing import Any

import pytest

from cds.domain import AnalysisResult, AnalysisStatus, Condition, Grade, Level
from cds.explain.findings import RationaleInputError, coerce_input, parse_levels


def test_parses_levels_sorted(levels_json: dict[str, Any]) -> None:
    findings = parse_levels(levels_json)
    assert findings[0].level is Level.L3_L4 and findings[0].condition is Condition.SPINAL_CANAL
    assert findings[0].uncertain is True
    assert [f.level for f in findings] == sorted((f.level for f in findings), key=lambda lv: lv.index)
    assert parse_levels({"levels": levels_json, "status": "complete"}) == findings


def test_accepts_analysis_result(levels_json: dict[str, Any]) -> None:
    result = AnalysisResult.from_json({"levels": levels_json, "status": "complete"})
    assert result.status is AnalysisStatus.COMPLETE
    assert coerce_input(result).findings == coerce_input(levels_json).findings


@pytest.mark.parametrize(
    ("levels", "needle"),
    [
        ({"L6-S1": {}}, "levels: unknown value 'L6-S1'"),
        ({"L4-L5": {"canal": {"grade": "severe"}}}, "levels.L4-L5: unknown value 'canal'"),
        ({"L4-L5": {"spinal_canal": {"grade": "huge"}}}, "levels.L4-L5.spinal_canal.grade"),
        ({"L4-L5": {"spinal_canal": {}}}, "grade: missing"),
        ({"L4-L5": {"spinal_canal": {"grade": "severe", "probability": 1.5}}}, "outside [0, 1]"),
        (
            {"L4-L5": {"spinal_canal": {"grade": "severe", "measurements": {"dsca_mm2": "62"}}}},
            "expected a number",
        ),
        (
            {"L4-L5": {"spinal_canal": {"grade": "severe", "measurements": {"dsca_mm2": float("nan")}}}},
            "finite",
        ),
        (
            {"L4-L5": {"spinal_canal": {"grade": "severe", "measurements": {"area": 3}}}},
            "unknown value 'area'",
        ),
        (
            {"L4-L5": {"left_foraminal": {"grade": "severe", "measurements": {"foraminal_area_ratio": 31}}}},
            "ratio",
        ),
        ({"L4-L5": {"spinal_canal": {"grade": "severe", "uncertain": "yes"}}}, "uncertain"),
        ({"L4-L5": []}, "expected an object keyed by condition"),
    ],
)
def test_bad_input_names_the_path(levels: Any, needle: str) -> None:
    with pytest.raises(RationaleInputError) as err:
        coerce_input(levels)
    assert needle in str(err.value)
    assert err.value.http_status == 400


def test_heatmap_notes_are_validated(levels_json: dict[str, Any]) -> None:
    ok = coerce_input(levels_json, {"L4-L5": {"spinal_canal": "  posterior   disc margin "}})
    assert ok.heatmaps[0].region == "posterior disc margin"
    assert ok.heatmap(Level.L4_L5, Condition.SPINAL_CANAL) is not None
    with pytest.raises(RationaleInputError, match="no such finding"):
        coerce_input(levels_json, {"L1-L2": {"spinal_canal": "disc"}})
    for bad in ("disc at L4", "area 62 mm2", "<b>disc</b>", "x" * 200):
        with pytest.raises(RationaleInputError, match="plain words"):
            coerce_input(levels_json, {"L4-L5": {"spinal_canal": bad}})


def test_grade_only_findings_are_fine() -> None:
    inp = coerce_input({"L4-L5": {"spinal_canal": {"grade": "severe"}}})
    assert inp.positives[0].grade is Grade.SEVERE
