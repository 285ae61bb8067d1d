"""The DiagnosticReport a CDS card's `create` suggestion carries (built by cds.hooks.cards with the
real LinkPresenter) is a valid R4 resource with the FINDINGS.md codes, and survives the card's
empty-field pruning unchanged.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from cds.domain import AnalysisResult, AnalysisStatus, Condition, Level
from cds.fhir import codes
from cds.hooks import cards
from cds.hooks.catalog import StoredAnalysis
from cds.hooks.presenter import LinkPresenter
from cds.hooks.studies import LumbarStudy
from cds.signing import LinkPurpose, LinkSigner

SECRET = "card-test-secret"


def _card(analysis: AnalysisResult, resource_id: str | None = "is-1") -> dict[str, Any]:
    presenter = LinkPresenter(
        "https://cds.example.org",
        LinkSigner(SECRET, LinkPurpose.VIEWER).sign,
        LinkSigner(SECRET, LinkPurpose.EXPLAIN).sign,
        3600,
    )
    stored = StoredAnalysis(
        analysis_id="6f1c2b8e-0d4a-4d38-9a51-2b7f3c9e1a10",
        study_uid="1.2.826.0.1.3680043.8.498.1",
        status=AnalysisStatus.COMPLETE,
        result=analysis,
        updated_at=datetime(2025, 3, 4, 10, 30, tzinfo=UTC),
    )
    study = LumbarStudy(
        study_uid=stored.study_uid,
        started=date(2025, 3, 3),
        description="MR LUMBAR SPINE WO CONTRAST",
        based_on=frozenset(),
        resource_id=resource_id,
    )
    req = cards.CardRequest(framing=cards.Framing.CURRENT, patient_id="pat-42", today=date(2025, 3, 5))
    card: dict[str, Any] = cards.result_card(stored, study, req, presenter)
    return card


def _suggested_resource(card: dict[str, Any]) -> dict[str, Any]:
    (suggestion,) = card["suggestions"]
    assert suggestion["uuid"]
    (action,) = suggestion["actions"]
    assert action["type"] == "create" and action["description"]
    return dict(action["resource"])  # the presenter's cached JSON text, read as a dict


def test_suggestion_carries_a_valid_preliminary_report(analysis: AnalysisResult) -> None:
    report = _suggested_resource(_card(analysis))
    model = DiagnosticReport.model_validate(report)
    assert json.dumps(model.model_dump(mode="json", exclude_none=True), sort_keys=True) == json.dumps(
        report, sort_keys=True
    )
    assert report["status"] == "preliminary"
    assert report["code"]["coding"][0]["code"] == "24968-0"
    assert report["category"][0]["coding"][0]["code"] == "RAD"
    assert report["subject"] == {"reference": "Patient/pat-42"}
    assert report["imagingStudy"] == [{"reference": "ImagingStudy/is-1"}]
    assert report["meta"]["security"][0]["code"] == "AIAST"


def test_suggestion_contains_every_finding_with_codes(analysis: AnalysisResult) -> None:
    report = _suggested_resource(_card(analysis))
    observations = [r for r in report["contained"] if r["resourceType"] == "Observation"]
    devices = [r for r in report["contained"] if r["resourceType"] == "Device"]
    assert len(observations) == 25 and len(devices) == 1
    seen = set()
    for obs in observations:
        assert obs["meta"]["security"][0]["code"] == "AIAST"
        assert obs["device"] == {"reference": f"#{devices[0]['id']}"}
        level_code = obs["bodySite"]["coding"][0]["code"]
        level = next(lv for lv, c in codes.LEVEL_CODES.items() if c.code == level_code)
        condition = Condition(obs["identifier"][0]["value"].rsplit("/", 1)[1])
        assert obs["code"]["coding"][0] == codes.CONDITION_CODES[condition].coding()
        seen.add((level, condition))
    assert seen == {(lv, c) for lv in Level for c in Condition}


def test_card_pruning_leaves_the_resource_intact(analysis: AnalysisResult) -> None:
    card = _card(analysis)
    assert cards.prune_empty(card)["suggestions"][0]["actions"][0]["resource"] == _suggested_resource(card)


def test_suggestion_without_ehr_imaging_study_uses_the_dicom_uid(analysis: AnalysisResult) -> None:
    report = _suggested_resource(_card(analysis, resource_id=None))
    DiagnosticReport.model_validate(report)
    assert report["imagingStudy"][0]["identifier"] == {
        "system": "urn:dicom:uid",
        "value": "urn:oid:1.2.826.0.1.3680043.8.498.1",
    }


def test_viewer_link_in_card_verifies(analysis: AnalysisResult) -> None:
    card = _card(analysis)
    viewer = next(link for link in card["links"] if "/viewer/" in link["url"])
    token = viewer["url"].rsplit("/", 1)[1]
    assert LinkSigner(SECRET).verify(token) == "6f1c2b8e-0d4a-4d38-9a51-2b7f3c9e1a10"
    assert "pat-42" not in viewer["url"]
