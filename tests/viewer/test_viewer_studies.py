"""The demo study list: signed list link, filters in the POST body, links to signed reports."""

from __future__ import annotations

import argparse
import re
import time
from datetime import date
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from viewer_support import store_analysis

from cds.config import Settings
from cds.domain import AnalysisResult, AnalysisStatus
from cds.extensions import services
from cds.signing import LinkPurpose, LinkSigner
from cds.store import queries
from cds.viewer.studies import FilterInvalid, parse_filter, sign_study_list_token


@pytest.fixture
def app_settings(app_settings: Settings) -> Settings:
    """The study list is a demo page: these tests run with it on (see test_list_is_off_by_default)."""
    return app_settings.with_overrides(study_list_enabled=True)


def _list_path(app: Flask, ttl_s: int = 600) -> str:
    return f"/studies/{sign_study_list_token(services(app).settings.secret_key, ttl_s)}"


def _seed(app: Flask) -> None:
    store_analysis(app, study_uid="1.2.1", patient_ref="Patient/alpha-1", study_date=date(2024, 1, 10))
    store_analysis(
        app,
        AnalysisResult(AnalysisStatus.UNANALYSABLE, reason="no sagittal T2"),
        study_uid="1.2.2",
        patient_ref="Patient/beta-2",
        study_date=date(2025, 6, 1),
    )
    with services(app).db.session() as s:
        queries.upsert_study(s, "1.2.3", patient_ref="Patient/gamma_3", study_date=date(2025, 7, 1))


def _patients(html: str) -> list[str]:
    return re.findall(r"<td>(Patient/[^<]+)</td>", html)


def test_list_shows_every_study_newest_first_with_report_links(app: Flask, client: FlaskClient) -> None:
    _seed(app)
    resp = client.get(_list_path(app))
    assert resp.status_code == 200 and resp.headers["Cache-Control"] == "no-store"
    html = resp.get_data(as_text=True)
    assert _patients(html) == ["Patient/gamma_3", "Patient/beta-2", "Patient/alpha-1"]
    assert "severe central canal stenosis at L4-L5" in html and "not analysed" in html
    links = re.findall(r'href="(/viewer/[^"]+)"', html)
    assert len(links) == 2
    assert client.get(links[0]).status_code == 200
    assert all("Patient" not in link and "alpha" not in link for link in links)


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ({"status": "complete"}, ["Patient/alpha-1"]),
        ({"status": "none"}, ["Patient/gamma_3"]),
        ({"patient": "BETA"}, ["Patient/beta-2"]),
        ({"patient": "_"}, ["Patient/gamma_3"]),  # LIKE wildcards are literal
        ({"date_from": "2025-01-01", "date_to": "2025-06-30"}, ["Patient/beta-2"]),
    ],
)
def test_filters_travel_in_the_body(
    app: Flask, client: FlaskClient, form: dict[str, str], expected: list[str]
) -> None:
    _seed(app)
    resp = client.post(_list_path(app), data=form)
    assert resp.status_code == 200
    assert _patients(resp.get_data(as_text=True)) == expected


@pytest.mark.parametrize(
    "form",
    [{"status": "bogus"}, {"date_from": "yesterday"}, {"date_from": "2025-02-01", "date_to": "2025-01-01"}],
)
def test_bad_filters_are_400_with_a_message(app: Flask, client: FlaskClient, form: dict[str, str]) -> None:
    resp = client.post(_list_path(app), data=form)
    assert resp.status_code == 400
    assert 'id="filter-error"' in resp.get_data(as_text=True)


def test_list_link_is_signed_for_its_purpose(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = services(app).settings.secret_key
    viewer_token = LinkSigner(secret, LinkPurpose.VIEWER).sign("study-list", 600)
    assert client.get(f"/studies/{viewer_token}").status_code == 403
    wrong_subject = LinkSigner(secret, LinkPurpose.STUDY_LIST).sign("other", 600)
    assert client.get(f"/studies/{wrong_subject}").status_code == 403
    path = _list_path(app, ttl_s=60)
    later = time.time() + 120
    monkeypatch.setattr("cds.signing.time.time", lambda: later)
    expired = client.get(path)
    assert expired.status_code == 410 and "This link has expired" in expired.get_data(as_text=True)


def test_parse_filter_rejects_long_patient_text() -> None:
    with pytest.raises(FilterInvalid, match="too long"):
        parse_filter({"patient": "x" * 129})


def test_demo_prints_a_working_study_list_link(app: Flask, client: FlaskClient) -> None:
    from cds.commands.demo import study_list_url

    settings = services(app).settings
    url = study_list_url(settings)
    assert url.startswith(f"{settings.public_base_url}/studies/")
    assert client.get(url[len(settings.public_base_url) :]).status_code == 200


def test_list_is_off_by_default(app_settings: Settings, tmp_path: Path) -> None:
    """Off (the default, and in production) it is a 404 page, even with a genuine list link."""
    from cds import create_app

    assert Settings().study_list_enabled is False
    assert Settings.from_env({}).study_list_enabled is False
    assert Settings.from_env({"CDS_STUDY_LIST_ENABLED": "true"}).study_list_enabled is True
    off = create_app(app_settings.with_overrides(study_list_enabled=False))
    try:
        store_analysis(off, study_uid="1.2.9", patient_ref="Patient/delta-4")
        client = off.test_client()
        for resp in (client.get(_list_path(off)), client.post(_list_path(off), data={"status": "complete"})):
            html = resp.get_data(as_text=True)
            assert resp.status_code == 404 and "<html" in html.lower()
            assert "delta-4" not in html and "/viewer/" not in html
    finally:
        services(off).close()


@pytest.mark.parametrize(("env", "enabled"), [({}, True), ({"CDS_STUDY_LIST_ENABLED": "0"}, False)])
def test_demo_turns_the_list_on_for_itself_unless_told_not_to(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    enabled: bool,
) -> None:
    from cds.commands.demo import demo_settings

    monkeypatch.setenv("CDS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CDS_STUDY_LIST_ENABLED", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = argparse.Namespace(host="127.0.0.1", port=8080)
    settings, _ = demo_settings(args)
    assert settings.study_list_enabled is enabled
