"""Radiologist reports already on file for the patient's lumbar MRI studies (prefetch `reports`).

A card that shows an AI read should say when a radiologist's report for the same study exists:
the clinician should read that first. Reports labelled AI-asserted (meta.security AIAST, e.g. a
report this service suggested and the EHR filed) are not radiologist reports and are skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from cds.hooks.fhirjson import as_dict, as_list, bundle_resources, fhir_date

_AI_ASSERTED = ("http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "AIAST")
_REPORTED = frozenset({"final", "amended", "corrected", "appended", "preliminary"})


@dataclass(frozen=True)
class ReportOnFile:
    status: str
    issued: date | None


def _issued(resource: Mapping[str, Any]) -> date | None:
    return fhir_date(resource.get("issued") or resource.get("effectiveDateTime"))


def _ai_asserted(resource: Mapping[str, Any]) -> bool:
    labels = as_list(as_dict(resource.get("meta")).get("security"))
    return any((as_dict(c).get("system"), as_dict(c).get("code")) == _AI_ASSERTED for c in labels)


def reports_by_study(bundle: Mapping[str, Any] | None) -> dict[str, ReportOnFile]:
    """Newest human report per referenced ImagingStudy id ('ImagingStudy/<id>' -> report)."""
    found: dict[str, ReportOnFile] = {}
    for resource in bundle_resources(bundle, "DiagnosticReport"):
        status = resource.get("status")
        if status not in _REPORTED or _ai_asserted(resource):
            continue
        report = ReportOnFile(str(status), _issued(resource))
        for ref in as_list(resource.get("imagingStudy")):
            target = as_dict(ref).get("reference")
            if not isinstance(target, str) or not target.startswith("ImagingStudy/"):
                continue
            study_id = target.removeprefix("ImagingStudy/")
            current = found.get(study_id)
            if current is None or (report.issued or date.min) > (current.issued or date.min):
                found[study_id] = report
    return found
