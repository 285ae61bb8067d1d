"""GET /viewer/<token> through the real app (create_app, SQLite store, Flask test client)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds import create_app
from cds.config import Settings
from cds.domain import AnalysisResult, AnalysisStatus, Condition, Finding, Grade, Level, MeasurementName
from cds.extensions import services
from cds.signing import LinkPurpose, LinkSigner, sign_viewer_token
from cds.store import queries
from cds.store.migrate import upgrade

SECRET = "viewer-test-secret"
STUDY_UID = "1.2.826.0.1.3680043.8.498.77"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    settings = Settings(data_dir=tmp_path, secret_key=SECRET, dev_mode=True)
    upgrade(settings.resolved_database_url)
    app = create_app(settings)
    app.testing = True
    yield app
    services(app).close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _store(app: Flask, result: AnalysisResult, description: str | None = "MR LUMBAR SPINE") -> str:
    with services(app).db.session() as session:
        queries.upsert_study(
            session, STUDY_UID, patient_ref="Patient/p1", study_date=date(2025, 3, 3), description=description
        )
        record = queries.save_analysis(session, STUDY_UID, result)
        return record.id


def _complete() -> AnalysisResult:
    findings = (
        Finding(
            Level.L4_L5,
            Condition.SPINAL_CANAL,
            Grade.SEVERE,
            0.97,
            {MeasurementName.DSCA_MM2: 61.8, MeasurementName.AP_DIAMETER_MM: 7.9},
        ),
        Finding(Level.L5_S1, Condition.LEFT_FORAMINAL, Grade.MODERATE, 0.64,
                {MeasurementName.FORAMINAL_AREA_RATIO: 0.42}, uncertain=True),
        Finding(Level.L3_L4, Condition.RIGHT_SUBARTICULAR, Grade.NORMAL_MILD, 0.9,
                {MeasurementName.LATERAL_RECESS_DEPTH_MM: 6.2}),
    )  # fmt: skip
    return AnalysisResult(
        AnalysisStatus.COMPLETE, findings, model_versions={"segmenter": "1.2.0", "grader": "0.4.1"}
    )


def test_report_page_shows_the_analysis(app: Flask, client: FlaskClient) -> None:
    analysis_id = _store(app, _complete())
    resp = client.get(f"/viewer/{sign_viewer_token(analysis_id, 600, secret_key=SECRET)}")
    assert resp.status_code == 200
    assert resp.mimetype == "text/html"
    html = resp.get_data(as_text=True)
    assert "AI-generated decision support" in html
    assert "2025-03-03" in html
    assert 'data-status="complete"' in html
    assert "segmenter 1.2.0" in html and "grader 0.4.1" in html
    assert '<span class="grade grade-severe">severe</span>' in html
    assert '<span class="grade grade-moderate">moderate</span>' in html
    assert "61.8 mm²" in html and "severe: &lt; 75 mm²" in html
    assert "42 %" in html and "moderate: 35 % to &lt; 60 %" in html
    assert "97 %" in html
    assert '<span class="uncertain">uncertain</span>' in html
    assert "Worst finding: <strong>severe central canal stenosis at L4-L5</strong>" in html


def test_security_headers(app: Flask, client: FlaskClient) -> None:
    analysis_id = _store(app, _complete())
    resp = client.get(f"/viewer/{sign_viewer_token(analysis_id, 600, secret_key=SECRET)}")
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]


def test_model_text_is_escaped(app: Flask, client: FlaskClient) -> None:
    result = AnalysisResult(AnalysisStatus.UNANALYSABLE, reason="<script>alert('x')</script>")
    analysis_id = _store(app, result, description="<b>MR</b>")
    html = client.get(f"/viewer/{sign_viewer_token(analysis_id, 600, secret_key=SECRET)}").get_data(
        as_text=True
    )
    assert "<script>alert" not in html and "<b>MR</b>" not in html
    assert "&lt;script&gt;" in html
    assert "Not analysable" in html


def test_expired_link_gets_410_page(app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    analysis_id = _store(app, _complete())
    token = sign_viewer_token(analysis_id, 60, secret_key=SECRET)
    later = time.time() + 120
    monkeypatch.setattr("cds.signing.time.time", lambda: later)
    resp = client.get(f"/viewer/{token}")
    assert resp.status_code == 410
    html = resp.get_data(as_text=True)
    assert "This link has expired" in html and "Traceback" not in html
    assert resp.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("mangle", ["tamper", "explain-purpose", "other-key", "garbage"])
def test_invalid_links_get_403_page(app: Flask, client: FlaskClient, mangle: str) -> None:
    analysis_id = _store(app, _complete())
    token = {
        "tamper": sign_viewer_token(analysis_id, 600, secret_key=SECRET)[:-3] + "xyz",
        "explain-purpose": LinkSigner(SECRET, LinkPurpose.EXPLAIN).sign(analysis_id, 600),
        "other-key": sign_viewer_token(analysis_id, 600, secret_key="not-the-secret"),
        "garbage": "not-a-token",
    }[mangle]
    resp = client.get(f"/viewer/{token}")
    assert resp.status_code == 403
    html = resp.get_data(as_text=True)
    assert "This link is not valid" in html and "Traceback" not in html


def test_unknown_analysis_gets_404_page(client: FlaskClient) -> None:
    resp = client.get(f"/viewer/{sign_viewer_token('no-such-analysis', 600, secret_key=SECRET)}")
    assert resp.status_code == 404
    assert "Analysis not found" in resp.get_data(as_text=True)


def test_pending_analysis_shows_status(app: Flask, client: FlaskClient) -> None:
    with services(app).db.session() as session:
        queries.upsert_study(session, STUDY_UID, patient_ref="Patient/p1")
        analysis_id = queries.ensure_analysis(session, STUDY_UID).id
    html = client.get(f"/viewer/{sign_viewer_token(analysis_id, 600, secret_key=SECRET)}").get_data(
        as_text=True
    )
    assert 'data-status="pending"' in html
    assert "No findings to show" in html
    assert 'id="findings"' not in html


def test_viewer_signs_with_app_secret(app: Flask, client: FlaskClient) -> None:
    """sign_viewer_token without an explicit key uses the app's CDS_SECRET_KEY (as the hooks do)."""
    analysis_id = _store(app, _complete())
    with app.app_context():
        token = sign_viewer_token(analysis_id, 600)
    assert client.get(f"/viewer/{token}").status_code == 200
