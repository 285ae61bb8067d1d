"""Hybrid grading: the measurement rule decides when reliable; uncertainty is flagged by explicit rules."""

from __future__ import annotations

import pytest

from cds.domain import Condition, Grade, Level, MeasurementName, Side
from cds.errors import StageError
from cds.pipeline.grade import (
    Decider,
    GradingPolicy,
    SeverityEstimate,
    grade_finding,
    grade_level,
    near_threshold,
)
from cds.pipeline.measure import Measurement, Plane, Provenance

PROV = Provenance(Plane.AXIAL, 4, "test")


def m(name: MeasurementName, value: float, side: Side | None = None, reliable: bool = True) -> Measurement:
    return Measurement(
        name, value, PROV, side=side, reliable=reliable, issues=() if reliable else ("fragmented",)
    )


NORMAL = SeverityEstimate(p_present=0.05, p_severe=0.01)
MODERATE = SeverityEstimate(p_present=0.9, p_severe=0.2)
SEVERE = SeverityEstimate(p_present=0.98, p_severe=0.9)


def test_severity_estimate_distribution_and_ordinal_clipping() -> None:
    est = SeverityEstimate(p_present=0.3, p_severe=0.5)  # inconsistent: severe implies present
    assert est.p_severe == 0.3
    dist = est.distribution
    assert dist[Grade.NORMAL_MILD] == pytest.approx(0.7)
    assert dist[Grade.MODERATE] == pytest.approx(0.0)
    assert sum(dist.values()) == pytest.approx(1.0)
    assert (
        MODERATE.grade is Grade.MODERATE
        and SEVERE.grade is Grade.SEVERE
        and NORMAL.grade is Grade.NORMAL_MILD
    )
    with pytest.raises(ValueError):
        SeverityEstimate(p_present=1.2, p_severe=0.0)


@pytest.mark.parametrize(
    ("value", "learned", "grade"),
    [(130.0, NORMAL, Grade.NORMAL_MILD), (85.0, MODERATE, Grade.MODERATE), (50.0, SEVERE, Grade.SEVERE)],
)
def test_rule_decides_and_agreeing_model_is_certain(
    value: float, learned: SeverityEstimate, grade: Grade
) -> None:
    d = grade_finding(
        Level.L4_L5,
        Condition.SPINAL_CANAL,
        [m(MeasurementName.DSCA_MM2, value), m(MeasurementName.AP_DIAMETER_MM, 9.0)],
        learned,
    )
    assert d.decided_by is Decider.RULE
    assert d.finding.grade is grade
    assert not d.finding.uncertain and d.reasons == ()
    assert d.finding.probability == pytest.approx(learned.distribution[grade])
    assert d.finding.measurements == {MeasurementName.DSCA_MM2: value, MeasurementName.AP_DIAMETER_MM: 9.0}


def test_disagreement_keeps_rule_grade_but_flags_uncertain() -> None:
    d = grade_finding(Level.L3_L4, Condition.SPINAL_CANAL, [m(MeasurementName.DSCA_MM2, 60.0)], NORMAL)
    assert d.finding.grade is Grade.SEVERE
    assert d.finding.uncertain
    assert d.finding.probability == pytest.approx(0.01)  # the model's probability of "severe"
    assert any("model says normal/mild" in r for r in d.reasons)


def test_near_threshold_flags_uncertain() -> None:
    d = grade_finding(Level.L4_L5, Condition.SPINAL_CANAL, [m(MeasurementName.DSCA_MM2, 98.0)], MODERATE)
    assert d.finding.grade is Grade.MODERATE
    assert d.finding.uncertain
    assert "100 cut-off" in d.reasons[0]
    assert near_threshold(Condition.LEFT_FORAMINAL, 0.37, GradingPolicy()) == pytest.approx(0.35)
    assert near_threshold(Condition.LEFT_FORAMINAL, 0.45, GradingPolicy()) is None
    strict = GradingPolicy(margins={MeasurementName.DSCA_MM2: 0.0})
    assert near_threshold(Condition.SPINAL_CANAL, 99.9, strict) is None


def test_unreliable_measurement_lets_model_decide_and_flags() -> None:
    d = grade_finding(
        Level.L5_S1,
        Condition.SPINAL_CANAL,
        [m(MeasurementName.DSCA_MM2, 140.0, reliable=False)],
        SEVERE,
    )
    assert d.decided_by is Decider.MODEL
    assert d.finding.grade is Grade.SEVERE
    assert d.rule_grade is Grade.NORMAL_MILD
    assert d.finding.uncertain and "unreliable" in d.reasons[0]
    assert d.finding.measurements[MeasurementName.DSCA_MM2] == 140.0  # still shown, flagged


def test_missing_measurement_lets_model_decide() -> None:
    d = grade_finding(Level.L1_L2, Condition.RIGHT_FORAMINAL, [], MODERATE)
    assert d.decided_by is Decider.MODEL and d.finding.grade is Grade.MODERATE
    assert d.finding.uncertain and "not measured" in d.reasons[0]
    assert dict(d.finding.measurements) == {}


def test_side_specific_measurement_is_matched_to_its_condition() -> None:
    ms = [
        m(MeasurementName.LATERAL_RECESS_DEPTH_MM, 2.0, Side.LEFT),
        m(MeasurementName.LATERAL_RECESS_DEPTH_MM, 6.5, Side.RIGHT),
    ]
    left = grade_finding(Level.L4_L5, Condition.LEFT_SUBARTICULAR, [ms[0]], SEVERE)
    right = grade_finding(Level.L4_L5, Condition.RIGHT_SUBARTICULAR, [ms[1]], NORMAL)
    assert left.finding.grade is Grade.SEVERE and not left.finding.uncertain
    assert right.finding.grade is Grade.NORMAL_MILD and not right.finding.uncertain
    wrong_side = grade_finding(Level.L4_L5, Condition.LEFT_SUBARTICULAR, [ms[1]], SEVERE)
    assert wrong_side.decided_by is Decider.MODEL


def test_explanation_names_rule_threshold_and_reasons() -> None:
    d = grade_finding(Level.L4_L5, Condition.SPINAL_CANAL, [m(MeasurementName.DSCA_MM2, 61.8)], NORMAL)
    text = d.explanation
    assert "L4-L5" in text and "61.8 mm2" in text and "< 75 mm2" in text and "uncertain" in text


def test_grade_level_needs_every_learned_estimate() -> None:
    learned = dict.fromkeys(Condition, NORMAL)
    out = grade_level(Level.L2_L3, {}, learned)
    assert [d.finding.condition for d in out] == list(Condition)
    del learned[Condition.LEFT_FORAMINAL]
    with pytest.raises(StageError) as err:
        grade_level(Level.L2_L3, {}, learned)
    assert err.value.stage == "grade"


def test_default_policy_lets_the_model_decide_subarticular_and_the_rule_the_canal() -> None:
    """The shipped choice (validation evidence in DECIDER_EVIDENCE): DSCA decides the canal; the
    classifier decides lateral recess grades, whose measurement is less accurate than the model."""
    policy = GradingPolicy()
    assert policy.decider(Condition.SPINAL_CANAL) is Decider.RULE
    assert policy.decider(Condition.LEFT_SUBARTICULAR) is Decider.MODEL
    assert policy.decider(Condition.RIGHT_SUBARTICULAR) is Decider.MODEL
    described = policy.describe()
    deciders = described["deciders"]
    evidence = described["evidence"]
    assert isinstance(deciders, dict) and isinstance(evidence, dict)
    assert set(deciders) == {c.value for c in Condition}
    assert deciders["left_subarticular"] == Decider.MODEL.value
    assert set(evidence) == {c.value for c in Condition} and "kappa" in evidence["spinal_canal"]
    assert GradingPolicy(deciders={}).decider(Condition.LEFT_SUBARTICULAR) is Decider.RULE  # unlisted


def test_model_decider_keeps_showing_the_measurement_and_flags_a_disagreeing_rule() -> None:
    recess = m(MeasurementName.LATERAL_RECESS_DEPTH_MM, 2.0, Side.LEFT)  # rule: severe
    d = grade_finding(Level.L4_L5, Condition.LEFT_SUBARTICULAR, [recess], MODERATE)
    assert d.decided_by is Decider.MODEL and d.finding.grade is Grade.MODERATE
    assert d.rule_grade is Grade.SEVERE and d.deciding is recess
    assert d.finding.uncertain and d.reasons == ("model says moderate, measurement rule says severe",)
    assert d.finding.measurements == {MeasurementName.LATERAL_RECESS_DEPTH_MM: 2.0}
    assert d.finding.probability == pytest.approx(MODERATE.distribution[Grade.MODERATE])
    assert "by learned model" in d.explanation and "2.0 mm" in d.explanation


def test_model_decider_agreeing_is_certain_even_near_a_cut_off() -> None:
    """Near-threshold flags belong to the rule: when the model decides and the rule agrees, the
    finding is certain; the same value under a rule decider is flagged near the 3 mm cut-off."""
    recess = m(MeasurementName.LATERAL_RECESS_DEPTH_MM, 3.2, Side.RIGHT)  # rule: moderate
    d = grade_finding(Level.L3_L4, Condition.RIGHT_SUBARTICULAR, [recess], MODERATE)
    assert d.decided_by is Decider.MODEL and not d.finding.uncertain
    rule_policy = GradingPolicy(deciders={Condition.RIGHT_SUBARTICULAR: Decider.RULE})
    r = grade_finding(Level.L3_L4, Condition.RIGHT_SUBARTICULAR, [recess], MODERATE, rule_policy)
    assert r.decided_by is Decider.RULE and r.finding.uncertain and "3 cut-off" in r.reasons[0]


def test_model_decider_with_unreliable_or_missing_measurement_flags_why() -> None:
    bad = m(MeasurementName.LATERAL_RECESS_DEPTH_MM, 0.0, Side.LEFT, reliable=False)
    d = grade_finding(Level.L4_L5, Condition.LEFT_SUBARTICULAR, [bad], NORMAL)
    assert d.decided_by is Decider.MODEL and d.finding.grade is Grade.NORMAL_MILD
    assert d.finding.uncertain and "unreliable" in d.reasons[0]
    none = grade_finding(Level.L4_L5, Condition.LEFT_SUBARTICULAR, [], NORMAL)
    assert none.finding.uncertain and "not measured" in none.reasons[0]
