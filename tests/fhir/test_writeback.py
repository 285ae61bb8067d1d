"""Write-back: the transaction's shape, retries, idempotence bookkeeping and what is refused.

The FHIR server is faked at the client boundary here; tests/fhir/test_roundtrip_sekmet.py writes
to a real server.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from cds.config import Settings
from cds.domain import AnalysisResult, Condition, Level
from cds.errors import UpstreamError
from cds.fhir.client import FhirAccessDenied, FhirClient
from cds.fhir.report import ReportContext, ReportImage
from cds.fhir.roundtrip_imaging import ResolvedStudy
from cds.fhir.writeback import (
    PROVENANCE_TAG_SYSTEM,
    WritebackUnavailable,
    explanation_images,
    write_back,
    write_back_analysis,
    writeback_bundle,
)
from cds.store import queries
from cds.store.db import Database

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def context(images: tuple[ReportImage, ...] = ()) -> ReportContext:
    return ReportContext(
        analysis_id="wb-unit-1",
        patient_ref="Patient/p-1",
        issued=datetime(2026, 7, 2, 9, 0, tzinfo=UTC),
        study_uid="1.2.3.4",
        imaging_study_ref="ImagingStudy/is-1",
        images=images,
    )


def test_bundle_adds_order_and_a_provenance_for_every_written_resource(analysis: AnalysisResult) -> None:
    image = ReportImage("gc-1", "heatmap", data=PNG, level=Level.L4_L5, condition=Condition.SPINAL_CANAL)
    bundle = writeback_bundle(analysis, context((image,)), based_on=("ServiceRequest/sr-1", "Encounter/e-1"))
    by_type: dict[str, list[dict[str, Any]]] = {}
    for entry in bundle["entry"]:
        rtype = entry["resource"]["resourceType"]
        by_type.setdefault(rtype, []).append(entry)
        if rtype in ("DiagnosticReport", "Provenance"):  # conditional updates: one per analysis
            assert entry["request"]["method"] == "PUT" and entry["request"]["url"].startswith(f"{rtype}?")
        else:  # conditional creates
            assert entry["request"]["method"] == "POST" and entry["request"]["ifNoneExist"]
    (report,) = by_type["DiagnosticReport"]
    assert report["resource"]["basedOn"] == [{"reference": "ServiceRequest/sr-1"}]  # orders only
    (provenance,) = by_type["Provenance"]
    targets = {t["reference"] for t in provenance["resource"]["target"]}
    written = {e["fullUrl"] for t in ("DiagnosticReport", "Observation", "Media") for e in by_type[t]}
    assert targets == written and len(targets) == 1 + 25 + 1
    assert provenance["resource"]["agent"][0]["who"]["reference"] == by_type["Device"][0]["fullUrl"]
    assert provenance["request"]["url"] == f"Provenance?_tag={PROVENANCE_TAG_SYSTEM}|wb-unit-1"
    assert (
        report["request"]["url"]
        == "DiagnosticReport?identifier=https://cds-spine.example/fhir/sid/analysis|wb-unit-1"
    )
    # Deterministic: the same analysis gives the same bundle (fullUrls included) every time.
    assert writeback_bundle(analysis, context((image,)), based_on=("ServiceRequest/sr-1",)) == bundle


class FakeClient:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        entries = []
        for e in bundle["entry"]:
            rtype = e["resource"]["resourceType"]
            entries.append(
                {"response": {"status": "201 Created", "location": f"{rtype}/id-{rtype}/_history/1"}}
            )
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}


def test_transient_failures_are_retried_and_access_denied_is_not(analysis: AnalysisResult) -> None:
    flaky = FakeClient([UpstreamError("timeout"), UpstreamError("502")])
    result = write_back(cast(FhirClient, flaky), analysis, context(), backoff_s=0)
    assert (result.report_id, result.created, result.existing, result.attempts) == (
        "id-DiagnosticReport",
        28,
        0,
        3,
    )
    denied = FakeClient([FhirAccessDenied("refused", 403)])
    with pytest.raises(FhirAccessDenied):
        write_back(cast(FhirClient, denied), analysis, context(), backoff_s=0)
    assert denied.calls == 1
    down = FakeClient([UpstreamError("down")] * 3)
    with pytest.raises(UpstreamError):
        write_back(cast(FhirClient, down), analysis, context(), backoff_s=0)


def test_explanation_images_stay_inside_the_artifacts_folder(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts" / "a1"
    artifacts.mkdir(parents=True)
    (artifacts / "canal.png").write_bytes(PNG)
    (tmp_path / "secret.png").write_bytes(PNG)
    heatmaps = {
        "L4-L5/spinal_canal": {
            "overlay": "artifacts/a1/canal.png",
            "level": "L4-L5",
            "condition": "spinal_canal",
        },
        "L3-L4/spinal_canal": {
            "overlay": "artifacts/../secret.png",
            "level": "L3-L4",
            "condition": "spinal_canal",
        },
        "L5-S1/spinal_canal": {
            "overlay": "artifacts/a1/missing.png",
            "level": "L5-S1",
            "condition": "spinal_canal",
        },
        "bad": {"overlay": "artifacts/a1/canal.png", "level": "L9", "condition": "spinal_canal"},
    }
    (image,) = explanation_images(tmp_path, heatmaps)
    assert image.key == "L4-L5-spinal-canal" and image.data == PNG and image.level is Level.L4_L5


def test_write_back_analysis_is_off_without_a_server_and_refuses_incomplete(db: Database) -> None:
    with db.session() as s:
        queries.upsert_study(s, "1.2.3.4", patient_ref="Patient/p-1")
        pending = queries.ensure_analysis(s, "1.2.3.4").id
    assert write_back_analysis(db, Settings(), pending) is None
    with pytest.raises(WritebackUnavailable):
        write_back_analysis(db, Settings(fhir_writeback_url="http://127.0.0.1:9/fhir"), pending)


def test_resolved_study_references() -> None:
    study = ResolvedStudy(
        {
            "resourceType": "ImagingStudy",
            "id": "is-9",
            "subject": {"reference": "http://ehr/fhir/Patient/p-9"},
            "basedOn": [{"reference": "ServiceRequest/sr-9"}, {"reference": "CarePlan/c-1"}],
        },
        (),
    )
    assert (study.reference, study.patient_ref, study.based_on) == (
        "ImagingStudy/is-9",
        "Patient/p-9",
        ("ServiceRequest/sr-9",),
    )
