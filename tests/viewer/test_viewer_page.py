"""The report page model: grade text + colour class, measurement with unit, threshold, uncertainty."""

from __future__ import annotations

from datetime import UTC, date, datetime

from cds.domain import (
    AnalysisMode,
    AnalysisResult,
    AnalysisStatus,
    Condition,
    Finding,
    Grade,
    Level,
    MeasurementName,
)
from cds.viewer.page import CONDITION_ORDER, ReportPage, build_report_page, format_measurement

SEVERE = Finding(
    Level.L4_L5,
    Condition.SPINAL_CANAL,
    Grade.SEVERE,
    0.97,
    {MeasurementName.DSCA_MM2: 61.8, MeasurementName.AP_DIAMETER_MM: 7.9},
)
MODERATE = Finding(
    Level.L5_S1,
    Condition.LEFT_FORAMINAL,
    Grade.MODERATE,
    0.64,
    {MeasurementName.FORAMINAL_AREA_RATIO: 0.42},
    True,
)
NORMAL = Finding(Level.L4_L5, Condition.RIGHT_SUBARTICULAR, Grade.NORMAL_MILD, 0.88, {})


def _page(result: AnalysisResult) -> ReportPage:
    return build_report_page(
        result,
        analysis_id="a-1",
        mode=AnalysisMode.QUICK,
        patient_ref="Patient/p1",
        study_date=date(2025, 3, 3),
        analysed_at=datetime(2025, 3, 4, 10, 30, tzinfo=UTC),
    )


def test_rows_carry_grade_text_colour_measurement_and_threshold() -> None:
    result = AnalysisResult(
        AnalysisStatus.COMPLETE, (MODERATE, NORMAL, SEVERE), model_versions={"grader": "0.4"}
    )
    page = _page(result)
    assert [(r.level, r.condition) for r in page.rows] == [
        (Level.L4_L5, Condition.SPINAL_CANAL),
        (Level.L4_L5, Condition.RIGHT_SUBARTICULAR),
        (Level.L5_S1, Condition.LEFT_FORAMINAL),
    ]
    severe = page.rows[0]
    assert (severe.grade_text, severe.grade_class) == ("severe", "grade-severe")
    assert severe.probability_text == "97 %"
    assert severe.measurement_text == "61.8 mm²"
    assert severe.threshold_text == "severe: < 75 mm²"
    assert severe.other_measurements == ("canal AP diameter: 7.9 mm",)
    assert not severe.uncertain
    foramen = page.rows[2]
    assert foramen.measurement_text == "42 %"
    assert foramen.threshold_text == "moderate: 35 % to < 60 %"
    assert foramen.uncertain
    assert page.rows[1].measurement_text == "not measured"
    assert page.worst_text == "severe central canal stenosis at L4-L5"
    assert page.uncertain_count == 1
    assert page.model_versions == (("grader", "0.4"),)
    assert page.study_date == "2025-03-03"
    assert len(page.threshold_legend) == 3


def test_overview_marks_missing_cells_as_not_graded() -> None:
    page = _page(AnalysisResult(AnalysisStatus.COMPLETE, (SEVERE, MODERATE)))
    assert [row.level for row in page.overview] == [Level.L4_L5, Level.L5_S1]
    l45 = page.overview[0]
    assert [c.condition for c in l45.cells] == list(CONDITION_ORDER)
    assert l45.cells[0].grade_text == "severe"
    assert l45.cells[1].grade_text == "not graded" and l45.cells[1].grade_class == "grade-none"


def test_incomplete_analysis_has_no_rows_but_a_status() -> None:
    page = _page(AnalysisResult(AnalysisStatus.UNANALYSABLE, reason="no sagittal T2 series"))
    assert not page.has_findings
    assert page.status_text.startswith("Not analysable")
    assert page.reason == "no sagittal T2 series"
    assert page.worst_text is None


def test_format_measurement_units() -> None:
    assert format_measurement(MeasurementName.DSCA_MM2, 100) == "100.0 mm²"
    assert format_measurement(MeasurementName.LATERAL_RECESS_DEPTH_MM, 2.94) == "2.9 mm"
    assert format_measurement(MeasurementName.FORAMINAL_AREA_RATIO, 0.355) == "36 %"
