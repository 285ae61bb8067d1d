"""The evaluation corpus: deterministic and varied enough to exercise the writers."""

from __future__ import annotations

from cds.domain import THRESHOLDS, Condition, grade_from_measurement
from cds.explain.corpus import generate_corpus
from cds.explain.findings import coerce_input


def test_deterministic_and_varied() -> None:
    a, b = generate_corpus(), generate_corpus()
    assert a == b
    assert generate_corpus(seed=1) != a
    positives = {c.n_positive for c in a}
    assert {0, 1, 2, 3, 4, 5, 6} <= positives
    inputs = [coerce_input(c.levels, c.heatmaps) for c in a]
    assert any(len(i.levels) < 5 for i in inputs)  # a level missing
    assert any(any(f.uncertain for f in i.findings) for i in inputs)
    assert any(i.heatmaps for i in inputs) and any(not i.heatmaps for i in inputs)
    asym = sym = 0
    for i in inputs:
        for lv in i.levels:
            left, right = i.finding(lv, Condition.LEFT_FORAMINAL), i.finding(lv, Condition.RIGHT_FORAMINAL)
            if left and right and (left.grade.present or right.grade.present):
                asym += left.grade is not right.grade
                sym += left.grade is right.grade
    assert asym > 5 and sym > 2


def test_measurements_agree_with_grades() -> None:
    for case in generate_corpus():
        for f in coerce_input(case.levels).findings:
            value = f.deciding_value
            assert value is not None
            assert grade_from_measurement(f.condition, value) is f.grade, (case.name, f)
            assert THRESHOLDS[f.condition].measurement is f.condition.deciding_measurement
