"""What the report page shows, computed from domain values (no Flask, no database): easy to test.

Every grade is shown as text and as a colour class (never colour alone), with the deciding
measurement, its unit, and the threshold range of the grade it fell into, so a clinician can see
why the model said "severe" and disagree with the number rather than with a black box.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime

from cds.domain import (
    THRESHOLDS,
    AnalysisMode,
    AnalysisResult,
    AnalysisStatus,
    Condition,
    Finding,
    Grade,
    Level,
    MeasurementName,
)

_STATUS_TEXT: Mapping[AnalysisStatus, str] = {
    AnalysisStatus.PENDING: "Queued: the analysis has not started yet.",
    AnalysisStatus.RUNNING: "Running: results will appear here when the analysis finishes.",
    AnalysisStatus.COMPLETE: "Complete.",
    AnalysisStatus.UNANALYSABLE: "Not analysable: the study could not be analysed.",
    AnalysisStatus.FAILED: "Failed: the analysis did not finish; it may be retried.",
}

#: CSS class per grade; the template pairs each with the grade's text.
GRADE_CLASS: Mapping[Grade, str] = {
    Grade.NORMAL_MILD: "grade-normal",
    Grade.MODERATE: "grade-moderate",
    Grade.SEVERE: "grade-severe",
}

_CONDITION_HEADINGS: Mapping[Condition, str] = {
    Condition.SPINAL_CANAL: "Central canal",
    Condition.LEFT_SUBARTICULAR: "Left subarticular",
    Condition.RIGHT_SUBARTICULAR: "Right subarticular",
    Condition.LEFT_FORAMINAL: "Left foraminal",
    Condition.RIGHT_FORAMINAL: "Right foraminal",
}
#: Column order of the overview: centre, then the two recesses, then the two foramina.
CONDITION_ORDER: tuple[Condition, ...] = tuple(_CONDITION_HEADINGS)


def _unit_text(text: str) -> str:
    return text.replace("mm2", "mm²")


def format_measurement(name: MeasurementName, value: float) -> str:
    if name.unit == "1":
        return f"{value * 100:.0f} %"
    return _unit_text(f"{value:.1f} {name.unit}")


@dataclass(frozen=True)
class FindingRow:
    """One (level, condition) line of the detail table."""

    level: Level
    condition: Condition
    condition_text: str
    grade_text: str
    grade_class: str
    probability_text: str
    measurement_name: str
    measurement_text: str
    threshold_text: str
    scale_text: str
    other_measurements: tuple[str, ...]
    uncertain: bool


@dataclass(frozen=True)
class OverviewCell:
    condition: Condition
    grade_text: str
    grade_class: str
    uncertain: bool


@dataclass(frozen=True)
class OverviewRow:
    level: Level
    cells: tuple[OverviewCell, ...]


@dataclass(frozen=True)
class ReportPage:
    """Everything report.html renders."""

    analysis_id: str
    status: AnalysisStatus
    status_text: str
    mode: str
    reason: str | None
    patient_ref: str | None
    study_date: str
    study_description: str | None
    analysed_at: str | None
    model_versions: tuple[tuple[str, str], ...]
    labelling_uncertain: bool
    headings: tuple[str, ...]
    overview: tuple[OverviewRow, ...]
    rows: tuple[FindingRow, ...]
    worst_text: str | None
    uncertain_count: int
    threshold_legend: tuple[str, ...]

    @property
    def has_findings(self) -> bool:
        return bool(self.rows)


def _finding_row(f: Finding) -> FindingRow:
    thresholds = THRESHOLDS[f.condition]
    name = f.condition.deciding_measurement
    value = f.deciding_value
    others = tuple(
        f"{m.display}: {format_measurement(m, v)}"
        for m, v in sorted(f.measurements.items(), key=lambda kv: list(MeasurementName).index(kv[0]))
        if m is not name
    )
    scale = "; ".join(f"{g.display} {thresholds.describe(g)}" for g in Grade)
    return FindingRow(
        level=f.level,
        condition=f.condition,
        condition_text=f.condition.display,
        grade_text=f.grade.display,
        grade_class=GRADE_CLASS[f.grade],
        probability_text=f"{f.probability * 100:.0f} %",
        measurement_name=name.display,
        measurement_text=format_measurement(name, value) if value is not None else "not measured",
        threshold_text=_unit_text(f"{f.grade.display}: {thresholds.describe(f.grade)}"),
        scale_text=_unit_text(scale),
        other_measurements=others,
        uncertain=f.uncertain,
    )


def _overview(result: AnalysisResult) -> tuple[OverviewRow, ...]:
    rows = []
    levels = sorted({f.level for f in result.findings}, key=lambda lv: lv.index)
    for level in levels:
        cells = []
        for condition in CONDITION_ORDER:
            f = result.finding(level, condition)
            if f is None:
                cells.append(OverviewCell(condition, "not graded", "grade-none", False))
            else:
                cells.append(OverviewCell(condition, f.grade.display, GRADE_CLASS[f.grade], f.uncertain))
        rows.append(OverviewRow(level, tuple(cells)))
    return tuple(rows)


def _date_text(value: date | datetime | None) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    return value.isoformat()


def build_report_page(
    result: AnalysisResult,
    *,
    analysis_id: str,
    mode: AnalysisMode = AnalysisMode.QUICK,
    patient_ref: str | None = None,
    study_date: date | None = None,
    study_description: str | None = None,
    analysed_at: datetime | None = None,
) -> ReportPage:
    findings = sorted(result.findings, key=lambda f: (f.level.index, CONDITION_ORDER.index(f.condition)))
    worst = result.worst()
    worst_text = None
    if worst is not None and worst.grade.present:
        worst_text = f"{worst.grade.display} {worst.condition.display} at {worst.level.value}"
        if worst.uncertain:
            worst_text += " (flagged uncertain)"
    return ReportPage(
        analysis_id=analysis_id,
        status=result.status,
        status_text=_STATUS_TEXT[result.status],
        mode=mode.value,
        reason=result.reason,
        patient_ref=patient_ref,
        study_date=_date_text(study_date),
        study_description=study_description,
        analysed_at=_date_text(analysed_at) if analysed_at else None,
        model_versions=tuple(
            sorted((str(k), _version(str(k), str(v))) for k, v in result.model_versions.items())
        ),
        labelling_uncertain=result.labelling_uncertain,
        headings=tuple(_CONDITION_HEADINGS[c] for c in CONDITION_ORDER),
        overview=_overview(result),
        rows=tuple(_finding_row(f) for f in findings),
        worst_text=worst_text,
        uncertain_count=sum(1 for f in findings if f.uncertain),
        threshold_legend=threshold_legend(),
    )


def _version(name: str, tag: str) -> str:
    """'axial_seg@1.0.0' under the name 'axial_seg' reads '1.0.0' (the name is already shown)."""
    return tag[len(name) + 1 :] if tag.startswith(name + "@") else tag


def threshold_legend() -> tuple[str, ...]:
    """One line per deciding measurement, from THRESHOLDS (the single source of the cut-offs)."""
    seen: dict[MeasurementName, str] = {}
    for condition in CONDITION_ORDER:
        thresholds = THRESHOLDS[condition]
        if thresholds.measurement not in seen:
            scale = "; ".join(f"{g.display} {thresholds.describe(g)}" for g in Grade)
            seen[thresholds.measurement] = _unit_text(f"{thresholds.measurement.display}: {scale}")
    return tuple(seen.values())
