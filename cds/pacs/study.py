"""What the PACS tells us about a stable study: enough to decide "lumbar MRI?" and to register it.

Built from a push notification (cds.pacs.blueprint) or from Orthanc's REST API (cds.pacs.orthanc);
either way the values are DICOM header values, so they are validated here once (UIDs, dates,
lengths) and then trusted. PatientID is PHI: it is stored as the study's patient reference (as a
local DICOM import does) and never logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from cds.errors import BadRequest

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
MAX_SERIES = 500
MAX_TEXT = 256


class InvalidStudyInfo(BadRequest):
    """The PACS sent study information this service cannot use (bad UID, date, sizes)."""


@dataclass(frozen=True)
class SeriesInfo:
    modality: str = ""
    description: str = ""
    body_part: str = ""  # DICOM Body Part Examined (0018,0015), e.g. LSPINE


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
        if len(self.study_uid) > 64 or not _UID.match(self.study_uid):
            raise InvalidStudyInfo("StudyInstanceUID is not a DICOM UID")
        if len(self.series) > MAX_SERIES:
            raise InvalidStudyInfo(f"a study with more than {MAX_SERIES} series is not accepted")
        texts = [self.patient_id, self.description, *self.modalities]
        texts += [t for s in self.series for t in (s.modality, s.description, s.body_part)]
        if any(len(t) > MAX_TEXT for t in texts):
            raise InvalidStudyInfo(f"a DICOM text value is longer than {MAX_TEXT} characters")

    @property
    def all_modalities(self) -> frozenset[str]:
        return frozenset(m.strip().upper() for m in (*self.modalities, *(s.modality for s in self.series)))


def dicom_date(value: str | None) -> date | None:
    """A DICOM DA value (YYYYMMDD) as a date; empty -> None; anything else -> InvalidStudyInfo."""
    if not value:
        return None
    match = _DA.match(value.strip())
    if match is None:
        raise InvalidStudyInfo("StudyDate is not a DICOM date (YYYYMMDD)")
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError as exc:
        raise InvalidStudyInfo("StudyDate is not a valid calendar date") from exc
