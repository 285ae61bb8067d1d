"""What the rest of the product asks of the store, as functions over a Session.

Every "create" here is idempotent and safe under concurrency: it looks the natural key up, inserts
inside a SAVEPOINT if absent, and on IntegrityError (another transaction won the race) rolls the
savepoint back and returns the winner's row. This works the same on SQLite and PostgreSQL and
keeps the caller's outer transaction alive.
Returned records have their findings/study loaded, so they stay usable after the session closes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload, selectinload

from cds.domain import AnalysisMode, AnalysisResult, AnalysisStatus, ExplanationStatus, FeedbackOutcome
from cds.errors import NotFound
from cds.store.records import (
    AnalysisRecord,
    ExplanationRecord,
    FeedbackRecord,
    FindingRecord,
    HookCallRecord,
    SeriesRecord,
    StudyRecord,
)
from cds.store.types import utcnow

R = TypeVar("R")


def insert_or_get(session: Session, record: R, lookup: Callable[[], R | None]) -> tuple[R, bool]:
    """Insert `record` unless `lookup()` finds the row; returns (row, created).

    Race-safe: the insert runs in a savepoint; a unique-constraint violation means a concurrent
    writer inserted the same key first, so its row is returned instead.
    """
    existing = lookup()
    if existing is not None:
        return existing, False
    try:
        with session.begin_nested():
            session.add(record)
            session.flush()
    except IntegrityError:
        found = lookup()
        if found is None:  # the violation was not about the natural key: a real error
            raise
        return found, False
    return record, True


# --- studies and series ---------------------------------------------------------------------


def study_by_uid(session: Session, study_uid: str) -> StudyRecord | None:
    return session.scalars(
        sa.select(StudyRecord)
        .where(StudyRecord.study_uid == study_uid)
        .options(selectinload(StudyRecord.series))
    ).one_or_none()


def upsert_study(
    session: Session,
    study_uid: str,
    *,
    patient_ref: str | None = None,
    study_date: date | None = None,
    description: str | None = None,
    source_uri: str | None = None,
) -> StudyRecord:
    """Register a study (or update what is known about it); fields given as None are left alone."""
    study, _ = insert_or_get(
        session,
        StudyRecord(
            study_uid=study_uid,
            patient_ref=patient_ref,
            study_date=study_date,
            description=description,
            source_uri=source_uri,
        ),
        lambda: study_by_uid(session, study_uid),
    )
    updates = {
        "patient_ref": patient_ref,
        "study_date": study_date,
        "description": description,
        "source_uri": source_uri,
    }
    for name, value in updates.items():
        if value is not None and getattr(study, name) != value:
            setattr(study, name, value)
    session.flush()
    return study


def upsert_series(
    session: Session,
    study: StudyRecord,
    series_uid: str,
    *,
    kind: str | None = None,
    description: str | None = None,
    instance_count: int | None = None,
) -> SeriesRecord:
    def lookup() -> SeriesRecord | None:
        return session.scalars(
            sa.select(SeriesRecord).where(SeriesRecord.series_uid == series_uid)
        ).one_or_none()

    series, created = insert_or_get(
        session,
        SeriesRecord(
            study_id=study.id,
            series_uid=series_uid,
            kind=kind,
            description=description,
            instance_count=instance_count,
        ),
        lookup,
    )
    if not created:
        for name, value in {
            "kind": kind,
            "description": description,
            "instance_count": instance_count,
        }.items():
            if value is not None:
                setattr(series, name, value)
        session.flush()
    return series


def studies_for_patient(session: Session, patient_ref: str) -> list[StudyRecord]:
    """The patient's studies, newest first (undated last)."""
    return list(
        session.scalars(
            sa.select(StudyRecord)
            .where(StudyRecord.patient_ref == patient_ref)
            .order_by(StudyRecord.study_date.desc().nulls_last(), StudyRecord.id.desc())
            .options(selectinload(StudyRecord.series))
        )
    )


# --- analyses -------------------------------------------------------------------------------


def _analysis_query() -> sa.Select[AnalysisRecord]:
    return sa.select(AnalysisRecord).options(
        selectinload(AnalysisRecord.findings),
        joinedload(AnalysisRecord.study),
        selectinload(AnalysisRecord.explanation),
    )


def _require_study(session: Session, study_uid: str) -> StudyRecord:
    study = study_by_uid(session, study_uid)
    if study is None:
        raise NotFound(f"unknown study {study_uid}")
    return study


def get_analysis(session: Session, analysis_id: str) -> AnalysisRecord | None:
    return session.scalars(_analysis_query().where(AnalysisRecord.id == analysis_id)).one_or_none()


def latest_analysis(
    session: Session, study_uid: str, mode: AnalysisMode | None = None
) -> AnalysisRecord | None:
    """The newest analysis of the study (highest revision, then newest), any status."""
    query = _analysis_query().join(StudyRecord).where(StudyRecord.study_uid == study_uid)
    if mode is not None:
        query = query.where(AnalysisRecord.mode == mode)
    query = query.order_by(AnalysisRecord.revision.desc(), AnalysisRecord.created_at.desc()).limit(1)
    return session.scalars(query).first()


def latest_complete_analysis(session: Session, study_uid: str) -> AnalysisRecord | None:
    query = (
        _analysis_query()
        .join(StudyRecord)
        .where(StudyRecord.study_uid == study_uid, AnalysisRecord.status == AnalysisStatus.COMPLETE)
        .order_by(AnalysisRecord.finished_at.desc().nulls_last(), AnalysisRecord.revision.desc())
        .limit(1)
    )
    return session.scalars(query).first()


def ensure_analysis(
    session: Session, study_uid: str, mode: AnalysisMode = AnalysisMode.QUICK
) -> AnalysisRecord:
    """The study's current analysis in `mode`, created PENDING (revision 1) if there is none.

    Concurrent callers for the same study get the same row (unique study+mode+revision).
    """
    study = _require_study(session, study_uid)

    def lookup() -> AnalysisRecord | None:
        return latest_analysis(session, study_uid, mode)

    analysis, _ = insert_or_get(
        session,
        AnalysisRecord(study_id=study.id, mode=mode, revision=1, status=AnalysisStatus.PENDING),
        lookup,
    )
    return analysis


def new_revision(
    session: Session, study_uid: str, mode: AnalysisMode = AnalysisMode.QUICK, *, revision: int | None = None
) -> AnalysisRecord:
    """A fresh PENDING analysis after the current one (re-analysis, e.g. after a model update).

    `revision` pins the number (the one after the analysis the caller decided on), so callers racing
    on the same decision get one row even when another already committed it.
    """
    study = _require_study(session, study_uid)
    if revision is None:
        current = latest_analysis(session, study_uid, mode)
        revision = 1 if current is None else current.revision + 1

    def lookup() -> AnalysisRecord | None:
        return session.scalars(
            _analysis_query().where(
                AnalysisRecord.study_id == study.id,
                AnalysisRecord.mode == mode,
                AnalysisRecord.revision == revision,
            )
        ).one_or_none()

    analysis, _ = insert_or_get(
        session,
        AnalysisRecord(study_id=study.id, mode=mode, revision=revision, status=AnalysisStatus.PENDING),
        lookup,
    )
    return analysis


def mark_analysis_running(session: Session, analysis_id: str) -> AnalysisRecord:
    analysis = get_analysis(session, analysis_id)
    if analysis is None:
        raise NotFound(f"unknown analysis {analysis_id}")
    analysis.status = AnalysisStatus.RUNNING
    analysis.started_at = utcnow()
    analysis.reason = None
    session.flush()
    return analysis


def save_analysis(
    session: Session,
    study_uid: str,
    result: AnalysisResult,
    *,
    mode: AnalysisMode = AnalysisMode.QUICK,
    analysis_id: str | None = None,
) -> AnalysisRecord:
    """Store `result` on the given analysis (or the study's current one in `mode`), replacing findings."""
    if analysis_id is not None:
        analysis = get_analysis(session, analysis_id)
        if analysis is None:
            raise NotFound(f"unknown analysis {analysis_id}")
    else:
        analysis = ensure_analysis(session, study_uid, mode)
    analysis.status = result.status
    analysis.reason = result.reason
    analysis.labelling_uncertain = result.labelling_uncertain
    analysis.model_versions = dict(result.model_versions)
    analysis.timings_ms = {k: float(v) for k, v in result.timings_ms.items()}
    analysis.result_json = result.to_json()
    if analysis.status in (AnalysisStatus.COMPLETE, AnalysisStatus.UNANALYSABLE, AnalysisStatus.FAILED):
        analysis.finished_at = utcnow()
    analysis.findings.clear()
    session.flush()  # delete old finding rows before inserting rows with the same unique key
    analysis.findings.extend(FindingRecord.from_finding(f) for f in result.findings)
    session.flush()
    return analysis


def fail_analysis(session: Session, analysis_id: str, reason: str) -> AnalysisRecord:
    """Mark an analysis FAILED with a PHI-free reason (no findings: never fake results)."""
    analysis = get_analysis(session, analysis_id)
    if analysis is None:
        raise NotFound(f"unknown analysis {analysis_id}")
    return save_analysis(
        session,
        analysis.study.study_uid,
        AnalysisResult(status=AnalysisStatus.FAILED, reason=reason),
        analysis_id=analysis_id,
    )


def analyses_for_patient(
    session: Session, patient_ref: str, *, statuses: Iterable[AnalysisStatus] | None = None
) -> list[AnalysisRecord]:
    """The newest analysis of each of the patient's studies, newest study first."""
    studies = studies_for_patient(session, patient_ref)
    out: list[AnalysisRecord] = []
    wanted = None if statuses is None else set(statuses)
    for study in studies:
        analysis = latest_analysis(session, study.study_uid)
        if analysis is not None and (wanted is None or analysis.status in wanted):
            out.append(analysis)
    return out


# --- explanations ---------------------------------------------------------------------------


def ensure_explanation(session: Session, analysis_id: str) -> ExplanationRecord:
    def lookup() -> ExplanationRecord | None:
        return session.scalars(
            sa.select(ExplanationRecord).where(ExplanationRecord.analysis_id == analysis_id)
        ).one_or_none()

    explanation, _ = insert_or_get(session, ExplanationRecord(analysis_id=analysis_id), lookup)
    return explanation


def save_explanation(
    session: Session,
    analysis_id: str,
    *,
    status: ExplanationStatus,
    rationale: str | None = None,
    writer: str | None = None,
    heatmaps: dict[str, Any] | None = None,
    reason: str | None = None,
) -> ExplanationRecord:
    explanation = ensure_explanation(session, analysis_id)
    explanation.status = status
    explanation.rationale = rationale
    explanation.writer = writer
    explanation.heatmaps = dict(heatmaps or {})
    explanation.reason = reason
    session.flush()
    return explanation


# --- audit and feedback ---------------------------------------------------------------------


@dataclass(frozen=True)
class HookCall:
    """One audited hook call (no tokens, no bodies)."""

    hook_instance: str
    service_id: str
    hook: str
    patient_ref: str | None
    latency_ms: float
    outcome: str
    status_code: int
    card_count: int = 0


def record_hook_call(session: Session, call: HookCall) -> HookCallRecord:
    record = HookCallRecord(
        hook_instance=call.hook_instance,
        service_id=call.service_id,
        hook=call.hook,
        patient_ref=call.patient_ref,
        latency_ms=float(call.latency_ms),
        outcome=call.outcome,
        status_code=int(call.status_code),
        card_count=int(call.card_count),
    )
    session.add(record)
    session.flush()
    return record


@dataclass(frozen=True)
class Feedback:
    """One validated CDS Hooks feedback entry."""

    card_uuid: str
    service_id: str
    outcome: FeedbackOutcome
    outcome_timestamp: datetime
    accepted_suggestions: Sequence[str] = ()
    override_reason_code: str | None = None
    override_reason_system: str | None = None
    override_reason_display: str | None = None
    user_comment: str | None = None


def save_feedback(session: Session, feedback: Feedback) -> tuple[FeedbackRecord, bool]:
    """Store feedback once: the same (card, outcome) again returns the first record (whatever its
    outcomeTimestamp: clients resend with fresh timestamps); another outcome is another record."""

    def lookup() -> FeedbackRecord | None:
        return session.scalars(
            sa.select(FeedbackRecord).where(
                FeedbackRecord.card_uuid == feedback.card_uuid,
                FeedbackRecord.outcome == feedback.outcome,
            )
        ).one_or_none()

    return insert_or_get(
        session,
        FeedbackRecord(
            card_uuid=feedback.card_uuid,
            service_id=feedback.service_id,
            outcome=feedback.outcome,
            outcome_timestamp=feedback.outcome_timestamp,
            accepted_suggestions=list(feedback.accepted_suggestions),
            override_reason_code=feedback.override_reason_code,
            override_reason_system=feedback.override_reason_system,
            override_reason_display=feedback.override_reason_display,
            user_comment=feedback.user_comment,
        ),
        lookup,
    )
