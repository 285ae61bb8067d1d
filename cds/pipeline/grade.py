"""Stage 3: severity grade per (level, condition), hybrid and transparent.

Who decides is an explicit, per-condition choice (``GradingPolicy.deciders``), made on validation
evidence (``bench/measurement_error.py policy``) and shown in the README and model card:

* ``Decider.RULE``: the measurement rule of FINDINGS.md (``cds.domain.THRESHOLDS``) decides whenever
  its measurement is reliable, because a clinician can check it: the number, the unit and the
  threshold are all in the output. The learned model (the calibrated classifier's ordinal heads,
  see :class:`SeverityEstimate`) decides only where the rule cannot be trusted (measurement missing,
  mask too small or fragmented).
* ``Decider.MODEL``: for a condition whose measurement is known to be less accurate than the model
  (validation kappa of the rule below the model's), the model decides; the measurement is still
  measured and shown, and a rule grade that differs from the model's is flagged.

The finding is flagged ``uncertain`` whenever

1. the deciding measurement is unreliable or missing (the grade then comes from the model), or
2. the rule decides and the measurement lies within a margin of a threshold
   (``GradingPolicy.margins``: about the measurement error expected from segmentation, so the
   other side of the threshold is plausible), or
3. the rule and the model disagree (the model's most probable grade differs from the rule's).

``Finding.probability`` is the model's probability of the *reported* grade (the FHIR report codes
it so), which makes a rule/model disagreement visible as a low probability next to the grade.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType

from cds.domain import THRESHOLDS, Condition, Finding, Grade, Level, MeasurementName
from cds.errors import StageError
from cds.pipeline.measure import Measurement

STAGE = "grade"


@dataclass(frozen=True)
class SeverityEstimate:
    """A learned model's view of one (level, condition) as two ordinal probabilities.

    ``p_present`` = P(grade >= moderate) (the stage-2 target), ``p_severe`` = P(grade = severe).
    Ordinal rather than three free softmax outputs because severity is ordered: severe implies
    present, so P(severe) can never exceed P(present); the constructor enforces it by clipping.
    """

    p_present: float
    p_severe: float

    def __post_init__(self) -> None:
        for name in ("p_present", "p_severe"):
            v = float(getattr(self, name))
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} out of [0, 1]: {v}")
        object.__setattr__(self, "p_severe", min(float(self.p_severe), float(self.p_present)))

    @property
    def distribution(self) -> Mapping[Grade, float]:
        return MappingProxyType(
            {
                Grade.NORMAL_MILD: 1.0 - self.p_present,
                Grade.MODERATE: self.p_present - self.p_severe,
                Grade.SEVERE: self.p_severe,
            }
        )

    @property
    def grade(self) -> Grade:
        """Most probable grade (ties go to the milder grade: no overcalling on a coin toss)."""
        dist = self.distribution
        return max(Grade, key=lambda g: (dist[g], -g.rank))


class Decider(StrEnum):
    RULE = "measurement rule"
    MODEL = "learned model"


def _default_margins() -> Mapping[MeasurementName, float]:
    # About the measurement error expected from segmentation on this project's data (issue 4's
    # targets: DSCA MAE <= 8 mm2), so a value closer than this to a cut-off may fall either side.
    return MappingProxyType(
        {
            MeasurementName.DSCA_MM2: 5.0,
            MeasurementName.LATERAL_RECESS_DEPTH_MM: 0.5,
            MeasurementName.FORAMINAL_AREA_RATIO: 0.05,
        }
    )


def _default_deciders() -> Mapping[Condition, Decider]:
    # Evidence: DECIDER_EVIDENCE (validation part of /work/data/synth-train, the 34 studies the
    # axial U-Net never saw; `bench/measurement_error.py policy`). The recess conditions default to
    # the learned model because the depth measured on the segmentation grades badly; where the
    # subarticular model's card validates its *estimated* depth, the quick read switches them to
    # the rule on that depth (cds.pipeline.quick_read._recess_policy), as the shipped 2.0.0 does.
    return MappingProxyType(
        {
            Condition.SPINAL_CANAL: Decider.RULE,
            Condition.LEFT_SUBARTICULAR: Decider.MODEL,
            Condition.RIGHT_SUBARTICULAR: Decider.MODEL,
            Condition.LEFT_FORAMINAL: Decider.RULE,
            Condition.RIGHT_FORAMINAL: Decider.RULE,
        }
    )


_SUBARTICULAR_EVIDENCE = (
    "the learned estimate is the subarticular model's (2.0.0, fine recess crops; it replaces the "
    "classifier's) and it estimates the recess depth (validation MAE 0.55 mm against the measured "
    "depth's 1.52 mm, cut-offs 2 mm apart). On the 450 validation recesses of synth-train the "
    "FINDINGS.md rule on that estimated depth reaches quadratic kappa 0.862, the model's ordinal "
    "heads 0.819, classifier 2.0.0 0.640 and the rule on the measured depth 0.295; so the model "
    "card validates the estimated depth (grade_from_depth_rule) and its rule decides, with the "
    "heads as the second opinion that flags disagreement ({side}: {figures})."
)

#: Why each condition has the decider it has (shown with the policy in the model card/README).
DECIDER_EVIDENCE: Mapping[Condition, str] = MappingProxyType(
    {
        Condition.SPINAL_CANAL: (
            "DSCA rule kappa 0.934 vs classifier 2.0.0 0.917 on 165 validation levels (DSCA MAE 7.96 mm2); "
            "the checkable number decides"
        ),
        Condition.LEFT_SUBARTICULAR: _SUBARTICULAR_EVIDENCE.format(
            side="left", figures="rule on the estimated depth 0.868, heads 0.826, classifier 0.618"
        ),
        Condition.RIGHT_SUBARTICULAR: _SUBARTICULAR_EVIDENCE.format(
            side="right", figures="rule on the estimated depth 0.856, heads 0.812, classifier 0.662"
        ),
        Condition.LEFT_FORAMINAL: (
            "no validated axial measurement (FORAMEN_RATIO_VALIDATED is False): the learned estimate "
            "decides unless a reliable foraminal_area_ratio is supplied"
        ),
        Condition.RIGHT_FORAMINAL: (
            "no validated axial measurement (FORAMEN_RATIO_VALIDATED is False): the learned estimate "
            "decides unless a reliable foraminal_area_ratio is supplied"
        ),
    }
)


@dataclass(frozen=True)
class GradingPolicy:
    """The explicit knobs of the hybrid rule; shown in the model card and the README.

    ``deciders``: per condition, whether a reliable measurement's rule decides (RULE) or the learned
    model does (MODEL); conditions not listed are decided by the rule. ``margins``: per measurement,
    how close to a cut-off a rule-decided value is flagged uncertain.
    """

    margins: Mapping[MeasurementName, float] = field(default_factory=_default_margins)
    deciders: Mapping[Condition, Decider] = field(default_factory=_default_deciders)

    def margin(self, name: MeasurementName) -> float:
        return float(self.margins.get(name, 0.0))

    def decider(self, condition: Condition) -> Decider:
        return self.deciders.get(condition, Decider.RULE)

    def with_deciders(self, deciders: Mapping[Condition, Decider]) -> GradingPolicy:
        """This policy with some conditions' deciders changed (the others as they are)."""
        return replace(self, deciders=MappingProxyType({**self.deciders, **deciders}))

    def describe(self) -> dict[str, object]:
        """The policy as plain JSON (model card, README, evaluation report)."""
        return {
            "deciders": {c.value: self.decider(c).value for c in Condition},
            "margins": {n.value: self.margin(n) for n in self.margins},
            "evidence": {c.value: DECIDER_EVIDENCE[c] for c in Condition if c in DECIDER_EVIDENCE},
        }


DEFAULT_POLICY = GradingPolicy()


@dataclass(frozen=True)
class GradeDecision:
    """A finding plus the reasoning behind it: what each source said and why it is uncertain."""

    finding: Finding
    decided_by: Decider
    rule_grade: Grade | None
    model_grade: Grade
    deciding: Measurement | None
    reasons: tuple[str, ...]

    @property
    def explanation(self) -> str:
        """One plain sentence for logs, the viewer and the rationale's template fallback."""
        f = self.finding
        parts = [f"{f.condition.display} at {f.level.value}: {f.grade.display} (by {self.decided_by.value}"]
        if self.deciding is not None and self.rule_grade is not None:
            th = THRESHOLDS[f.condition]
            parts.append(
                f"; {self.deciding.name.display} {_fmt(self.deciding)}, rule {th.describe(self.rule_grade)}"
            )
        parts.append(f"; model {self.model_grade.display})")
        if self.reasons:
            parts.append(" - uncertain: " + "; ".join(self.reasons))
        return "".join(parts)


def _fmt(m: Measurement) -> str:
    if m.unit == "1":
        return f"{m.value * 100:.0f} %"
    return f"{m.value:.1f} {m.unit}"


def rule_grade(condition: Condition, measurement: Measurement) -> Grade:
    """The FINDINGS.md rule alone (no reliability check)."""
    if measurement.name is not condition.deciding_measurement:
        raise ValueError(f"{condition.value} is graded by {condition.deciding_measurement.value}")
    return THRESHOLDS[condition].grade(measurement.value)


def near_threshold(condition: Condition, value: float, policy: GradingPolicy) -> float | None:
    """The cut-off that ``value`` lies within the policy margin of, if any."""
    th = THRESHOLDS[condition]
    margin = policy.margin(th.measurement)
    for cut in (th.severe_below, th.moderate_below):
        if abs(value - cut) < margin:
            return cut
    return None


def grade_finding(
    level: Level,
    condition: Condition,
    measurements: Sequence[Measurement],
    learned: SeverityEstimate,
    policy: GradingPolicy = DEFAULT_POLICY,
) -> GradeDecision:
    """Combine the measurement rule and the learned estimate for one (level, condition).

    ``measurements`` are those that belong to this finding (the deciding one with the
    condition's side, plus context such as AP diameter and disc height on spinal_canal); all of
    them that were actually measured are carried into the finding.
    """
    side = condition.side
    deciding = next(
        (m for m in measurements if m.name is condition.deciding_measurement and m.side is side), None
    )
    model_grade = learned.grade
    reasons: list[str] = []
    rule: Grade | None = None
    if deciding is not None and deciding.reliable and policy.decider(condition) is Decider.MODEL:
        rule = rule_grade(condition, deciding)
        grade, decided_by = model_grade, Decider.MODEL
        if model_grade is not rule:
            reasons.append(f"model says {model_grade.display}, measurement rule says {rule.display}")
    elif deciding is not None and deciding.reliable:
        rule = rule_grade(condition, deciding)
        grade, decided_by = rule, Decider.RULE
        cut = near_threshold(condition, deciding.value, policy)
        if cut is not None:
            reasons.append(
                f"{deciding.name.display} {_fmt(deciding)} within "
                f"{policy.margin(deciding.name):g} of the {cut:g} cut-off"
            )
        if model_grade is not rule:
            reasons.append(f"model says {model_grade.display}, measurement rule says {rule.display}")
    else:
        grade, decided_by = model_grade, Decider.MODEL
        if deciding is None:
            reasons.append(f"{condition.deciding_measurement.display} not measured")
        else:
            rule = rule_grade(condition, deciding)
            reasons.append(
                f"{deciding.name.display} unreliable ({'; '.join(deciding.issues) or 'unspecified'})"
            )
    shown = {m.name: m.value for m in measurements if m.reliable or m.value > 0}
    finding = Finding(
        level=level,
        condition=condition,
        grade=grade,
        probability=float(min(1.0, max(0.0, learned.distribution[grade]))),
        measurements=shown,
        uncertain=bool(reasons),
    )
    return GradeDecision(finding, decided_by, rule, model_grade, deciding, tuple(reasons))


def grade_level(
    level: Level,
    measurements: Mapping[Condition, Sequence[Measurement]],
    learned: Mapping[Condition, SeverityEstimate],
    policy: GradingPolicy = DEFAULT_POLICY,
) -> tuple[GradeDecision, ...]:
    """All five conditions of one level; a missing learned estimate is a stage failure."""
    out = []
    for condition in Condition:
        if condition not in learned:
            raise StageError(STAGE, f"no learned estimate for {condition.value} at {level.value}")
        out.append(
            grade_finding(level, condition, measurements.get(condition, ()), learned[condition], policy)
        )
    return tuple(out)
