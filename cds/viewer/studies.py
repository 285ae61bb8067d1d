"""The study list of the demo deployment: every stored study with its latest analysis, filterable.

Access is by a signed, expiring list link (LinkPurpose.STUDY_LIST, printed by `cds demo`). The
filters travel in a POST body, never in the URL, because one of them is the patient (PHI must
not end up in browser history, proxy logs or Referer headers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cds.domain import AnalysisMode, AnalysisStatus
from cds.errors import BadRequest
from cds.signing import STUDY_LIST_SUBJECT, LinkPurpose, LinkSigner
from cds.store.records import AnalysisRecord, StudyRecord

#: At most this many rows on one page (the demo has a handful; a real list would paginate).
MAX_ROWS = 200
MAX_PATIENT_FILTER = 128
NO_ANALYSIS = "none"


def sign_study_list_token(secret_key: str, ttl_s: int) -> str:
    """The token of a study-list link (/studies/<token>): signed, expiring, naming nothing."""
    return LinkSigner(secret_key, LinkPurpose.STUDY_LIST).sign(STUDY_LIST_SUBJECT, ttl_s)


class FilterInvalid(BadRequest):
    """A filter value the list cannot use; the message says which."""


@dataclass(frozen=True)
class StudyFilter:
    status: AnalysisStatus | None = None
    no_analysis: bool = False
    patient: str | None = None
    date_from: date | None = None
    date_to: date | None = None

    @property
    def active(self) -> bool:
        return bool(self.status or self.no_analysis or self.patient or self.date_from or self.date_to)


def _date(value: str, what: str) -> date | None:
    value = value.strip()
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise FilterInvalid(f"{what} must be a date (YYYY-MM-DD).") from exc


def parse_filter(form: Mapping[str, str]) -> StudyFilter:
    raw_status = str(form.get("status", "") or "").strip()
    status, no_analysis = None, False
    if raw_status == NO_ANALYSIS:
        no_analysis = True
    elif raw_status:
        try:
            status = AnalysisStatus(raw_status)
        except ValueError as exc:
            raise FilterInvalid("Unknown analysis status.") from exc
    patient = str(form.get("patient", "") or "").strip() or None
    if patient is not None and len(patient) > MAX_PATIENT_FILTER:
        raise FilterInvalid(f"The patient filter is too long (at most {MAX_PATIENT_FILTER} characters).")
    date_from = _date(str(form.get("date_from", "") or ""), "'From'")
    date_to = _date(str(form.get("date_to", "") or ""), "'To'")
    if date_from and date_to and date_from > date_to:
        raise FilterInvalid("'From' must not be after 'To'.")
    return StudyFilter(status, no_analysis, patient, date_from, date_to)


@dataclass(frozen=True)
class StudyRow:
    study_uid: str
    patient_ref: str | None
    study_date: date | None
    description: str | None
    analysis_id: str | None
    status: AnalysisStatus | None
    worst: str | None


def _latest_analyses(session: Session, study_ids: list[int]) -> dict[int, AnalysisRecord]:
    if not study_ids:
        return {}
    rows = session.scalars(
        sa.select(AnalysisRecord)
        .where(AnalysisRecord.study_id.in_(study_ids), AnalysisRecord.mode == AnalysisMode.QUICK)
        .order_by(AnalysisRecord.revision)
    ).all()
    return {row.study_id: row for row in rows}  # the highest revision wins


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def list_studies(session: Session, flt: StudyFilter) -> list[StudyRow]:
    query = sa.select(StudyRecord)
    if flt.patient:
        pattern = f"%{_escape_like(flt.patient.lower())}%"
        query = query.where(sa.func.lower(StudyRecord.patient_ref).like(pattern, escape="\\"))
    if flt.date_from:
        query = query.where(StudyRecord.study_date >= flt.date_from)
    if flt.date_to:
        query = query.where(StudyRecord.study_date <= flt.date_to)
    query = query.order_by(StudyRecord.study_date.desc().nulls_last(), StudyRecord.id.desc())
    studies = session.scalars(query).all()
    latest = _latest_analyses(session, [s.id for s in studies])
    out = []
    for study in studies:
        analysis = latest.get(study.id)
        status = analysis.status if analysis is not None else None
        if flt.no_analysis and analysis is not None:
            continue
        if flt.status is not None and status is not flt.status:
            continue
        worst = None
        if analysis is not None and status is AnalysisStatus.COMPLETE:
            finding = analysis.to_result().worst()
            if finding is not None:
                worst = f"{finding.grade.display} {finding.condition.display} at {finding.level.value}"
        out.append(
            StudyRow(
                study_uid=study.study_uid,
                patient_ref=study.patient_ref,
                study_date=study.study_date,
                description=study.description,
                analysis_id=analysis.id if analysis is not None else None,
                status=status,
                worst=worst,
            )
        )
        if len(out) >= MAX_ROWS:
            break
    return out
