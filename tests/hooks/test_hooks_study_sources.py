"""EHR-only studies are registered with where their images are; recoverable failures recover."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from hooks_support import PATIENT_ID, STUDY_UID, Caller, SigningKey, bundle, imaging_study, patient

from cds.config import Settings
from cds.domain import AnalysisStatus
from cds.extensions import services
from cds.jobs import analysis as analysis_jobs
from cds.store import queries
from cds.store.records import AnalysisRecord, JobRecord

PV = "/cds-services/lumbar-mri-patient-view"
WADO = {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "dicom-wado-rs"}


@pytest.fixture
def app(db: Any, hooks_settings: Settings) -> Iterator[Flask]:
    from cds import create_app

    application = create_app(hooks_settings.with_overrides(dicomweb_allowed_hosts=("pacs.hospital.example",)))
    application.config["TESTING"] = True
    try:
        yield application
    finally:
        services(application).close()


@pytest.fixture
def ehr(app: Flask, ehr_key: SigningKey) -> Caller:
    return Caller(app.test_client(), ehr_key, "https://cds.example.org")


def _body(*extra: dict[str, Any], endpoint: bool = True) -> dict[str, Any]:
    study = imaging_study()
    if endpoint:
        study["endpoint"] = [{"reference": "Endpoint/ep-1"}]
    ep = {
        "resourceType": "Endpoint",
        "id": "ep-1",
        "status": "active",
        "connectionType": WADO,
        "address": "https://pacs.hospital.example/dicom-web",
        "payloadType": [{"text": "DICOM"}],
    }
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/doc-1", "patientId": PATIENT_ID},
        "prefetch": {"patient": patient(), "studies": bundle(study, ep, *extra)},
    }


def test_ehr_only_study_is_registered_with_its_imaging_study_endpoint(ehr: Caller, app: Flask) -> None:
    (card,) = ehr.post(PV, _body()).get_json()["cards"]
    assert "pending" in card["summary"]
    with services(app).db.session(readonly=True) as s:
        study = queries.study_by_uid(s, STUDY_UID)
        assert study is not None
        assert study.source_uri == f"https://pacs.hospital.example/dicom-web/studies/{STUDY_UID}"
        assert study.patient_ref == f"Patient/{PATIENT_ID}"


def test_failed_for_lack_of_source_is_retried_after_the_back_off(ehr: Caller, app: Flask) -> None:
    db = services(app).db
    with db.session() as s:
        queries.upsert_study(s, STUDY_UID, patient_ref=f"Patient/{PATIENT_ID}")
        failed = queries.ensure_analysis(s, STUDY_UID)
        queries.fail_analysis(s, failed.id, analysis_jobs.REASON_NO_SOURCE)
        failed_id = failed.id
    # Within the back-off: the failure is shown, nothing is queued.
    (card,) = ehr.post(PV, _body(endpoint=False)).get_json()["cards"]
    assert "analysis failed" in card["summary"]
    with db.session() as s:
        assert s.scalars(sa.select(JobRecord)).all() == []
        record = s.get_one(AnalysisRecord, failed_id)
        record.finished_at = datetime.now(UTC) - analysis_jobs.REQUEUE_BACKOFF - timedelta(seconds=1)
    # After it: a new attempt (new revision, its source now taken from the ImagingStudy's Endpoint).
    (card,) = ehr.post(PV, _body()).get_json()["cards"]
    assert "pending" in card["summary"]
    with db.session(readonly=True) as s:
        (job,) = s.scalars(sa.select(JobRecord)).all()
        latest = queries.latest_analysis(s, STUDY_UID)
        assert latest is not None and latest.revision == 2 and latest.status is AnalysisStatus.PENDING
        assert job.payload["analysis_id"] == latest.id
        study = queries.study_by_uid(s, STUDY_UID)
        assert (
            study is not None and study.source_uri is not None and "pacs.hospital.example" in study.source_uri
        )
