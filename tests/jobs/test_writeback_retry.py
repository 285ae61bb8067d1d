"""Failed FHIR write-backs are retried wherever analyses complete: in a LocalRunner and in every
Celery pool process, not only next to the PACS poller; against a real FHIR server (sekmet-fhir).

The write-back is an idempotent transaction (conditional create/update on the analysis's
identifiers), so a second delivery, a second sweeper, or a retry after a lost answer never makes a
second DiagnosticReport: checked on the server itself.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from celery_harness import CeleryEnv, WorkerProcess, wait_for

from cds.config import Settings
from cds.domain import THRESHOLDS, AnalysisResult, AnalysisStatus, Condition, Finding, Grade, Level
from cds.fhir import codes
from cds.fhir.writeback import STATE_DONE, STATE_FAILED
from cds.jobs.handlers import default_registry
from cds.jobs.queue import JobQueue
from cds.jobs.runner import LocalRunner
from cds.store import queries
from cds.store.db import Database
from cds.store.records import AnalysisRecord

_FHIR_SUPPORT = str(Path(__file__).resolve().parents[1] / "fhir")
if _FHIR_SUPPORT not in sys.path:
    sys.path.append(_FHIR_SUPPORT)

from sekmet_support import running_sekmet  # noqa: E402

pytestmark = pytest.mark.integration

FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


@pytest.fixture(scope="module")
def fhir_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A sekmet-fhir server (pinned test dependency) on a spare loopback port."""
    with running_sekmet(tmp_path_factory.mktemp("sekmet-writeback-retry")) as base:
        yield base


def _analysis() -> AnalysisResult:
    findings = []
    for level in Level:
        for condition in Condition:
            value = THRESHOLDS[condition].moderate_below * 1.2
            findings.append(
                Finding(level, condition, Grade.NORMAL_MILD, 0.9, {condition.deciding_measurement: value})
            )
    return AnalysisResult(AnalysisStatus.COMPLETE, tuple(findings), model_versions={"classifier": "1.2.0"})


def failed_write_back(db: Database, fhir_base: str, study_uid: str) -> str:
    """A COMPLETE analysis whose write-back failed (EHR was down) and is due for a retry now."""
    response = requests.post(f"{fhir_base}/Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON)
    assert response.status_code == 201, response.text[:300]
    patient = f"Patient/{response.json()['id']}"
    with db.session() as s:
        queries.upsert_study(s, study_uid, patient_ref=patient)
        record = queries.save_analysis(s, study_uid, _analysis())
        record.writeback_state, record.writeback_attempts = STATE_FAILED, 3
        record.writeback_next_at = datetime.now(UTC) - timedelta(seconds=1)
        return record.id


def due_again(db: Database, analysis_id: str) -> None:
    """As if the answer to a successful write was lost: the same write-back is due once more."""
    with db.session() as s:
        record = s.get(AnalysisRecord, analysis_id)
        assert record is not None
        record.writeback_state, record.writeback_next_at = (
            STATE_FAILED,
            datetime.now(UTC) - timedelta(seconds=1),
        )


def state(db: Database, analysis_id: str) -> str | None:
    with db.session(readonly=True) as s:
        record = s.get(AnalysisRecord, analysis_id)
        assert record is not None
        return record.writeback_state


def reports_on_server(fhir_base: str, analysis_id: str) -> int:
    found = requests.get(
        f"{fhir_base}/DiagnosticReport",
        params={"identifier": f"{codes.ANALYSIS_IDENTIFIER_SYSTEM}|{analysis_id}"},
        headers=FHIR_JSON,
        timeout=10,
    ).json()
    return len(found.get("entry") or [])


def test_a_local_runner_retries_due_write_backs_once(db: Database, fhir_base: str, tmp_path: Path) -> None:
    settings = Settings(database_url="sqlite://", data_dir=tmp_path, fhir_writeback_url=fhir_base)
    first = failed_write_back(db, fhir_base, "1.2.826.0.1.3680043.8.498.8801")
    second = failed_write_back(db, fhir_base, "1.2.826.0.1.3680043.8.498.8802")
    runners = [  # two job runners (e.g. two `cds worker` hosts) sweep concurrently
        LocalRunner(JobQueue(db), default_registry(), settings, writeback_retry_s=0.2) for _ in range(2)
    ]
    for runner in runners:
        runner.start()
    try:
        wait_for(lambda: state(db, first) == state(db, second) == STATE_DONE, 60, "write-backs done")
        due_again(db, first)
        wait_for(lambda: state(db, first) == STATE_DONE, 60, "the repeated write-back done")
    finally:
        for runner in runners:
            runner.stop()
    assert reports_on_server(fhir_base, first) == 1 and reports_on_server(fhir_base, second) == 1


def test_a_runner_without_write_back_configured_starts_no_retry_thread(db: Database, tmp_path: Path) -> None:
    runner = LocalRunner(JobQueue(db), default_registry(), Settings(data_dir=tmp_path), writeback_retry_s=0.1)
    runner.start()
    try:
        assert runner._writeback_retry is None
    finally:
        runner.stop()


def test_every_celery_pool_process_retries_due_write_backs_once(
    celery_env: CeleryEnv, fhir_base: str
) -> None:
    analysis_id = failed_write_back(celery_env.db, fhir_base, "1.2.826.0.1.3680043.8.498.8803")
    env = celery_env.env(CDS_FHIR_WRITEBACK_URL=fhir_base, CDS_TEST_WRITEBACK_RETRY_S="0.3")
    worker = WorkerProcess(env, celery_env.tmp / "worker-writeback.log", concurrency=2)
    try:
        worker.wait_ready()
        wait_for(lambda: state(celery_env.db, analysis_id) == STATE_DONE, 60, "write-back done by a worker")
        due_again(celery_env.db, analysis_id)
        wait_for(lambda: state(celery_env.db, analysis_id) == STATE_DONE, 60, "repeated write-back done")
    finally:
        worker.stop()
    assert reports_on_server(fhir_base, analysis_id) == 1
    assert "FHIR write-back(s) written on retry" in worker.log_path.read_text()
