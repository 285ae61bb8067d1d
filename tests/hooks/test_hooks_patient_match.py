"""A StudyInstanceUID stored for another patient never shows its findings on this patient's chart."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import date
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from hooks_support import PATIENT_ID, SEVERE_L4_L5, STUDY_UID, Caller, analysis, bundle, imaging_study, stored

from cds.extensions import services
from cds.store import queries
from cds.store.records import JobRecord

PV = "/cds-services/lumbar-mri-patient-view"


def _body(patient_id: str = PATIENT_ID) -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/doc-1", "patientId": patient_id},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": patient_id},
            "studies": bundle(imaging_study(patient=patient_id)),
        },
    }


@pytest.mark.parametrize(
    ("stored_ref", "other"),
    [
        ("Patient/pat-2", True),
        ("https://ehr.example.org/fhir/Patient/pat-2", True),
        (f"Patient/{PATIENT_ID}", False),
        (f"https://ehr.example.org/fhir/Patient/{PATIENT_ID}", False),
        ("MRN-1", False),  # a DICOM PatientID cannot be compared with a FHIR id: not a mismatch
        (None, False),
    ],
)
def test_belongs_to_other_patient(stored_ref: str | None, other: bool) -> None:
    found = replace(stored(analysis()), patient_ref=stored_ref)
    assert found.belongs_to_other_patient(PATIENT_ID) is other


def test_stored_study_of_another_patient_gives_a_warning_not_findings(
    caller: Caller, hooks_app: Flask
) -> None:
    with services(hooks_app).db.session() as s:
        queries.upsert_study(s, STUDY_UID, patient_ref="Patient/pat-2", study_date=date(2026, 7, 1))
        queries.save_analysis(s, STUDY_UID, analysis(SEVERE_L4_L5))
    resp = caller.post(PV, _body())
    assert resp.status_code == 200
    (card,) = resp.get_json()["cards"]
    assert card["indicator"] == "warning"
    assert "belongs to another patient record; not shown" in card["summary"]
    assert len(card["summary"]) < 140
    assert "severe" not in json.dumps(card).lower() and "suggestions" not in card and "links" not in card


def test_study_registered_from_the_ehr_records_the_patient_and_is_not_reused(
    caller: Caller, hooks_app: Flask
) -> None:
    first = caller.post(PV, _body()).get_json()["cards"]
    assert "pending" in first[0]["summary"]
    with services(hooks_app).db.session(readonly=True) as s:
        study = queries.study_by_uid(s, STUDY_UID)
        assert study is not None and study.patient_ref == f"Patient/{PATIENT_ID}"
    # Another patient's ImagingStudy carrying the same UID: warned, and no analysis on their behalf.
    (card,) = caller.post(PV, _body("pat-2")).get_json()["cards"]
    assert card["indicator"] == "warning" and "another patient record" in card["summary"]
    with services(hooks_app).db.session(readonly=True) as s:
        assert len(s.scalars(sa.select(JobRecord)).all()) == 1
