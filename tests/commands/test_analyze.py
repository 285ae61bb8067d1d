"""`cds analyze`: table/JSON output of an AnalysisResult and exit codes for unreadable input."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from cds.commands import analyze
from cds.domain import AnalysisResult, AnalysisStatus, Condition, Finding, Grade, Level, MeasurementName


def result() -> AnalysisResult:
    f = Finding(
        Level.L4_L5,
        Condition.SPINAL_CANAL,
        Grade.SEVERE,
        0.97,
        {MeasurementName.DSCA_MM2: 61.8, MeasurementName.AP_DIAMETER_MM: 7.9},
        False,
    )
    g = Finding(Level.L4_L5, Condition.LEFT_FORAMINAL, Grade.MODERATE, 0.6, {}, True)
    return AnalysisResult(AnalysisStatus.COMPLETE, (g, f), timings_ms={"segment_sagittal": 120.0})


def test_table_lists_findings_in_level_and_condition_order() -> None:
    text = analyze.format_table(result())
    rows = [line for line in text.splitlines() if line.startswith("L4-L5")]
    assert rows[0].split()[:3] == ["L4-L5", "spinal_canal", "severe"]
    assert "dsca_mm2=61.8 mm2" in rows[0]
    assert "uncertain" in rows[1]
    assert "status: complete" in text and "segment_sagittal 120" in text


def test_json_output_uses_findings_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert analyze._emit(result(), as_json=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "complete"
    finding = data["levels"]["L4-L5"]["spinal_canal"]
    assert finding == {
        "grade": "severe",
        "probability": 0.97,
        "measurements": {"dsca_mm2": 61.8, "ap_diameter_mm": 7.9},
        "uncertain": False,
    }
    assert "timings_ms" in data


def test_unreadable_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "note.txt").write_text("not dicom")
    code = analyze.run(argparse.Namespace(path=tmp_path, json=True, models_dir=None))
    assert code == 2
    data = json.loads(capsys.readouterr().out)  # --json: even an unreadable input gives a result saying why
    assert data["status"] == "unanalysable" and data["levels"] == {}
    assert data["reason"].startswith("cannot read study (")
    assert "load_dicom" in data["timings_ms"]


def test_unreadable_input_without_json_explains_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "note.txt").write_text("not dicom")
    assert analyze.run(argparse.Namespace(path=tmp_path, json=False, models_dir=None)) == 2
    assert "cannot read study" in capsys.readouterr().err
