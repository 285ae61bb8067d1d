"""AnalysisCatalog over the store (cds.store) and the job queue (cds.jobs).

The hot path reads only what a card needs: one statement for the analyses' status columns of the
patient's studies, with their explanation's status and version joined in (cds.hooks.hotstore,
straight to the driver), and the stored result JSON only for an analysis this worker has not
parsed yet (a result is cached per (analysis id, updated_at), so a rewritten analysis is re-read).
Likewise the explanation's text and heatmap list are read only for a version (status, updated_at)
this worker has not seen; a pending explanation costs nothing beyond its two joined columns. The
selection rule is the store's (cds.store.queries.latest_complete_analysis / latest_analysis):
per study the newest COMPLETE analysis, else the newest of any status.
Asking for an analysis registers the study (if the store does not know it yet) and enqueues the
ANALYZE job through cds.jobs.analysis, idempotent and race-safe across workers.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from cds.config import Settings
from cds.domain import AnalysisResult, AnalysisStatus, ExplanationStatus
from cds.hooks.catalog import StoredAnalysis
from cds.hooks.explanations import StoredExplanation, from_record
from cds.hooks.hotstore import HotStore, StatusRow
from cds.hooks.imagesource import source_uri_for
from cds.hooks.studies import LumbarStudy
from cds.jobs.analysis import retry_due, retry_failed_analysis
from cds.jobs.queue import JobQueue
from cds.store import queries
from cds.store.db import Database
from cds.store.records import ExplanationRecord

_OLDEST = datetime.min.replace(tzinfo=UTC)


_ExplanationKey = tuple[str, ExplanationStatus, datetime | None]


class ResultCache:
    """Parsed AnalysisResults by (analysis id, updated_at), and explanation summaries by (analysis
    id, explanation status, explanation updated_at); bounded, shared by a worker's threads."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, datetime | None], AnalysisResult] = OrderedDict()
        self._explanations: OrderedDict[_ExplanationKey, StoredExplanation] = OrderedDict()
        self._lock = threading.Lock()

    def get_explanation(self, key: _ExplanationKey) -> StoredExplanation | None:
        with self._lock:
            found = self._explanations.get(key)
            if found is not None:
                self._explanations.move_to_end(key)
            return found

    def put_explanation(self, key: _ExplanationKey, value: StoredExplanation) -> None:
        with self._lock:
            self._explanations[key] = value
            while len(self._explanations) > self._size:
                self._explanations.popitem(last=False)

    def get(self, key: tuple[str, datetime | None]) -> AnalysisResult | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple[str, datetime | None], value: AnalysisResult) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)


def _pick(rows: list[Any]) -> Any:
    """The store's rule: newest COMPLETE (finished_at, revision), else newest (revision, created_at)."""
    complete = [r for r in rows if r.status is AnalysisStatus.COMPLETE]
    if complete:
        return max(complete, key=lambda r: (r.finished_at is not None, r.finished_at or _OLDEST, r.revision))
    return max(rows, key=lambda r: (r.revision, r.created_at or _OLDEST))


class StoreCatalog:
    def __init__(
        self,
        store: HotStore,
        db: Database,
        jobs: JobQueue,
        cache: ResultCache,
        dicomweb_url: str = "",
        settings: Settings | None = None,
    ) -> None:
        #: Status reads straight to the driver; the ORM only on a result-cache miss.
        self._store = store
        self._db = db
        self._jobs = jobs
        self._cache = cache
        self._dicomweb_url = dicomweb_url.rstrip("/")
        #: Where EHR-only studies' images are looked for (cds.hooks.imagesource); without settings
        #: only the configured PACS URL is used.
        self._settings = settings
        #: Analyses asked for during the evaluation, written only by run_requests(): the blueprint
        #: calls it after the call's jti is claimed, so a replayed token causes no side effects.
        self._requested: dict[str, tuple[LumbarStudy, str]] = {}

    def lookup(self, study_uids: Sequence[str]) -> Mapping[str, StoredAnalysis]:
        if not study_uids:
            return {}
        rows = self._store.analysis_status(study_uids)
        by_study: dict[str, list[StatusRow]] = {}
        for row in rows:
            by_study.setdefault(row.study_uid, []).append(row)
        found: dict[str, StoredAnalysis] = {}
        now = datetime.now(UTC)
        for uid, candidates in by_study.items():
            row = _pick(candidates)
            failures = sum(1 for r in candidates if r.status is AnalysisStatus.FAILED)
            complete = row.status is AnalysisStatus.COMPLETE
            result = self._result(row) if complete else None
            explanation = self._explanation(row) if complete and row.explanation_status is not None else None
            found[uid] = StoredAnalysis(
                analysis_id=row.id,
                study_uid=uid,
                status=row.status,
                result=result,
                reason=row.reason,
                updated_at=row.finished_at or row.updated_at,
                patient_ref=row.patient_ref,
                retry_due=row.status is AnalysisStatus.FAILED
                and retry_due(row.reason, failures, row.finished_at, now),
                explanation=explanation,
            )
        return found

    def _explanation(self, row: StatusRow) -> StoredExplanation | None:
        """The analysis's explanation at the version the status read saw (ORM only on a miss)."""
        status = row.explanation_status
        assert status is not None
        if status in (ExplanationStatus.PENDING, ExplanationStatus.RUNNING):
            return StoredExplanation(status, row.explanation_updated_at)  # nothing more to read
        key = (row.id, status, row.explanation_updated_at)
        cached = self._cache.get_explanation(key)
        if cached is not None:
            return cached
        data_dir = self._settings.data_dir if self._settings is not None else None
        with self._db.session(readonly=True) as session:
            record = session.scalars(
                sa.select(ExplanationRecord).where(ExplanationRecord.analysis_id == row.id)
            ).one_or_none()
            if record is None:  # deleted between the two reads: as never requested
                return None
            found = from_record(record, row.id, data_dir)
        # Cached only under the version it is: rewritten since the status read -> not cached.
        if found.version == (status, row.explanation_updated_at):
            self._cache.put_explanation(key, found)
        return found

    def _result(self, row: StatusRow) -> AnalysisResult:
        key = (row.id, row.updated_at)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        # A miss (first call for this analysis in this worker): ORM loading, read-only.
        with self._db.session(readonly=True) as session:
            record = queries.get_analysis(session, row.id)
            if record is None:  # deleted between the two reads: treat as a fresh miss next time
                raise LookupError("analysis disappeared during lookup")
            result = record.to_result()
            # Cached only under the version it is: rewritten since the status read -> not cached.
            if record.updated_at == row.updated_at:
                self._cache.put(key, result)
        return result

    def request_analysis(self, study: LumbarStudy, patient_id: str) -> None:
        """Remember the request; nothing is written until run_requests()."""
        self._requested.setdefault(study.study_uid, (study, patient_id))

    def run_requests(self) -> int:
        """Register and enqueue what the evaluation asked for (idempotent); the number of studies."""
        requested, self._requested = list(self._requested.values()), {}
        for study, patient_id in requested:
            self._register_and_enqueue(study, patient_id)
        return len(requested)

    def _register_and_enqueue(self, study: LumbarStudy, patient_id: str) -> None:
        with self._db.session() as s:
            known = queries.study_by_uid(s, study.study_uid)
            if known is not None and StoredAnalysis(
                "", study.study_uid, AnalysisStatus.PENDING, None, patient_ref=known.patient_ref
            ).belongs_to_other_patient(patient_id):
                return  # the UID is another patient's study: never analyse it on this one's behalf
            if known is None or not known.source_uri:
                # Known only from the EHR (or still without images): register it with its source.
                queries.upsert_study(
                    s,
                    study.study_uid,
                    patient_ref=None if known is not None else f"Patient/{patient_id}",
                    study_date=study.started,
                    source_uri=self._source_uri(study),
                )
        # A new analysis, a waiting one, or (after its back-off) a new attempt at a failed one.
        retry_failed_analysis(self._db, self._jobs, study.study_uid)

    def _source_uri(self, study: LumbarStudy) -> str | None:
        if self._settings is not None:
            return source_uri_for(study, self._settings)
        return f"{self._dicomweb_url}/studies/{study.study_uid}" if self._dicomweb_url else None
