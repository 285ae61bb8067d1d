"""The 500 path of a hook call: no patient identifier reaches the log, the client sees no detail."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from flask import Flask
from hooks_support import PATIENT_ID, Caller, bundle, imaging_study, patient

from cds.hooks.storecatalog import StoreCatalog

PV = "/cds-services/lumbar-mri-patient-view"


def test_unexpected_error_logs_type_and_request_id_only(
    caller: Caller, hooks_app: Flask, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_lookup(self: Any, uids: Any) -> Any:
        # What a DB driver error looks like: the bound parameters (PHI) in the message.
        raise RuntimeError(f"SELECT ... WHERE patient_ref = 'Patient/{PATIENT_ID}'")

    monkeypatch.setattr(StoreCatalog, "lookup", broken_lookup)
    caplog.set_level(logging.DEBUG)
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/doc-1", "patientId": PATIENT_ID},
        "prefetch": {"patient": patient(), "studies": bundle(imaging_study())},
    }
    resp = caller.client.post(
        PV,
        json=body,
        headers={"Authorization": "Bearer " + caller.token(PV), "X-Request-ID": "req-500-test"},
    )
    assert resp.status_code == 500
    assert PATIENT_ID not in resp.get_data(as_text=True)
    assert "hook_call failed request_id=req-500-test" in caplog.text
    assert "RuntimeError" in caplog.text
    assert PATIENT_ID not in caplog.text  # caplog.text includes formatted tracebacks
    assert all(r.exc_info is None for r in caplog.records)
