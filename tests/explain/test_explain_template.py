"""The template writer: clinicians' wording per level, and always verifiable."""

from __future__ import annotations

import re
from typing import Any

from cds.explain.corpus import generate_corpus
from cds.explain.findings import RationaleInput, coerce_input
from cds.explain.template import MAX_DETAILED_FINDINGS, write_template
from cds.explain.verify import verify


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text) if s]


def test_sample_wording(sample: RationaleInput) -> None:
    text = write_template(sample)
    assert "L4-L5: severe central canal stenosis, dural sac area 62 mm2 (< 75 mm2)" in text
    assert "moderate left neural foraminal narrowing, foraminal area ratio 45 % (35 % to < 60 %)" in text
    assert "severe right neural foraminal narrowing" in text
    assert "bilateral" not in text  # asymmetric foraminal grades
    assert "L3-L4: moderate central canal stenosis, dural sac area 88 mm2" in text
    assert "flagged as uncertain" in text  # L3-L4 canal and L5-S1 left foramen
    assert "heatmap" not in text.lower()  # no heatmap information was given
    assert 2 <= len(_sentences(text)) <= 5
    assert verify(text, sample).ok


def test_heatmap_sentence_only_with_heatmap_input(sample_with_heatmap: RationaleInput) -> None:
    text = write_template(sample_with_heatmap)
    assert "The heatmaps highlight the posterior disc margin for L4-L5 central canal stenosis." in text
    assert verify(text, sample_with_heatmap).ok


def test_symmetric_grades_are_called_bilateral(levels_json: dict[str, Any]) -> None:
    levels_json["L4-L5"]["left_foraminal"]["grade"] = "severe"
    levels_json["L4-L5"]["left_foraminal"]["measurements"]["foraminal_area_ratio"] = 0.28
    inp = coerce_input(levels_json)
    text = write_template(inp)
    assert (
        "severe bilateral neural foraminal narrowing, foraminal area ratio 28 % on the left "
        "and 31 % on the right" in text
    )
    assert verify(text, inp).ok


def test_no_positive_findings() -> None:
    levels = {
        lv: {"spinal_canal": {"grade": "normal_mild", "probability": 0.95}} for lv in ("L1-L2", "L2-L3")
    }
    inp = coerce_input(levels)
    text = write_template(inp)
    assert text.startswith("L1-L2 and L2-L3: no moderate or severe stenosis.")
    assert len(_sentences(text)) == 2
    assert verify(text, inp).ok


def test_rounding_never_touches_the_threshold() -> None:
    levels = {
        "L4-L5": {"spinal_canal": {"grade": "severe", "probability": 0.9, "measurements": {"dsca_mm2": 74.6}}}
    }
    text = write_template(coerce_input(levels))
    assert "74.6 mm2 (< 75 mm2)" in text


def test_many_findings_are_grouped_without_numbers() -> None:
    conds = ("spinal_canal", "left_foraminal", "right_subarticular")
    levels = {
        lv: {c: {"grade": "moderate", "probability": 0.9, "measurements": {}} for c in conds}
        for lv in ("L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")
    }
    inp = coerce_input(levels)
    assert len(inp.positives) > MAX_DETAILED_FINDINGS
    text = write_template(inp)
    assert len(_sentences(text)) <= 5
    assert verify(text, inp).ok


def test_template_passes_the_verifier_on_the_whole_corpus() -> None:
    corpus = generate_corpus()
    assert len(corpus) >= 100
    for case in corpus:
        inp = coerce_input(case.levels, case.heatmaps)
        text = write_template(inp)
        result = verify(text, inp)
        assert result.ok, (case.name, text, result.violations)
        assert 2 <= len(_sentences(text)) <= 5, (case.name, text)


def test_worst_case_all_findings_uncertain_asymmetric_with_heatmaps() -> None:
    """25 positive findings, sides differing everywhere, all uncertain, a heatmap note on each."""
    sides = {
        "spinal_canal": "severe",
        "left_foraminal": "moderate",
        "right_foraminal": "severe",
        "left_subarticular": "severe",
        "right_subarticular": "moderate",
    }
    levels = {
        lv: {c: {"grade": g, "probability": 0.6, "uncertain": True} for c, g in sides.items()}
        for lv in ("L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")
    }
    heat = {lv: {c: "posterior disc margin" for c in sides} for lv in levels}
    inp = coerce_input(levels, heat)
    text = write_template(inp)
    result = verify(text, inp)
    assert result.ok, result.violations
    assert len(_sentences(text)) <= 5
