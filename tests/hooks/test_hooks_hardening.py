"""Review findings on the hook hot path, tested through the running app (SQLite and PostgreSQL)."""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

import pytest
from hooks_support import PATIENT_ID, Caller, bundle, imaging_study, patient

PV = "/cds-services/lumbar-mri-patient-view"


def _pv_body() -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/doc-1", "patientId": PATIENT_ID},
        "prefetch": {"patient": patient(), "studies": bundle(imaging_study())},
    }


def _assert_401_without_detail(resp: Any) -> None:
    assert resp.status_code == 401, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["resourceType"] == "OperationOutcome"
    assert "diagnostics" not in body["issue"][0]


_NOW = int(time.time())
_BAD_TIMES = {
    "iat NaN, exp in 10 years": {"iat": math.nan, "exp": _NOW + 10 * 365 * 86400},
    "iat NaN, exp 1e12": {"iat": math.nan, "exp": 1e12},
    "iat Infinity": {"iat": math.inf},
    "exp 1e12": {"iat": 1e12 - 60, "exp": 1e12},
    "iat bool": {"iat": True},
    "exp string": {"exp": str(_NOW + 300)},
}


@pytest.mark.parametrize("claims", list(_BAD_TIMES.values()), ids=list(_BAD_TIMES))
def test_non_numeric_time_claims_are_401_without_detail(caller: Caller, claims: dict[str, Any]) -> None:
    _assert_401_without_detail(caller.post(PV, _pv_body(), token=caller.token(PV, **claims)))


@pytest.mark.parametrize("declared", ["²", "١٢", "-1", "12a"])
def test_malformed_content_length_is_400_outcome(caller: Caller, declared: str) -> None:
    """ "²".isdigit() is True but int("²") raises: the body reader must not turn that into a 500."""
    token = caller.token(PV)
    resp = caller.client.post(
        PV,
        data=b"{}",
        headers={"Authorization": "Bearer " + token},
        content_type="application/json",
        environ_overrides={"CONTENT_LENGTH": declared},
    )
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert resp.get_json()["resourceType"] == "OperationOutcome"
