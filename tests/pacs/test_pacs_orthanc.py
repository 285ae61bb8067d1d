"""End to end against a real Orthanc: upload -> Lua OnStableStudy -> /pacs/notifications -> job ->
real pipeline over DICOMweb -> patient-view card through the real hook endpoint (signed JWT).

Also: the /changes poller against the same Orthanc (the study it finds is already queued: still one
job), and a PACS that is down (the analysis fails with a PACS reason, the card says so, the job
waits for its retry). SQLite only: the store paths are covered on both backends elsewhere.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import sqlalchemy as sa
from flask import Flask
from hooks_support import ISSUER, Caller, SigningKey, bundle, imaging_study
from pacs_support import PASSWORD, USER, Orthanc, live_app, notification, running_orthanc, spare_port

from cds.config import Settings
from cds.domain import AnalysisStatus
from cds.jobs import analysis as analysis_job
from cds.jobs.handlers import default_registry
from cds.jobs.kinds import JobKind
from cds.jobs.runner import LocalRunner
from cds.pacs.cursor import load_cursor
from cds.pacs.orthanc import OrthancClient
from cds.pacs.poller import ChangePoller
from cds.store import queries
from cds.store.db import Database
from cds.store.records import JobRecord

pytestmark = pytest.mark.integration

TOKEN = "orthanc-lua-test-token"
PUBLIC = "https://cds.example.org"
PV = "/cds-services/lumbar-mri-patient-view"
PATIENT = "pat-pacs-1"


def run_cli(argv: list[str]) -> int:
    """A `cds` command in process, without cds.cli.main's logging set-up: a root handler bound to
    pytest's captured stderr would outlive this test and fail every later log call."""
    from cds.cli import build_parser

    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


@pytest.fixture(scope="module")
def lumbar_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cds.synth.study import StudyOptions, generate_study

    options = StudyOptions(sag_matrix=(128,), ax_matrix=(96,), min_sag_slices=9)
    return generate_study(71, tmp_path_factory.mktemp("pacs-synth"), options) / "dicom"


def other_study(
    source: Path, out: Path, modality: str, description: str, body_part: str, loinc: str | None = None
) -> str:
    """One instance of the lumbar study re-labelled as a different study (new UIDs, optionally a
    LOINC procedure code as the only sign of what it is)."""
    ds = pydicom.dcmread(next(iter(sorted(source.glob("*.dcm")))))
    if loinc is not None:
        item = pydicom.Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = loinc, "LN", "MR spine"
        ds.ProcedureCodeSequence = pydicom.Sequence([item])
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.Modality, ds.StudyDescription, ds.BodyPartExamined = modality, description, body_part
    out.mkdir(parents=True)
    ds.save_as(out / "one.dcm")
    return str(ds.StudyInstanceUID)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_stable_study_is_analysed_and_shown_in_patient_view(
    backend: str,
    db: Database,
    app_settings: Settings,
    lumbar_study: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key = SigningKey()
    clients = tmp_path / "clients.json"
    clients.write_text(json.dumps([{"iss": ISSUER, "jwks": key.jwks()}]))
    settings = app_settings.with_overrides(
        explain_eager="off",  # explanations are not what this test is about (and cost minutes)
        pacs_notify_token=TOKEN,
        clients_file=clients,
        public_base_url=PUBLIC,
        fhir_allowed_hosts=("127.0.0.1",),
        dicomweb_username="cds-test",
        dicomweb_password="not-a-real-secret",
    )
    uid = str(pydicom.dcmread(next(iter(lumbar_study.glob("*.dcm")))).StudyInstanceUID)
    brain = other_study(lumbar_study, tmp_path / "brain", "MR", "MRI BRAIN", "HEAD")
    chest = other_study(lumbar_study, tmp_path / "chest", "CT", "CT CHEST", "CHEST")
    coded = other_study(lumbar_study, tmp_path / "coded", "MR", "MRI", "", loinc="24968-0")  # LOINC only
    with PacsHarness.start(settings, tmp_path) as harness:
        t0 = time.monotonic()
        harness.orthanc.upload_folder(lumbar_study)
        harness.orthanc.upload_folder(tmp_path / "brain")
        harness.orthanc.upload_folder(tmp_path / "chest")
        harness.orthanc.upload_folder(tmp_path / "coded")
        t_uploaded = time.monotonic()
        record = harness.wait_for_analysis(uid, timeout_s=300)
        t_analysed = time.monotonic()
        # The real pipeline decides: a result, or a stated reason why these small synthetic images
        # cannot be read. Either way the analysis is finished and the card must show exactly that.
        # While models are being replaced the pipeline may also fail on them (a model failure, never
        # a PACS failure here: the images were fetched over DICOMweb).
        assert (
            record["status"] is not AnalysisStatus.FAILED
            or record["reason"] == analysis_job.REASON_MODEL_FAILED
        )

        # The Lua callback really ran in Orthanc and reached the endpoint (not the poller).
        log = harness.orthanc.log()
        assert "cds notify: stable MR study" in log and "announced" in log
        with db.session(readonly=True) as s:
            study = queries.study_by_uid(s, uid)
            assert study is not None and study.source_uri == f"{harness.orthanc.dicomweb_url}/studies/{uid}"
            assert queries.study_by_uid(s, brain) is None  # notified (MR) but not lumbar: ignored
            assert queries.study_by_uid(s, chest) is None  # not MR: the Lua script did not notify
            jobs = s.scalars(sa.select(JobRecord).where(JobRecord.kind == JobKind.ANALYZE)).all()
        # The coded study (its procedure code read from the instance headers by the Lua script) is
        # usually stable a moment after the lumbar one: wait for its job too.
        deadline = time.monotonic() + 30
        while len(jobs) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            with db.session(readonly=True) as s:
                jobs = s.scalars(sa.select(JobRecord).where(JobRecord.kind == JobKind.ANALYZE)).all()
        assert sorted(j.payload["study_uid"] for j in jobs) == sorted([uid, coded])

        # The poller reads the same stable study from /changes: intake is idempotent, still one job.
        poller = ChangePoller(
            db, harness.jobs, harness.settings, OrthancClient.from_settings(harness.settings)
        )
        report = poller.poll_once()
        while not report.done:
            report = poller.poll_once()
        assert load_cursor(db, "orthanc") == report.cursor > 0
        with db.session(readonly=True) as s:
            analyze_jobs = sa.select(sa.func.count()).where(JobRecord.kind == JobKind.ANALYZE)
            assert s.scalar(analyze_jobs) == 2

        # The command operators run: from the stored cursor there is nothing new.
        monkeypatch.setenv("CDS_DATABASE_URL", harness.settings.resolved_database_url)
        monkeypatch.setenv("CDS_DICOMWEB_URL", harness.orthanc.dicomweb_url)
        monkeypatch.setenv("CDS_DICOMWEB_USERNAME", USER)
        monkeypatch.setenv("CDS_DICOMWEB_PASSWORD", PASSWORD)
        assert run_cli(["pacs", "poll", "--once"]) == 0
        assert "stable studies 0, lumbar MRI queued 0" in capsys.readouterr().out

        # The card, through the real hook endpoint with a signed JWT, answers from the store.
        caller = Caller(harness.app.test_client(), key, PUBLIC)
        body = {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/dr-1", "patientId": PATIENT},
            "prefetch": {
                "studies": bundle(imaging_study(uid, patient=PATIENT, started="2026-07-01T10:00:00Z"))
            },
        }
        response = caller.post(PV, body)
        t_card = time.monotonic()
        assert response.status_code == 200, response.get_data(as_text=True)
        (card,) = response.get_json()["cards"]
        assert "pending" not in card["summary"]
        if record["status"] is AnalysisStatus.COMPLETE:
            assert "could not" not in card["summary"] and card["indicator"] in {"info", "warning", "critical"}
            assert card["suggestions"][0]["actions"][0]["resource"]["resourceType"] == "DiagnosticReport"
        else:
            expected = (
                "could not be analysed"
                if record["status"] is AnalysisStatus.UNANALYSABLE
                else "analysis failed"
            )
            assert expected in card["summary"]
            assert str(record["reason"]).split(":")[0][:40] in card["detail"].replace("\\", "")
        print(
            f"\nPACS trigger ({record['status'].value}): upload {t_uploaded - t0:.1f} s, "
            f"stable+notify+analysis {t_analysed - t_uploaded:.1f} s, "
            f"card {1000 * (t_card - t_analysed):.0f} ms"
        )


@pytest.mark.parametrize("backend", ["sqlite"])
def test_pacs_down_gives_a_failed_analysis_with_a_pacs_card_and_a_pending_retry(
    backend: str, db: Database, app_settings: Settings, tmp_path: Path
) -> None:
    key = SigningKey()
    clients = tmp_path / "clients.json"
    clients.write_text(json.dumps([{"iss": ISSUER, "jwks": key.jwks()}]))
    dead = f"http://127.0.0.1:{spare_port()}/dicom-web"  # nothing listens there
    settings = app_settings.with_overrides(
        pacs_notify_token=TOKEN, dicomweb_url=dead, clients_file=clients, public_base_url=PUBLIC
    )
    from cds import create_app
    from cds.extensions import services

    app = create_app(settings)
    try:
        uid = "1.2.826.0.1.3680043.8.498.9901"
        client = app.test_client()
        answer = client.post(
            "/pacs/notifications", json=notification(uid), headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert answer.status_code == 202
        runner = LocalRunner(services(app).jobs, default_registry(), settings, retry_delay_s=60)
        assert runner.run_once()
        with db.session(readonly=True) as s:
            record = queries.latest_analysis(s, uid)
            assert record is not None and record.status is AnalysisStatus.FAILED
            assert record.reason == analysis_job.REASON_PACS_RETRYING
            (job,) = s.scalars(sa.select(JobRecord)).all()
            assert (
                job.status.value == "queued" and job.attempts == 1 and "unreachable" in (job.last_error or "")
            )
        body = {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/dr-1", "patientId": PATIENT},
            "prefetch": {"studies": bundle(imaging_study(uid, patient=PATIENT))},
        }
        (card,) = Caller(client, key, PUBLIC).post(PV, body).get_json()["cards"]
        assert "analysis failed" in card["summary"]
        assert "image archive (PACS) could not be reached" in card["detail"].replace("\\", "")
        with db.session(readonly=True) as s:  # the hook did not start a second analysis or job
            assert s.scalar(sa.select(sa.func.count()).select_from(JobRecord)) == 1
    finally:
        services(app).close()


@dataclass
class PacsHarness:
    """The app served on loopback, one local worker thread, and Orthanc notifying the app."""

    app: Flask
    settings: Settings
    orthanc: Orthanc
    runner: LocalRunner

    @property
    def jobs(self) -> Any:
        from cds.extensions import services

        return services(self.app).jobs

    @classmethod
    def start(cls, settings: Settings, work: Path) -> Any:
        from contextlib import contextmanager

        @contextmanager
        def run() -> Iterator[PacsHarness]:
            from cds import create_app
            from cds.extensions import services

            # Orthanc's port is known only once it runs, and the app needs it (CDS_DICOMWEB_URL):
            # the app is built first with a placeholder, and its settings re-pointed before any call.
            app_port_holder: dict[str, str] = {}
            app = create_app(settings)
            with live_app(app) as url:
                app_port_holder["url"] = url
                env = {"CDS_PACS_NOTIFY_URL": f"{url}/pacs/notifications", "CDS_PACS_NOTIFY_TOKEN": TOKEN}
                with running_orthanc(work / "orthanc", lua=True, env=env) as orthanc:
                    final = settings.with_overrides(dicomweb_url=orthanc.dicomweb_url)
                    svc = services(app)
                    object.__setattr__(svc, "settings", final)
                    runner = LocalRunner(svc.jobs, default_registry(), final, workers=1, poll_interval_s=0.2)
                    runner.start()
                    try:
                        yield cls(app, final, orthanc, runner)
                    finally:
                        runner.stop()
                        svc.close()

        return run()

    def wait_for_analysis(self, uid: str, timeout_s: float) -> dict[str, Any]:
        from cds.extensions import services

        db = services(self.app).db
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with db.session(readonly=True) as s:
                record = queries.latest_analysis(s, uid) if queries.study_by_uid(s, uid) else None
                if record is not None and record.status in (
                    AnalysisStatus.COMPLETE,
                    AnalysisStatus.UNANALYSABLE,
                    AnalysisStatus.FAILED,
                ):
                    return {"status": record.status, "reason": record.reason}
            time.sleep(0.25)
        raise AssertionError(
            f"no finished analysis after {timeout_s} s; Orthanc log:\n{self.orthanc.log()[-2000:]}"
        )
