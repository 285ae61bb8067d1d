"""AnalysisCatalog over the store (cds.store) and the job queue (cds.jobs).

Lookups run in the request's one read-only session; asking for an analysis registers the study
(if the store does not know it yet) and enqueues the ANALYZE job through cds.jobs.analysis,
which is idempotent and race-safe across concurrent hook calls and worker processes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy.orm import Session

from cds.domain import AnalysisStatus
from cds.hooks.catalog import StoredAnalysis
from cds.hooks.studies import LumbarStudy
from cds.jobs.analysis import request_analysis
from cds.jobs.queue import JobQueue
from cds.store import queries
from cds.store.db import Database
from cds.store.records import AnalysisRecord


def to_stored(record: AnalysisRecord, study_uid: str) -> StoredAnalysis:
    result = record.to_result() if record.status is AnalysisStatus.COMPLETE else None
    return StoredAnalysis(
        analysis_id=record.id,
        study_uid=study_uid,
        status=record.status,
        result=result,
        reason=record.reason,
        updated_at=record.finished_at or record.updated_at,
    )


class StoreCatalog:
    def __init__(self, session: Session, db: Database, jobs: JobQueue, dicomweb_url: str = "") -> None:
        self._session = session
        self._db = db
        self._jobs = jobs
        self._dicomweb_url = dicomweb_url.rstrip("/")

    def lookup(self, study_uids: Sequence[str]) -> Mapping[str, StoredAnalysis]:
        found: dict[str, StoredAnalysis] = {}
        for uid in study_uids:
            record = queries.latest_complete_analysis(self._session, uid) or queries.latest_analysis(
                self._session, uid
            )
            if record is not None:
                found[uid] = to_stored(record, uid)
        return found

    def request_analysis(self, study: LumbarStudy, patient_id: str) -> None:
        with self._db.session() as s:
            if queries.study_by_uid(s, study.study_uid) is None:
                # Known only from the EHR: register it; its images are fetched from the PACS.
                source = f"{self._dicomweb_url}/studies/{study.study_uid}" if self._dicomweb_url else None
                queries.upsert_study(
                    s,
                    study.study_uid,
                    patient_ref=f"Patient/{patient_id}",
                    study_date=study.started,
                    source_uri=source,
                )
        request_analysis(self._db, self._jobs, study.study_uid)
