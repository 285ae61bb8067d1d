"""The EHR round trip against real servers: sekmet-fhir (FHIR R4) and Orthanc (DICOMweb).

Seeded in the FHIR server: Patient, the prior lumbar MRI order, and its ImagingStudy whose
Endpoint points at the test Orthanc holding a generated study. Then order-select (a new lumbar MRI
selected: the prior study) and patient-view with prefetch omitted, so the service fetches from the
server; the real pipeline analyses the study over DICOMweb; the write-back goes to the server
through the ANALYZE job; read back and validated with fhir.resources; written twice -> one report.
Finally `cds roundtrip` runs its table against the same servers.
"""

from __future__ import annotations

import json
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from cds.config import Settings
from cds.domain import AnalysisResult, AnalysisStatus, ExplanationStatus
from cds.fhir import codes
from cds.fhir.client import FhirClient
from cds.fhir.resources import validate_resource
from cds.fhir.writeback import PROVENANCE_TAG_SYSTEM, write_back_analysis
from cds.jobs import analysis as analysis_job
from cds.jobs import explanation as explanation_job
from cds.jobs.handlers import default_registry
from cds.jobs.registry import JobContext
from cds.jobs.runner import LocalRunner
from cds.store import queries
from cds.store.db import Database

for _support in ("hooks", "pacs"):
    _path = str(Path(__file__).resolve().parents[1] / _support)
    if _path not in sys.path:
        sys.path.append(_path)

from hooks_support import ISSUER, Caller, SigningKey  # noqa: E402
from pacs_support import PASSWORD, USER, Orthanc, running_orthanc  # noqa: E402
from sekmet_support import running_sekmet  # noqa: E402

pytestmark = pytest.mark.integration

FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
PUBLIC = "https://cds.example.org"
DCM = "http://dicom.nema.org/resources/ontology/DCM"


def run_cli(argv: list[str]) -> int:
    """A `cds` command in process, without cds.cli.main's logging set-up: a root handler bound to
    pytest's captured stderr would outlive this test and fail every later log call."""
    from cds.cli import build_parser

    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def fhir_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A sekmet-fhir server (pinned test dependency) on a spare loopback port."""
    with running_sekmet(tmp_path_factory.mktemp("sekmet-roundtrip")) as base:
        yield base


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Orthanc, str]]:
    """Orthanc holding one small generated lumbar MRI; yields (server, StudyInstanceUID)."""
    from cds.synth.study import StudyOptions, generate_study

    work = tmp_path_factory.mktemp("roundtrip-pacs")
    options = StudyOptions(sag_matrix=(128,), ax_matrix=(96,), min_sag_slices=9)
    folder = generate_study(72, work / "synth", options) / "dicom"
    uid = str(pydicom.dcmread(next(iter(folder.glob("*.dcm")))).StudyInstanceUID)
    with running_orthanc(work / "orthanc") as orthanc:
        orthanc.upload_folder(folder)
        yield orthanc, uid


def _create(base: str, resource: dict[str, Any]) -> str:
    response = requests.post(
        f"{base}/{resource['resourceType']}", json=resource, headers=FHIR_JSON, timeout=30
    )
    assert response.status_code == 201, response.text[:500]
    return str(response.json()["id"])


def _seed(base: str, dicomweb: str, uid: str) -> dict[str, str]:
    patient = _create(base, {"resourceType": "Patient", "name": [{"family": "Roundtrip"}]})
    order = _create(
        base,
        {
            "resourceType": "ServiceRequest",
            "status": "completed",
            "intent": "order",
            "subject": {"reference": f"Patient/{patient}"},
            "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "72148"}]},
        },
    )
    endpoint = _create(
        base,
        {
            "resourceType": "Endpoint",
            "status": "active",
            "connectionType": {
                "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                "code": "dicom-wado-rs",
            },
            "payloadType": [{"text": "DICOM"}],
            "address": dicomweb,
        },
    )
    study = _create(
        base,
        {
            "resourceType": "ImagingStudy",
            "status": "available",
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
            "subject": {"reference": f"Patient/{patient}"},
            "started": "2026-07-01T10:00:00Z",
            "basedOn": [{"reference": f"ServiceRequest/{order}"}],
            "endpoint": [{"reference": f"Endpoint/{endpoint}"}],
            "description": "MRI LUMBAR SPINE WITHOUT CONTRAST",
            "modality": [{"system": DCM, "code": "MR"}],
            "series": [{"uid": f"{uid}.9", "modality": {"system": DCM, "code": "MR"}}],
        },
    )
    return {"patient": patient, "order": order, "endpoint": endpoint, "study": study}


def _hook_body(hook: str, patient: str, base: str, **context: Any) -> dict[str, Any]:
    return {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/dr-1", "patientId": patient, **context},
        "fhirServer": base,
        "fhirAuthorization": {
            "access_token": "ehr-token-for-the-test",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "cds-service",
        },
    }


@pytest.mark.parametrize("backend", ["sqlite"])
def test_hooks_fetch_the_study_analyse_it_and_write_the_report_back_once(
    backend: str,
    db: Database,
    app_settings: Settings,
    tmp_path: Path,
    fhir_base: str,
    pacs: tuple[Orthanc, str],
    analysis: AnalysisResult,
) -> None:
    from cds import create_app
    from cds.extensions import services

    orthanc, uid = pacs
    ids = _seed(fhir_base, orthanc.dicomweb_url, uid)
    key = SigningKey()
    (tmp_path / "clients.json").write_text(json.dumps([{"iss": ISSUER, "jwks": key.jwks()}]))
    settings = app_settings.with_overrides(
        clients_file=tmp_path / "clients.json",
        public_base_url=PUBLIC,
        fhir_allowed_hosts=("127.0.0.1",),
        dicomweb_url=orthanc.dicomweb_url,
        dicomweb_username=USER,
        dicomweb_password=PASSWORD,
        fhir_writeback_url=fhir_base,
        explain_eager="off",  # no eager Grad-CAM jobs: the test decides what runs
    )
    app = create_app(settings)
    try:
        caller = Caller(app.test_client(), key, PUBLIC)
        # order-select: a new lumbar MRI is selected; the prior one must be fetched from the server.
        draft = {
            "resourceType": "ServiceRequest", "id": "new-1", "status": "draft", "intent": "order",
            "subject": {"reference": f"Patient/{ids['patient']}"},
            "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "72148"}]},
        }  # fmt: skip
        orders = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]}
        body = _hook_body(
            "order-select", ids["patient"], fhir_base, draftOrders=orders, selections=["ServiceRequest/new-1"]
        )
        response = caller.post("/cds-services/lumbar-mri-order-select", body)
        assert response.status_code == 200, response.get_data(as_text=True)
        (card,) = response.get_json()["cards"]
        assert card["summary"].startswith("Prior") and "pending" in card["summary"]
        with db.session(readonly=True) as s:
            study = queries.study_by_uid(s, uid)
            assert study is not None and study.patient_ref == f"Patient/{ids['patient']}"
            assert study.source_uri == f"{orthanc.dicomweb_url}/studies/{uid}"

        # The real pipeline over DICOMweb (credentials from settings); the job writes back.
        LocalRunner(services(app).jobs, default_registry(), settings, retry_delay_s=0).run_until_idle()
        with db.session(readonly=True) as s:
            record = queries.latest_analysis(s, uid)
            assert record is not None
            status, analysis_id, reason = record.status, record.id, record.reason
        # Finished by the real pipeline: a result, a stated "cannot read", or (while models change)
        # a model failure; never a PACS failure: the images were fetched over DICOMweb.
        assert status is not AnalysisStatus.FAILED or reason == analysis_job.REASON_MODEL_FAILED, reason
        assert status in (AnalysisStatus.COMPLETE, AnalysisStatus.UNANALYSABLE, AnalysisStatus.FAILED)

        response = caller.post(
            "/cds-services/lumbar-mri-patient-view", _hook_body("patient-view", ids["patient"], fhir_base)
        )
        (card,) = response.get_json()["cards"]
        assert "pending" not in card["summary"]

        client = FhirClient(fhir_base, None, ["127.0.0.1"], 20)
        if status is not AnalysisStatus.COMPLETE:
            # These small synthetic images may be unreadable for the current models: nothing was
            # written. Exercise the job's write-back on a stored complete analysis of the study
            # (a new revision, as a re-analysis would make).
            assert not client.search_resources("DiagnosticReport", {"subject": f"Patient/{ids['patient']}"})
            with db.session() as s:
                analysis_id = queries.new_revision(s, uid).id
                queries.save_analysis(s, uid, analysis, analysis_id=analysis_id)
            payload = {"study_uid": uid, "analysis_id": analysis_id, "mode": "quick"}
            analysis_job.run_analyze(
                JobContext(0, analysis_job.JobKind.ANALYZE, "k", payload, 1, 3, services(app).db, settings)
            )

        identifier = {"identifier": f"{codes.ANALYSIS_IDENTIFIER_SYSTEM}|{analysis_id}"}
        (report,) = client.search_resources("DiagnosticReport", identifier)
        validate_resource(report, "DiagnosticReport")
        assert report["subject"]["reference"] == f"Patient/{ids['patient']}"
        assert report["basedOn"] == [{"reference": f"ServiceRequest/{ids['order']}"}]
        assert report["imagingStudy"][0]["reference"] == f"ImagingStudy/{ids['study']}"
        assert report["status"] == "preliminary" and len(report["result"]) == 25
        observation = validate_resource(client.read(report["result"][0]["reference"]), "Observation")
        validate_resource(client.read(observation["device"]["reference"]), "Device")
        tag = {"_tag": f"{PROVENANCE_TAG_SYSTEM}|{analysis_id}"}
        (provenance,) = client.search_resources("Provenance", tag)
        validate_resource(provenance, "Provenance")
        assert f"DiagnosticReport/{report['id']}" in {t["reference"] for t in provenance["target"]}

        again = write_back_analysis(services(app).db, settings, analysis_id)  # a retry: nothing new
        assert again is not None and again.created == 0 and again.report_id == report["id"]
        assert len(client.search_resources("DiagnosticReport", identifier)) == 1
        assert len(client.search_resources("Provenance", tag)) == 1

        # An explanation arrives later: the EXPLAIN job's write-back adds its Media to the same report.
        overlay = settings.data_dir / "artifacts" / analysis_id / "gradcam" / "l4-l5-canal.png"
        overlay.parent.mkdir(parents=True)
        overlay.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))
        heatmap = {"overlay": str(overlay.relative_to(settings.data_dir)), "level": "L4-L5",
                   "condition": "spinal_canal"}  # fmt: skip
        with db.session() as s:
            queries.save_explanation(
                s, analysis_id, status=ExplanationStatus.COMPLETE, heatmaps={"L4-L5/spinal_canal": heatmap}
            )
        context = JobContext(
            0,
            analysis_job.JobKind.EXPLAIN,
            "e",
            {"analysis_id": analysis_id},
            1,
            3,
            services(app).db,
            settings,
        )
        explanation_job.run_explain(context)
        (updated,) = client.search_resources("DiagnosticReport", identifier)
        assert updated["id"] == report["id"] and len(updated["media"]) == 1
        media = validate_resource(client.read(updated["media"][0]["link"]["reference"]), "Media")
        assert media["content"]["contentType"] == "image/png"
        (provenance,) = client.search_resources("Provenance", tag)
        assert updated["media"][0]["link"]["reference"] in {t["reference"] for t in provenance["target"]}
    finally:
        services(app).close()


def test_cds_roundtrip_passes_every_step_against_the_servers(
    fhir_base: str,
    pacs: tuple[Orthanc, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    orthanc, uid = pacs
    monkeypatch.setenv("CDS_DICOMWEB_URL", orthanc.dicomweb_url)
    monkeypatch.setenv("CDS_DICOMWEB_USERNAME", USER)
    monkeypatch.setenv("CDS_DICOMWEB_PASSWORD", PASSWORD)
    code = run_cli(
        ["roundtrip", "--fhir-base", fhir_base, "--dicomweb", orthanc.dicomweb_url, "--study-uid", uid]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [line for line in out.splitlines() if line.split("  ")[0].strip() and " pass " in line]
    assert len(rows) == 9 and "PASS: 9 passed, 0 failed, 0 skipped" in out
    assert "series via the Endpoint" in out


def test_cds_roundtrip_reports_failure_with_a_nonzero_exit(capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"http://127.0.0.1:{_free_port()}/fhir"
    assert run_cli(["roundtrip", "--fhir-base", dead, "--timeout", "2"]) == 1
    out = capsys.readouterr().out
    assert "capability statement     FAIL" in out and "needs: capability statement" in out


@pytest.mark.parametrize("backend", ["sqlite"])
def test_job_locates_images_through_the_ehr_endpoint_and_refuses_other_hosts(
    backend: str, db: Database, app_settings: Settings, fhir_base: str, pacs: tuple[Orthanc, str]
) -> None:
    """A study registered without images: the ANALYZE job asks the configured EHR server for the
    ImagingStudy's Endpoint and reads the images there; an Endpoint on a host that is neither the
    PACS nor allow-listed is not followed (no SSRF), and the analysis says the images were not found."""
    from cds.jobs.queue import JobQueue

    orthanc, uid = pacs
    ids = _seed(fhir_base, orthanc.dicomweb_url, uid)
    elsewhere = f"2.25.{uuid.uuid4().int}"
    _seed(fhir_base, "http://169.254.169.254/dicom-web", elsewhere)
    settings = app_settings.with_overrides(
        dicomweb_url=orthanc.dicomweb_url,
        dicomweb_username=USER,
        dicomweb_password=PASSWORD,
        fhir_allowed_hosts=("127.0.0.1",),
        fhir_writeback_url=fhir_base,
        explain_eager="off",  # no eager Grad-CAM jobs: the test decides what runs
    )
    jobs = JobQueue(db)
    for study_uid in (uid, elsewhere):
        with db.session() as s:
            queries.upsert_study(s, study_uid, patient_ref=f"Patient/{ids['patient']}")  # no source
        analysis_job.request_analysis(db, jobs, study_uid)
    LocalRunner(jobs, default_registry(), settings, retry_delay_s=0).run_until_idle()
    with db.session(readonly=True) as s:
        found = queries.study_by_uid(s, uid)
        assert found is not None and found.source_uri == f"{orthanc.dicomweb_url}/studies/{uid}"
        record = queries.latest_analysis(s, uid)
        assert record is not None and record.status is not AnalysisStatus.PENDING
        assert record.reason not in (analysis_job.REASON_NO_SOURCE, analysis_job.REASON_PACS_UNREACHABLE)
        refused = queries.study_by_uid(s, elsewhere)
        assert refused is not None and refused.source_uri is None
        other = queries.latest_analysis(s, elsewhere)
        assert other is not None and other.reason == analysis_job.REASON_NO_SOURCE
