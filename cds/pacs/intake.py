"""One stable study in: filter it, register it with its DICOMweb address, enqueue its analysis.

Shared by the push path (notification endpoint) and the pull path (/changes poller). Idempotent
and race-safe by construction: the study row is insert-or-get on its UID, the analysis row is
insert-or-get on (study, mode, revision), and the job is insert-or-get on its dedupe key, so the
same notification delivered any number of times, concurrently or by both paths, makes one job.
A study that grows after it went stable (Orthanc fires StableStudy again when a late series or
late instances of a series arrive) is re-analysed: each analysis notes how many series and
instances the PACS held when it was requested, and a notification with more of either makes the
next revision (its job key is per revision).
Nothing here touches pixels or models: it runs in the web process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cds.config import Settings
from cds.domain import AnalysisStatus
from cds.errors import CdsError
from cds.jobs.analysis import request_analysis
from cds.jobs.queue import JobQueue
from cds.pacs.filter import Verdict, classify
from cds.pacs.study import StableStudy
from cds.store import queries
from cds.store.db import Database
from cds.store.records import AnalysisRecord

log = logging.getLogger(__name__)

#: Analyses a notification leaves alone (COMPLETE ones request_analysis already leaves alone).
_SETTLED = frozenset({AnalysisStatus.FAILED, AnalysisStatus.UNANALYSABLE})


class PacsNotConfigured(CdsError):
    """A PACS notification arrived but CDS_DICOMWEB_URL is not set: there is nowhere to read from."""

    http_status = 503
    issue_code = "transient"


@dataclass(frozen=True)
class IntakeResult:
    verdict: Verdict
    analysis_id: str | None = None
    status: AnalysisStatus | None = None

    @property
    def accepted(self) -> bool:
        return self.verdict is Verdict.LUMBAR_MRI


def dicomweb_study_uri(settings: Settings, study_uid: str) -> str:
    if not settings.dicomweb_url:
        raise PacsNotConfigured("no PACS configured (CDS_DICOMWEB_URL)")
    return f"{settings.dicomweb_url.rstrip('/')}/studies/{study_uid}"


@dataclass(frozen=True)
class Seen:
    """What the PACS held when a notification/poll was made: series, and instances when known."""

    series: int
    instances: int | None

    @classmethod
    def of(cls, study: StableStudy) -> Seen:
        return cls(len(study.series), study.instance_count)

    @classmethod
    def on(cls, analysis: AnalysisRecord) -> Seen | None:
        if analysis.pacs_series_seen is None:
            return None
        return cls(analysis.pacs_series_seen, analysis.pacs_instances_seen)

    def grew_since(self, analysed: Seen | None) -> bool:
        """More series, or more instances, than the analysis was requested with. Unknown counts
        never trigger (an analysis not from the PACS, a PACS that gave no instance counts)."""
        if analysed is None:
            return False
        more_instances = (
            self.instances is not None
            and analysed.instances is not None
            and self.instances > analysed.instances
        )
        return self.series > analysed.series or more_instances


def _revision_after(s: Session, study_uid: str, revision: int, seen: Seen) -> None:
    """Revision `revision + 1` (one row however many callers race), noting what it is for."""
    analysis = queries.new_revision(s, study_uid, revision=revision + 1)
    if analysis.pacs_series_seen is None or analysis.pacs_series_seen < seen.series:
        analysis.pacs_series_seen = seen.series
    if seen.instances is not None and (
        analysis.pacs_instances_seen is None or analysis.pacs_instances_seen < seen.instances
    ):
        analysis.pacs_instances_seen = seen.instances


def _record_seen(db: Database, analysis_id: str, seen: Seen) -> Seen | None:
    """Note on the analysis what the PACS held when it was requested (first one wins)."""
    with db.session() as s:
        s.execute(
            sa.update(AnalysisRecord)
            .where(AnalysisRecord.id == analysis_id, AnalysisRecord.pacs_series_seen.is_(None))
            .values(pacs_series_seen=seen.series, pacs_instances_seen=seen.instances)
        )
        row = s.execute(
            sa.select(AnalysisRecord.pacs_series_seen, AnalysisRecord.pacs_instances_seen).where(
                AnalysisRecord.id == analysis_id
            )
        ).one_or_none()
        if row is None or row[0] is None:
            return None
        return Seen(row[0], row[1])


def accept_stable_study(db: Database, jobs: JobQueue, settings: Settings, study: StableStudy) -> IntakeResult:
    """Register and enqueue `study` when it is a lumbar MRI; otherwise only say why not."""
    verdict = classify(study)
    if verdict is not Verdict.LUMBAR_MRI:
        log.info("pacs: stable study skipped (%s)", verdict.value)
        return IntakeResult(verdict)
    source_uri = dicomweb_study_uri(settings, study.study_uid)
    seen = Seen.of(study)
    with db.session() as s:
        known = queries.study_by_uid(s, study.study_uid)
        queries.upsert_study(
            s,
            study.study_uid,
            # An EHR registration ("Patient/<id>") is better than the DICOM PatientID: keep it.
            patient_ref=(study.patient_id or None) if known is None or not known.patient_ref else None,
            study_date=study.study_date,
            description=study.description or None,
            # Images already located (e.g. through the EHR's Endpoint) stay where they were found.
            source_uri=source_uri if known is None or not known.source_uri else None,
        )
        latest = queries.latest_analysis(s, study.study_uid)
        if latest is not None and seen.grew_since(Seen.on(latest)):
            # The study got more series or instances after the analysis was requested (Orthanc
            # fires StableStudy again): the analysis ran, or may run, without them. A new revision.
            log.info("pacs: study has more series/instances than its analysis saw; re-analysing")
            _revision_after(s, study.study_uid, latest.revision, seen)
        elif latest is not None and latest.status in _SETTLED:
            # Already tried and settled: a repeated notification is not a reason to run it again
            # (retryable failures are re-tried on their back-off by cds.pacs.retry and the hooks).
            return IntakeResult(verdict, latest.id, latest.status)
    analysis = request_analysis(db, jobs, study.study_uid)
    if seen.grew_since(_record_seen(db, analysis.id, seen)):
        # A concurrent notification with fewer series/instances created this analysis first.
        with db.session() as s:
            _revision_after(s, study.study_uid, analysis.revision, seen)
        analysis = request_analysis(db, jobs, study.study_uid)
    log.info("pacs: lumbar MRI accepted; analysis %s is %s", analysis.id, analysis.status.value)
    return IntakeResult(verdict, analysis.id, analysis.status)
