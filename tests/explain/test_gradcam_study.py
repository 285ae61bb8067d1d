"""Integration: a generated study through the real pipeline, Grad-CAM, the explain job and the CLI.

Uses the shipped model weights (models/) and one small generated study per module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cds.config import Settings
from cds.domain import AnalysisResult, AnalysisStatus, Condition, ExplanationStatus, Grade
from cds.explain.gradcam import CamTarget
from cds.explain.gradcam_inputs import TracedRead
from cds.jobs.registry import PermanentJobError
from cds.store import queries
from cds.store.db import Database

SEED = 5150
STUDY_UID_FIELD = "study_uid"


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cds.synth.protocol import StudyOptions
    from cds.synth.study import generate_study

    root = tmp_path_factory.mktemp("gradcam-study")
    return generate_study(SEED, root, StudyOptions(sag_matrix=(256,), ax_matrix=(224,)), study_name="SYN-GC")


@pytest.fixture(scope="module")
def traced(study_dir: Path) -> TracedRead:
    from cds.dicom import load_study
    from cds.explain.gradcam_inputs import traced_quick_read

    result = traced_quick_read(load_study(study_dir / "dicom"))
    if result.result.status is not AnalysisStatus.COMPLETE or not result.inputs:
        pytest.fail(f"the generated study was not analysed: {result.result.reason}")
    return result


def test_heatmaps_for_study_writes_labelled_overlays_and_raw_maps(traced: TracedRead, tmp_path: Path) -> None:
    from cds.explain.gradcam_study import heatmaps_for_study

    level = sorted(traced.inputs, key=lambda lv: lv.index)[0]
    # The foraminal findings are graded (and so explained) by the foraminal model on parasagittal
    # crops (tests/explain/test_gradcam_foramen.py), the lateral recess findings by the subarticular
    # model on its recess crops; the classifier's axial maps explain the central canal.
    foraminal = (Condition.LEFT_FORAMINAL, Condition.RIGHT_FORAMINAL)
    recess = (Condition.LEFT_SUBARTICULAR, Condition.RIGHT_SUBARTICULAR)
    targets = [CamTarget(level, Condition.SPINAL_CANAL)]
    made = heatmaps_for_study(traced.result, traced.inputs, tmp_path / "gc", targets=targets)
    assert [h.key for h in made.heatmaps] == [t.key for t in targets]
    sides = [CamTarget(level, c) for c in recess]
    assert heatmaps_for_study(traced.result, traced.inputs, tmp_path / "gn", targets=sides).heatmaps == ()
    recesses = heatmaps_for_study(
        traced.result, traced.inputs, tmp_path / "gs", targets=sides, recesses=traced.recesses
    )
    assert [h.key for h in recesses.heatmaps] == [t.key for t in sides]
    assert {(h.series_uid, h.slice_index) for h in recesses.heatmaps} <= {
        (r.placement.series_uid, r.placement.slice_index) for r in traced.recesses.values()
    }
    both = [CamTarget(level, c) for c in foraminal]
    sagittal = heatmaps_for_study(
        traced.result, traced.inputs, tmp_path / "gf", targets=both, foramina=traced.foramina
    )
    assert [h.key for h in sagittal.heatmaps] == [t.key for t in both]
    assert all(
        h.series_uid != inp.placement.series_uid for h in sagittal.heatmaps for inp in [traced.inputs[level]]
    )
    inp = traced.inputs[level]
    for h in made.heatmaps:
        with Image.open(h.overlay) as img:
            assert img.format == "PNG" and img.mode == "RGB"
            rows, cols = inp.slice_image.shape
            assert img.size[0] > cols and img.size[1] > rows  # image + legend + header
        with np.load(h.raw) as z:
            assert z["crop_map"].shape == inp.crop.shape[1:]
            assert z["native_map"].shape == inp.slice_image.shape
            assert float(z["crop_map"].max()) == pytest.approx(1.0, abs=1e-3)
        assert h.peak_ij is not None and h.peak_mm is not None
        expected = inp.placement.native_to_patient(np.asarray([h.peak_ij]))[0]
        np.testing.assert_allclose(h.peak_mm, expected, atol=0.01)
        assert h.series_uid == inp.placement.series_uid and h.slice_index == inp.placement.slice_index
        record = h.record(tmp_path)
        assert record["overlay"].startswith("gc/") and record["raw"].endswith(".npz")
        assert set(record) >= {"overlay", "raw", "series_uid", "slice_index", "peak_mm", "level", "condition"}
    assert made.notes()[level.value]
    assert made.timings_ms["gradcam_ms"] > 0


def _stored(db: Database, study_dir: Path, result: AnalysisResult, uid: str) -> str:
    with db.session() as s:
        queries.upsert_study(s, uid, source_uri=str(study_dir / "dicom"))
        return queries.save_analysis(s, uid, result).id


@pytest.fixture()
def settings(tmp_path: Path) -> Iterator[Settings]:
    yield Settings(data_dir=tmp_path / "data", rationale_backend="template")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_explain_job_completes_and_is_idempotent(
    db: Database, settings: Settings, study_dir: Path, traced: TracedRead
) -> None:
    from cds.explain.job import artifact_dir, explain_analysis

    analysis_id = _stored(db, study_dir, traced.result, "1.2.826.0.1.1")
    explain_analysis(db, settings, analysis_id)
    with db.session() as s:
        record = queries.ensure_explanation(s, analysis_id)
        status, heatmaps, writer, text = record.status, dict(record.heatmaps), record.writer, record.rationale
    assert status is ExplanationStatus.COMPLETE
    assert writer == "template" and text
    positives = {
        f"{f.level.value}/{f.condition.value}"
        for f in traced.result.findings
        if f.grade.present and f.level in traced.inputs
    }
    assert set(heatmaps) == positives
    for entry in heatmaps.values():
        overlay = settings.data_dir / entry["overlay"]
        assert overlay.is_file() and overlay.resolve().is_relative_to(
            (settings.data_dir / "artifacts").resolve()
        )
        assert len(entry["peak_mm"]) == 3
    files = sorted(p.name for p in artifact_dir(settings, analysis_id).iterdir())
    explain_analysis(db, settings, analysis_id)  # complete: nothing recomputed, nothing changed
    assert sorted(p.name for p in artifact_dir(settings, analysis_id).iterdir()) == files


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_explain_job_failures_are_stored_with_reasons(
    db: Database, settings: Settings, study_dir: Path, traced: TracedRead, tmp_path: Path
) -> None:
    from cds.explain import job

    not_complete = _stored(db, study_dir, AnalysisResult(AnalysisStatus.UNANALYSABLE, reason="x"), "1.2.3.1")
    with db.session() as s:
        queries.upsert_study(s, "1.2.3.2", source_uri=str(tmp_path / "missing"))
        unreadable = queries.save_analysis(s, "1.2.3.2", traced.result).id
    findings = tuple(
        replace(f, grade=Grade.SEVERE if f.grade is not Grade.SEVERE else Grade.MODERATE) if i == 0 else f
        for i, f in enumerate(traced.result.findings)
    )
    changed = _stored(db, study_dir, replace(traced.result, findings=findings), "1.2.3.3")
    for analysis_id, reason in (
        (not_complete, job.REASON_NOT_COMPLETE),
        (unreadable, job.REASON_UNREADABLE),
        (changed, job.REASON_CHANGED),
    ):
        with pytest.raises(PermanentJobError):
            job.explain_analysis(db, settings, analysis_id)
        with db.session() as s:
            record = queries.ensure_explanation(s, analysis_id)
            assert (record.status, record.reason) == (ExplanationStatus.FAILED, reason)


def test_cli_explain_json_shape(study_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cds.cli import main

    code = main(["explain", str(study_dir / "dicom"), "--json", "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "complete" and "levels" in out
    assert out["rationale"]["writer"] in ("model", "template") and out["rationale"]["text"]
    positives = {
        (lv, c)
        for lv, conds in out["levels"].items()
        for c, f in conds.items()
        if f["grade"] != "normal_mild"
    }
    assert {(h["level"], h["condition"]) for h in out["heatmaps"]} == positives
    for h in out["heatmaps"]:
        assert Path(h["png"]).is_file() and len(h["peak_mm"]) == 3
    assert "gradcam" in out["timings_ms"]
