"""Every hook and feedback call is observed once in the hook latency histogram (cds.ops.metrics)."""

from __future__ import annotations

import uuid

from flask import Flask
from hooks_support import PATIENT_ID, Caller, bundle, imaging_study, patient
from prometheus_client import REGISTRY

PV = "/cds-services/lumbar-mri-patient-view"
SERVICE = "lumbar-mri-patient-view"


def _count(endpoint: str, status: int) -> float:
    labels = {"service": SERVICE, "endpoint": endpoint, "status": str(status)}
    return REGISTRY.get_sample_value("cds_hook_request_duration_seconds_count", labels) or 0.0


def test_hook_calls_and_feedback_are_observed(caller: Caller, hooks_app: Flask) -> None:
    before = {k: _count(*k) for k in (("service", 200), ("service", 401), ("feedback", 404))}
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/doc-1", "patientId": PATIENT_ID},
        "prefetch": {"patient": patient(), "studies": bundle(imaging_study())},
    }
    assert caller.post(PV, body).status_code == 200
    assert caller.client.post(PV, json=body).status_code == 401  # no token
    unknown = {
        "feedback": [
            {"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2026-07-02T10:00:00Z"}
        ]
    }
    assert caller.post(PV + "/feedback", unknown).status_code == 404
    assert _count("service", 200) == before[("service", 200)] + 1
    assert _count("service", 401) == before[("service", 401)] + 1
    assert _count("feedback", 404) == before[("feedback", 404)] + 1
