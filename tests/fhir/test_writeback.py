"""Write-back: the transaction's shape, retries, idempotence bookkeeping and what is refused.

The FHIR server is faked at the client boundary here; tests/fhir/test_roundtrip_sekmet.py writes
to a real server.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
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
    GENERATION_EXTENSION,
    PROVENANCE_TAG_SYSTEM,
    ServerReport,
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
        # No report on the server yet: everything is a conditional create (a concurrent writer's
        # report is never replaced by a create).
        assert entry["request"]["method"] == "POST" and entry["request"]["ifNoneExist"]
    (report,) = by_type["DiagnosticReport"]
    assert report["resource"]["basedOn"] == [{"reference": "ServiceRequest/sr-1"}]  # orders only
    (provenance,) = by_type["Provenance"]
    targets = {t["reference"] for t in provenance["resource"]["target"]}
    written = {e["fullUrl"] for t in ("DiagnosticReport", "Observation", "Media") for e in by_type[t]}
    assert targets == written and len(targets) == 1 + 25 + 1
    assert provenance["resource"]["agent"][0]["who"]["reference"] == by_type["Device"][0]["fullUrl"]
    assert provenance["request"]["ifNoneExist"] == f"_tag={PROVENANCE_TAG_SYSTEM}|wb-unit-1"
    assert (
        report["request"]["ifNoneExist"] == "identifier=https://cds-spine.example/fhir/sid/analysis|wb-unit-1"
    )
    assert {"url": GENERATION_EXTENSION, "valueInteger": 0} in report["resource"]["extension"]
    # Deterministic: the same analysis gives the same bundle (fullUrls included) every time.
    assert writeback_bundle(analysis, context((image,)), based_on=("ServiceRequest/sr-1",)) == bundle


def test_a_report_on_the_server_is_replaced_by_a_versioned_update(analysis: AnalysisResult) -> None:
    current = ServerReport(id="dr-7", version="3", generation=1)
    bundle = writeback_bundle(analysis, context(), generation=2, current=current)
    requests = {e["resource"]["resourceType"]: e["request"] for e in bundle["entry"]}
    (report,) = (
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"
    )
    assert requests["DiagnosticReport"] == {
        "method": "PUT",
        "url": "DiagnosticReport/dr-7",
        "ifMatch": 'W/"3"',
    }
    assert report["id"] == "dr-7"
    assert {"url": GENERATION_EXTENSION, "valueInteger": 2} in report["extension"]
    # The Provenance is replaced in the same atomic transaction, so the If-Match guards it too.
    assert requests["Provenance"] == {
        "method": "PUT",
        "url": f"Provenance?_tag={PROVENANCE_TAG_SYSTEM}|wb-unit-1",
    }
    assert requests["Observation"]["method"] == "POST" and requests["Observation"]["ifNoneExist"]


def test_server_report_reads_version_and_generation() -> None:
    resource = {
        "resourceType": "DiagnosticReport",
        "id": "dr-1",
        "meta": {"versionId": "4"},
        "extension": [
            {"url": "urn:other", "valueInteger": 9},
            {"url": GENERATION_EXTENSION, "valueInteger": 2},
        ],
    }
    assert ServerReport.of(resource) == ServerReport("dr-1", "4", 2)
    # Written before generations existed (or by hand): generation 0, replaced by any write-back.
    assert ServerReport.of({"resourceType": "DiagnosticReport", "id": "dr-2"}) == ServerReport(
        "dr-2", None, 0
    )


class FakeClient:
    """A FHIR server with no report yet whose transactions fail first with the given errors."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0

    def search_resources(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        assert path == "DiagnosticReport" and "|" in params["identifier"]
        return []

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


class SwitchableEhr(FakeClient):
    """The EHR's FHIR server, down until `up` is set; counts transactions it accepted."""

    def __init__(self) -> None:
        super().__init__([])
        self.up = False
        self.written = 0

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        if not self.up:
            self.calls += 1
            raise UpstreamError("FHIR server unreachable")
        self.written += 1
        return super().transaction(bundle)


def test_a_write_back_that_outlives_its_job_is_retried_later_not_dropped(
    db: Database, analysis: AnalysisResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cds.fhir.writeback as writeback
    from cds.store.records import AnalysisRecord

    ehr = SwitchableEhr()
    monkeypatch.setattr(writeback, "ehr_client", lambda settings: ehr)
    monkeypatch.setattr(writeback, "resolve_imaging_study", lambda client, uid: None)
    monkeypatch.setattr(writeback.time, "sleep", lambda s: None)
    settings = Settings(fhir_writeback_url="http://ehr.example.org/fhir")
    with db.session() as s:
        queries.upsert_study(s, "1.2.3.4", patient_ref="Patient/p-1")
        analysis_id = queries.save_analysis(s, "1.2.3.4", analysis).id

    def state() -> tuple[str | None, int, datetime | None]:
        with db.session(readonly=True) as s:
            r = s.get(AnalysisRecord, analysis_id)
            assert r is not None
            return r.writeback_state, r.writeback_attempts, r.writeback_next_at

    # Not the last job attempt: the failure is raised (the job retries), the state stays pending.
    with pytest.raises(UpstreamError):
        writeback.write_back_in_job(db, settings, analysis_id, attempt=1, final_attempt=False)
    assert state()[0] == writeback.STATE_PENDING
    # Last job attempt with the EHR still down: recorded as failed, next try scheduled, job not failed.
    before = datetime.now(UTC)
    writeback.write_back_in_job(db, settings, analysis_id, attempt=3, final_attempt=True)
    status, attempts, next_at = state()
    assert (status, attempts) == (writeback.STATE_FAILED, 1) and next_at is not None
    assert next_at >= before + writeback.RETRY_FIRST_DELAY - timedelta(seconds=1)
    # Not due yet: the sweep leaves it alone.
    assert writeback.retry_due_writebacks(db, settings) == 0 and state()[1] == 1
    # Due, EHR still down: one more failed round, the back-off doubles.
    later = next_at + timedelta(seconds=1)
    assert writeback.retry_due_writebacks(db, settings, now=later) == 0
    status, attempts, next_at2 = state()
    assert (status, attempts) == (writeback.STATE_FAILED, 2) and next_at2 is not None
    assert next_at2 >= later + 2 * writeback.RETRY_FIRST_DELAY - timedelta(seconds=1)
    assert ehr.written == 0
    # The EHR is back: the next due sweep writes exactly one report; later sweeps write nothing.
    ehr.up = True
    last = next_at2 + timedelta(seconds=1)
    assert writeback.retry_due_writebacks(db, settings, now=last) == 1
    assert state() == (writeback.STATE_DONE, 0, None) and ehr.written == 1
    assert writeback.retry_due_writebacks(db, settings, now=last + timedelta(days=2)) == 0
    assert ehr.written == 1


def test_only_the_newest_write_back_records_its_outcome(
    db: Database, analysis: AnalysisResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older write-back finishing (or failing) after a newer one was requested never sets the
    state: "failed" from a stale writer would re-send for nothing, and "done" would hide a newer
    write-back that is still due."""
    import cds.fhir.writeback as writeback
    from cds.store.records import AnalysisRecord

    ehr = SwitchableEhr()
    monkeypatch.setattr(writeback, "ehr_client", lambda settings: ehr)
    monkeypatch.setattr(writeback, "resolve_imaging_study", lambda client, uid: None)
    monkeypatch.setattr(writeback.time, "sleep", lambda s: None)
    settings = Settings(fhir_writeback_url="http://ehr.example.org/fhir")
    with db.session() as s:
        queries.upsert_study(s, "1.2.3.5", patient_ref="Patient/p-1")
        analysis_id = queries.save_analysis(s, "1.2.3.5", analysis).id

    def state() -> tuple[str | None, int, int]:
        with db.session(readonly=True) as s:
            r = s.get(AnalysisRecord, analysis_id)
            assert r is not None
            return r.writeback_state, r.writeback_attempts, r.writeback_generation

    older = writeback.request_writeback(db, analysis_id)
    newer = writeback.request_writeback(db, analysis_id)  # e.g. the explanation arrived meanwhile
    assert (older, newer) == (1, 2) and state() == (writeback.STATE_PENDING, 0, 2)
    assert older is not None
    assert writeback._set_state(db, analysis_id, writeback.STATE_FAILED, generation=older) == (False, None)
    assert writeback._set_state(db, analysis_id, writeback.STATE_DONE, generation=older) == (False, None)
    assert state() == (writeback.STATE_PENDING, 0, 2)
    # Through the job step: the EHR is down for the older job's last attempt, and the newer
    # request comes in before it gives up: the newer one's state stands.
    monkeypatch.setattr(
        writeback,
        "_write_and_record",
        lambda *a: (writeback.request_writeback(db, analysis_id), ehr.transaction({})),
    )
    writeback.write_back_in_job(db, settings, analysis_id, attempt=3, final_attempt=True)
    assert state() == (writeback.STATE_PENDING, 0, 4)
    monkeypatch.undo()
    monkeypatch.setattr(writeback, "ehr_client", lambda settings: ehr)
    monkeypatch.setattr(writeback, "resolve_imaging_study", lambda client, uid: None)
    ehr.up = True
    writeback.write_back_in_job(db, settings, analysis_id, attempt=1, final_attempt=True)
    assert state() == (writeback.STATE_DONE, 0, 5) and ehr.written == 1


def test_write_back_back_off_is_long_and_capped() -> None:
    from cds.fhir.writeback import RETRY_MAX_DELAY, retry_delay

    assert [retry_delay(n).total_seconds() / 60 for n in (1, 2, 3)] == [5, 10, 20]
    assert retry_delay(50) == RETRY_MAX_DELAY


def test_only_a_finished_explanation_with_text_and_writer_gives_a_rationale(db: Database) -> None:
    """presentedForm comes from a COMPLETE record with text and writer; anything else adds nothing
    (and never makes the findings' write-back fail)."""
    from cds.domain import ExplanationStatus
    from cds.fhir.writeback import explanation_rationale

    with db.session() as s:
        queries.upsert_study(s, "1.2.3.4", patient_ref="Patient/p-1")
        analysis_id = queries.ensure_analysis(s, "1.2.3.4").id
        record = queries.save_explanation(
            s, analysis_id, status=ExplanationStatus.COMPLETE, rationale="L4-L5: severe.", writer="template"
        )
        assert explanation_rationale(record) == ("L4-L5: severe.", "template")
        record.writer = None
        assert explanation_rationale(record) == (None, None)
        record.writer, record.rationale = "template", "  "
        assert explanation_rationale(record) == (None, None)
        record.status, record.rationale = ExplanationStatus.RUNNING, "L4-L5: severe."
        assert explanation_rationale(record) == (None, None)
    assert explanation_rationale(None) == (None, None)
