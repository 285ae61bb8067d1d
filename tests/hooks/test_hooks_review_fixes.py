"""Small review fixes: project code system for override reasons, lumbar body site codes, JWKS
fetches that do not follow redirects, feedback overrideReasons checked against the cards' list."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from hooks_support import PATIENT_ID, Caller, SigningKey, bundle, imaging_study, issued_card

from cds.extensions import services
from cds.fhir.codes import PROJECT_BASE
from cds.hooks.cards import OVERRIDE_REASONS, OVERRIDE_SYSTEM, is_offered_override_reason
from cds.hooks.jwks import KeySetError, http_fetch_json
from cds.hooks.studies import lumbar_mri_studies
from cds.store.records import FeedbackRecord

FEEDBACK = "/cds-services/lumbar-mri-patient-view/feedback"


def test_override_reasons_use_the_project_code_system() -> None:
    assert OVERRIDE_SYSTEM.startswith(PROJECT_BASE + "/CodeSystem/")
    assert is_offered_override_reason(OVERRIDE_SYSTEM, OVERRIDE_REASONS[0][0])
    assert not is_offered_override_reason("https://elsewhere.example/cs", OVERRIDE_REASONS[0][0])
    assert not is_offered_override_reason(OVERRIDE_SYSTEM, "made-up")


@pytest.mark.parametrize(("site", "lumbar"), [("122496007", True), ("18347007", False)])
def test_lumbar_body_site_is_the_structure_not_the_stenosis_disorder(site: str, lumbar: bool) -> None:
    # SNOMED 18347007 is the disorder "Spinal stenosis of lumbar region", not a body site.
    resource = imaging_study(description=None, body_site=site)
    assert bool(lumbar_mri_studies(bundle(resource), PATIENT_ID)) is lumbar


@pytest.fixture
def redirecting_server(ehr_key: SigningKey) -> Iterator[str]:
    keys = json.dumps(ehr_key.jwks()).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/jwks.json":
                self.send_response(302)
                self.send_header("Location", "/elsewhere/keys.json")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(keys)))
            self.end_headers()
            self.wfile.write(keys)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_jwks_fetch_does_not_follow_redirects(redirecting_server: str) -> None:
    assert http_fetch_json(redirecting_server + "/elsewhere/keys.json", 2.0)["keys"]  # reachable directly
    with pytest.raises(KeySetError, match="redirected"):
        http_fetch_json(redirecting_server + "/jwks.json", 2.0)


def _feedback(system: str, code: str, card: str) -> dict[str, Any]:
    return {
        "feedback": [
            {
                "card": card,
                "outcome": "overridden",
                "outcomeTimestamp": "2026-07-02T10:00:00Z",
                "overrideReason": {"reason": {"system": system, "code": code}},
            }
        ]
    }


def test_feedback_override_reason_must_be_one_the_cards_offer(caller: Caller, hooks_app: Flask) -> None:
    card = issued_card(hooks_app)
    assert (
        caller.post(FEEDBACK, _feedback("https://elsewhere.example/cs", "not-relevant", card)).status_code
        == 400
    )
    assert caller.post(FEEDBACK, _feedback(OVERRIDE_SYSTEM, "made-up", card)).status_code == 400
    assert caller.post(FEEDBACK, _feedback(OVERRIDE_SYSTEM, "not-relevant", card)).status_code == 200
    with services(hooks_app).db.session(readonly=True) as s:
        (record,) = s.scalars(sa.select(FeedbackRecord)).all()
        assert (record.override_reason_system, record.override_reason_code) == (
            OVERRIDE_SYSTEM,
            "not-relevant",
        )
