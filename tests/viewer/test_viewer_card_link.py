"""End to end: a real patient-view call issues a card whose viewer link names it; the viewer joins
its card-level verdict to that card, but not when the same uuid is typed into another patient's
viewer link (cds.viewer.feedback.linked_card_uuid)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from flask import Flask
from viewer_support import store_analysis

from cds.commands import demo
from cds.config import Settings
from cds.extensions import services
from cds.store.records import HookCallRecord, ViewerFeedbackRecord

STUDY_UID = "1.2.826.0.1.3680043.8.498.7701"
OTHER_UID = "1.2.826.0.1.3680043.8.498.7702"
BASE = "https://cds.example.org"


@pytest.fixture
def ehr(app_settings: Settings, tmp_path: Path) -> Iterator[tuple[Flask, object]]:
    """An app trusting the demo EHR key (the product's own signer), and that key."""
    from cds import create_app

    paths = demo.DemoPaths(tmp_path / "ehr")
    paths.root.mkdir(parents=True)
    key = demo.ensure_signing_key(paths)
    demo.write_clients_file(paths, demo.public_jwk(key))
    app = create_app(app_settings.with_overrides(clients_file=paths.clients, public_base_url=BASE))
    app.config["TESTING"] = True
    try:
        yield app, key
    finally:
        services(app).close()


def _card(app: Flask, key: object, patient_id: str, study_uid: str) -> dict[str, object]:
    study = demo.DemoStudy(study_uid, patient_id, date(2025, 3, 3), "MR LUMBAR SPINE", Path("."))
    body = demo.patient_view_request(patient_id, [study])
    path = f"/cds-services/{demo.PATIENT_VIEW}"
    token = demo.sign_token(key, demo.public_jwk(key)["kid"], BASE + path)
    resp = app.test_client().post(
        path,
        data=json.dumps(body),
        headers={"Authorization": f"Bearer {token}"},
        content_type="application/json",
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)
    (card,) = resp.get_json()["cards"]
    return dict(card)


def _viewer_link(card: dict[str, object]) -> str:
    links = card["links"]
    assert isinstance(links, list)
    url = next(link["url"] for link in links if "/viewer/" in link["url"])
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def test_a_card_from_a_real_hook_call_is_linked_only_for_its_own_patient(
    ehr: tuple[Flask, object],
) -> None:
    app, key = ehr
    store_analysis(app, study_uid=STUDY_UID, patient_ref="Patient/p-link-1")
    store_analysis(app, study_uid=OTHER_UID, patient_ref="Patient/p-link-2")
    card = _card(app, key, "p-link-1", STUDY_UID)
    other = _card(app, key, "p-link-2", OTHER_UID)
    uuid = str(card["uuid"])
    with services(app).db.session(readonly=True) as s:
        calls = s.query(HookCallRecord).filter(HookCallRecord.patient_ref == "Patient/p-link-1").all()
    assert [c.card_uuids for c in calls] == [uuid]
    client = app.test_client()

    own = _viewer_link(card)  # /viewer/<token>?card=<uuid>, as the EHR opens it
    assert own.endswith(f"?card={uuid}")
    assert f'name="card" value="{uuid}"' in client.get(own).get_data(as_text=True)
    path = own.split("?")[0]
    resp = client.post(f"{path}/feedback", data={"target": "card", "verdict": "agree", "card": uuid})
    assert resp.status_code == 303

    # The other patient's viewer link with this patient's card uuid typed in: stored, not linked.
    foreign = _viewer_link(other).split("?")[0]
    assert uuid not in client.get(f"{foreign}?card={uuid}").get_data(as_text=True)
    resp = client.post(f"{foreign}/feedback", data={"target": "card", "verdict": "agree", "card": uuid})
    assert resp.status_code == 303 and uuid not in resp.headers["Location"]

    with services(app).db.session(readonly=True) as s:
        rows = s.query(ViewerFeedbackRecord).order_by(ViewerFeedbackRecord.id).all()
        linked = [(r.analysis_id != rows[0].analysis_id, r.card_uuid) for r in rows]
    assert linked == [(False, uuid), (True, None)]
