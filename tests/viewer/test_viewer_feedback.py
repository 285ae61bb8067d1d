"""Feedback per finding and per card: validation, storage, shown back, linked to CDS card feedback."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from flask import Flask
from flask.testing import FlaskClient
from viewer_support import store_analysis, viewer_path

from cds.domain import FeedbackOutcome, FeedbackVerdict
from cds.extensions import services
from cds.store.records import FeedbackRecord, ViewerFeedbackRecord
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


def test_card_feedback_joins_the_cds_feedback_of_its_card(app: Flask, client: FlaskClient) -> None:
    analysis_id = store_analysis(app)
    path = viewer_path(app, analysis_id)
    card = str(uuid.uuid4())
    with services(app).db.session() as s:
        s.add(
            FeedbackRecord(
                card_uuid=card,
                service_id="lumbar-mri-patient-view",
                outcome=FeedbackOutcome.OVERRIDDEN,
                accepted_suggestions=[],
                override_reason_display="Findings already known",
                outcome_timestamp=datetime(2025, 3, 4, tzinfo=UTC),
            )
        )
    html = client.get(f"{path}?card={card}").get_data(as_text=True)
    assert "In the EHR this card was:" in html and "overridden" in html and "Findings already known" in html
    assert f'name="card" value="{card}"' in html
    resp = client.post(f"{path}/feedback", data={"target": "card", "verdict": "agree", "card": card})
    assert resp.status_code == 303 and f"card={card}" in resp.headers["Location"]
    (row,) = _rows(app)
    assert row.target == "card" and row.card_uuid == card and row.level is None
    assert "In the EHR this card was" not in client.get(f"{path}?card=junk").get_data(as_text=True)


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
