"""Store queries on SQLite and PostgreSQL: round trips to domain values, idempotency, races."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from cds.domain import (
    AnalysisMode,
    AnalysisResult,
    AnalysisStatus,
    Condition,
    ExplanationStatus,
    FeedbackOutcome,
    Finding,
    Grade,
    Level,
    MeasurementName,
)
from cds.errors import NotFound
from cds.store import queries as q
from cds.store.db import Database
from cds.store.records import AnalysisRecord, FeedbackRecord, FindingRecord, HookCallRecord, StudyRecord

STUDY = "1.2.826.0.1.3680043.8.498.1"


def _result(grade: Grade = Grade.SEVERE) -> AnalysisResult:
    return AnalysisResult(
        status=AnalysisStatus.COMPLETE,
        findings=(
            Finding(
                Level.L4_L5,
                Condition.SPINAL_CANAL,
                grade,
                0.97,
                {MeasurementName.DSCA_MM2: 61.8, MeasurementName.AP_DIAMETER_MM: 7.9},
            ),
            Finding(
                Level.L5_S1,
                Condition.LEFT_FORAMINAL,
                Grade.MODERATE,
                0.55,
                {MeasurementName.FORAMINAL_AREA_RATIO: 0.41},
                uncertain=True,
            ),
        ),
        labelling_uncertain=True,
        timings_ms={"segment": 120.5, "grade": 30.0},
        model_versions={"segmenter": "1.0.0"},
    )


def _register(db: Database, study_uid: str = STUDY, patient: str = "Patient/p1", day: int = 1) -> None:
    with db.session() as s:
        q.upsert_study(
            s, study_uid, patient_ref=patient, study_date=date(2026, 1, day), description="MR L-spine"
        )


def _run_concurrently(n: int, fn: Callable[[], object]) -> list[object]:
    barrier = threading.Barrier(n)
    results: list[object] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        try:
            value = fn()
            with lock:
                results.append(value)
        except BaseException as exc:  # collected and re-raised below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return results


def test_save_analysis_round_trips_to_domain_value(db: Database) -> None:
    _register(db)
    with db.session() as s:
        record = q.save_analysis(s, STUDY, _result())
        analysis_id = record.id
    with db.session(readonly=True) as s:
        loaded = q.latest_complete_analysis(s, STUDY)
        assert loaded is not None
        assert loaded.id == analysis_id
        result = loaded.to_result()
    assert result.to_json() == _result().to_json()
    assert result.finding(Level.L5_S1, Condition.LEFT_FORAMINAL) is not None
    assert result.worst() is not None and result.worst().level is Level.L4_L5  # type: ignore[union-attr]
    assert loaded.finished_at is not None and loaded.finished_at.tzinfo is not None


def test_saving_again_replaces_findings_not_duplicates(db: Database) -> None:
    _register(db)
    with db.session() as s:
        first = q.save_analysis(s, STUDY, _result(Grade.SEVERE))
    with db.session() as s:
        second = q.save_analysis(s, STUDY, _result(Grade.MODERATE))
    assert first.id == second.id
    with db.session(readonly=True) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(FindingRecord)) == 2
        assert s.scalar(sa.select(sa.func.count()).select_from(AnalysisRecord)) == 1
        latest = q.latest_complete_analysis(s, STUDY)
        assert latest is not None
        f = latest.to_result().finding(Level.L4_L5, Condition.SPINAL_CANAL)
        assert f is not None and f.grade is Grade.MODERATE


def test_pending_analysis_is_not_complete_and_failure_keeps_reason(db: Database) -> None:
    _register(db)
    with db.session() as s:
        pending = q.ensure_analysis(s, STUDY)
        assert pending.status is AnalysisStatus.PENDING
        assert q.latest_complete_analysis(s, STUDY) is None
        q.mark_analysis_running(s, pending.id)
    with db.session() as s:
        failed = q.fail_analysis(s, pending.id, "pipeline not installed")
        assert failed.status is AnalysisStatus.FAILED
    with db.session(readonly=True) as s:
        loaded = q.get_analysis(s, pending.id)
        assert loaded is not None
        assert loaded.to_result() == AnalysisResult(
            status=AnalysisStatus.FAILED, reason="pipeline not installed"
        )
        assert q.latest_complete_analysis(s, STUDY) is None


def test_analysis_of_unknown_study_is_not_found(db: Database) -> None:
    with pytest.raises(NotFound), db.session() as s:
        q.ensure_analysis(s, "9.9.9")


def test_new_revision_supersedes_previous(db: Database) -> None:
    _register(db)
    with db.session() as s:
        q.save_analysis(s, STUDY, _result())
        rev2 = q.new_revision(s, STUDY)
    assert rev2.revision == 2 and rev2.status is AnalysisStatus.PENDING
    with db.session(readonly=True) as s:
        latest = q.latest_analysis(s, STUDY)
        assert latest is not None and latest.id == rev2.id
        complete = q.latest_complete_analysis(s, STUDY)
        assert complete is not None and complete.revision == 1


def test_analyses_for_patient_newest_study_first(db: Database) -> None:
    _register(db, "1.1", "Patient/a", day=1)
    _register(db, "1.2", "Patient/a", day=20)
    _register(db, "1.3", "Patient/b", day=5)
    with db.session() as s:
        q.save_analysis(s, "1.1", _result())
        q.ensure_analysis(s, "1.2")
        q.save_analysis(s, "1.3", _result())
    with db.session(readonly=True) as s:
        every = q.analyses_for_patient(s, "Patient/a")
        done = q.analyses_for_patient(s, "Patient/a", statuses=[AnalysisStatus.COMPLETE])
        assert [a.study.study_uid for a in every] == ["1.2", "1.1"]
        assert [a.study.study_uid for a in done] == ["1.1"]
        assert q.analyses_for_patient(s, "Patient/none") == []


def test_upsert_study_and_series_are_idempotent(db: Database) -> None:
    _register(db)
    _register(db)
    with db.session() as s:
        study = q.upsert_study(s, STUDY, source_uri="/data/dicom/x")
        q.upsert_series(s, study, "1.2.3.1", kind="sagittal_t2", instance_count=15)
        q.upsert_series(s, study, "1.2.3.1", kind="sagittal_t2", instance_count=16)
    with db.session(readonly=True) as s:
        loaded = q.study_by_uid(s, STUDY)
        assert loaded is not None
        assert loaded.patient_ref == "Patient/p1"  # not erased by a later partial upsert
        assert loaded.source_uri == "/data/dicom/x"
        assert [(x.series_uid, x.instance_count) for x in loaded.series] == [("1.2.3.1", 16)]
        assert s.scalar(sa.select(sa.func.count()).select_from(StudyRecord)) == 1


def test_concurrent_ensure_analysis_creates_one_row(db: Database) -> None:
    _register(db)

    def ensure() -> str:
        with db.session() as s:
            return q.ensure_analysis(s, STUDY, AnalysisMode.QUICK).id

    ids = _run_concurrently(8, ensure)
    assert len(set(ids)) == 1
    with db.session(readonly=True) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(AnalysisRecord)) == 1


def test_concurrent_study_registration_creates_one_row(db: Database) -> None:
    def register() -> int:
        with db.session() as s:
            return q.upsert_study(s, "7.7.7", patient_ref="Patient/c").id

    ids = _run_concurrently(8, register)
    assert len(set(ids)) == 1


def _feedback(ts: datetime, outcome: FeedbackOutcome = FeedbackOutcome.OVERRIDDEN) -> q.Feedback:
    return q.Feedback(
        card_uuid="3f0c9d5e-9d43-4c0e-9a55-0d8e6c1e7a10",
        service_id="lumbar-mri-patient-view",
        outcome=outcome,
        outcome_timestamp=ts,
        override_reason_code="disagree",
        override_reason_system="https://example.org/override",
        override_reason_display="Disagree with finding",
        user_comment="clinically not relevant",
    )


def test_feedback_twice_is_one_record(db: Database) -> None:
    ts = datetime(2026, 11, 23, 10, 0, 0, 123000, tzinfo=UTC)
    with db.session() as s:
        first, created1 = q.save_feedback(s, _feedback(ts))
    # the same instant expressed in another offset is the same feedback
    same_instant = ts.astimezone(timezone(timedelta(hours=2)))
    with db.session() as s:
        second, created2 = q.save_feedback(s, _feedback(same_instant))
    assert created1 and not created2
    assert first.id == second.id
    # a resend with a later outcomeTimestamp is still the same feedback: the first record stays
    with db.session() as s:
        third, created3 = q.save_feedback(s, _feedback(ts + timedelta(seconds=1)))
    assert not created3 and third.id == first.id
    # a different outcome for the same card is a record of its own
    with db.session() as s:
        _, created4 = q.save_feedback(s, _feedback(ts + timedelta(minutes=5), FeedbackOutcome.ACCEPTED))
    assert created4
    with db.session(readonly=True) as s:
        rows = s.scalars(sa.select(FeedbackRecord).order_by(FeedbackRecord.id)).all()
        assert [r.outcome for r in rows] == [FeedbackOutcome.OVERRIDDEN, FeedbackOutcome.ACCEPTED]
        assert rows[0].outcome_timestamp == ts


def test_concurrent_duplicate_feedback_is_one_record(db: Database) -> None:
    ts = datetime(2026, 11, 23, 11, 0, tzinfo=UTC)

    def save() -> int:
        with db.session() as s:
            return q.save_feedback(s, _feedback(ts))[0].id

    assert len(set(_run_concurrently(6, save))) == 1


def test_explanation_is_one_per_analysis(db: Database) -> None:
    _register(db)
    with db.session() as s:
        analysis = q.save_analysis(s, STUDY, _result())
        e1 = q.ensure_explanation(s, analysis.id)
        e2 = q.save_explanation(
            s,
            analysis.id,
            status=ExplanationStatus.COMPLETE,
            rationale="Severe central canal stenosis at L4-L5.",
            writer="template",
            heatmaps={"L4-L5/spinal_canal": {"overlay": "x.png"}},
        )
    assert e1.id == e2.id
    with db.session(readonly=True) as s:
        loaded = q.get_analysis(s, analysis.id)
        assert loaded is not None and loaded.explanation is not None
        assert loaded.explanation.status is ExplanationStatus.COMPLETE
        assert loaded.explanation.heatmaps == {"L4-L5/spinal_canal": {"overlay": "x.png"}}


def test_hook_call_audit_row(db: Database) -> None:
    call = q.HookCall(
        hook_instance="d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        service_id="lumbar-mri-patient-view",
        hook="patient-view",
        patient_ref="Patient/p1",
        latency_ms=12.5,
        outcome="cards",
        status_code=200,
        card_count=1,
    )
    with db.session() as s:
        q.record_hook_call(s, call)
    with db.session(readonly=True) as s:
        row = s.scalars(sa.select(HookCallRecord)).one()
        assert (row.hook, row.status_code, row.card_count, row.latency_ms) == ("patient-view", 200, 1, 12.5)
        assert row.created_at.tzinfo is not None


def test_session_rolls_back_on_error(db: Database) -> None:
    with pytest.raises(RuntimeError), db.session() as s:
        q.upsert_study(s, "5.5.5")
        raise RuntimeError("boom")
    with db.session(readonly=True) as s:
        assert q.study_by_uid(s, "5.5.5") is None


def test_readonly_session_refuses_writes(db: Database) -> None:
    with pytest.raises(sa.exc.DBAPIError), db.session(readonly=True) as s:
        q.upsert_study(s, "4.4.4")
    with db.session(readonly=True) as s:
        assert q.study_by_uid(s, "4.4.4") is None
