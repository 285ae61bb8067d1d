"""The report against a real FHIR R4 server process (sekmet-fhir, SQLite-backed, strict inbound
validation): the transaction Bundle is accepted, a retried write creates nothing new (conditional
create on the identifiers), references resolve, FhirClient pages through real searchsets, and the
write-back of an explained analysis carries its rationale (presentedForm) and heatmaps (Media).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from sekmet_support import running_sekmet

from cds.config import Settings
from cds.domain import AnalysisResult, Condition, ExplanationStatus, Level
from cds.errors import UpstreamError
from cds.fhir import codes
from cds.fhir.client import FhirClient
from cds.fhir.report import ReportContext, ReportImage, build_diagnostic_report, build_report_bundle
from cds.fhir.resources import validate_resource
from cds.fhir.writeback import write_back_analysis
from cds.store import queries
from cds.store.db import Database

pytestmark = pytest.mark.integration

FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


@pytest.fixture(scope="module")
def fhir_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A sekmet-fhir server (pinned test dependency) on a spare loopback port."""
    with running_sekmet(tmp_path_factory.mktemp("sekmet")) as base:
        yield base


@pytest.fixture(scope="module")
def patient_id(fhir_base: str) -> str:
    resp = requests.post(
        f"{fhir_base}/Patient",
        json={"resourceType": "Patient", "name": [{"family": "Synthetic"}]},
        headers=FHIR_JSON,
    )
    assert resp.status_code == 201, resp.text[:500]
    return str(resp.json()["id"])


def _post_bundle(base: str, bundle: dict[str, Any]) -> list[str]:
    resp = requests.post(base, json=bundle, headers=FHIR_JSON, timeout=30)
    assert resp.status_code == 200, resp.text[:1000]
    return [entry["response"]["status"] for entry in resp.json()["entry"]]


def test_transaction_is_accepted_and_idempotent(
    fhir_base: str, patient_id: str, analysis: AnalysisResult, ctx: ReportContext
) -> None:
    image = ReportImage("gradcam-l4-l5", "Grad-CAM L4-L5", data=b"\x89PNG\r\n\x1a\n",
                        level=Level.L4_L5, condition=Condition.SPINAL_CANAL)  # fmt: skip
    ctx = ReportContext(
        analysis_id="roundtrip-1",
        patient_ref=patient_id,
        issued=ctx.issued,
        study_uid=ctx.study_uid,
        study_date=ctx.study_date,
        images=(image,),
    )
    bundle = build_report_bundle(analysis, ctx)
    client = FhirClient(fhir_base, None, ["127.0.0.1"], timeout_s=10)
    first = [e["response"]["status"] for e in client.transaction(bundle)["entry"]]
    assert len(first) == 1 + 25 + 1 + 1 and all(s.startswith("201") for s in first)
    second = [e["response"]["status"] for e in client.transaction(bundle)["entry"]]
    assert all(s.startswith("200") for s in second)  # matched by identifier: nothing created

    reports = client.search_resources(
        "DiagnosticReport", {"identifier": f"{codes.ANALYSIS_IDENTIFIER_SYSTEM}|roundtrip-1"}
    )
    assert len(reports) == 1
    report = reports[0]
    assert report["status"] == "preliminary"
    assert report["subject"]["reference"] == f"Patient/{patient_id}"
    assert len(report["result"]) == 25
    assert report["media"][0]["link"]["reference"].startswith("Media/")
    obs = client.read(report["result"][0]["reference"])
    assert obs["resourceType"] == "Observation"
    assert obs["device"]["reference"].startswith("Device/")
    assert obs["meta"]["security"][0]["code"] == "AIAST"
    device = client.read(obs["device"]["reference"])
    assert {v["value"] for v in device["version"]} == {"1.2.0", "0.4.1"}


def test_client_pages_through_a_real_searchset(fhir_base: str, patient_id: str, analysis: AnalysisResult,
                                               ctx: ReportContext) -> None:  # fmt: skip
    ctx = ReportContext(analysis_id="roundtrip-2", patient_ref=patient_id, issued=ctx.issued)
    _post_bundle(fhir_base, build_report_bundle(analysis, ctx))
    client = FhirClient(fhir_base, None, ["127.0.0.1"], timeout_s=10, max_pages=10)
    found = client.search_resources("Observation", {"subject": f"Patient/{patient_id}", "_count": 7})
    ids = [
        o["identifier"][0]["value"] for o in found if o["identifier"][0]["value"].startswith("roundtrip-2/")
    ]
    assert len(ids) == len(set(ids)) == 25
    with pytest.raises(UpstreamError, match="more than 2 pages"):
        FhirClient(fhir_base, None, ["127.0.0.1"], 10, max_pages=2).search(
            "Observation", {"subject": f"Patient/{patient_id}", "_count": 7}
        )


def test_contained_report_is_accepted_by_the_server(
    fhir_base: str, patient_id: str, analysis: AnalysisResult, ctx: ReportContext
) -> None:
    ctx = ReportContext(analysis_id="roundtrip-3", patient_ref=patient_id, issued=ctx.issued)
    resp = requests.post(
        f"{fhir_base}/DiagnosticReport",
        json=build_diagnostic_report(analysis, ctx),
        headers=FHIR_JSON,
        timeout=30,
    )
    assert resp.status_code == 201, resp.text[:1000]
    assert len(resp.json()["contained"]) == 26


@pytest.mark.parametrize("backend", ["sqlite"])
def test_write_back_carries_the_verified_rationale_and_the_heatmaps(
    backend: str, db: Database, tmp_path: Path, fhir_base: str, patient_id: str, analysis: AnalysisResult
) -> None:
    """Issue 5: the written-back report gains Media for the heatmaps and the rationale (writer named)
    in presentedForm, exactly as the card's suggested report carries it; a retry adds nothing."""
    from cds.explain.job import writer_label
    from cds.explain.rationale import write_rationale

    settings = Settings(data_dir=tmp_path / "data", fhir_writeback_url=fhir_base)
    uid = "1.2.826.0.1.3680043.8.498.77"
    with db.session() as s:
        queries.upsert_study(s, uid, patient_ref=f"Patient/{patient_id}")
        analysis_id = queries.save_analysis(s, uid, analysis).id
    client = FhirClient(fhir_base, None, ["127.0.0.1"], timeout_s=10)
    identifier = {"identifier": f"{codes.ANALYSIS_IDENTIFIER_SYSTEM}|{analysis_id}"}

    # Before the explanation: the findings only (no presentedForm, no Media).
    first = write_back_analysis(db, settings, analysis_id)
    assert first is not None
    (report,) = client.search_resources("DiagnosticReport", identifier)
    assert "presentedForm" not in report and "media" not in report

    # The explain job's outcome, stored as the job stores it: a verified rationale and its writer.
    rationale = write_rationale(analysis, settings=settings, backend=None)
    overlay = settings.data_dir / "artifacts" / analysis_id / "gradcam" / "L4-L5_spinal_canal.png"
    overlay.parent.mkdir(parents=True)
    overlay.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))
    heatmap = {"overlay": str(overlay.relative_to(settings.data_dir)), "level": "L4-L5",
               "condition": "spinal_canal"}  # fmt: skip
    with db.session() as s:
        queries.save_explanation(
            s,
            analysis_id,
            status=ExplanationStatus.COMPLETE,
            rationale=rationale.text,
            writer=writer_label(rationale),
            heatmaps={"L4-L5/spinal_canal": heatmap},
        )

    written = write_back_analysis(db, settings, analysis_id)
    assert written is not None and written.report_id == first.report_id
    (report,) = client.search_resources("DiagnosticReport", identifier)
    validate_resource(report, "DiagnosticReport")  # fhir.resources R4B
    (form,) = report["presentedForm"]
    assert base64.b64decode(form["data"]).decode("utf-8") == rationale.text
    assert form["contentType"].startswith("text/plain") and "writer: template" in form["title"]
    card_ctx = ReportContext(
        analysis_id=analysis_id,
        patient_ref=patient_id,
        issued=datetime.now(UTC),
        rationale=rationale.text,
        rationale_writer="template",
    )
    assert build_diagnostic_report(analysis, card_ctx)["presentedForm"] == [form]  # the card's form
    (media_link,) = report["media"]
    media = validate_resource(client.read(media_link["link"]["reference"]), "Media")
    assert media["content"]["contentType"] == "image/png"
    assert base64.b64decode(media["content"]["data"]) == overlay.read_bytes()
    assert media["subject"]["reference"] == f"Patient/{patient_id}"

    # A retried write-back: nothing created, still one report with one rationale and one Media.
    again = write_back_analysis(db, settings, analysis_id)
    assert again is not None and again.created == 0 and again.report_id == first.report_id
    (report_again,) = client.search_resources("DiagnosticReport", identifier)
    assert report_again["presentedForm"] == [form] and report_again["media"] == [media_link]
    media_ids = {"identifier": f"{codes.MEDIA_IDENTIFIER_SYSTEM}|{analysis_id}/L4-L5-spinal-canal"}
    assert len(client.search_resources("Media", media_ids)) == 1
