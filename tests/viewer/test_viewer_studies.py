"""The demo study list: signed list link, filters in the POST body, links to signed reports."""

from __future__ import annotations

import re
import time
from datetime import date

import pytest
from flask import Flask
from flask.testing import FlaskClient
from viewer_support import store_analysis

from cds.domain import AnalysisResult, AnalysisStatus
from cds.extensions import services
from cds.signing import LinkPurpose, LinkSigner
from cds.store import queries
from cds.viewer.studies import FilterInvalid, parse_filter, sign_study_list_token


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
