"""The ANALYZE job: results stored, failures stored with reasons, never faked.

The pipeline and DICOM loader are replaced at their boundary (the two resolve_* functions) except in
the first test, which shows what happens when the pipeline package cannot be imported at all.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cds.config import Settings
from cds.domain import AnalysisResult, AnalysisStatus, Condition, Finding, Grade, Level, MeasurementName
from cds.errors import Forbidden, IngestError, ModelError
from cds.jobs import JobStatus, analysis
from cds.jobs.handlers import default_registry
from cds.jobs.queue import JobQueue
from cds.jobs.runner import LocalRunner
from cds.store import queries
from cds.store.db import Database
from cds.store.records import JobRecord

STUDY = "1.2.3.4"


def _setup(db: Database, tmp_path: Path) -> tuple[JobQueue, LocalRunner]:
    with db.session() as s:
        queries.upsert_study(s, STUDY, patient_ref="Patient/p", source_uri=str(tmp_path))
    queue = JobQueue(db)
    return queue, LocalRunner(queue, default_registry(), Settings(), retry_delay_s=0)


def _stored(db: Database) -> tuple[AnalysisStatus, AnalysisResult]:
    with db.session(readonly=True) as s:
        record = queries.latest_analysis(s, STUDY)
        assert record is not None
        return record.status, record.to_result()


def _jobs(db: Database) -> list[JobRecord]:
    with db.session(readonly=True) as s:
        return list(s.scalars(sa.select(JobRecord)))


def _fake_boundary(monkeypatch: pytest.MonkeyPatch, quick_read: Any) -> list[Any]:
    loaded: list[Any] = []

    def load_study(source: Any) -> object:
        loaded.append(source)
        return object()

    monkeypatch.setattr(analysis, "resolve_load_study", lambda: load_study)
    monkeypatch.setattr(analysis, "resolve_quick_read", lambda: quick_read)
    return loaded


def test_missing_pipeline_fails_with_reason(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cds.pipeline", None)  # import of cds.pipeline raises ImportError
    queue, runner = _setup(db, tmp_path)
    first = analysis.request_analysis(db, queue, STUDY)
    second = analysis.request_analysis(db, queue, STUDY)
    assert first.id == second.id
    assert runner.run_until_idle() == 1  # one job, run once (permanent failure, no retries)
    status, result = _stored(db)
    assert status is AnalysisStatus.FAILED
    assert result.findings == ()
    assert result.reason == analysis.REASON_PIPELINE_UNAVAILABLE
    assert queue.counts()[JobStatus.FAILED] == 1
    job = queue.by_key(analysis.analyze_key(STUDY, first.mode, first.revision))
    assert job is not None and job.last_error is not None and "pipeline unavailable" in job.last_error


def test_result_of_quick_read_is_stored(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = AnalysisResult(
        status=AnalysisStatus.COMPLETE,
        findings=(
            Finding(Level.L4_L5, Condition.SPINAL_CANAL, Grade.SEVERE, 0.9, {MeasurementName.DSCA_MM2: 60.0}),
        ),
        model_versions={"segmenter": "1"},
    )
    loaded = _fake_boundary(monkeypatch, lambda study: expected)
    queue, runner = _setup(db, tmp_path)
    analysis.request_analysis(db, queue, STUDY)
    assert runner.run_until_idle() == 1
    assert loaded == [tmp_path]
    status, result = _stored(db)
    assert status is AnalysisStatus.COMPLETE
    assert result.to_json() == expected.to_json()
    # a later request for the same study makes no new job
    again = analysis.request_analysis(db, queue, STUDY)
    assert again.status is AnalysisStatus.COMPLETE
    assert runner.run_until_idle() == 0


def test_unreadable_study_is_unanalysable_not_failed(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def quick_read(study: object) -> AnalysisResult:
        raise IngestError("no_sagittal_t2", "the study has no sagittal T2 series")

    _fake_boundary(monkeypatch, quick_read)
    queue, runner = _setup(db, tmp_path)
    analysis.request_analysis(db, queue, STUDY)
    runner.run_until_idle()
    status, result = _stored(db)
    assert status is AnalysisStatus.UNANALYSABLE
    assert result.reason == "no_sagittal_t2: the study has no sagittal T2 series"
    assert queue.counts()[JobStatus.DONE] == 1


def test_missing_models_fail_once_with_reason(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def quick_read(study: object) -> AnalysisResult:
        raise ModelError("weights models/segmenter/model.safetensors not found")

    _fake_boundary(monkeypatch, quick_read)
    queue, runner = _setup(db, tmp_path)
    analysis.request_analysis(db, queue, STUDY)
    assert runner.run_until_idle() == 1
    status, result = _stored(db)
    assert status is AnalysisStatus.FAILED
    # clinicians see a fixed sentence; the path stays in the job's error column for operators
    assert result.reason == analysis.REASON_MODEL_FAILED
    assert "safetensors" not in (result.reason or "")
    (job,) = _jobs(db)
    assert job.last_error is not None and "model.safetensors not found" in job.last_error


def test_transient_error_is_retried_and_final_failure_recorded(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def quick_read(study: object) -> AnalysisResult:
        calls.append(1)
        raise ConnectionError("PACS down")

    _fake_boundary(monkeypatch, quick_read)
    queue, runner = _setup(db, tmp_path)
    analysis.request_analysis(db, queue, STUDY)
    assert runner.run_once()
    status, result = _stored(db)
    assert status is AnalysisStatus.PENDING  # waiting for its retry, and says so
    assert result.reason == analysis.REASON_RETRYING
    runner.run_until_idle()
    assert len(calls) == 3
    status, result = _stored(db)
    assert status is AnalysisStatus.FAILED
    assert result.reason == analysis.REASON_FAILED and "PACS down" not in result.reason
    (job,) = _jobs(db)
    assert job.last_error is not None and "PACS down" in job.last_error
    # asking again re-queues the failed work
    analysis.request_analysis(db, queue, STUDY)
    assert queue.counts()[JobStatus.QUEUED] == 1


def test_study_without_source_fails(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_boundary(monkeypatch, lambda study: None)
    with db.session() as s:
        queries.upsert_study(s, STUDY)
    queue = JobQueue(db)
    runner = LocalRunner(queue, default_registry(), Settings(), retry_delay_s=0)
    analysis.request_analysis(db, queue, STUDY)
    runner.run_until_idle()
    status, result = _stored(db)
    assert status is AnalysisStatus.FAILED and result.reason == analysis.REASON_NO_SOURCE


def test_dicomweb_source_gets_credentials_only_for_the_configured_pacs() -> None:
    from cds.dicom.sources.dicomweb import DicomWebSource

    settings = Settings(
        dicomweb_url="http://pacs.local:8042/dicom-web", dicomweb_username="cds", dicomweb_password="pw"
    )
    own = analysis.open_source("http://pacs.local:8042/dicom-web/studies/1.2.3", "1.2.3", settings)
    assert isinstance(own, DicomWebSource)
    assert (own.base_url, own.study_uid) == ("http://pacs.local:8042/dicom-web", "1.2.3")
    assert own._session.auth == ("cds", "pw")
    with pytest.raises(Forbidden):
        analysis.open_source("http://169.254.169.254/dicom-web/studies/1.2.3", "1.2.3", settings)
    allowed = settings.with_overrides(dicomweb_allowed_hosts=("pacs2.example",))
    other = analysis.open_source("http://pacs2.example/dicom-web/studies/1.2.3", "1.2.3", allowed)
    assert isinstance(other, DicomWebSource) and other._session.auth is None  # no credentials leak
    assert analysis.open_source("/data/dicom/SYN-1/dicom", "1.2.3", settings) == Path(
        "/data/dicom/SYN-1/dicom"
    )


def test_racing_hook_calls_create_one_analysis_and_one_job(db: Database, tmp_path: Path) -> None:
    import threading

    from cds.jobs import JobStatus

    queue, _runner = _setup(db, tmp_path)
    barrier = threading.Barrier(8)
    ids: list[str] = []
    errors: list[BaseException] = []

    def hook_call() -> None:
        barrier.wait()
        try:
            ids.append(analysis.request_analysis(db, queue, STUDY).id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hook_call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(ids) == 8 and len(set(ids)) == 1
    counts = queue.counts()
    assert counts[JobStatus.QUEUED] == 1 and sum(counts.values()) == 1


def test_retry_due_only_for_recoverable_failures_after_a_bounded_back_off() -> None:
    from datetime import UTC, datetime

    t0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    first_wait, later = analysis.REQUEUE_BACKOFF, analysis.REQUEUE_BACKOFF * 2
    assert not analysis.retry_due(analysis.REASON_NO_SOURCE, 1, t0, t0 + first_wait / 2)
    assert analysis.retry_due(analysis.REASON_NO_SOURCE, 1, t0, t0 + first_wait)
    assert not analysis.retry_due(analysis.REASON_FAILED, 2, t0, t0 + first_wait)  # back-off doubles
    assert analysis.retry_due(analysis.REASON_FAILED, 2, t0, t0 + later)
    assert not analysis.retry_due(analysis.REASON_FAILED, analysis.MAX_FAILED_ATTEMPTS, t0, t0 + later * 100)
    assert not analysis.retry_due(analysis.REASON_MODEL_FAILED, 1, t0, t0 + later * 100)  # permanent


def test_failed_analysis_for_lack_of_source_recovers_as_a_new_revision(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = AnalysisResult(status=AnalysisStatus.COMPLETE, model_versions={"segmenter": "1"})
    _fake_boundary(monkeypatch, lambda study: expected)
    with db.session() as s:
        queries.upsert_study(s, STUDY, patient_ref="Patient/p")  # registered without a source
    queue = JobQueue(db)
    runner = LocalRunner(queue, default_registry(), Settings(), retry_delay_s=0)
    first = analysis.request_analysis(db, queue, STUDY)
    runner.run_until_idle()
    assert _stored(db)[0] is AnalysisStatus.FAILED
    with db.session() as s:  # the images turn up (e.g. the PACS now has the study)
        queries.upsert_study(s, STUDY, source_uri=str(tmp_path))
    again = analysis.retry_failed_analysis(db, queue, STUDY)
    same = analysis.retry_failed_analysis(db, queue, STUDY)  # a concurrent request: same revision
    assert again.revision == first.revision + 1 and same.id == again.id
    assert runner.run_until_idle() == 1
    status, result = _stored(db)
    assert status is AnalysisStatus.COMPLETE and result.to_json() == expected.to_json()
    with db.session(readonly=True) as s:
        old = queries.get_analysis(s, first.id)
        assert old is not None and old.status is AnalysisStatus.FAILED  # kept as history
