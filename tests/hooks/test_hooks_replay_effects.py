"""A replayed token changes nothing; unauthenticated calls leave no audit row per call."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from hooks_support import PATIENT_ID, STUDY_UID, Caller, FakeServer, bundle, imaging_study, patient

from cds.extensions import services
from cds.store import queries
from cds.store.records import HookCallRecord, JobRecord, StudyRecord

PV = "/cds-services/lumbar-mri-patient-view"


def _body() -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/doc-1", "patientId": PATIENT_ID},
        "prefetch": {"patient": patient(), "studies": bundle(imaging_study())},
    }


def _counts(app: Flask) -> tuple[int, int, int]:
    with services(app).db.session(readonly=True) as s:
        return tuple(  # type: ignore[return-value]
            s.scalar(sa.select(sa.func.count()).select_from(t)) or 0
            for t in (StudyRecord, JobRecord, HookCallRecord)
        )


def test_replayed_token_registers_nothing_and_enqueues_nothing(caller: Caller, hooks_app: Flask) -> None:
    token = caller.token(PV)
    # The token is used first on a call that only fails to parse: its jti is claimed then.
    assert caller.post(PV, {"hook": "patient-view"}, token=token).status_code == 400
    before = _counts(hooks_app)
    # Replayed on a call whose evaluation would register the study and enqueue its analysis:
    resp = caller.post(PV, _body(), token=token)
    assert resp.status_code == 401 and "cards" not in (resp.get_json() or {})
    assert _counts(hooks_app) == before  # no study, no job, no audit row
    with services(hooks_app).db.session(readonly=True) as s:
        assert queries.study_by_uid(s, STUDY_UID) is None


def test_first_use_registers_and_enqueues_once(caller: Caller, hooks_app: Flask) -> None:
    assert caller.post(PV, _body()).status_code == 200
    studies, jobs, audits = _counts(hooks_app)
    assert (studies, jobs, audits) == (1, 1, 1)


def test_unauthenticated_calls_write_no_audit_rows(
    hooks_client: FlaskClient, hooks_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(5):
        resp = hooks_client.post(PV, json=_body(), headers={"Authorization": "Bearer not-a-jwt"})
        assert resp.status_code == 401
    assert _counts(hooks_app) == (0, 0, 0)
    lines = [r.getMessage() for r in caplog.records if "hook_call unauthorized" in r.getMessage()]
    assert len(lines) == 5 and all("unauthorized_total=" in line for line in lines)
    assert all(PATIENT_ID not in line for line in lines)


def test_oversized_unauthenticated_call_writes_no_audit_row(
    hooks_client: FlaskClient, hooks_app: Flask
) -> None:
    body = {**_body(), "extension": {"padding": "x" * (70 * 1024)}}
    resp = hooks_client.post(PV, json=body)  # no token at all, body over the limit
    assert resp.status_code == 413
    assert _counts(hooks_app) == (0, 0, 0)


def test_replayed_token_is_refused_before_evaluation(caller: Caller, hooks_app: Flask) -> None:
    """The jti is claimed before the request is evaluated: a replay does not even reach the EHR's
    FHIR server (no prefetch fetch made on its behalf)."""
    server = FakeServer()
    server.routes[f"/ImagingStudy?patient={PATIENT_ID}&modality=MR&_include=ImagingStudy:endpoint"] = (
        200,
        bundle(imaging_study()),
    )
    with server.running():
        body = {**_body(), "prefetch": {"patient": patient()}, "fhirServer": server.base}
        body["fhirAuthorization"] = {
            "access_token": "fhir-token",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "cds",
        }
        token = caller.token(PV)
        assert caller.post(PV, body, token=token).status_code == 200
        fetched = len(server.requests)
        assert fetched > 0
        assert caller.post(PV, body, token=token).status_code == 401
        assert len(server.requests) == fetched
