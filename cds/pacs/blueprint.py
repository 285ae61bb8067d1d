"""POST /pacs/notifications: the PACS says "this study is stable" (Orthanc Lua OnStableStudy).

Authenticated with a shared bearer token (CDS_PACS_NOTIFY_TOKEN, compared in constant time); with
no token configured the endpoint does not exist (404), so an unconfigured deployment exposes
nothing. The body is validated (pydantic, then cds.pacs.study) before anything is written; the
answer is 202 with the analysis id and outcome "queued" (pending/running) or "analysed" (already
settled: complete, unanalysable or failed; nothing is re-run), 200 "ignored" when the study is not
a lumbar MRI. Bodies hold PatientID (PHI): nothing of them is logged.
"""

from __future__ import annotations

import hmac
from typing import Any

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cds.domain import AnalysisStatus
from cds.errors import BadRequest, NotFound, Unauthorized
from cds.extensions import services
from cds.pacs.intake import accept_stable_study
from cds.pacs.study import ProcedureCode, SeriesInfo, StableStudy, dicom_date

bp = Blueprint("pacs", __name__, url_prefix="/pacs")

_TEXT = Field(default="", max_length=256)
#: Descriptions are truncated by StableStudy, not refused (a 400 drops the study for good); this
#: bound only keeps absurd bodies out.
_LONG_TEXT = Field(default="", max_length=10240)


class _Series(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    modality: str = _TEXT
    seriesDescription: str = _LONG_TEXT
    bodyPartExamined: str = _LONG_TEXT
    instances: int | None = Field(default=None, ge=0, le=100_000)


class _Code(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    scheme: str = Field(max_length=64)
    code: str = Field(max_length=64)


class Notification(BaseModel):
    """The JSON docker/orthanc/notify.lua sends (other PACS can send the same)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    event: str = Field(pattern=r"^StableStudy$")
    studyInstanceUid: str = Field(min_length=3, max_length=64)
    pacsStudyId: str = Field(default="", max_length=128)
    patientId: str = _TEXT
    studyDate: str = Field(default="", max_length=64)  # unreadable -> date unknown (dicom_date)
    studyDescription: str = _LONG_TEXT
    modalitiesInStudy: list[str] = Field(default_factory=list, max_length=32)
    series: list[_Series] = Field(default_factory=list, max_length=500)
    procedureCodes: list[_Code] = Field(default_factory=list, max_length=32)

    def to_study(self) -> StableStudy:
        return StableStudy(
            study_uid=self.studyInstanceUid.strip(),
            patient_id=self.patientId.strip(),
            study_date=dicom_date(self.studyDate),
            description=self.studyDescription.strip(),
            modalities=tuple(m[:16] for m in self.modalitiesInStudy),
            series=tuple(
                SeriesInfo(s.modality, s.seriesDescription, s.bodyPartExamined, s.instances)
                for s in self.series
            ),
            procedure_codes=tuple(ProcedureCode(c.scheme, c.code) for c in self.procedureCodes),
        )


def _check_token(expected: str) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Unauthorized("missing or wrong notification token")


@bp.post("/notifications")
def notify() -> tuple[Response, int]:
    svc = services()
    expected = svc.settings.pacs_notify_token
    if not expected:
        raise NotFound("PACS notifications are not enabled on this server")
    _check_token(expected)
    payload: Any = request.get_json(silent=True)
    if not isinstance(payload, dict):
        raise BadRequest("the notification body must be a JSON object")
    try:
        notification = Notification.model_validate(payload)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()})
        raise BadRequest(f"invalid notification ({', '.join(fields[:5])})") from exc
    result = accept_stable_study(svc.db, svc.jobs, svc.settings, notification.to_study())
    waiting = result.status in (AnalysisStatus.PENDING, AnalysisStatus.RUNNING)
    outcome = "ignored" if not result.accepted else "queued" if waiting else "analysed"
    body: dict[str, Any] = {"outcome": outcome, "verdict": result.verdict}
    if result.analysis_id is not None:
        body["analysisId"] = result.analysis_id
        body["analysisStatus"] = result.status.value if result.status else None
    return jsonify(body), 202 if result.accepted else 200
