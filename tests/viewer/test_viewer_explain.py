"""Explainable mode in the viewer: start (POST), status JSON, every state, heatmaps served safely."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from viewer_support import store_analysis, viewer_path

from cds.domain import AnalysisResult, AnalysisStatus, ExplanationStatus
from cds.extensions import services
from cds.jobs.kinds import JobKind
from cds.store import queries
from cds.store.records import JobRecord
from cds.viewer.explanation import heatmap_path, writer_text

JSON = {"Accept": "application/json"}


def _jobs(app: Flask) -> list[JobRecord]:
    with services(app).db.session(readonly=True) as s:
        return [j for j in s.query(JobRecord) if j.kind is JobKind.EXPLAIN]


def _complete_explanation(app: Flask, analysis_id: str, overlay: str) -> None:
    with services(app).db.session() as s:
        queries.save_explanation(
            s,
            analysis_id,
            status=ExplanationStatus.COMPLETE,
            rationale="Severe central canal stenosis at L4-L5: dural sac area 61.8 mm² (< 75 mm²).",
            writer="template",
            heatmaps={
                "L4-L5/spinal_canal": {
                    "overlay": overlay,
                    "level": "L4-L5",
                    "condition": "spinal_canal",
                    "slice_index": 3,
                    "series_uid": "1.2.3",
                    "peak_mm": [1.0, 2.0, 3.0],
                    "region": "ligamentum flavum",
                }
            },
        )


def test_not_requested_shows_the_button(app: Flask, client: FlaskClient) -> None:
    path = viewer_path(app, store_analysis(app))
    html = client.get(path).get_data(as_text=True)
    assert 'id="explanation-status" data-status="none"' in html
    assert 'id="explain-button"' in html and f'action="{path}/explain"' in html
    assert client.get(f"{path}/explain/status").get_json()["status"] == "none"


def test_post_starts_one_job_and_status_follows(app: Flask, client: FlaskClient) -> None:
    analysis_id = store_analysis(app)
    path = viewer_path(app, analysis_id)
    resp = client.post(f"{path}/explain", headers=JSON)
    assert resp.status_code == 202 and resp.get_json()["status"] == "pending"
    again = client.post(f"{path}/explain")  # the no-script form: back to the page
    assert again.status_code == 303 and again.headers["Location"].endswith(f"{path}#explanation")
    assert len(_jobs(app)) == 1
    html = client.get(path).get_data(as_text=True)
    assert 'data-status="pending"' in html and "<progress" in html and 'id="explain-button"' not in html
    assert client.get(f"{path}/explain/status").get_json() == {
        "status": "pending",
        "status_text": "Requested: waiting for a worker to compute it.",
        "reason": None,
    }


def test_failed_explanation_shows_reason_and_can_be_retried(app: Flask, client: FlaskClient) -> None:
    analysis_id = store_analysis(app)
    path = viewer_path(app, analysis_id)
    with services(app).db.session() as s:
        queries.save_explanation(s, analysis_id, status=ExplanationStatus.FAILED, reason="no GPU today")
    html = client.get(path).get_data(as_text=True)
    assert 'data-status="failed"' in html and "no GPU today" in html and "Try the explanation again" in html
    resp = client.post(f"{path}/explain", headers=JSON)
    assert resp.get_json()["status"] == "pending"


def test_incomplete_analysis_cannot_be_explained(app: Flask, client: FlaskClient) -> None:
    result = AnalysisResult(AnalysisStatus.UNANALYSABLE, reason="no sagittal T2")
    path = viewer_path(app, store_analysis(app, result))
    assert 'data-status="unavailable"' in client.get(path).get_data(as_text=True)
    assert client.post(f"{path}/explain", headers=JSON).status_code == 409
    assert _jobs(app) == []


def test_complete_explanation_shows_rationale_writer_and_heatmaps(app: Flask, client: FlaskClient) -> None:
    analysis_id = store_analysis(app)
    data_dir = services(app).settings.data_dir
    png = data_dir / "artifacts" / analysis_id / "gradcam" / "L4-L5_spinal_canal.png"
    png.parent.mkdir(parents=True)
    Image.new("RGB", (32, 32), (255, 0, 0)).save(png)
    _complete_explanation(app, analysis_id, str(png.relative_to(data_dir)))
    path = viewer_path(app, analysis_id)
    html = client.get(path).get_data(as_text=True)
    assert 'data-status="complete"' in html
    assert "Machine-generated text" in html and 'id="rationale-writer">template<' in html
    assert "template writer: fixed sentences filled in from the measured findings" in html
    assert "dural sac area 61.8 mm²" in html
    assert "Where the classifier looked for its severe central canal stenosis call at L4-L5" in html
    assert "strongest over the ligamentum flavum" in html
    img = client.get(f"{path}/heatmap/0.png")
    assert img.status_code == 200 and img.mimetype == "image/png" and img.data == png.read_bytes()
    assert img.headers["Cache-Control"].startswith("private")
    assert client.get(f"{path}/heatmap/1.png").status_code == 404


@pytest.mark.parametrize(
    "overlay",
    [
        "../cds.db",
        "artifacts/other-analysis/x.png",
        "/etc/passwd",
        "artifacts/{id}/../../cds.db",
        "artifacts/{id}/x.npz",
    ],
)
def test_heatmap_paths_outside_the_analysis_artifacts_are_refused(
    app: Flask, client: FlaskClient, overlay: str
) -> None:
    analysis_id = store_analysis(app)
    data_dir = services(app).settings.data_dir
    other = data_dir / "artifacts" / "other-analysis" / "x.png"
    other.parent.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(other)
    (data_dir / "artifacts" / analysis_id).mkdir(parents=True)
    (data_dir / "artifacts" / analysis_id / "x.npz").write_bytes(b"npz")
    _complete_explanation(app, analysis_id, overlay.format(id=analysis_id))
    assert client.get(f"{viewer_path(app, analysis_id)}/heatmap/0.png").status_code == 404


def test_heatmap_path_resolution(tmp_path: Path) -> None:
    inside = tmp_path / "artifacts" / "a-1" / "h.png"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(b"png")
    assert heatmap_path(tmp_path, "a-1", "artifacts/a-1/h.png") == inside.resolve()
    assert heatmap_path(tmp_path, "a-1", "artifacts/a-1/missing.png") is None
    link = tmp_path / "artifacts" / "a-1" / "link.png"
    link.symlink_to(tmp_path / "secret.png")
    (tmp_path / "secret.png").write_bytes(b"x")
    assert heatmap_path(tmp_path, "a-1", "artifacts/a-1/link.png") is None  # a link leading out


def test_writer_wording() -> None:
    assert writer_text("template") is not None and "template" in (writer_text("template") or "")
    assert "language model (qwen@1)" in (writer_text("llm:qwen@1") or "")
    assert writer_text(None) is None


def test_explain_card_link_page_shows_heatmaps_when_complete(app: Flask, client: FlaskClient) -> None:
    from cds.signing import LinkPurpose, LinkSigner

    analysis_id = store_analysis(app)
    data_dir = services(app).settings.data_dir
    png = data_dir / "artifacts" / analysis_id / "h.png"
    png.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(png)
    _complete_explanation(app, analysis_id, f"artifacts/{analysis_id}/h.png")
    token = LinkSigner(services(app).settings.secret_key, LinkPurpose.EXPLAIN).sign(analysis_id, 600)
    html = client.get(f"/explain/{token}").get_data(as_text=True)
    assert 'data-status="complete"' in html and "Machine-generated text" in html
    assert "/heatmap/0.png" in html and 'http-equiv="refresh"' not in html


def test_rationale_is_split_for_reading_without_changing_a_word() -> None:
    from cds.viewer.explanation import rationale_paragraphs

    text = (
        "L1-L2: severe central canal stenosis, flagged as uncertain; left foraminal graded normal/mild; "
        "L2-L3: moderate central canal stenosis. The heatmaps highlight the dural sac for L2-L3."
    )
    parts = rationale_paragraphs(text)
    assert parts == (
        "L1-L2: severe central canal stenosis, flagged as uncertain; left foraminal graded normal/mild;",
        "L2-L3: moderate central canal stenosis.",
        "The heatmaps highlight the dural sac for L2-L3.",
    )
    assert " ".join(parts) == text
