"""Card wording and structure from stored analyses (pure functions, no app)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from typing import Any

import pytest
from hooks_support import SEVERE_L4_L5, STUDY_UID, analysis, lumbar_study, stored

from cds.domain import AnalysisStatus, Condition, Grade, Level
from cds.hooks.advice import advise
from cds.hooks.cards import SUMMARY_MAX, CardRequest, Framing, prune_empty, result_card, unavailable_card
from cds.hooks.catalog import StoredAnalysis
from cds.hooks.encode import encode_cards
from cds.hooks.markdown import escape
from cds.hooks.reports import ReportOnFile, reports_by_study
from cds.hooks.studies import LumbarStudy

TODAY = date(2026, 11, 23)


class FakePresenter:
    def viewer_url(self, analysis_id: str) -> str:
        return f"https://cds.example.org/viewer/{analysis_id}"

    def explain_url(self, analysis_id: str) -> str:
        return f"https://cds.example.org/explain/{analysis_id}"

    def report(self, s: StoredAnalysis, study: LumbarStudy, patient_id: str) -> dict[str, Any]:
        return {"resourceType": "DiagnosticReport", "status": "preliminary", "id": s.analysis_id}


class FakeCatalog:
    def __init__(self, items: dict[str, StoredAnalysis]) -> None:
        self.items = items
        self.requested: list[str] = []

    def lookup(self, study_uids: Any) -> dict[str, StoredAnalysis]:
        return {u: self.items[u] for u in study_uids if u in self.items}

    def request_analysis(self, study: LumbarStudy, patient_id: str) -> None:
        self.requested.append(study.study_uid)


def _req(framing: Framing = Framing.CURRENT, **kw: Any) -> CardRequest:
    return CardRequest(framing=framing, patient_id="pat-1", today=TODAY, **kw)


def test_summary_names_worst_finding_and_counts_the_rest() -> None:
    special = dict(SEVERE_L4_L5)
    special[(Level.L3_L4, Condition.LEFT_FORAMINAL)] = Grade.MODERATE
    special[(Level.L5_S1, Condition.RIGHT_SUBARTICULAR)] = Grade.MODERATE
    card = result_card(stored(analysis(special)), lumbar_study(), _req(), FakePresenter())
    assert card["summary"] == (
        "Lumbar MRI 2026-07-01 (AI, preliminary): "
        "severe central canal stenosis at L4-L5; +2 more moderate/severe"
    )
    assert len(card["summary"]) <= SUMMARY_MAX


def test_summary_never_exceeds_limit() -> None:
    study = replace(lumbar_study(), started=None)
    card = result_card(stored(analysis(SEVERE_L4_L5)), study, _req(Framing.PRIOR), FakePresenter())
    assert len(card["summary"]) < 140 and "(date unknown)" in card["summary"]


def test_prior_framing_says_how_old_the_study_is() -> None:
    card = result_card(stored(analysis(SEVERE_L4_L5)), lumbar_study(), _req(Framing.PRIOR), FakePresenter())
    assert card["summary"].startswith("Prior lumbar MRI 2026-07-01")
    assert "about 5 months ago" in card["detail"]


def test_study_description_and_model_versions_are_escaped() -> None:
    study = replace(lumbar_study(), description="L-SPINE <script>alert(1)</script> [x](javascript:y)")
    result = replace(analysis(), model_versions={"seg|menter": "1.0 <b>"})
    card = result_card(stored(result), study, _req(), FakePresenter())
    assert "<script>" not in card["detail"] and "](javascript" not in card["detail"]
    assert "<b>" not in card["detail"] and "seg\\|menter" in card["detail"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a|b", "a\\|b"),
        ("**x**", "\\*\\*x\\*\\*"),
        ("<img src=x>", "&lt;img src=x&gt;"),
        ("line1\nline2", "line1 line2"),
        ("[l](http://e)", "\\[l\\]\\(http\\:\\/\\/e\\)".replace("\\/", "/")),
    ],
)
def test_escape(text: str, expected: str) -> None:
    assert escape(text) == expected


def test_radiologist_report_on_file_is_mentioned_and_ai_reports_are_not() -> None:
    human = {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "issued": "2026-07-02T08:00:00Z",
        "imagingStudy": [{"reference": "ImagingStudy/is-1"}],
    }
    ai = {
        **human,
        "issued": "2026-07-03T08:00:00Z",
        "meta": {
            "security": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "AIAST"}
            ]
        },
    }
    reports = reports_by_study({"resourceType": "Bundle", "entry": [{"resource": human}, {"resource": ai}]})
    assert reports == {"is-1": ReportOnFile("final", date(2026, 7, 2))}
    card = result_card(stored(analysis()), lumbar_study(), _req(reports=reports), FakePresenter())
    assert "radiologist's report of 2026-07-02 (final) is on file" in card["detail"]


def test_unavailable_card_for_failed_analysis() -> None:
    failed = stored(None, AnalysisStatus.FAILED, reason="PACS timeout")
    card = unavailable_card(failed, lumbar_study(), _req())
    assert card["indicator"] == "info" and "analysis failed" in card["summary"]


def test_advice_pending_newest_plus_older_result_and_one_request() -> None:
    old = replace(lumbar_study("1.2.3.9", date(2024, 1, 1)), resource_id="is-0")
    catalog = FakeCatalog({"1.2.3.9": stored(analysis(SEVERE_L4_L5), uid="1.2.3.9")})
    cards = advise((lumbar_study(), old), _req(), catalog, FakePresenter())
    assert ["pending" in c["summary"] for c in cards] == [True, False]
    assert catalog.requested == [STUDY_UID]


def test_advice_unanalysable_is_not_requeued() -> None:
    catalog = FakeCatalog({STUDY_UID: stored(None, AnalysisStatus.UNANALYSABLE, reason="no sagittal T2")})
    (card,) = advise((lumbar_study(),), _req(), catalog, FakePresenter())
    assert "could not be analysed" in card["summary"] and catalog.requested == []


def test_prune_and_encode() -> None:
    assert prune_empty({"a": None, "b": "", "c": [], "d": {}, "e": [None, {"f": ""}], "g": 0}) == {"g": 0}
    report = {"resourceType": "DiagnosticReport", "text": "x"}
    cards = [{"uuid": "u", "suggestions": [{"actions": [{"type": "create", "resource": report}]}]}]
    body = encode_cards(
        cards, lambda r: '{"resourceType":"DiagnosticReport","spliced":true}' if r is report else None
    ).decode()
    assert '"resource":{"resourceType":"DiagnosticReport","spliced":true}' in body
    assert encode_cards(cards, lambda r: None).decode().count('"text":"x"') == 1
    assert encode_cards(cards, lambda r: b'{"b":1}' if r is report else None).endswith(
        b'"resource":{"b":1}}]}]}]}'
    )


def test_advice_failed_analysis_is_retried_only_when_due() -> None:
    failed = stored(None, AnalysisStatus.FAILED, reason="The images could not be located")
    catalog = FakeCatalog({STUDY_UID: failed})
    (card,) = advise((lumbar_study(),), _req(), catalog, FakePresenter())
    assert "analysis failed" in card["summary"] and catalog.requested == []
    catalog = FakeCatalog({STUDY_UID: replace(failed, retry_due=True)})
    (card,) = advise((lumbar_study(),), _req(), catalog, FakePresenter())
    assert "pending" in card["summary"] and catalog.requested == [STUDY_UID]
