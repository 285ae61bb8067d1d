"""What the PACS tells us about a stable study: enough to decide "lumbar MRI?" and to register it.

Built from a push notification (cds.pacs.blueprint) or from Orthanc's REST API (cds.pacs.orthanc);
either way the values are DICOM header values, so they are validated here once (UIDs, dates,
lengths) and then trusted. Only what would make the study unusable is refused (a bad UID, an absurd
series count); free text that is merely too long is truncated and an unreadable StudyDate becomes
unknown: a refused notification is not retried (the poller moves past it, the Lua push gets a
400), so rejecting over a description would drop a lumbar MRI for good. PatientID is PHI: it is
stored as the study's patient reference (as a local DICOM import does) and never logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from cds.errors import BadRequest

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")  # used with fullmatch (no "$": it allows "\n")
_DA = re.compile(r"(\d{4})(\d{2})(\d{2})")
MAX_SERIES = 500
MAX_INSTANCES = 100_000
MAX_TEXT = 256


class InvalidStudyInfo(BadRequest):
    """The PACS sent study information this service cannot use (bad UID, sizes)."""


def _clip(text: str) -> str:
    return text[:MAX_TEXT]


@dataclass(frozen=True)
class SeriesInfo:
    modality: str = ""
    description: str = ""
    body_part: str = ""  # DICOM Body Part Examined (0018,0015), e.g. LSPINE
    #: Instances the PACS holds in this series (None: the PACS did not say).
    instances: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "description", _clip(self.description))
        object.__setattr__(self, "body_part", _clip(self.body_part))
        if self.instances is not None and not 0 <= self.instances <= MAX_INSTANCES:
            raise InvalidStudyInfo(f"a series instance count must be 0..{MAX_INSTANCES}")


@dataclass(frozen=True)
class ProcedureCode:
    """One item of (Requested)ProcedureCodeSequence: DICOM coding scheme designator + value."""

    scheme: str
    code: str


@dataclass(frozen=True)
class StableStudy:
    study_uid: str
    patient_id: str = ""
    study_date: date | None = None
    description: str = ""
    modalities: tuple[str, ...] = ()  # ModalitiesInStudy, when the PACS gives it
    series: tuple[SeriesInfo, ...] = ()
    procedure_codes: tuple[ProcedureCode, ...] = ()

    def __post_init__(self) -> None:
        if len(self.study_uid) > 64 or not _UID.fullmatch(self.study_uid):
            raise InvalidStudyInfo("StudyInstanceUID is not a DICOM UID")
        if len(self.series) > MAX_SERIES:
            raise InvalidStudyInfo(f"a study with more than {MAX_SERIES} series is not accepted")
        object.__setattr__(self, "description", _clip(self.description))
        # Identifiers and modalities are not truncated (a cut PatientID names someone else).
        texts = [self.patient_id, *self.modalities, *(s.modality for s in self.series)]
        if any(len(t) > MAX_TEXT for t in texts):
            raise InvalidStudyInfo(f"a DICOM text value is longer than {MAX_TEXT} characters")

    @property
    def instance_count(self) -> int | None:
        """Instances in the whole study, when the PACS gave a count for every series (else None:
        an unknown count must never look like growth)."""
        counts = [s.instances for s in self.series]
        if not counts or any(c is None for c in counts):
            return None
        return sum(c for c in counts if c is not None)

    @property
    def all_modalities(self) -> frozenset[str]:
        return frozenset(m.strip().upper() for m in (*self.modalities, *(s.modality for s in self.series)))


def dicom_date(value: str | None) -> date | None:
    """A DICOM DA value (YYYYMMDD) as a date; empty or not a valid date -> None (date unknown).

    Non-standard dates occur in real archives ("2026-07-01", "20260700"); the study is still
    analysable, so the date is dropped rather than the study.
    """
    if not value:
        return None
    match = _DA.fullmatch(value.strip())
    if match is None:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None
