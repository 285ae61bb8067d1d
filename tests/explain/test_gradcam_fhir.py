"""A completed explanation in FHIR: Media per overlay PNG and the rationale in presentedForm,
validated by fhir.resources through the report builders."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cds.domain import AnalysisResult, AnalysisStatus, Condition, Finding, Grade, Level, MeasurementName
from cds.explain.gradcam_geometry import placement_for
from cds.explain.gradcam_render import OverlayLabel, render_overlay
from cds.fhir.report import ReportContext, build_diagnostic_report, build_report_bundle
from cds.fhir.writeback import explanation_images
from cds.pipeline import axial as ax

RATIONALE = "L4-L5: severe central canal stenosis, dural sac area 62 mm2 (< 75 mm2)."


def _analysis() -> AnalysisResult:
    return AnalysisResult(
        status=AnalysisStatus.COMPLETE,
        findings=(
            Finding(
                Level.L4_L5, Condition.SPINAL_CANAL, Grade.SEVERE, 0.93, {MeasurementName.DSCA_MM2: 62.0}
            ),
            Finding(Level.L4_L5, Condition.LEFT_SUBARTICULAR, Grade.MODERATE, 0.7),
        ),
        model_versions={"classifier": "classifier@1.0.0"},
    )


def _heatmaps(data_dir: Path) -> dict[str, dict[str, object]]:
    affine = np.diag([0.8, 0.8, 4.0, 1.0])[[2, 1, 0, 3]]
    frame = ax.canonical_frame(affine, (120, 120))
    placement = placement_for((80, 80), 96, frame, 2, affine, "1.2.3")
    out: dict[str, dict[str, object]] = {}
    for cond in (Condition.SPINAL_CANAL, Condition.LEFT_SUBARTICULAR):
        rng = np.random.default_rng(0)
        png = render_overlay(
            rng.random((120, 120)).astype(np.float32),
            np.clip(rng.random((120, 120)), 0, 1).astype(np.float32),
            placement,
            (60, 61),
            OverlayLabel(f"L4-L5 {cond.display}", "Grad-CAM"),
            data_dir / "artifacts" / "a1" / "gradcam" / f"L4-L5_{cond.value}.png",
        )
        out[f"L4-L5/{cond.value}"] = {
            "overlay": png.relative_to(data_dir).as_posix(),
            "raw": "unused.npz",
            "level": "L4-L5",
            "condition": cond.value,
            "series_uid": "1.2.3",
            "slice_index": 2,
            "peak_mm": [1.0, 2.0, 3.0],
        }
    return out


def test_report_carries_media_and_rationale(tmp_path: Path) -> None:
    images = explanation_images(tmp_path, _heatmaps(tmp_path))
    assert len(images) == 2
    ctx = ReportContext(
        analysis_id="a1",
        patient_ref="Patient/p1",
        issued=datetime(2026, 1, 2, tzinfo=UTC),
        images=images,
        rationale=RATIONALE,
        rationale_writer="template",
    )
    report = build_diagnostic_report(_analysis(), ctx)
    media = [r for r in report["contained"] if r["resourceType"] == "Media"]
    assert len(media) == 2 and len(report["media"]) == 2
    for m in media:
        assert base64.b64decode(m["content"]["data"]).startswith(b"\x89PNG")
        assert m["bodySite"]["text"] == "L4-L5"
    (form,) = report["presentedForm"]
    assert base64.b64decode(form["data"]).decode("utf-8") == RATIONALE
    assert "writer: template" in form["title"]
    bundle = build_report_bundle(_analysis(), ctx)
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds.count("Media") == 2
    (dr,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"]
    assert dr["presentedForm"][0]["data"] == form["data"]


def test_no_explanation_no_presented_form(tmp_path: Path) -> None:
    ctx = ReportContext(analysis_id="a1", patient_ref="Patient/p1", issued=datetime(2026, 1, 2, tzinfo=UTC))
    assert "presentedForm" not in build_diagnostic_report(_analysis(), ctx)
