"""Review findings on the hook hot path, tested through the running app (SQLite and PostgreSQL)."""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from hooks_support import PATIENT_ID, Caller, bundle, imaging_study, patient

from cds.extensions import services
from cds.signing import CardIdSigner
from cds.store.records import FeedbackRecord, HookCallRecord

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


def _feedback(card: str) -> dict[str, Any]:
    return {
        "feedback": [
            {
                "card": card,
                "outcome": "accepted",
                "outcomeTimestamp": "2026-07-02T10:00:00Z",
                "acceptedSuggestions": [{"id": str(uuid.uuid4())}],
            }
        ]
    }


def _audit_call(app: Flask, service_id: str, card_uuids: str) -> None:
    with services(app).db.session() as s:
        s.add(
            HookCallRecord(
                hook_instance=str(uuid.uuid4()),
                service_id=service_id,
                hook="patient-view",
                patient_ref="Patient/pat-1",
                latency_ms=1.0,
                outcome="cards",
                status_code=200,
                card_count=len(card_uuids.split()),
                card_uuids=card_uuids,
            )
        )


def test_feedback_for_cards_issued_before_upgrade_or_key_rotation_is_accepted(
    caller: Caller, hooks_app: Flask
) -> None:
    """Cards without this key's tag are ours if an audited call of this service returned them."""
    service_id = PV.rsplit("/", 1)[1]
    pre_upgrade = str(uuid.uuid4())  # plain uuid4, before card ids were signed
    old_key = CardIdSigner("the-previous-secret-key").issue(service_id)
    _audit_call(hooks_app, service_id, f"{uuid.uuid4()} {pre_upgrade} {old_key}")
    for card in (pre_upgrade, old_key):
        assert caller.post(PV + "/feedback", _feedback(card)).status_code == 200, card
    with services(hooks_app).db.session(readonly=True) as s:
        stored = {r.card_uuid for r in s.scalars(sa.select(FeedbackRecord))}
    assert stored == {pre_upgrade, old_key}


def test_feedback_fallback_still_404_for_unknown_or_other_services_cards(
    caller: Caller, hooks_app: Flask
) -> None:
    other_service_card = str(uuid.uuid4())
    _audit_call(hooks_app, "lumbar-mri-order-select", other_service_card)
    audited = str(uuid.uuid4())
    _audit_call(hooks_app, PV.rsplit("/", 1)[1], audited)
    for card in (other_service_card, str(uuid.uuid4()), audited[:-1] + ("0" if audited[-1] != "0" else "1")):
        resp = caller.post(PV + "/feedback", _feedback(card))
        assert resp.status_code == 404, card
        assert resp.get_json()["resourceType"] == "OperationOutcome"
    batch = _feedback(audited)  # one unknown card in a batch still rejects the batch
    batch["feedback"] += _feedback(str(uuid.uuid4()))["feedback"]
    assert caller.post(PV + "/feedback", batch).status_code == 404
    with services(hooks_app).db.session(readonly=True) as s:
        assert s.scalars(sa.select(FeedbackRecord)).all() == []


def test_hook_call_succeeds_after_the_server_dropped_the_threads_connection(
    caller: Caller, hooks_app: Flask
) -> None:
    """PostgreSQL restart/failover/idle kill: the first call on a web thread must not be a 500."""
    db = services(hooks_app).db
    if db.is_sqlite:
        pytest.skip("only a PostgreSQL server can drop a connection")
    assert caller.post(PV, _pv_body()).status_code == 200  # this thread's hot-path connection
    pid = db.driver_connection().info.backend_pid
    with db.engine.connect() as other:
        assert other.execute(sa.text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid}).scalar()
    resp = caller.post(PV, _pv_body())
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert db.driver_connection().info.backend_pid != pid


def test_hook_call_stalling_mid_body_under_cds_serve_is_408(
    hooks_app: Flask, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """cds serve's socket timeout also bounds the hook body read (HookFastPath reads wsgi.input
    directly): a client pausing mid-body gets a 408 OperationOutcome, not a 500 and a traceback."""
    import json
    import logging
    import socket
    import threading

    from cds.commands import serve

    monkeypatch.setattr(serve, "KEEPALIVE_IDLE_S", 0.3)
    server = serve.make_bounded_server("127.0.0.1", 0, hooks_app, 2)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    caplog.set_level(logging.INFO)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            head = (
                f"POST {PV} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                "Content-Length: 500\r\n\r\n"
            )
            sock.sendall(head.encode() + b'{"hook": "patient-view", ')
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
    finally:
        server.shutdown()
        server.server_close()
    status, _, body = reply.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 408"), reply
    outcome = json.loads(body)
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "timeout"
    assert "Traceback" not in caplog.text and "TimeoutError" not in caplog.text
