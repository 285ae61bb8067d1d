"""The product's single vocabulary (../shared/spec/FINDINGS.md) as typed values.

Everything that talks about levels, conditions, grades or measurements (generator ground truth,
pipeline output, store records, FHIR resources, rationale, evaluation) uses these types, so that
a misspelt level or grade is a type error rather than a silently empty table cell.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from types import MappingProxyType
from typing import Any


class Level(StrEnum):
    """Lumbar disc levels, cranial to caudal; identified by counting discs up from the sacrum."""

    L1_L2 = "L1-L2"
    L2_L3 = "L2-L3"
    L3_L4 = "L3-L4"
    L4_L5 = "L4-L5"
    L5_S1 = "L5-S1"

    @property
    def index(self) -> int:  # type: ignore[override]  # shadows str.index on purpose
        """0 for L1-L2 ... 4 for L5-S1 (cranial to caudal)."""
        return list(Level).index(self)


class Side(StrEnum):
    LEFT = "left"
    RIGHT = "right"


class Condition(StrEnum):
    """RSNA 2024 lumbar taxonomy: one canal, two foraminal and two subarticular conditions per level."""

    SPINAL_CANAL = "spinal_canal"
    LEFT_FORAMINAL = "left_foraminal"
    RIGHT_FORAMINAL = "right_foraminal"
    LEFT_SUBARTICULAR = "left_subarticular"
    RIGHT_SUBARTICULAR = "right_subarticular"

    @property
    def side(self) -> Side | None:
        if self.value.startswith("left_"):
            return Side.LEFT
        if self.value.startswith("right_"):
            return Side.RIGHT
        return None

    @property
    def deciding_measurement(self) -> MeasurementName:
        """The measurement whose thresholds define this condition's grade (FINDINGS.md table)."""
        if self is Condition.SPINAL_CANAL:
            return MeasurementName.DSCA_MM2
        if self in (Condition.LEFT_FORAMINAL, Condition.RIGHT_FORAMINAL):
            return MeasurementName.FORAMINAL_AREA_RATIO
        return MeasurementName.LATERAL_RECESS_DEPTH_MM

    @property
    def display(self) -> str:
        """Clinician wording, e.g. 'left neural foraminal narrowing'."""
        side = f"{self.side.value} " if self.side else ""
        if self is Condition.SPINAL_CANAL:
            return "central canal stenosis"
        if self in (Condition.LEFT_FORAMINAL, Condition.RIGHT_FORAMINAL):
            return f"{side}neural foraminal narrowing"
        return f"{side}subarticular (lateral recess) stenosis"


class Grade(StrEnum):
    """Three severity grades; 'stenosis present' means moderate or severe."""

    NORMAL_MILD = "normal_mild"
    MODERATE = "moderate"
    SEVERE = "severe"

    @property
    def rank(self) -> int:
        return {Grade.NORMAL_MILD: 0, Grade.MODERATE: 1, Grade.SEVERE: 2}[self]

    @property
    def present(self) -> bool:
        return self is not Grade.NORMAL_MILD

    @property
    def display(self) -> str:
        return {Grade.NORMAL_MILD: "normal/mild", Grade.MODERATE: "moderate", Grade.SEVERE: "severe"}[self]


class MeasurementName(StrEnum):
    DSCA_MM2 = "dsca_mm2"
    AP_DIAMETER_MM = "ap_diameter_mm"
    LATERAL_RECESS_DEPTH_MM = "lateral_recess_depth_mm"
    FORAMINAL_AREA_RATIO = "foraminal_area_ratio"
    DISC_HEIGHT_MM = "disc_height_mm"

    @property
    def unit(self) -> str:
        """UCUM unit code (also used for display)."""
        return {
            MeasurementName.DSCA_MM2: "mm2",
            MeasurementName.AP_DIAMETER_MM: "mm",
            MeasurementName.LATERAL_RECESS_DEPTH_MM: "mm",
            MeasurementName.FORAMINAL_AREA_RATIO: "1",
            MeasurementName.DISC_HEIGHT_MM: "mm",
        }[self]

    @property
    def display(self) -> str:
        return {
            MeasurementName.DSCA_MM2: "dural sac area",
            MeasurementName.AP_DIAMETER_MM: "canal AP diameter",
            MeasurementName.LATERAL_RECESS_DEPTH_MM: "lateral recess depth",
            MeasurementName.FORAMINAL_AREA_RATIO: "foraminal area ratio",
            MeasurementName.DISC_HEIGHT_MM: "disc height",
        }[self]


@dataclass(frozen=True)
class GradeThresholds:
    """Cut-offs of one deciding measurement: smaller values are worse for every condition.

    value >= moderate_below -> normal_mild; severe_below <= value < moderate_below -> moderate;
    value < severe_below -> severe.
    """

    measurement: MeasurementName
    moderate_below: float
    severe_below: float

    def grade(self, value: float) -> Grade:
        if value < self.severe_below:
            return Grade.SEVERE
        if value < self.moderate_below:
            return Grade.MODERATE
        return Grade.NORMAL_MILD

    def describe(self, grade: Grade) -> str:
        """The threshold a grade was compared to, in words (for cards, viewer, rationale)."""
        unit = self.measurement.unit
        fmt = _format_value
        if grade is Grade.SEVERE:
            return f"< {fmt(self.severe_below, unit)}"
        if grade is Grade.MODERATE:
            return f"{fmt(self.severe_below, unit)} to < {fmt(self.moderate_below, unit)}"
        return f">= {fmt(self.moderate_below, unit)}"


def _format_value(value: float, unit: str) -> str:
    if unit == "1":
        return f"{value * 100:.0f} %"
    return f"{value:g} {unit}"


# FINDINGS.md: DSCA 100/75 mm2; lateral recess depth 5/3 mm; foraminal area ratio 60 %/35 %.
THRESHOLDS: Mapping[Condition, GradeThresholds] = MappingProxyType(
    {
        Condition.SPINAL_CANAL: GradeThresholds(MeasurementName.DSCA_MM2, 100.0, 75.0),
        Condition.LEFT_SUBARTICULAR: GradeThresholds(MeasurementName.LATERAL_RECESS_DEPTH_MM, 5.0, 3.0),
        Condition.RIGHT_SUBARTICULAR: GradeThresholds(MeasurementName.LATERAL_RECESS_DEPTH_MM, 5.0, 3.0),
        Condition.LEFT_FORAMINAL: GradeThresholds(MeasurementName.FORAMINAL_AREA_RATIO, 0.60, 0.35),
        Condition.RIGHT_FORAMINAL: GradeThresholds(MeasurementName.FORAMINAL_AREA_RATIO, 0.60, 0.35),
    }
)


def grade_from_measurement(condition: Condition, value: float) -> Grade:
    """Ground-truth rule: the grade that FINDINGS.md assigns to a deciding measurement value."""
    return THRESHOLDS[condition].grade(value)


@dataclass(frozen=True)
class Finding:
    """One (level, condition) result of the pipeline, as the analyze JSON and the reports carry it."""

    level: Level
    condition: Condition
    grade: Grade
    probability: float
    measurements: Mapping[MeasurementName, float] = field(default_factory=dict)
    uncertain: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability out of [0, 1]: {self.probability}")
        object.__setattr__(self, "measurements", MappingProxyType(dict(self.measurements)))

    @property
    def deciding_value(self) -> float | None:
        return self.measurements.get(self.condition.deciding_measurement)

    def to_json(self) -> dict[str, Any]:
        return {
            "grade": self.grade.value,
            "probability": round(float(self.probability), 4),
            "measurements": {k.value: round(float(v), 4) for k, v in self.measurements.items()},
            "uncertain": bool(self.uncertain),
        }

    @classmethod
    def from_json(cls, level: Level, condition: Condition, data: Mapping[str, Any]) -> Finding:
        return cls(
            level=level,
            condition=condition,
            grade=Grade(data["grade"]),
            probability=float(data["probability"]),
            measurements={
                MeasurementName(k): float(v) for k, v in dict(data.get("measurements", {})).items()
            },
            uncertain=bool(data.get("uncertain", False)),
        )


class AnalysisStatus(StrEnum):
    """Lifecycle of one analysis.

    UNANALYSABLE: the study was read but cannot be analysed (reason says why).
    """

    PENDING = "pending"
    RUNNING = "running"
    COMPLETE = "complete"
    UNANALYSABLE = "unanalysable"
    FAILED = "failed"


class AnalysisMode(StrEnum):
    QUICK = "quick"
    EXPLAINABLE = "explainable"


class ExplanationStatus(StrEnum):
    """Lifecycle of the on-demand explanation (Grad-CAM + rationale) of one analysis."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"


class FeedbackOutcome(StrEnum):
    """CDS Hooks feedback outcome for one card."""

    ACCEPTED = "accepted"
    OVERRIDDEN = "overridden"


class FeedbackVerdict(StrEnum):
    """A clinician's verdict on one AI finding or on a whole card, given in the viewer."""

    AGREE = "agree"
    DISAGREE = "disagree"


@dataclass(frozen=True)
class AnalysisResult:
    """What quick_read returns and the store keeps.

    Findings per level and condition, or (no findings) the reason there are none.
    """

    status: AnalysisStatus
    findings: tuple[Finding, ...] = ()
    reason: str | None = None
    labelling_uncertain: bool = False
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    model_versions: Mapping[str, str] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Finding]:
        return iter(self.findings)

    def finding(self, level: Level, condition: Condition) -> Finding | None:
        for f in self.findings:
            if f.level is level and f.condition is condition:
                return f
        return None

    def worst(self) -> Finding | None:
        """Highest grade, then highest probability, then most caudal level (the usual clinical focus)."""
        if not self.findings:
            return None
        return max(self.findings, key=lambda f: (f.grade.rank, f.probability, f.level.index))

    def to_json(self) -> dict[str, Any]:
        levels: dict[str, dict[str, Any]] = {}
        for f in sorted(self.findings, key=lambda f: (f.level.index, list(Condition).index(f.condition))):
            levels.setdefault(f.level.value, {})[f.condition.value] = f.to_json()
        out: dict[str, Any] = {
            "levels": levels,
            "status": self.status.value,
            "timings_ms": {k: round(float(v), 2) for k, v in self.timings_ms.items()},
        }
        if self.reason:
            out["reason"] = self.reason
        if self.labelling_uncertain:
            out["labelling_uncertain"] = True
        if self.model_versions:
            out["model_versions"] = dict(self.model_versions)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AnalysisResult:
        findings = tuple(
            Finding.from_json(Level(lv), Condition(cond), fd)
            for lv, conds in dict(data.get("levels", {})).items()
            for cond, fd in dict(conds).items()
        )
        return cls(
            status=AnalysisStatus(data["status"]),
            findings=findings,
            reason=data.get("reason"),
            labelling_uncertain=bool(data.get("labelling_uncertain", False)),
            timings_ms=dict(data.get("timings_ms", {})),
            model_versions=dict(data.get("model_versions", {})),
        )


class Indicator(Enum):
    """CDS card indicator derived from the worst grade (README documents the mapping)."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @classmethod
    def for_grade(cls, grade: Grade | None) -> Indicator:
        if grade is Grade.SEVERE:
            return cls.CRITICAL
        if grade is Grade.MODERATE:
            return cls.WARNING
        return cls.INFO
