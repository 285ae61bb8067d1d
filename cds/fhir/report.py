"""An analysis as FHIR R4: a DiagnosticReport with one Observation per finding, a Device, and Media.

Two shapes of the same content:
- `build_diagnostic_report`: one DiagnosticReport whose Observations, Device and Media are
  *contained* resources (references "#id"). A CDS card's `create` action must carry a single
  whole resource, so this is what the hooks embed.
- `build_report_bundle`: a transaction Bundle of separate resources (fullUrl urn:uuid, references
  between entries by those URNs), each POSTed with `ifNoneExist` on a deterministic identifier,
  so writing the same analysis back twice creates nothing the second time.

Every resource is labelled AI-asserted (meta.security AIAST) and every Observation points at the
Device describing the model versions (R4 DiagnosticReport.performer cannot be a Device).
The status is always `preliminary`: a machine read is decision support until a radiologist signs.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlencode

from cds.domain import (
    THRESHOLDS,
    AnalysisResult,
    AnalysisStatus,
    Condition,
    Finding,
    Grade,
    Level,
    MeasurementName,
)
from cds.errors import BadRequest, Conflict
from cds.fhir import codes
from cds.fhir.resources import validate_resource

#: Every resource this module produces carries this label.
_SECURITY = {"security": [codes.AI_ASSERTED.coding()]}
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_PATIENT_REF = re.compile(r"^Patient/[A-Za-z0-9\-.]{1,64}$")
_IMAGING_STUDY_REF = re.compile(r"^ImagingStudy/[A-Za-z0-9\-.]{1,64}$")
_DICOM_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: Namespace for the deterministic urn:uuid fullUrls of a bundle.
_URN_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, codes.PROJECT_BASE)

DISCLAIMER = (
    "AI-generated preliminary read for clinical decision support; not a radiologist's report. "
    "Verify against the images."
)


class ReportUnavailable(Conflict):
    """The analysis has no findings to report (pending, running, failed or unanalysable)."""


@dataclass(frozen=True)
class ReportImage:
    """An image to attach as a Media resource, e.g. a Grad-CAM overlay of one finding.

    Either inline `data` (PNG bytes; keep small, the resource travels in cards) or a `url` the EHR
    can fetch. `level`/`condition` tie it to a finding: that Observation then lists it in derivedFrom.
    """

    key: str
    title: str
    content_type: str = "image/png"
    data: bytes | None = None
    url: str | None = None
    level: Level | None = None
    condition: Condition | None = None

    def __post_init__(self) -> None:
        if not _FHIR_ID.match(f"media-{self.key}"):
            raise BadRequest("image key must be letters, digits, '-' or '.' (at most 58 characters)")
        if (self.data is None) == (self.url is None):
            raise BadRequest("a report image needs exactly one of data or url")
        if not self.content_type.startswith("image/"):
            raise BadRequest(f"report image content type must be image/*, got {self.content_type!r}")
        if (self.level is None) != (self.condition is None):
            raise BadRequest("a report image names both level and condition, or neither")


@dataclass(frozen=True)
class ReportContext:
    """What the report needs beyond the findings: whose study, which study, and when.

    `patient_ref` is "Patient/<id>" (a bare id is accepted and prefixed). `imaging_study_ref`
    ("ImagingStudy/<id>") is used where the EHR's ImagingStudy is known; otherwise the DICOM
    Study Instance UID makes a logical reference. `issued` must be timezone-aware.
    """

    analysis_id: str
    patient_ref: str
    issued: datetime
    study_uid: str | None = None
    imaging_study_ref: str | None = None
    study_date: date | datetime | None = None
    images: tuple[ReportImage, ...] = ()
    #: The verified explanation rationale (cds.explain) and who wrote it ("template" or
    #: "model:<backend>:<model>"): becomes DiagnosticReport.presentedForm, titled with the writer.
    rationale: str | None = None
    rationale_writer: str | None = None

    def __post_init__(self) -> None:
        if self.rationale is not None and (not self.rationale.strip() or not self.rationale_writer):
            raise BadRequest("a report rationale needs non-empty text and its writer")
        if not _FHIR_ID.match(self.analysis_id):
            raise BadRequest("analysis id must be a FHIR id (letters, digits, '-', '.')")
        ref = self.patient_ref if "/" in self.patient_ref else f"Patient/{self.patient_ref}"
        if not _PATIENT_REF.match(ref):
            raise BadRequest("patient reference must be Patient/<id>")
        object.__setattr__(self, "patient_ref", ref)
        if self.imaging_study_ref is not None and not _IMAGING_STUDY_REF.match(self.imaging_study_ref):
            raise BadRequest("imaging study reference must be ImagingStudy/<id>")
        if self.study_uid is not None and not _DICOM_UID.match(self.study_uid):
            raise BadRequest("study UID must be a DICOM UID (digits and dots)")
        if self.issued.tzinfo is None:
            raise BadRequest("issued must be timezone-aware")
        keys = [img.key for img in self.images]
        if len(keys) != len(set(keys)):
            raise BadRequest("report image keys must be unique")
        object.__setattr__(self, "images", tuple(self.images))


# --- references: contained ("#id") or bundle (urn:uuid) ----------------------------------------


@dataclass(frozen=True)
class _Linker:
    """How resources refer to each other; the same builders serve both output shapes."""

    contained: bool
    analysis_id: str

    def ref(self, local_id: str) -> str:
        if self.contained:
            return f"#{local_id}"
        return self.full_url(local_id)

    def full_url(self, local_id: str) -> str:
        return f"urn:uuid:{uuid.uuid5(_URN_NAMESPACE, f'{self.analysis_id}/{local_id}')}"


def _observation_id(level: Level, condition: Condition) -> str:
    return f"obs-{level.value}-{condition.value.replace('_', '-')}"


_DEVICE_ID = "device"


def _media_id(image: ReportImage) -> str:
    return f"media-{image.key}"


# --- small pieces ---------------------------------------------------------------------------


def _effective(ctx: ReportContext) -> dict[str, Any]:
    if ctx.study_date is None:
        return {}
    if isinstance(ctx.study_date, datetime):
        return {"effectiveDateTime": _instant(ctx.study_date)}
    return {"effectiveDateTime": ctx.study_date.isoformat()}


def _instant(moment: datetime) -> str:
    """UTC with 'Z', to the second: the form fhir.resources itself serialises (naive = UTC)."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _imaging_study_reference(ctx: ReportContext) -> dict[str, Any] | None:
    if ctx.imaging_study_ref is not None:
        return {"reference": ctx.imaging_study_ref}
    if ctx.study_uid is not None:
        return {
            "type": "ImagingStudy",
            "identifier": {"system": codes.DICOM_UID, "value": f"urn:oid:{ctx.study_uid}"},
        }
    return None


def _format_measurement(name: MeasurementName, value: float) -> str:
    if name.unit == "1":
        return f"{name.display} {value * 100:.0f} %"
    return f"{name.display} {value:.1f} {name.unit}"


def _finding_title(finding: Finding) -> str:
    return f"{finding.grade.display} {finding.condition.display} at {finding.level.value}"


def _body_site(finding: Finding) -> dict[str, Any]:
    level_code = codes.LEVEL_CODES[finding.level]
    side = finding.condition.side
    site: dict[str, Any] = {"coding": [level_code.coding()]}
    if side is None:
        site["text"] = f"{finding.level.value} disc level"
        return site
    site["text"] = f"{finding.level.value} disc level, {side.value}"
    site["extension"] = [
        {
            "url": codes.LATERALITY_EXTENSION,
            "valueCodeableConcept": codes.LATERALITY_CODES[side].concept(),
        }
    ]
    return site


def _measurement_components(finding: Finding) -> list[dict[str, Any]]:
    deciding = finding.condition.deciding_measurement
    thresholds = THRESHOLDS[finding.condition]
    ordered = sorted(
        finding.measurements.items(),
        key=lambda kv: (kv[0] is not deciding, list(MeasurementName).index(kv[0])),
    )
    out: list[dict[str, Any]] = []
    for name, value in ordered:
        comp: dict[str, Any] = {
            "code": codes.MEASUREMENT_CODES[name].concept(name.display),
            "valueQuantity": codes.ucum_quantity(value, name.unit),
        }
        if name is deciding:
            ranges = "; ".join(f"{g.display} {thresholds.describe(g)}" for g in Grade)
            comp["referenceRange"] = [
                {
                    "low": codes.ucum_quantity(thresholds.moderate_below, name.unit),
                    "text": f"Grades by {name.display}: {ranges}",
                }
            ]
        out.append(comp)
    return out


def _finding_components(finding: Finding) -> list[dict[str, Any]]:
    presence = codes.PRESENT if finding.grade.present else codes.ABSENT
    comps: list[dict[str, Any]] = [
        {"code": codes.STENOSIS_PRESENCE.concept(), "valueCodeableConcept": presence.concept()},
        {
            "code": codes.PROBABILITY.concept(),
            "valueQuantity": codes.ucum_quantity(finding.probability, "1"),
        },
        {"code": codes.UNCERTAIN.concept(), "valueBoolean": bool(finding.uncertain)},
    ]
    comps.extend(_measurement_components(finding))
    return comps


def _note_for(finding: Finding) -> list[dict[str, Any]]:
    if not finding.uncertain:
        return []
    return [
        {
            "text": (
                "Uncertain: the model's confidence or the measurement is near a grade threshold; "
                "review the images at this level."
            )
        }
    ]


def _grade_concept(grade: Grade) -> dict[str, Any]:
    return {
        "coding": [codes.GRADE_CODES[grade].coding(), codes.PROJECT_GRADE_CODES[grade].coding()],
        "text": grade.display,
    }


# --- resources (plain dicts, validated once as a whole by the public builders) ---


def _device(analysis: AnalysisResult, link: _Linker) -> dict[str, Any]:
    """The software that made the findings, with one version entry per model."""
    versions = sorted(analysis.model_versions.items())
    fingerprint = hashlib.sha256(repr(versions).encode()).hexdigest()[:16]
    device: dict[str, Any] = {
        "resourceType": "Device",
        "meta": _SECURITY,
        "identifier": [{"system": codes.DEVICE_IDENTIFIER_SYSTEM, "value": f"cds-spine-{fingerprint}"}],
        "status": "active",
        "manufacturer": "cds-spine project",
        "deviceName": [{"name": "cds-spine lumbar MRI stenosis grading", "type": "model-name"}],
        "type": {"text": "AI software for lumbar spine MRI decision support"},
    }
    if versions:
        device["version"] = [{"type": {"text": name}, "value": str(ver)} for name, ver in versions]
    if link.contained:
        device["id"] = _DEVICE_ID
    return device


def _observation(
    finding: Finding,
    analysis_id: str,
    ctx: ReportContext,
    link: _Linker,
) -> dict[str, Any]:
    """One Observation for one (level, condition): grade as value, measurements as components."""
    obs_id = _observation_id(finding.level, finding.condition)
    derived: list[dict[str, Any]] = []
    study = _imaging_study_reference(ctx)
    if study is not None:
        derived.append(study)
    derived.extend(
        {"reference": link.ref(_media_id(img))}
        for img in ctx.images
        if img.level is finding.level and img.condition is finding.condition
    )
    interpretation = codes.INTERPRETATION_ABNORMAL if finding.grade.present else codes.INTERPRETATION_NORMAL
    condition_code = codes.CONDITION_CODES[finding.condition]
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "meta": _SECURITY,
        "identifier": [
            {
                "system": codes.FINDING_IDENTIFIER_SYSTEM,
                "value": f"{analysis_id}/{finding.level.value}/{finding.condition.value}",
            }
        ],
        "status": "preliminary",
        "category": [codes.OBSERVATION_CATEGORY_IMAGING.concept()],
        "code": condition_code.concept(f"{finding.condition.display} at {finding.level.value}"),
        "subject": {"reference": ctx.patient_ref},
        **_effective(ctx),
        "issued": _instant(ctx.issued),
        "valueCodeableConcept": _grade_concept(finding.grade),
        "interpretation": [interpretation.concept()],
        "bodySite": _body_site(finding),
        "device": {"reference": link.ref(_DEVICE_ID)},
        "component": _finding_components(finding),
    }
    if note := _note_for(finding):
        obs["note"] = note
    if derived:
        obs["derivedFrom"] = derived
    if link.contained:
        obs["id"] = obs_id
    return obs


def _media(image: ReportImage, ctx: ReportContext, link: _Linker) -> dict[str, Any]:
    """An image resource (Grad-CAM overlay, annotated slice) attached to the report."""
    content: dict[str, Any] = {"contentType": image.content_type, "title": image.title}
    if image.data is not None:
        content["data"] = base64.b64encode(image.data).decode("ascii")
    else:
        content["url"] = image.url
    media: dict[str, Any] = {
        "resourceType": "Media",
        "meta": _SECURITY,
        "identifier": [{"system": codes.MEDIA_IDENTIFIER_SYSTEM, "value": f"{ctx.analysis_id}/{image.key}"}],
        "status": "completed",
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/media-type",
                    "code": "image",
                    "display": "Image",
                }
            ]
        },
        "subject": {"reference": ctx.patient_ref},
        "issued": _instant(ctx.issued),
        "device": {"reference": link.ref(_DEVICE_ID)},
        "content": content,
    }
    if image.level is not None:
        media["bodySite"] = codes.LEVEL_CODES[image.level].concept(image.level.value)
    if link.contained:
        media["id"] = _media_id(image)
    return media


def conclusion_text(analysis: AnalysisResult) -> str:
    """Plain-language summary: every moderate/severe finding, worst first, with its deciding number."""
    present = sorted(
        (f for f in analysis.findings if f.grade.present),
        key=lambda f: (-f.grade.rank, -f.level.index, list(Condition).index(f.condition)),
    )
    parts: list[str] = []
    for f in present:
        text = _finding_title(f)
        value = f.deciding_value
        if value is not None:
            name = f.condition.deciding_measurement
            threshold = THRESHOLDS[f.condition].describe(f.grade)
            text += f" ({_format_measurement(name, value)}; {f.grade.display} {threshold})"
        if f.uncertain:
            text += " [uncertain]"
        parts.append(text)
    levels = sorted({f.level for f in analysis.findings}, key=lambda lv: lv.index)
    if parts:
        body = "; ".join(p[0].upper() + p[1:] for p in parts) + "."
        body += " All other graded findings normal/mild."
    else:
        body = "No moderate or severe stenosis."
    body += " Levels graded: " + ", ".join(lv.value for lv in levels) + "."
    uncertain = sum(1 for f in analysis.findings if f.uncertain)
    if uncertain:
        body += f" {uncertain} finding(s) flagged uncertain."
    if analysis.labelling_uncertain:
        body += " Level labelling uncertain (possible transitional anatomy): check the level count."
    return f"{body} {DISCLAIMER}"


def _ordered_findings(analysis: AnalysisResult) -> list[Finding]:
    return sorted(analysis.findings, key=lambda f: (f.level.index, list(Condition).index(f.condition)))


def _check_reportable(analysis: AnalysisResult) -> None:
    if analysis.status is not AnalysisStatus.COMPLETE:
        raise ReportUnavailable(
            f"analysis status is {analysis.status.value}; only complete analyses are reported"
        )
    if not analysis.findings:
        raise ReportUnavailable("analysis has no findings")
    keys = [(f.level, f.condition) for f in analysis.findings]
    if len(keys) != len(set(keys)):
        raise ReportUnavailable("analysis has more than one finding for the same level and condition")


def _narrative(analysis: AnalysisResult) -> dict[str, Any]:
    """Human-readable XHTML of the report (EHRs that cannot read the Observations show this).

    Generated from the same findings as the coded content; every text is escaped.
    """
    rows = []
    for f in _ordered_findings(analysis):
        value = f.deciding_value
        name = f.condition.deciding_measurement
        measured = _format_measurement(name, value) if value is not None else "not measured"
        flag = " (uncertain)" if f.uncertain else ""
        cells = (
            f.level.value,
            f.condition.display,
            f.grade.display + flag,
            measured,
            f"{f.probability * 100:.0f} %",
        )
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    head = "".join(
        f"<th>{h}</th>" for h in ("Level", "Finding", "Grade", "Deciding measurement", "Probability")
    )
    div = (
        '<div xmlns="http://www.w3.org/1999/xhtml">'
        f"<p>{html.escape(conclusion_text(analysis))}</p>"
        f"<table><tr>{head}</tr>{''.join(rows)}</table></div>"
    )
    return {"status": "generated", "div": div}


def _rationale_attachment(text: str, writer: str) -> dict[str, Any]:
    """The explanation rationale as a plain-text attachment; the title names the writer, because a
    reader must know whether a language model or the fixed template produced the sentences."""
    return {
        "contentType": "text/plain; charset=utf-8",
        "language": "en",
        "data": base64.b64encode(text.encode("utf-8")).decode("ascii"),
        "title": f"AI explanation rationale (writer: {writer}; verified against the findings)",
    }


def _report_core(
    analysis: AnalysisResult, ctx: ReportContext, link: _Linker, observation_ids: Sequence[str]
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "meta": _SECURITY,
        "identifier": [{"system": codes.ANALYSIS_IDENTIFIER_SYSTEM, "value": ctx.analysis_id}],
        "status": "preliminary",
        "category": [codes.CATEGORY_RADIOLOGY.concept()],
        "code": codes.REPORT_MR_LUMBAR_SPINE.concept("MR lumbar spine: AI stenosis grading (preliminary)"),
        "subject": {"reference": ctx.patient_ref},
        **_effective(ctx),
        "issued": _instant(ctx.issued),
        "result": [{"reference": link.ref(oid)} for oid in observation_ids],
        "conclusion": conclusion_text(analysis),
        "text": _narrative(analysis),
    }
    study = _imaging_study_reference(ctx)
    if study is not None:
        report["imagingStudy"] = [study]
    if any(f.grade.present for f in analysis.findings):
        report["conclusionCode"] = [codes.LUMBAR_SPINAL_STENOSIS.concept()]
    if ctx.rationale is not None:
        report["presentedForm"] = [_rationale_attachment(ctx.rationale, ctx.rationale_writer or "unknown")]
    if ctx.images:
        report["media"] = [
            {"comment": img.title, "link": {"reference": link.ref(_media_id(img))}} for img in ctx.images
        ]
    return report


def build_diagnostic_report(analysis: AnalysisResult, ctx: ReportContext) -> dict[str, Any]:
    """One self-contained DiagnosticReport (Observations, Device, Media contained) as JSON.

    This is the resource a CDS card's `create` suggestion carries. Raises ReportUnavailable for an
    analysis that is not complete.
    """
    _check_reportable(analysis)
    link = _Linker(contained=True, analysis_id=ctx.analysis_id)
    findings = _ordered_findings(analysis)
    contained: list[dict[str, Any]] = [_device(analysis, link)]
    contained.extend(_observation(f, ctx.analysis_id, ctx, link) for f in findings)
    contained.extend(_media(img, ctx, link) for img in ctx.images)
    report = _report_core(analysis, ctx, link, [_observation_id(f.level, f.condition) for f in findings])
    report["contained"] = contained
    return validate_resource(report, "DiagnosticReport", normalise=False)


def _if_none_exist(resource: Mapping[str, Any]) -> str:
    ident = resource["identifier"][0]
    return urlencode({"identifier": f"{ident['system']}|{ident['value']}"}, safe=":/|")


def build_report_bundle(analysis: AnalysisResult, ctx: ReportContext) -> dict[str, Any]:
    """A transaction Bundle writing the report and its parts as separate resources.

    Each entry is a conditional create on its identifier (analysis id, analysis id/level/condition,
    device fingerprint, analysis id/image key), so a retried write-back is idempotent.
    """
    _check_reportable(analysis)
    link = _Linker(contained=False, analysis_id=ctx.analysis_id)
    findings = _ordered_findings(analysis)
    obs_ids = [_observation_id(f.level, f.condition) for f in findings]
    parts: list[tuple[str, dict[str, Any]]] = [(_DEVICE_ID, _device(analysis, link))]
    parts.extend(zip(obs_ids, (_observation(f, ctx.analysis_id, ctx, link) for f in findings), strict=True))
    parts.extend((_media_id(img), _media(img, ctx, link)) for img in ctx.images)
    parts.append(("report", _report_core(analysis, ctx, link, obs_ids)))
    entries = [
        {
            "fullUrl": link.full_url(local_id),
            "resource": resource,
            "request": {
                "method": "POST",
                "url": resource["resourceType"],
                "ifNoneExist": _if_none_exist(resource),
            },
        }
        for local_id, resource in parts
    ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    return validate_resource(bundle, "Bundle", normalise=False)
