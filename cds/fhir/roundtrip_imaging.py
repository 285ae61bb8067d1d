"""Find a study in the EHR's FHIR server: its ImagingStudy, Patient, order and DICOMweb Endpoint.

Used by the write-back (patient, study reference, order) and by the ANALYZE job for a study whose
images are not located yet (the Endpoint's address becomes its source), both with the service's
own credential for the configured server (CDS_FHIR_WRITEBACK_URL / CDS_FHIR_WRITEBACK_TOKEN), and
by `cds roundtrip`.

Searched by StudyInstanceUID (identifier urn:dicom:uid|urn:oid:<uid>) with
`_include=ImagingStudy:endpoint`; an Endpoint the server did not include is read by reference.
Every resource is validated (fhir.resources R4B) before it is used: it came from outside.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cds.config import Settings
from cds.fhir.client import FhirClient, ResourceNotFound
from cds.fhir.resources import validate_resource

DICOM_UID_SYSTEM = "urn:dicom:uid"


@dataclass(frozen=True)
class ResolvedStudy:
    imaging_study: dict[str, Any] = field(repr=False)
    endpoints: tuple[dict[str, Any], ...] = field(repr=False)

    @property
    def reference(self) -> str:
        return f"ImagingStudy/{self.imaging_study['id']}"

    @property
    def patient_ref(self) -> str:
        ref = str((self.imaging_study.get("subject") or {}).get("reference", ""))
        return "Patient/" + ref.rsplit("Patient/", 1)[-1] if "Patient/" in ref else ""

    @property
    def based_on(self) -> tuple[str, ...]:
        refs = [str(b.get("reference", "")) for b in self.imaging_study.get("basedOn") or []]
        return tuple(
            "ServiceRequest/" + r.rsplit("ServiceRequest/", 1)[-1] for r in refs if "ServiceRequest/" in r
        )


def _endpoint_ids(study: dict[str, Any]) -> list[str]:
    refs = [r.get("reference", "") for r in study.get("endpoint") or []]
    for series in study.get("series") or []:
        refs += [r.get("reference", "") for r in series.get("endpoint") or []]
    return [r.rsplit("Endpoint/", 1)[-1] for r in refs if isinstance(r, str) and "Endpoint/" in r]


def resolve_imaging_study(
    client: FhirClient, study_uid: str, *, patient_id: str | None = None
) -> ResolvedStudy | None:
    """The EHR's ImagingStudy for `study_uid` (of `patient_id` when given) with its Endpoints, or
    None when the EHR has none."""
    params = {"identifier": f"{DICOM_UID_SYSTEM}|urn:oid:{study_uid}", "_include": "ImagingStudy:endpoint"}
    if patient_id:
        params["patient"] = patient_id
    bundle = client.search("ImagingStudy", params)
    studies: list[dict[str, Any]] = []
    endpoints: dict[str, dict[str, Any]] = {}
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        if resource.get("resourceType") == "ImagingStudy" and resource.get("status") != "entered-in-error":
            studies.append(validate_resource(resource, "ImagingStudy"))
        elif resource.get("resourceType") == "Endpoint" and resource.get("id"):
            endpoints[str(resource["id"])] = validate_resource(resource, "Endpoint")
    if not studies:
        return None
    study = studies[0]
    for endpoint_id in _endpoint_ids(study):
        if endpoint_id not in endpoints:
            try:
                endpoints[endpoint_id] = validate_resource(client.read(f"Endpoint/{endpoint_id}"), "Endpoint")
            except ResourceNotFound:
                continue
    return ResolvedStudy(study, tuple(endpoints.values()))


def ehr_client(settings: Settings) -> FhirClient:
    """A client for the configured EHR server (CDS_FHIR_WRITEBACK_URL) with the service's token."""
    host = urlsplit(settings.fhir_writeback_url).hostname or ""
    return FhirClient(
        settings.fhir_writeback_url,
        settings.fhir_writeback_token or None,
        (host, *settings.fhir_allowed_hosts),
        max(settings.fhir_timeout_s, 10.0),
    )


def imaging_source_uri(settings: Settings, study_uid: str) -> str | None:
    """The DICOMweb study URL from the EHR's ImagingStudy Endpoint, or None (not configured, no
    ImagingStudy). The Endpoint must pass cds.dicom.sources.endpoint's checks (dicom-wado-rs, a
    host that is the configured PACS or in CDS_DICOMWEB_ALLOWED_HOSTS): no SSRF through the EHR."""
    if not settings.fhir_writeback_url:
        return None
    from cds.dicom.sources.endpoint import source_for_imaging_study

    found = resolve_imaging_study(ehr_client(settings), study_uid)
    if found is None:
        return None
    source = source_for_imaging_study(found.imaging_study, found.endpoints, settings)
    return f"{source.base_url}/studies/{study_uid}"
