"""CDS Hooks conformance of the running app (create_app on SQLite and PostgreSQL).

Real JWTs, real database, analyses created through the store API; the EHR's FHIR server is a
small HTTP server on loopback where a test needs one.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from datetime import date
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from hooks_support import (
    OLD_STUDY_UID,
    PATIENT_ID,
    SEVERE_L4_L5,
    STUDY_UID,
    Caller,
    FakeServer,
    analysis,
    bundle,
    draft_orders,
    imaging_study,
    patient,
    service_request,
)

from cds.domain import AnalysisResult, AnalysisStatus, Condition, Grade, Level
from cds.extensions import services
from cds.fhir.resources import validate_resource
from cds.hooks.cards import OVERRIDE_SYSTEM
from cds.jobs.kinds import JobKind
from cds.signing import verify_viewer_token
from cds.store import queries
from cds.store.records import FeedbackRecord, HookCallRecord, JobRecord

PV = "/cds-services/lumbar-mri-patient-view"
OSEL = "/cds-services/lumbar-mri-order-select"
OSIGN = "/cds-services/lumbar-mri-order-sign"
USER = "Practitioner/doc-1"


def _store(
    app: Flask, uid: str, result: AnalysisResult | None, study_date: date = date(2026, 7, 1)
) -> str | None:
    with services(app).db.session() as s:
        queries.upsert_study(s, uid, patient_ref="MRN-1", study_date=study_date, source_uri="/data/x")
        if result is None:
            return None
        return queries.save_analysis(s, uid, result).id


def _pv_body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": USER, "patientId": PATIENT_ID},
        "prefetch": {"patient": patient(), "studies": bundle(imaging_study())},
    }
    body.update(over)
    return body


def _order_body(
    hook: str, orders: dict[str, Any], selections: list[str] | None, **over: Any
) -> dict[str, Any]:
    context: dict[str, Any] = {"userId": USER, "patientId": PATIENT_ID, "draftOrders": orders}
    if selections is not None:
        context["selections"] = selections
    body: dict[str, Any] = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": context,
        "prefetch": {"studies": bundle(imaging_study())},
    }
    body.update(over)
    return body


def _assert_no_empty(value: Any, where: str = "$") -> None:
    """CDS clients reject null, "", [] and {} in optional fields: there must be none anywhere."""
    assert value not in (None, "", [], {}), f"empty value at {where}"
    if isinstance(value, dict):
        for k, v in value.items():
            _assert_no_empty(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _assert_no_empty(v, f"{where}[{i}]")


def _assert_outcome(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] == "error"
    assert "Traceback" not in resp.get_data(as_text=True)
    return body


# --- discovery and CORS ---------------------------------------------------------------------------


def test_discovery_is_open_and_generated_from_the_registry(hooks_client: FlaskClient) -> None:
    resp = hooks_client.get("/cds-services")
    assert resp.status_code == 200
    services_ = resp.get_json()["services"]
    assert {(s["id"], s["hook"]) for s in services_} == {
        ("lumbar-mri-order-select", "order-select"),
        ("lumbar-mri-order-sign", "order-sign"),
        ("lumbar-mri-patient-view", "patient-view"),
    }
    for s in services_:
        _assert_no_empty(s)
        for template in s["prefetch"].values():
            assert set(re.findall(r"\{\{([^}]*)\}\}", template)) <= {"context.patientId"}
    assert resp.headers["Access-Control-Allow-Origin"] == "*"


def test_cors_preflight_allows_authorization_without_credentials(hooks_client: FlaskClient) -> None:
    resp = hooks_client.options(
        PV,
        headers={
            "Origin": "https://ehr.example.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert resp.status_code in (200, 204)
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert "Access-Control-Allow-Credentials" not in resp.headers  # never `*` with credentials


# --- errors -------------------------------------------------------------------------------------


def test_unknown_service_is_404(caller: Caller) -> None:
    _assert_outcome(caller.post("/cds-services/nope", _pv_body()), 404)


def test_missing_token_is_401_without_detail(hooks_client: FlaskClient) -> None:
    resp = hooks_client.post(PV, json=_pv_body())
    body = _assert_outcome(resp, 401)
    assert "diagnostics" not in body["issue"][0]
    assert resp.headers["WWW-Authenticate"] == "Bearer"


def test_token_for_another_service_url_is_401(caller: Caller) -> None:
    _assert_outcome(caller.post(PV, _pv_body(), token=caller.token(OSIGN)), 401)


def test_replayed_token_is_401_across_requests(caller: Caller, hooks_app: Flask) -> None:
    _store(hooks_app, STUDY_UID, analysis(SEVERE_L4_L5))
    token = caller.token(PV)
    assert caller.post(PV, _pv_body(), token=token).status_code == 200
    body = _assert_outcome(caller.post(PV, _pv_body(), token=token), 401)
    assert "diagnostics" not in body["issue"][0]


def test_replay_protection_is_shared_by_separate_app_instances(
    caller: Caller, hooks_app: Flask, hooks_settings: Any
) -> None:
    """Two apps (as two gunicorn workers) on one database: a token used on one fails on the other."""
    from cds import create_app

    _store(hooks_app, STUDY_UID, analysis(SEVERE_L4_L5))
    other = create_app(hooks_settings)
    try:
        token = caller.token(PV)
        assert caller.post(PV, _pv_body(), token=token).status_code == 200
        second = Caller(other.test_client(), caller.key, caller.base)
        _assert_outcome(second.post(PV, _pv_body(), token=token), 401)
    finally:
        services(other).close()


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda b: b.update(hook="order-sign"), "hook"),
        (lambda b: b.update(hookInstance="12345"), "hookInstance"),
        (lambda b: b["context"].pop("patientId"), "context.patientId"),
        (lambda b: b["context"].pop("userId"), "context.userId"),
        (lambda b: b["context"].update(patientId=7), "context.patientId"),
        (lambda b: b.pop("context"), "context"),
        (
            lambda b: b.update(
                fhirAuthorization={
                    "access_token": "x",
                    "token_type": "Bearer",
                    "expires_in": 60,
                    "scope": "s",
                    "subject": "c",
                }
            ),
            "fhirServer",
        ),
        (lambda b: b.update(prefetch={"studies": "nope"}), "prefetch"),
        (lambda b: b.update(prefetch={"studies": patient()}), "prefetch.studies"),
        (lambda b: b.update(prefetch={"studies": bundle(), "patient": patient("other")}), "prefetch.patient"),
    ],
)
def test_bad_requests_are_400_with_operation_outcome(caller: Caller, mutate: Any, where: str) -> None:
    body = _pv_body()
    mutate(body)
    outcome = _assert_outcome(caller.post(PV, body), 400)
    assert where in outcome["issue"][0]["diagnostics"]


def test_malformed_json_is_400(caller: Caller) -> None:
    outcome = _assert_outcome(caller.post(PV, None, raw=b'{"hook": '), 400)
    assert "JSON" in outcome["issue"][0]["diagnostics"]


def test_wrong_content_type_is_400(caller: Caller) -> None:
    _assert_outcome(
        caller.post(PV, None, raw=json.dumps(_pv_body()).encode(), content_type="text/plain"), 400
    )


def test_oversized_request_is_413(caller: Caller) -> None:
    body = _pv_body(extension={"padding": "x" * (70 * 1024)})
    _assert_outcome(caller.post(PV, body), 413)


def test_unknown_extension_members_tolerated(caller: Caller, hooks_app: Flask) -> None:
    _store(hooks_app, STUDY_UID, analysis(SEVERE_L4_L5))
    body = _pv_body(extension={"com.example.flags": {"x": [1, 2]}}, futureMember={"a": 1})
    resp = caller.post(PV, body)
    assert resp.status_code == 200 and len(resp.get_json()["cards"]) == 1


# --- patient-view cards -------------------------------------------------------------------------


def test_patient_view_card_from_stored_analysis(caller: Caller, hooks_app: Flask) -> None:
    special = dict(SEVERE_L4_L5)
    special[(Level.L5_S1, Condition.LEFT_FORAMINAL)] = Grade.MODERATE
    analysis_id = _store(hooks_app, STUDY_UID, analysis(special))
    resp = caller.post(PV, _pv_body())
    assert resp.status_code == 200
    cards = resp.get_json()["cards"]
    assert len(cards) == 1
    card = cards[0]
    _assert_no_empty(card)
    assert len(card["summary"]) < 140
    assert "severe central canal stenosis at L4-L5" in card["summary"]
    assert card["summary"].startswith("Lumbar MRI 2026-07-01")
    assert card["indicator"] == "critical"
    assert card["source"]["label"]
    uuid.UUID(card["uuid"])
    # detail: one table row per level x condition, with the deciding measurement and its threshold
    rows = [line for line in card["detail"].splitlines() if re.match(r"^\| L\d-[LS]\d \|", line)]
    assert len(rows) == 25
    severe_row = next(r for r in rows if r.startswith("| L4-L5 | central canal stenosis"))
    assert "**severe**" in severe_row and "mm2" in severe_row and "< 75 mm2" in severe_row
    foramen_row = next(r for r in rows if r.startswith("| L5-S1 | left neural foraminal"))
    assert "**moderate**" in foramen_row and "%" in foramen_row
    # one suggestion: create a preliminary DiagnosticReport, valid FHIR R4
    assert card["selectionBehavior"] == "at-most-one"
    (suggestion,) = card["suggestions"]
    uuid.UUID(suggestion["uuid"])
    (action,) = suggestion["actions"]
    assert action["type"] == "create" and action["description"]
    report = action["resource"]
    assert report["resourceType"] == "DiagnosticReport" and report["status"] == "preliminary"
    assert {"system": "http://loinc.org", "code": "24968-0"}.items() <= report["code"]["coding"][0].items()
    validate_resource(report, "DiagnosticReport", normalise=False)
    assert card["overrideReasons"] and all(r["code"] and r["display"] for r in card["overrideReasons"])
    # links: signed viewer link and explain link, both absolute
    viewer, explain = card["links"]
    assert viewer["type"] == explain["type"] == "absolute"
    assert viewer["url"].startswith("https://cds.example.org/viewer/")
    link, query = viewer["url"].split("?")
    assert query == "card=" + card["uuid"]  # the viewer's own feedback names the card
    with hooks_app.app_context():
        assert verify_viewer_token(link.rsplit("/", 1)[1]) == analysis_id
    assert explain["url"].startswith("https://cds.example.org/explain/")


@pytest.mark.parametrize(
    ("special", "indicator"),
    [({}, "info"), ({(Level.L3_L4, Condition.RIGHT_SUBARTICULAR): Grade.MODERATE}, "warning")],
)
def test_indicator_follows_worst_grade(
    caller: Caller, hooks_app: Flask, special: Any, indicator: str
) -> None:
    _store(hooks_app, STUDY_UID, analysis(special))
    (card,) = caller.post(PV, _pv_body()).get_json()["cards"]
    assert card["indicator"] == indicator


def test_unanalysed_study_enqueues_one_job_and_says_pending(caller: Caller, hooks_app: Flask) -> None:
    _store(hooks_app, STUDY_UID, None)
    for _ in range(2):
        resp = caller.post(PV, _pv_body())
        (card,) = resp.get_json()["cards"]
        assert card["indicator"] == "info" and "pending" in card["summary"]
        _assert_no_empty(card)
    with services(hooks_app).db.session(readonly=True) as s:
        jobs = s.scalars(sa.select(JobRecord)).all()
        assert [j.kind for j in jobs] == [JobKind.ANALYZE]
        assert jobs[0].payload["study_uid"] == STUDY_UID


def test_study_unknown_to_the_store_is_registered_and_queued(caller: Caller, hooks_app: Flask) -> None:
    (card,) = caller.post(PV, _pv_body()).get_json()["cards"]
    assert "pending" in card["summary"]
    with services(hooks_app).db.session(readonly=True) as s:
        study = queries.study_by_uid(s, STUDY_UID)
        assert study is not None and study.patient_ref == f"Patient/{PATIENT_ID}"
        assert s.scalars(sa.select(JobRecord)).one().kind is JobKind.ANALYZE


def test_pending_newest_study_shows_the_older_analysed_one_too(caller: Caller, hooks_app: Flask) -> None:
    _store(hooks_app, OLD_STUDY_UID, analysis(SEVERE_L4_L5), date(2024, 1, 5))
    studies = bundle(imaging_study(), imaging_study(OLD_STUDY_UID, rid="old", started="2024-01-05"))
    cards = caller.post(PV, _pv_body(prefetch={"studies": studies})).get_json()["cards"]
    assert ["pending" in c["summary"] for c in cards] == [True, False]
    assert "2024-01-05" in cards[1]["summary"]


def test_unanalysable_study_says_why_with_model_text_escaped(caller: Caller, hooks_app: Flask) -> None:
    reason = "no sagittal T2 <img src=x onerror=alert(1)> [click](http://evil) | **bold**"
    _store(hooks_app, STUDY_UID, AnalysisResult(AnalysisStatus.UNANALYSABLE, reason=reason))
    (card,) = caller.post(PV, _pv_body()).get_json()["cards"]
    assert card["indicator"] == "info"
    assert "<img" not in card["detail"] and "](http" not in card["detail"] and "| **" not in card["detail"]
    assert "no sagittal T2" in card["detail"]


def test_no_lumbar_mri_means_no_card(caller: Caller) -> None:
    brain = bundle(imaging_study(description="MRI BRAIN"))
    resp = caller.post(PV, _pv_body(prefetch={"studies": brain}))
    assert resp.status_code == 200 and resp.get_json() == {"cards": []}


def test_null_prefetch_is_no_data_not_412(caller: Caller) -> None:
    resp = caller.post(PV, _pv_body(prefetch={"studies": None}))
    assert resp.status_code == 200 and resp.get_json() == {"cards": []}


def test_absent_prefetch_without_fhir_server_is_412(caller: Caller) -> None:
    outcome = _assert_outcome(caller.post(PV, _pv_body(prefetch={})), 412)
    assert "studies" in outcome["issue"][0]["diagnostics"]


def test_operation_outcome_prefetch_is_412(caller: Caller) -> None:
    oo = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden"}]}
    _assert_outcome(caller.post(PV, _pv_body(prefetch={"studies": oo})), 412)


def test_absent_prefetch_fetched_from_allowed_fhir_server(caller: Caller, hooks_app: Flask) -> None:
    _store(hooks_app, STUDY_UID, analysis(SEVERE_L4_L5))
    server = FakeServer()
    server.routes[f"/fhir/ImagingStudy?patient={PATIENT_ID}&modality=MR&_include=ImagingStudy:endpoint"] = (
        200,
        bundle(imaging_study(OLD_STUDY_UID, started="2020-01-01"), next_url=f"{server.base}/fhir/p2"),
    )
    server.routes["/fhir/p2"] = (200, bundle(imaging_study()))
    server.routes[f"/fhir/Patient/{PATIENT_ID}"] = (200, patient())
    auth = {
        "access_token": "ehr-access-token",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "cds-service",
    }
    with server.running():
        body = _pv_body(prefetch=None, fhirServer=f"{server.base}/fhir", fhirAuthorization=auth)
        resp = caller.post(PV, body)
    assert resp.status_code == 200
    (card,) = resp.get_json()["cards"]
    assert "severe central canal stenosis at L4-L5" in card["summary"]
    paths = [p for p, _ in server.requests]
    assert (
        f"/fhir/ImagingStudy?patient={PATIENT_ID}&modality=MR&_include=ImagingStudy:endpoint" in paths
        and "/fhir/p2" in paths
    )
    assert {a for _, a in server.requests} == {"Bearer ehr-access-token"}


def test_order_hook_with_lumbar_order_and_no_data_is_412(caller: Caller) -> None:
    orders = draft_orders(service_request("sr-1", "72148"))
    body = _order_body("order-select", orders, ["ServiceRequest/sr-1"], prefetch={})
    resp = caller.post(OSEL, body)
    _assert_outcome(resp, 412)
    assert resp.headers["X-Request-ID"]


def test_fhir_server_refusing_the_token_is_412(caller: Caller) -> None:
    server = FakeServer()
    server.routes[f"/fhir/ImagingStudy?patient={PATIENT_ID}&modality=MR&_include=ImagingStudy:endpoint"] = (
        401,
        {"resourceType": "OperationOutcome"},
    )
    with server.running():
        resp = caller.post(PV, _pv_body(prefetch=None, fhirServer=f"{server.base}/fhir"))
    _assert_outcome(resp, 412)
    assert server.requests  # it was asked, and said no


def test_fhir_server_not_on_allow_list_is_never_called(caller: Caller, hooks_app: Flask) -> None:
    server = FakeServer()
    with server.running():
        base = f"http://localhost:{server.port}/fhir"  # 'localhost' is not in the allow-list
        resp = caller.post(PV, _pv_body(prefetch=None, fhirServer=base))
    _assert_outcome(resp, 412)
    assert server.requests == []


# --- order hooks --------------------------------------------------------------------------------


def test_order_select_with_lumbar_mri_shows_the_prior_study(caller: Caller, hooks_app: Flask) -> None:
    _store(hooks_app, STUDY_UID, analysis(SEVERE_L4_L5))
    orders = draft_orders(service_request("sr-new", "72148"))
    resp = caller.post(OSEL, _order_body("order-select", orders, ["ServiceRequest/sr-new"]))
    (card,) = resp.get_json()["cards"]
    assert card["summary"].startswith("Prior lumbar MRI 2026-07-01")
    assert "not a read of the study being ordered" in card["detail"]
    assert card["indicator"] == "critical"
    _assert_no_empty(card)


def test_order_select_ignores_unselected_orders(caller: Caller, hooks_app: Flask) -> None:
    _store(hooks_app, STUDY_UID, analysis(SEVERE_L4_L5))
    orders = draft_orders(service_request("sr-lumbar", "72148"), service_request("sr-cxr", "71045"))
    resp = caller.post(OSEL, _order_body("order-select", orders, ["ServiceRequest/sr-cxr"]))
    assert resp.status_code == 200 and resp.get_json() == {"cards": []}


def test_order_hooks_ignore_non_lumbar_orders_without_needing_prefetch(caller: Caller) -> None:
    orders = draft_orders(service_request("sr-cxr", "71045"))
    body = _order_body("order-sign", orders, None, prefetch={})  # no data, no server: still no 412
    resp = caller.post(OSIGN, body)
    assert resp.status_code == 200 and resp.get_json() == {"cards": []}


def test_order_sign_never_reads_the_study_of_the_order_itself(caller: Caller, hooks_app: Flask) -> None:
    _store(hooks_app, STUDY_UID, analysis(SEVERE_L4_L5))
    orders = draft_orders(service_request("sr-1", "24968-0", "http://loinc.org"))
    acquired_for_order = imaging_study(based_on="ServiceRequest/sr-1")
    body = _order_body("order-sign", orders, None, prefetch={"studies": bundle(acquired_for_order)})
    assert caller.post(OSIGN, body).get_json() == {"cards": []}


def test_order_sign_with_prior_study(caller: Caller, hooks_app: Flask) -> None:
    _store(hooks_app, STUDY_UID, analysis({}))
    orders = draft_orders(service_request("sr-1", "41333006", "http://snomed.info/sct"))
    (card,) = caller.post(OSIGN, _order_body("order-sign", orders, None)).get_json()["cards"]
    assert card["indicator"] == "info" and "no moderate or severe stenosis" in card["summary"]


# --- feedback -----------------------------------------------------------------------------------


def _feedback(card: str, outcome: str = "accepted") -> dict[str, Any]:
    item: dict[str, Any] = {"card": card, "outcome": outcome, "outcomeTimestamp": "2026-07-02T10:00:00Z"}
    if outcome == "accepted":
        item["acceptedSuggestions"] = [{"id": str(uuid.uuid4())}]
    else:
        item["overrideReason"] = {
            "reason": {"system": OVERRIDE_SYSTEM, "code": "disagree-with-ai", "display": "Disagree"},
            "userComment": "canal looks fine",
        }
    return {"feedback": [item]}


def test_feedback_is_persisted_once(caller: Caller, hooks_app: Flask) -> None:
    path = PV + "/feedback"
    _store(hooks_app, STUDY_UID, analysis(SEVERE_L4_L5))
    (shown,) = caller.post(PV, _pv_body()).get_json()["cards"]
    card = shown["uuid"]  # feedback is accepted for cards this service returned
    first = _feedback(card, "overridden")
    assert caller.post(path, first).status_code == 200
    resent = _feedback(card, "overridden")  # the EHR resends with a fresh outcomeTimestamp
    resent["feedback"][0]["outcomeTimestamp"] = "2026-07-02T10:00:07Z"
    assert caller.post(path, resent).status_code == 200
    with services(hooks_app).db.session(readonly=True) as s:
        (record,) = s.scalars(sa.select(FeedbackRecord)).all()
        assert record.card_uuid == card and record.override_reason_code == "disagree-with-ai"
        assert record.service_id == "lumbar-mri-patient-view"


def test_feedback_requires_auth_and_valid_body(caller: Caller, hooks_client: FlaskClient) -> None:
    path = PV + "/feedback"
    _assert_outcome(hooks_client.post(path, json=_feedback(str(uuid.uuid4()))), 401)
    _assert_outcome(caller.post(path, {"feedback": [{"card": "x", "outcome": "accepted"}]}), 400)
    _assert_outcome(caller.post(path, _feedback(str(uuid.uuid4())), token=caller.token(PV)), 401)
    _assert_outcome(caller.post("/cds-services/nope/feedback", _feedback(str(uuid.uuid4()))), 404)


def test_feedback_for_cards_we_did_not_issue_is_404(caller: Caller, hooks_app: Flask) -> None:
    path = PV + "/feedback"
    _store(hooks_app, STUDY_UID, analysis(SEVERE_L4_L5))
    (shown,) = caller.post(PV, _pv_body()).get_json()["cards"]
    _assert_outcome(caller.post(path, _feedback(str(uuid.uuid4()))), 404)  # never issued
    forged = shown["uuid"][:-1] + ("0" if shown["uuid"][-1] != "0" else "1")
    _assert_outcome(caller.post(path, _feedback(forged)), 404)  # tag does not match
    # issued by another service: not this one's card
    _assert_outcome(caller.post(OSEL + "/feedback", _feedback(shown["uuid"])), 404)
    # one unknown card in a batch rejects the batch (nothing stored)
    batch = _feedback(shown["uuid"])
    batch["feedback"] += _feedback(str(uuid.uuid4()))["feedback"]
    _assert_outcome(caller.post(path, batch), 404)
    assert caller.post(path, _feedback(shown["uuid"])).status_code == 200
    with services(hooks_app).db.session(readonly=True) as s:
        assert [r.card_uuid for r in s.scalars(sa.select(FeedbackRecord))] == [shown["uuid"]]
        audited = s.scalars(
            sa.select(HookCallRecord).where(HookCallRecord.service_id == PV.rsplit("/", 1)[1])
        )
        assert shown["uuid"] in {u for row in audited for u in (row.card_uuids or "").split()}


# --- audit and logs -----------------------------------------------------------------------------


def test_every_call_is_audited_without_tokens_or_phi_in_logs(
    caller: Caller, hooks_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    _store(hooks_app, STUDY_UID, analysis(SEVERE_L4_L5))
    caplog.set_level(logging.DEBUG)
    token = caller.token(PV)
    body = _pv_body()
    assert caller.post(PV, body, token=token).status_code == 200
    assert caller.post(PV, {"hook": "patient-view"}).status_code == 400
    with services(hooks_app).db.session(readonly=True) as s:
        calls = s.scalars(sa.select(HookCallRecord).order_by(HookCallRecord.id)).all()
    assert [(c.status_code, c.outcome) for c in calls] == [(200, "cards"), (400, "bad_request")]
    first = calls[0]
    assert first.hook_instance == body["hookInstance"] and first.service_id == "lumbar-mri-patient-view"
    assert first.patient_ref == f"Patient/{PATIENT_ID}" and first.card_count == 1 and first.latency_ms > 0
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "hook_call request_id=" in logged
    assert token not in logged and PATIENT_ID not in logged
