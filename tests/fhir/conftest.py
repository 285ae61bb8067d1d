"""Shared fixtures for the FHIR tests: a full 25-finding analysis with known findings, and a real
FHIR server (sekmet-fhir, the pinned test dependency) for the tests that write to one."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime

import pytest
from sekmet_support import running_sekmet

from cds.domain import (
    THRESHOLDS,
    AnalysisResult,
    AnalysisStatus,
    Condition,
    Finding,
    Grade,
    Level,
    MeasurementName,
)
from cds.fhir.report import ReportContext


def _normal(level: Level, condition: Condition) -> Finding:
    thresholds = THRESHOLDS[condition]
    measurements = {condition.deciding_measurement: thresholds.moderate_below * 1.2}
    if condition is Condition.SPINAL_CANAL:
        measurements[MeasurementName.AP_DIAMETER_MM] = 13.0
        measurements[MeasurementName.DISC_HEIGHT_MM] = 10.0
    return Finding(level, condition, Grade.NORMAL_MILD, 0.91, measurements)


SEVERE_CANAL = Finding(
    Level.L4_L5,
    Condition.SPINAL_CANAL,
    Grade.SEVERE,
    0.97,
    {
        MeasurementName.DSCA_MM2: 61.8,
        MeasurementName.AP_DIAMETER_MM: 7.9,
        MeasurementName.DISC_HEIGHT_MM: 8.1,
    },
)
MODERATE_LEFT_FORAMEN = Finding(
    Level.L5_S1,
    Condition.LEFT_FORAMINAL,
    Grade.MODERATE,
    0.64,
    {MeasurementName.FORAMINAL_AREA_RATIO: 0.42},
    uncertain=True,
)


@pytest.fixture
def analysis() -> AnalysisResult:
    special = {(f.level, f.condition): f for f in (SEVERE_CANAL, MODERATE_LEFT_FORAMEN)}
    findings = tuple(special.get((lv, c), _normal(lv, c)) for lv in Level for c in Condition)
    return AnalysisResult(
        AnalysisStatus.COMPLETE,
        findings,
        model_versions={"segmenter": "1.2.0", "grader": "0.4.1"},
    )


@pytest.fixture
def ctx() -> ReportContext:
    return ReportContext(
        analysis_id="6f1c2b8e-0d4a-4d38-9a51-2b7f3c9e1a10",
        patient_ref="Patient/pat-42",
        issued=datetime(2025, 3, 4, 10, 30, tzinfo=UTC),
        study_uid="1.2.826.0.1.3680043.8.498.1",
        study_date=date(2025, 3, 3),
    )


@pytest.fixture(scope="module")
def sekmet_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a sekmet-fhir server on a spare loopback port (one per test module)."""
    with running_sekmet(tmp_path_factory.mktemp("sekmet")) as base:
        yield base
