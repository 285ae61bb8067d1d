"""The patient's lumbar spine MRI studies, read from the EHR's ImagingStudy resources.

The EHR knows the patient by its FHIR id, the store knows studies by DICOM StudyInstanceUID; the
ImagingStudy resource is the bridge. A study counts as a lumbar MRI when it is MR (study or series
modality) and lumbar by procedure code, body site, DICOM body part or description, because real
EHRs fill in different subsets of these fields.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from cds.hooks.codes import LUMBAR_BODY_PART_EXAMINED, LUMBAR_BODY_SITES, LUMBAR_MRI_PROCEDURES
from cds.hooks.fhirjson import as_dict, as_list, bundle_resources, codings, fhir_date, text

_DICOM_UID_SYSTEM = "urn:dicom:uid"
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_LUMBAR_TEXT = re.compile(r"\b(lumbar|lumbosacral|l[\s-]?spine|ls[\s-]?spine)\b", re.IGNORECASE)
_EXCLUDED_STATUS = frozenset({"cancelled", "entered-in-error"})


@dataclass(frozen=True)
class LumbarStudy:
    study_uid: str
    started: date | None
    description: str | None
    #: 'ServiceRequest/<id>' references this study was acquired for (ImagingStudy.basedOn).
    based_on: frozenset[str]
    #: The EHR's ImagingStudy.id, for references from the report.
    resource_id: str | None = None
    #: The ImagingStudy resource and the searchset's Endpoint resources: where the images are
    #: (ImagingStudy.endpoint), read only when the study is registered. Not part of equality/hash.
    resource: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    endpoints: tuple[Mapping[str, Any], ...] = field(default=(), compare=False, repr=False)


def study_uid(resource: Mapping[str, Any]) -> str | None:
    """StudyInstanceUID: the urn:dicom:uid identifier, else any identifier that is a DICOM UID."""
    values: list[tuple[bool, str]] = []
    for ident in as_list(resource.get("identifier")):
        ident = as_dict(ident)
        value = ident.get("value")
        if not isinstance(value, str):
            continue
        uid = value.removeprefix("urn:oid:").strip()
        if len(uid) <= 64 and _UID.match(uid):
            values.append((ident.get("system") == _DICOM_UID_SYSTEM, uid))
    values.sort(key=lambda v: not v[0])
    return values[0][1] if values else None


def _is_mr(resource: Mapping[str, Any]) -> bool:
    modalities = [c for m in as_list(resource.get("modality")) for c in codings(m)]
    modalities += [c for s in as_list(resource.get("series")) for c in codings(as_dict(s).get("modality"))]
    return any(code == "MR" for _, code in modalities)


def _is_lumbar(resource: Mapping[str, Any]) -> bool:
    if any(c in LUMBAR_MRI_PROCEDURES for p in as_list(resource.get("procedureCode")) for c in codings(p)):
        return True
    texts = [text(resource.get("description"))]
    for series in as_list(resource.get("series")):
        series = as_dict(series)
        site = as_dict(series.get("bodySite"))
        if any(c in LUMBAR_BODY_SITES for c in codings(site)):
            return True
        if any(code.upper() in LUMBAR_BODY_PART_EXAMINED for _, code in codings(site)):
            return True
        texts += [text(series.get("description")), text(site.get("display"))]
    texts += [text(as_dict(p).get("text")) for p in as_list(resource.get("procedureCode"))]
    return any(t and _LUMBAR_TEXT.search(t) for t in texts)


def _is_patient(reference: str, patient_id: str) -> bool:
    local = f"Patient/{patient_id}"
    return reference == local or reference.endswith("/" + local)


def lumbar_mri_studies(bundle: Mapping[str, Any] | None, patient_id: str) -> tuple[LumbarStudy, ...]:
    """Lumbar MRI studies of `patient_id` in an ImagingStudy searchset, newest first.

    Studies of another patient (a misdirected prefetch) and studies without a usable
    StudyInstanceUID are skipped: neither can be matched to a stored analysis safely.
    """
    seen: dict[str, LumbarStudy] = {}
    endpoints = tuple(bundle_resources(bundle, "Endpoint"))
    for resource in bundle_resources(bundle, "ImagingStudy"):
        if resource.get("status") in _EXCLUDED_STATUS:
            continue
        subject = as_dict(resource.get("subject")).get("reference")
        if isinstance(subject, str) and not _is_patient(subject, patient_id):
            continue
        if not (_is_mr(resource) and _is_lumbar(resource)):
            continue
        uid = study_uid(resource)
        if uid is None or uid in seen:
            continue
        based_on = frozenset(
            ref
            for b in as_list(resource.get("basedOn"))
            if isinstance(ref := as_dict(b).get("reference"), str)
        )
        rid = resource.get("id")
        seen[uid] = LumbarStudy(
            uid,
            fhir_date(resource.get("started")),
            text(resource.get("description")),
            based_on,
            rid if isinstance(rid, str) and re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", rid) else None,
            resource=resource,
            endpoints=endpoints,
        )
    return tuple(sorted(seen.values(), key=lambda s: (s.started or date.min, s.study_uid), reverse=True))
