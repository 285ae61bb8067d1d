"""The tables, as SQLAlchemy 2 records ("record" = DB row; domain values live in cds.domain).

Uniqueness is how the store stays idempotent under concurrency: every natural key (study UID,
series UID, analysis (study, mode, revision), finding (analysis, level, condition), explanation per
analysis, feedback (card, outcome), job dedupe key) carries a unique constraint,
and the queries catch the IntegrityError of the losing writer and return the winner's row.
Changing a table here needs a new migration in migrations/versions (a test compares the two).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from cds.domain import (
    AnalysisMode,
    AnalysisResult,
    AnalysisStatus,
    Condition,
    ExplanationStatus,
    FeedbackOutcome,
    FeedbackVerdict,
    Finding,
    Grade,
    Level,
    MeasurementName,
)
from cds.jobs.kinds import JobKind, JobStatus
from cds.store.types import EnumText, JSONType, UTCDateTime, utcnow

#: Deterministic constraint names, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


def new_uuid() -> str:
    return str(uuid.uuid4())


class _Timestamps:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class StudyRecord(_Timestamps, Base):
    """An imaging study known to the service (from the local DICOM folder or a PACS)."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(sa.String(128), unique=True)
    #: FHIR-style patient reference as the EHR knows the patient, e.g. "Patient/123" (PHI: never log it).
    patient_ref: Mapped[str | None] = mapped_column(sa.String(256), index=True)
    study_date: Mapped[date | None] = mapped_column(sa.Date)
    description: Mapped[str | None] = mapped_column(sa.Text)
    #: Where the pixels are: a folder/zip path or a DICOMweb URL.
    source_uri: Mapped[str | None] = mapped_column(sa.Text)

    series: Mapped[list[SeriesRecord]] = relationship(
        back_populates="study", cascade="all, delete-orphan", order_by="SeriesRecord.id"
    )
    analyses: Mapped[list[AnalysisRecord]] = relationship(
        back_populates="study", cascade="all, delete-orphan", order_by="AnalysisRecord.created_at"
    )


class SeriesRecord(_Timestamps, Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(sa.ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_uid: Mapped[str] = mapped_column(sa.String(128), unique=True)
    #: cds.dicom SeriesKind value (sagittal_t2, sagittal_t1, axial_t2, other); free text for the store.
    kind: Mapped[str | None] = mapped_column(sa.String(32))
    description: Mapped[str | None] = mapped_column(sa.Text)
    instance_count: Mapped[int | None] = mapped_column(sa.Integer)

    study: Mapped[StudyRecord] = relationship(back_populates="series")


class AnalysisRecord(_Timestamps, Base):
    """One analysis of one study in one mode. A re-analysis (e.g. new models) is a new revision."""

    __tablename__ = "analyses"
    __table_args__ = (sa.UniqueConstraint("study_id", "mode", "revision"),)

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_uuid)
    study_id: Mapped[int] = mapped_column(sa.ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    mode: Mapped[AnalysisMode] = mapped_column(EnumText(AnalysisMode), default=AnalysisMode.QUICK)
    revision: Mapped[int] = mapped_column(sa.Integer, default=1)
    status: Mapped[AnalysisStatus] = mapped_column(EnumText(AnalysisStatus), default=AnalysisStatus.PENDING)
    #: Why the analysis failed or the study is unanalysable (PHI-free text).
    reason: Mapped[str | None] = mapped_column(sa.Text)
    labelling_uncertain: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    model_versions: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    timings_ms: Mapped[dict[str, float]] = mapped_column(JSONType, default=dict)
    #: AnalysisResult.to_json() of the finished analysis (findings are also rows, for queries).
    result_json: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Series in the PACS notification/poll that requested this analysis (None: not from the PACS).
    pacs_series_seen: Mapped[int | None] = mapped_column(sa.Integer)
    #: Instances in that notification/poll (None: not from the PACS, or the PACS did not say).
    pacs_instances_seen: Mapped[int | None] = mapped_column(sa.Integer)
    #: FHIR write-back: None (not attempted), "pending", "failed" (retried at writeback_next_at), "done".
    writeback_state: Mapped[str | None] = mapped_column(sa.String(16))
    writeback_attempts: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    writeback_next_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    #: Bumped by every write-back request; the newest write-back wins (cds.fhir.writeback; 0010).
    writeback_generation: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")

    study: Mapped[StudyRecord] = relationship(back_populates="analyses")
    findings: Mapped[list[FindingRecord]] = relationship(
        back_populates="analysis", cascade="all, delete-orphan", order_by="FindingRecord.id"
    )
    explanation: Mapped[ExplanationRecord | None] = relationship(
        back_populates="analysis", cascade="all, delete-orphan"
    )

    def to_result(self) -> AnalysisResult:
        """The domain value. Findings come from the finding rows (the queryable truth)."""
        return AnalysisResult(
            status=self.status,
            findings=tuple(f.to_finding() for f in self.findings),
            reason=self.reason,
            labelling_uncertain=self.labelling_uncertain,
            timings_ms=dict(self.timings_ms or {}),
            model_versions=dict(self.model_versions or {}),
        )


class FindingRecord(Base):
    __tablename__ = "findings"
    __table_args__ = (sa.UniqueConstraint("analysis_id", "level", "condition"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    analysis_id: Mapped[str] = mapped_column(sa.ForeignKey("analyses.id", ondelete="CASCADE"), index=True)
    level: Mapped[Level] = mapped_column(EnumText(Level))
    condition: Mapped[Condition] = mapped_column(EnumText(Condition))
    grade: Mapped[Grade] = mapped_column(EnumText(Grade))
    probability: Mapped[float] = mapped_column(sa.Float)
    measurements: Mapped[dict[str, float]] = mapped_column(JSONType, default=dict)
    uncertain: Mapped[bool] = mapped_column(sa.Boolean, default=False)

    analysis: Mapped[AnalysisRecord] = relationship(back_populates="findings")

    @classmethod
    def from_finding(cls, finding: Finding) -> FindingRecord:
        return cls(
            level=finding.level,
            condition=finding.condition,
            grade=finding.grade,
            probability=float(finding.probability),
            measurements={k.value: float(v) for k, v in finding.measurements.items()},
            uncertain=bool(finding.uncertain),
        )

    def to_finding(self) -> Finding:
        return Finding(
            level=self.level,
            condition=self.condition,
            grade=self.grade,
            probability=self.probability,
            measurements={MeasurementName(k): float(v) for k, v in (self.measurements or {}).items()},
            uncertain=self.uncertain,
        )


class ExplanationRecord(_Timestamps, Base):
    """The explanation of one analysis: Grad-CAM heatmaps (artifact paths) and the rationale text."""

    __tablename__ = "explanations"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_uuid)
    analysis_id: Mapped[str] = mapped_column(
        sa.ForeignKey("analyses.id", ondelete="CASCADE"), unique=True, index=True
    )
    status: Mapped[ExplanationStatus] = mapped_column(
        EnumText(ExplanationStatus), default=ExplanationStatus.PENDING
    )
    rationale: Mapped[str | None] = mapped_column(sa.Text)
    #: Who wrote the rationale, e.g. "template" or "llm:<model>@<version>".
    writer: Mapped[str | None] = mapped_column(sa.String(128))
    #: e.g. {"L4-L5/spinal_canal": {"overlay": "artifacts/.../x.png", "series_uid": ...}}
    heatmaps: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    reason: Mapped[str | None] = mapped_column(sa.Text)

    analysis: Mapped[AnalysisRecord] = relationship(back_populates="explanation")


class HookCallRecord(Base):
    """Audit of one CDS Hooks call. No tokens, no request bodies; the patient reference only."""

    __tablename__ = "hook_calls"

    id: Mapped[int] = mapped_column(primary_key=True)
    hook_instance: Mapped[str] = mapped_column(sa.String(64), index=True)
    service_id: Mapped[str] = mapped_column(sa.String(128))
    hook: Mapped[str] = mapped_column(sa.String(64))
    patient_ref: Mapped[str | None] = mapped_column(sa.String(256))
    latency_ms: Mapped[float] = mapped_column(sa.Float)
    #: Short machine word chosen by the hooks layer (e.g. "cards", "no-cards", "pending", "error").
    outcome: Mapped[str] = mapped_column(sa.String(32))
    status_code: Mapped[int] = mapped_column(sa.Integer)
    card_count: Mapped[int] = mapped_column(sa.Integer, default=0)
    #: Space-separated uuids of the cards the call returned (cds.signing.CardIdSigner issues them).
    card_uuids: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class IssuedCardRecord(Base):
    """One card uuid a hook call returned -> that call: the indexed form of hook_calls.card_uuids.

    Filled by a database trigger on INSERT into hook_calls (migration 0008), so every writer of the
    audit row fills it in the same statement; read by the viewer's ``?card=`` link.
    """

    __tablename__ = "issued_cards"

    card_uuid: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    hook_call_id: Mapped[int] = mapped_column(sa.ForeignKey("hook_calls.id", ondelete="CASCADE"), index=True)


class FeedbackRecord(Base):
    """CDS Hooks feedback on one card; (card, outcome) is unique -> idempotent.

    A resent entry (clients retry, sometimes with a new outcomeTimestamp) keeps the first record; a
    different outcome for the same card (accepted after overridden) is a record of its own.
    """

    __tablename__ = "feedback"
    __table_args__ = (sa.UniqueConstraint("card_uuid", "outcome"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    card_uuid: Mapped[str] = mapped_column(sa.String(64), index=True)
    service_id: Mapped[str] = mapped_column(sa.String(128))
    outcome: Mapped[FeedbackOutcome] = mapped_column(EnumText(FeedbackOutcome))
    accepted_suggestions: Mapped[list[str]] = mapped_column(JSONType, default=list)
    override_reason_code: Mapped[str | None] = mapped_column(sa.String(128))
    override_reason_system: Mapped[str | None] = mapped_column(sa.String(512))
    override_reason_display: Mapped[str | None] = mapped_column(sa.Text)
    user_comment: Mapped[str | None] = mapped_column(sa.Text)
    outcome_timestamp: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class JobRecord(_Timestamps, Base):
    """A persisted job. dedupe_key is unique: enqueueing the same work twice yields one job."""

    __tablename__ = "jobs"
    __table_args__ = (sa.Index("ix_jobs_status_run_after", "status", "run_after"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[JobKind] = mapped_column(EnumText(JobKind))
    dedupe_key: Mapped[str] = mapped_column(sa.String(255), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[JobStatus] = mapped_column(EnumText(JobStatus), default=JobStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(sa.Integer, default=3)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    #: Not before this time (retry back-off).
    run_after: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Which worker holds a running job (host:pid:thread), for stale-claim recovery.
    worker: Mapped[str | None] = mapped_column(sa.String(128))


class SeenTokenRecord(Base):
    """A client JWT's (issuer, jti) seen once: replay protection shared by every worker process.

    Rows are only needed until the token expires; cds.hooks.replay deletes expired ones.
    """

    __tablename__ = "seen_tokens"
    __table_args__ = (sa.UniqueConstraint("issuer", "jti"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    issuer: Mapped[str] = mapped_column(sa.String(512))
    jti: Mapped[str] = mapped_column(sa.String(255))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class PacsCursorRecord(Base):
    """How far a PACS change feed has been read (Orthanc /changes `Seq`), per feed name.

    Persisted so that a restarted poller resumes where it stopped: studies that became stable while
    it was down are still picked up, and nothing already handled is read again.
    """

    __tablename__ = "pacs_cursors"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    last_change: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class ViewerFeedbackRecord(Base):
    """A clinician's verdict in the viewer on one finding (level + condition) or on the whole card.

    Rows are only added (a changed mind is a new row; the viewer shows the latest per target), so
    the history stays auditable. ``card_uuid`` is the CDS card the viewer was opened from, when the
    link said so: it joins this row to that card's CDS Hooks feedback (``feedback.card_uuid``).
    """

    __tablename__ = "viewer_feedback"

    id: Mapped[int] = mapped_column(primary_key=True)
    analysis_id: Mapped[str] = mapped_column(sa.ForeignKey("analyses.id", ondelete="CASCADE"), index=True)
    #: "card", or "<level>/<condition>" for one finding.
    target: Mapped[str] = mapped_column(sa.String(64))
    level: Mapped[Level | None] = mapped_column(EnumText(Level))
    condition: Mapped[Condition | None] = mapped_column(EnumText(Condition))
    verdict: Mapped[FeedbackVerdict] = mapped_column(EnumText(FeedbackVerdict))
    #: Reason code of a disagreement (the viewer's fixed list), None when agreeing.
    reason: Mapped[str | None] = mapped_column(sa.String(64))
    comment: Mapped[str | None] = mapped_column(sa.Text)
    card_uuid: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
