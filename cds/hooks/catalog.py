"""What the hooks need from the store and the job queue, as a narrow interface.

The hooks answer from stored analyses and never run models: a lookup by StudyInstanceUID and an
idempotent "please analyse this study" are all they need. Keeping that behind a Protocol keeps the
card logic testable without a database, and the database adapter (cds.hooks.storecatalog) small.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from cds.domain import AnalysisResult, AnalysisStatus
from cds.hooks.explanations import StoredExplanation
from cds.hooks.studies import LumbarStudy


@dataclass(frozen=True)
class StoredAnalysis:
    analysis_id: str
    study_uid: str
    status: AnalysisStatus
    #: Present when status is COMPLETE.
    result: AnalysisResult | None
    #: Why an analysis is UNANALYSABLE or FAILED (may be model or pipeline text: escape it).
    reason: str | None = None
    updated_at: datetime | None = None
    #: The study's patient as stored (e.g. "Patient/123" when registered from an EHR, or a DICOM
    #: PatientID from a local import); PHI: never log it.
    patient_ref: str | None = None
    #: A FAILED analysis whose cause may have passed (no image source, PACS outage) and whose
    #: back-off has elapsed: asking for it again starts a new attempt (bounded, cds.jobs.analysis).
    retry_due: bool = False
    #: The explanation of a COMPLETE analysis (None: never requested), read with its status.
    explanation: StoredExplanation | None = None

    def belongs_to_other_patient(self, patient_id: str) -> bool:
        """True when the stored patient is a FHIR Patient reference naming someone else.

        Only FHIR references ("Patient/<id>", possibly absolute) can be compared with the hook's
        context.patientId; a DICOM PatientID or an empty value says nothing either way.
        """
        ref = self.patient_ref
        if not ref or "Patient/" not in ref:
            return False
        local = f"Patient/{patient_id}"
        return not (ref == local or ref.endswith("/" + local))


class AnalysisCatalog(Protocol):
    def lookup(self, study_uids: Sequence[str]) -> Mapping[str, StoredAnalysis]:
        """Per study UID: its latest COMPLETE analysis, else its latest analysis of any status."""
        ...

    def request_analysis(self, study: LumbarStudy, patient_id: str) -> None:
        """Enqueue an ANALYZE job for the study; idempotent (one job per study however often called)."""
        ...
