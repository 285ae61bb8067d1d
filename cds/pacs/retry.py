"""Re-try analyses that failed for a passing cause (the PACS was down), without waiting for a hook.

The job itself retries a few times within seconds; an outage longer than that leaves the analysis
FAILED with a retryable reason. Hooks start a new attempt when the study is next viewed (after the
back-off in cds.jobs.analysis.retry_due); this sweep, run by the PACS poller, does the same for
studies nobody has looked at yet, so that results are ready when someone does. Same back-off and
attempt budget, same race-safe retry_failed_analysis: a sweep and a hook never make two attempts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from cds.domain import AnalysisStatus
from cds.jobs.analysis import RETRYABLE_REASONS, retry_due, retry_failed_analysis
from cds.jobs.queue import JobQueue
from cds.store.db import Database
from cds.store.records import AnalysisRecord, StudyRecord
from cds.store.types import utcnow


def retry_due_failures(db: Database, jobs: JobQueue, *, now: datetime | None = None, limit: int = 100) -> int:
    """Start a new attempt for every study whose newest analysis failed retryably and is due; the count."""
    now = now or utcnow()
    failed_studies = (
        sa.select(AnalysisRecord.study_id)
        .where(
            AnalysisRecord.status == AnalysisStatus.FAILED,
            AnalysisRecord.reason.in_(sorted(RETRYABLE_REASONS)),
        )
        .distinct()
        .limit(limit)
    )
    query = (
        sa.select(
            StudyRecord.study_uid,
            AnalysisRecord.status,
            AnalysisRecord.reason,
            AnalysisRecord.revision,
            AnalysisRecord.finished_at,
        )
        .join(StudyRecord, AnalysisRecord.study_id == StudyRecord.id)
        .where(AnalysisRecord.study_id.in_(failed_studies))
    )
    with db.session(readonly=True) as s:
        rows = s.execute(query).all()
    by_study: dict[str, list[Any]] = {}
    for row in rows:
        by_study.setdefault(row.study_uid, []).append(row)
    started = 0
    for uid, analyses in by_study.items():
        latest = max(analyses, key=lambda r: r.revision)
        failures = sum(1 for r in analyses if r.status is AnalysisStatus.FAILED)
        if latest.status is AnalysisStatus.FAILED and retry_due(
            latest.reason, failures, latest.finished_at, now
        ):
            retry_failed_analysis(db, jobs, uid)
            started += 1
    return started
