"""A hook call's JSON log lines carry the request id, service, status and latency, and no token
or patient identifier reaches them (success, 401, 400 and 500 paths)."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator

import pytest
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

from cds.extensions import services
from cds.logs import configure_logging
from cds.store import queries

PV = "/cds-services/lumbar-mri-patient-view"


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging("DEBUG", "json", stream=out)
    try:
        yield out
    finally:
        root = logging.getLogger()
        root.handlers = [h for h in root.handlers if not getattr(h, "_cds_logs_handler", False)]
        root.setLevel(logging.WARNING)


def _body() -> dict[str, object]:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/doc-1", "patientId": PATIENT_ID},
        "prefetch": {"patient": patient(), "studies": bundle(imaging_study())},
    }


def test_hook_logs_are_json_with_request_ids_and_free_of_tokens_and_phi(
    caller: Caller, hooks_app: Flask, json_log: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    with services(hooks_app).db.session() as s:
        queries.upsert_study(s, STUDY_UID, patient_ref="MRN-1", source_uri="/data/x")
        queries.save_analysis(s, STUDY_UID, analysis(SEVERE_L4_L5))
    token = caller.token(PV)
    ok = caller.client.post(
        PV,
        data=json.dumps(_body()),
        headers={"Authorization": f"Bearer {token}", "X-Request-ID": "req-ok-1"},
        content_type="application/json",
    )
    assert ok.status_code == 200 and ok.headers["X-Request-ID"] == "req-ok-1"
    replay = caller.post(PV, _body(), token=token)  # the same token again: 401
    assert replay.status_code == 401
    bad = caller.post(PV, {"hook": "patient-view", "context": {"patientId": PATIENT_ID}})
    assert bad.status_code == 400

    def boom(*args: object, **kwargs: object) -> list[dict[str, object]]:
        raise RuntimeError(f"failed for {PATIENT_ID}")

    monkeypatch.setattr("cds.hooks.services.common.advise", boom)
    failed = caller.post(PV, _body())
    assert failed.status_code == 500

    text = json_log.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    calls = [line for line in lines if str(line["msg"]).startswith("hook_call")]
    assert {line["status"] for line in calls} >= {200, 401, 400, 500}
    first = next(line for line in calls if line.get("request_id") == "req-ok-1")
    assert first["service"] == "lumbar-mri-patient-view" and isinstance(first["latency_ms"], float)
    assert all(line.get("request_id") for line in calls)
    assert token not in text and PATIENT_ID not in text and "MRN-1" not in text
