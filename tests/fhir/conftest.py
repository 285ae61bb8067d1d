"""Shared fixtures for the FHIR tests: a full 25-finding analysis with known findings, and a real
FHIR server (sekmet-fhir, the pinned test dependency) for the tests that write to one."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import requests

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
    exe = Path(sys.executable).with_name("sekmet")
    command = str(exe) if exe.exists() else shutil.which("sekmet")
    if command is None:
        pytest.fail("sekmet-fhir is a test dependency (pyproject [test]) but is not installed")
    workdir = tmp_path_factory.mktemp("sekmet")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    base = f"http://127.0.0.1:{port}/fhir"
    config = workdir / "settings.yaml"
    config.write_text(
        f"base_url: {base}\nhost: 127.0.0.1\nport: {port}\ndata_dir: {workdir / 'data'}\n"
        "simulator:\n  enabled: false\n"
    )
    with (workdir / "server.log").open("wb") as log:
        proc = subprocess.Popen(
            [command, "serve", "-c", str(config)],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SEKMET_CONFIG": str(config)},
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if requests.get(f"{base}/metadata", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"sekmet-fhir did not start; see {workdir / 'server.log'}")
                time.sleep(0.2)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
