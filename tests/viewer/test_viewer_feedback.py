"""Feedback per finding and per card: validation, storage, shown back, linked to CDS card feedback."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from flask import Flask
from flask.testing import FlaskClient
from viewer_support import PATIENT_REF, store_analysis, viewer_path

from cds.domain import FeedbackOutcome, FeedbackVerdict
from cds.extensions import services
from cds.signing import CardIdSigner
from cds.store.records import FeedbackRecord, HookCallRecord, ViewerFeedbackRecord
from cds.viewer import feedback as fb

TARGETS = {"card", "L4-L5/spinal_canal"}
CANAL = "L4-L5/spinal_canal"
DISAGREE = {"target": CANAL, "verdict": "disagree", "reason": "grade_too_high"}


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"target": "L9-L9/spinal_canal", "verdict": "agree"}, "unknown finding"),
        ({"target": "L5-S1/spinal_canal", "verdict": "agree"}, "not part of the analysis"),
        ({"target": CANAL, "verdict": "maybe"}, "Choose 'Agree' or 'Disagree'"),
        ({"target": CANAL, "verdict": "disagree"}, "choose a reason"),
        ({"target": CANAL, "verdict": "disagree", "reason": "bogus"}, "reason from the list"),
        ({"target": CANAL, "verdict": "disagree", "reason": "other"}, "comment"),
        ({"target": CANAL, "verdict": "agree", "comment": "x" * 1001}, "too long"),
        ({"target": "card", "verdict": "agree", "card": "not-a-uuid"}, "card reference"),
    ],
)
def test_invalid_forms_say_what_to_change(form: dict[str, str], message: str) -> None:
    with pytest.raises(fb.FeedbackInvalid) as err:
        fb.parse_form(form, TARGETS)
    assert message.lower() in err.value.message.lower()


def test_valid_forms() -> None:
    agree = fb.parse_form({"target": CANAL, "verdict": "agree", "reason": "grade_too_high"}, TARGETS)
    assert agree.verdict is FeedbackVerdict.AGREE and agree.reason is None  # a reason needs a disagreement
    card = str(uuid.uuid4()).upper()
    item = fb.parse_form(
        {
            "target": "card",
            "verdict": "disagree",
            "reason": "wrong_level",
            "comment": " L4 is L5 \x07",
            "card": card,
        },
        TARGETS,
    )
    assert item.reason is fb.DisagreeReason.WRONG_LEVEL
    assert item.comment == "L4 is L5" and item.card_uuid == card.lower()
    finding = fb.parse_form({"target": CANAL, "verdict": "agree", "card": card}, TARGETS)
    assert finding.card_uuid is None  # only the card-level verdict is joined to the card


def _rows(app: Flask) -> list[ViewerFeedbackRecord]:
    with services(app).db.session(readonly=True) as s:
        return list(s.query(ViewerFeedbackRecord).order_by(ViewerFeedbackRecord.id))


def test_feedback_is_stored_and_shown_back(app: Flask, client: FlaskClient) -> None:
    analysis_id = store_analysis(app)
    path = viewer_path(app, analysis_id)
    resp = client.post(f"{path}/feedback", data={"target": CANAL, "verdict": "agree"})
    assert resp.status_code == 303
    assert resp.headers["Location"].endswith(f"{path}#fb-L4-L5_spinal_canal")
    html = client.get(path).get_data(as_text=True)
    assert 'data-verdict="agree"' in html and "You agreed" in html
    resp = client.post(
        f"{path}/feedback",
        data={
            "target": CANAL,
            "verdict": "disagree",
            "reason": "grade_too_high",
            "comment": "<b>moderate</b>",
        },
    )
    assert resp.status_code == 303
    html = client.get(path).get_data(as_text=True)
    assert "You disagreed: Grade too high (overcalled)" in html
    assert "&lt;b&gt;moderate&lt;/b&gt;" in html and "1 earlier" in html
    rows = _rows(app)
    assert [(r.target, r.verdict, r.reason) for r in rows] == [
        (CANAL, FeedbackVerdict.AGREE, None),
        (CANAL, FeedbackVerdict.DISAGREE, "grade_too_high"),
    ]


def test_invalid_feedback_is_400_with_the_message_and_nothing_stored(app: Flask, client: FlaskClient) -> None:
    analysis_id = store_analysis(app)
    path = viewer_path(app, analysis_id)
    resp = client.post(
        f"{path}/feedback", data={"target": CANAL, "verdict": "disagree", "comment": "too big"}
    )
    assert resp.status_code == 400
    html = resp.get_data(as_text=True)
    assert 'role="alert"' in html and "Please choose a reason for disagreeing." in html
    assert "too big" in html  # what was typed is kept
    assert "Traceback" not in html
    assert _rows(app) == []


SERVICE = "lumbar-mri-patient-view"


def _issued_card(app: Flask, patient_ref: str = PATIENT_REF) -> str:
    """A card uuid this deployment issued, returned by a recorded hook call about `patient_ref`."""
    card = CardIdSigner(services(app).settings.secret_key).issue(SERVICE)
    with services(app).db.session() as s:
        s.add(
            HookCallRecord(
                hook_instance="hi-1",
                service_id=SERVICE,
                hook="patient-view",
                patient_ref=patient_ref,
                latency_ms=1.0,
                outcome="cards",
                status_code=200,
                card_count=2,
                card_uuids=f"{uuid.uuid4()} {card}",
            )
        )
    return card


def _ehr_feedback(app: Flask, card: str) -> None:
    with services(app).db.session() as s:
        s.add(
            FeedbackRecord(
                card_uuid=card,
                service_id=SERVICE,
                outcome=FeedbackOutcome.OVERRIDDEN,
                accepted_suggestions=[],
                override_reason_display="Findings already known",
                outcome_timestamp=datetime(2025, 3, 4, tzinfo=UTC),
            )
        )


def test_card_feedback_joins_the_cds_feedback_of_its_card(app: Flask, client: FlaskClient) -> None:
    analysis_id = store_analysis(app)
    path = viewer_path(app, analysis_id)
    card = _issued_card(app)
    _ehr_feedback(app, card)
    html = client.get(f"{path}?card={card}").get_data(as_text=True)
    assert "In the EHR this card was:" in html and "overridden" in html and "Findings already known" in html
    assert f'name="card" value="{card}"' in html
    resp = client.post(f"{path}/feedback", data={"target": "card", "verdict": "agree", "card": card})
    assert resp.status_code == 303 and f"card={card}" in resp.headers["Location"]
    (row,) = _rows(app)
    assert row.target == "card" and row.card_uuid == card and row.level is None
    assert "In the EHR this card was" not in client.get(f"{path}?card=junk").get_data(as_text=True)


@pytest.mark.parametrize(
    ("study_patient", "linked"),
    [
        ("Patient/p-1", True),
        ("https://ehr.example/fhir/Patient/p-1", True),
        ("p-1", True),  # DICOM PatientID equal to the FHIR id (PACS intake)
        ("Patient/p-10", False),
        ("https://ehr.example/fhir/Patient/xp-1", False),
        ("other-id", False),
    ],
)
def test_same_patient(study_patient: str, linked: bool) -> None:
    assert fb._same_patient(study_patient, "Patient/p-1") is linked
    assert fb._same_patient(study_patient, None) is False


@pytest.mark.parametrize("kind", ["unissued", "other_patient", "not_returned", "other_service"])
def test_a_card_not_shown_for_this_patient_is_not_linked(app: Flask, client: FlaskClient, kind: str) -> None:
    """A typed-in uuid (another patient's card, or one we never issued) neither shows that card's EHR
    feedback nor joins the verdict to it; the verdict itself is still stored."""
    analysis_id = store_analysis(app)
    path = viewer_path(app, analysis_id)
    signer = CardIdSigner(services(app).settings.secret_key)
    if kind == "unissued":  # well-formed, listed on this patient's hook call, but not ours
        card = str(uuid.uuid4())
        _issued_card(app)
        with services(app).db.session() as s:
            row = s.query(HookCallRecord).one()
            row.card_uuids = f"{row.card_uuids} {card}"
    elif kind == "other_patient":
        card = _issued_card(app, patient_ref="Patient/someone-else")
    elif kind == "not_returned":  # genuinely ours, but no recorded call returned it
        card = signer.issue(SERVICE)
    else:  # listed on this patient's call but tagged for another service
        card = signer.issue("another-service")
        _issued_card(app)
        with services(app).db.session() as s:
            row = s.query(HookCallRecord).one()
            row.card_uuids = f"{row.card_uuids} {card}"
    _ehr_feedback(app, card)
    html = client.get(f"{path}?card={card}").get_data(as_text=True)
    assert "In the EHR this card was" not in html and "Findings already known" not in html
    assert card not in html
    resp = client.post(f"{path}/feedback", data={"target": "card", "verdict": "agree", "card": card})
    assert resp.status_code == 303 and card not in resp.headers["Location"]
    (stored,) = _rows(app)
    assert stored.target == "card" and stored.verdict is FeedbackVerdict.AGREE and stored.card_uuid is None


def test_cross_site_and_bad_link_posts_are_refused(app: Flask, client: FlaskClient) -> None:
    analysis_id = store_analysis(app)
    path = viewer_path(app, analysis_id)
    form = {"target": CANAL, "verdict": "agree"}
    assert (
        client.post(f"{path}/feedback", data=form, headers={"Origin": "https://evil.example"}).status_code
        == 403
    )
    assert (
        client.post(f"{path}/feedback", data=form, headers={"Sec-Fetch-Site": "cross-site"}).status_code
        == 403
    )
    assert client.post(f"{path[:-3]}xyz/feedback", data=form).status_code == 403
    assert _rows(app) == []
    same = client.post(f"{path}/feedback", data=form, headers={"Origin": "http://localhost"})
    assert same.status_code == 303
