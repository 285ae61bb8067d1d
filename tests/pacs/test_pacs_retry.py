"""The poller's sweep: analyses that failed because the PACS was down get a new attempt once due."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from cds.domain import AnalysisResult, AnalysisStatus
from cds.jobs import analysis as analysis_job
from cds.jobs.queue import JobQueue
from cds.pacs.retry import retry_due_failures
from cds.store import queries
from cds.store.db import Database
from cds.store.records import AnalysisRecord, JobRecord
from cds.store.types import utcnow


def failed(db: Database, uid: str, reason: str) -> None:
    with db.session() as s:
        queries.upsert_study(s, uid, patient_ref="P", source_uri=f"http://pacs/dicom-web/studies/{uid}")
        queries.save_analysis(s, uid, AnalysisResult(status=AnalysisStatus.FAILED, reason=reason))


def test_due_pacs_failures_are_retried_once_and_others_are_left_alone(db: Database) -> None:
    failed(db, "1.2.3.1", analysis_job.REASON_PACS_UNREACHABLE)  # retryable
    failed(db, "1.2.3.2", analysis_job.REASON_MODEL_FAILED)  # permanent
    failed(db, "1.2.3.3", analysis_job.REASON_PACS_RETRYING)  # its job is still retrying
    jobs = JobQueue(db)
    assert retry_due_failures(db, jobs) == 0  # back-off (10 min) not over yet
    later = utcnow() + analysis_job.REQUEUE_BACKOFF + timedelta(seconds=1)
    assert retry_due_failures(db, jobs, now=later) == 1
    assert retry_due_failures(db, jobs, now=later) == 0  # the new attempt is pending: not again
    with db.session(readonly=True) as s:
        (job,) = s.scalars(sa.select(JobRecord)).all()
        assert job.payload["study_uid"] == "1.2.3.1"
        revisions = s.scalars(sa.select(AnalysisRecord.revision).order_by(AnalysisRecord.revision)).all()
    assert sorted(revisions) == [1, 1, 1, 2]
