"""Orthanc's own REST API, for what DICOMweb does not offer: the /changes feed and study summaries.

Only GETs, through the same retrying, authenticated requests session as the DICOMweb source
(cds.dicom.sources.dicomweb.make_session: urllib3 back-off on connection errors and 429/5xx), so
a briefly unavailable PACS costs a delay, and a PACS that stays down raises UpstreamError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from cds.config import Settings
from cds.errors import NotFound, UpstreamError
from cds.pacs.study import ProcedureCode, SeriesInfo, StableStudy, dicom_date

STABLE_STUDY = "StableStudy"


@dataclass(frozen=True)
class Change:
    seq: int
    change_type: str
    resource_id: str  # Orthanc's own id of the resource (a hash, not a DICOM UID)


@dataclass(frozen=True)
class ChangePage:
    changes: tuple[Change, ...]
    last: int  # the Seq to continue from
    done: bool  # no more changes after `last` right now


class OrthancClient:
    def __init__(self, base_url: str, session: requests.Session, timeout_s: float = 30.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError("Orthanc URL must be an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._timeout = (5.0, timeout_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> OrthancClient:
        from cds.dicom.sources.dicomweb import make_session
        from cds.dicom.sources.endpoint import settings_auth, settings_retry

        url = settings.resolved_pacs_orthanc_url
        if not url:
            raise UpstreamError("no Orthanc configured (CDS_PACS_ORTHANC_URL or CDS_DICOMWEB_URL)")
        return cls(
            url, make_session(settings_auth(settings), settings_retry(settings)), settings.dicomweb_timeout_s
        )

    def __repr__(self) -> str:
        return f"OrthancClient({urlsplit(self.base_url).netloc!r})"

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        host = urlsplit(self.base_url).netloc
        try:
            response = self._session.get(f"{self.base_url}/{path}", params=params, timeout=self._timeout)
        except requests.RequestException as exc:
            raise UpstreamError(f"Orthanc {host} is unreachable ({type(exc).__name__})") from exc
        if response.status_code == 404:
            raise NotFound("Orthanc has no such resource")
        if response.status_code >= 400:
            raise UpstreamError(f"Orthanc {host} answered HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError as exc:
            raise UpstreamError(f"Orthanc {host} sent a body that is not JSON") from exc

    def last_change(self) -> int:
        """The newest Seq (to start a new cursor "from now")."""
        return int(self._get("changes", {"last": ""}).get("Last", 0))

    def changes(self, since: int, limit: int = 100) -> ChangePage:
        data = self._get("changes", {"since": since, "limit": limit})
        changes = tuple(
            Change(int(c["Seq"]), str(c.get("ChangeType", "")), str(c.get("ID", "")))
            for c in data.get("Changes") or []
            if isinstance(c, dict) and "Seq" in c
        )
        # Not clamped to `since`: a Last below the cursor means the PACS's change log restarted
        # (database recreated), and the poller must see that to reset its cursor.
        last = int(data.get("Last", since))
        return ChangePage(changes, last, bool(data.get("Done", True)))

    def stable_study(self, orthanc_id: str) -> StableStudy:
        """The StableStudy for an Orthanc study id: study + patient tags, series tags, procedure codes."""
        sid = quote(orthanc_id, safe="")
        study = self._get(f"studies/{sid}")
        tags = study.get("MainDicomTags") or {}
        patient = study.get("PatientMainDicomTags") or {}
        series_json = [s for s in self._get(f"studies/{sid}/series") or [] if isinstance(s, dict)]
        series = [
            SeriesInfo(
                str(t.get("Modality", "")),
                str(t.get("SeriesDescription", "")),
                str(t.get("BodyPartExamined", "")),
                # The series listing names its instances: their number is how a study that grows
                # within a series (more slices arrive after it went stable) is recognised.
                len(s["Instances"]) if isinstance(s.get("Instances"), list) else None,
            )
            for s, t in ((s, s.get("MainDicomTags") or {}) for s in series_json)
        ]
        first_instance = next((str(i) for s in series_json for i in s.get("Instances") or []), None)
        return StableStudy(
            study_uid=str(tags.get("StudyInstanceUID", "")),
            patient_id=str(patient.get("PatientID", "")),
            study_date=dicom_date(str(tags.get("StudyDate", "")) or None),
            description=str(tags.get("StudyDescription", "")),
            modalities=tuple(str(tags.get("ModalitiesInStudy", "")).split("\\"))
            if tags.get("ModalitiesInStudy")
            else (),
            series=tuple(series),
            procedure_codes=self._procedure_codes(first_instance) if first_instance else (),
        )

    def _procedure_codes(self, instance_id: str) -> tuple[ProcedureCode, ...]:
        """Procedure codes live in instance headers only; one instance of the study is enough."""
        tags = self._get(f"instances/{quote(instance_id, safe='')}/tags", {"simplify": ""})
        codes: list[ProcedureCode] = []
        for name in ("ProcedureCodeSequence", "RequestedProcedureCodeSequence"):
            for item in tags.get(name) or []:
                if isinstance(item, dict) and item.get("CodeValue") and item.get("CodingSchemeDesignator"):
                    codes.append(ProcedureCode(str(item["CodingSchemeDesignator"]), str(item["CodeValue"])))
        return tuple(codes[:32])
