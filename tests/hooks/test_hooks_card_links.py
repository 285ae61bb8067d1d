"""Both links of a real result card, followed through the app: the viewer and the explain request."""

from __future__ import annotations

import time
import uuid
from datetime import date
from typing import Any

import sqlalchemy as sa
from flask import Flask
from hooks_support import (
    PATIENT_ID,
    SEVERE_L4_L5,
    STUDY_UID,
    Caller,
    analysis,
    bundle,
    imaging_study,
    patient,
)

from cds.config import Settings
from cds.domain import ExplanationStatus
from cds.explain.job import REASON_NO_SOURCE
from cds.extensions import services
from cds.jobs.handlers import default_registry
from cds.jobs.kinds import JobKind
from cds.jobs.runner import LocalRunner
from cds.signing import LinkPurpose, LinkSigner
from cds.store import queries
from cds.store.records import JobRecord

PV = "/cds-services/lumbar-mri-patient-view"
BASE = "https://cds.example.org"


def _card(caller: Caller, hooks_app: Flask) -> tuple[str, dict[str, Any]]:
    with services(hooks_app).db.session() as s:
        queries.upsert_study(s, STUDY_UID, patient_ref="MRN-1", study_date=date(2026, 7, 1))
        analysis_id = queries.save_analysis(s, STUDY_UID, analysis(SEVERE_L4_L5)).id
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/doc-1", "patientId": PATIENT_ID},
        "prefetch": {"patient": patient(), "studies": bundle(imaging_study())},
    }
    (card,) = caller.post(PV, body).get_json()["cards"]
    return analysis_id, card


def _path(url: str) -> str:
    assert url.startswith(BASE + "/")
    return url[len(BASE) :]


def _explain_jobs(hooks_app: Flask) -> list[JobRecord]:
    with services(hooks_app).db.session(readonly=True) as s:
        return list(s.scalars(sa.select(JobRecord).where(JobRecord.kind == JobKind.EXPLAIN)))


def test_both_card_links_work(caller: Caller, hooks_app: Flask) -> None:
    analysis_id, card = _card(caller, hooks_app)
    viewer, explain = card["links"]
    client = hooks_app.test_client()

    page = client.get(_path(viewer["url"]))
    assert page.status_code == 200 and 'data-status="complete"' in page.get_data(as_text=True)

    first = client.get(_path(explain["url"]))
    assert first.status_code == 200, first.get_data(as_text=True)
    html = first.get_data(as_text=True)
    assert 'id="explanation-status" data-status="pending"' in html
    assert 'href="/viewer/' in html and first.headers["Cache-Control"] == "no-store"
    assert client.get(_path(explain["url"])).status_code == 200  # a second click: still one job
    (job,) = _explain_jobs(hooks_app)
    assert job.payload == {"analysis_id": analysis_id}

    # The study's images are not there (the card came from a stored analysis only): the explain
    # job fails with its fixed, clinician-facing reason; nothing is faked, no path or trace shown.
    runner = LocalRunner(services(hooks_app).jobs, default_registry(), Settings(), retry_delay_s=0)
    assert runner.run_until_idle() == 1
    with services(hooks_app).db.session(readonly=True) as s:
        explanation = queries.ensure_explanation(s, analysis_id)
        assert explanation.status is ExplanationStatus.FAILED and explanation.rationale is None
    html = client.get(_path(explain["url"])).get_data(as_text=True)
    assert 'data-status="failed"' in html
    assert REASON_NO_SOURCE in html and "Traceback" not in html and "/data/" not in html


def test_explain_link_expired_tampered_or_viewer_purpose(caller: Caller, hooks_app: Flask) -> None:
    analysis_id, card = _card(caller, hooks_app)
    _, explain = card["links"]
    client = hooks_app.test_client()
    secret = services(hooks_app).settings.secret_key
    expired = LinkSigner(secret, LinkPurpose.EXPLAIN).sign(analysis_id, 1)
    time.sleep(2.1)
    assert client.get(f"/explain/{expired}").status_code == 410
    token = _path(explain["url"]).rsplit("/", 1)[1]
    assert client.get(f"/explain/{token[:-2]}xx").status_code == 403
    viewer_token = LinkSigner(secret, LinkPurpose.VIEWER).sign(analysis_id, 600)
    assert client.get(f"/explain/{viewer_token}").status_code == 403  # a viewer link cannot explain
    assert _explain_jobs(hooks_app) == []
