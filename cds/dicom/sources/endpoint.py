"""From a FHIR ImagingStudy and its Endpoint (plain JSON dicts) to a DicomWebSource.

Why the host check: the Endpoint address comes from the EHR, and following it blindly would let
any client make this service fetch arbitrary URLs (SSRF) - and, worse, send it our PACS
credentials. An address is used only when its host is the configured DICOMweb server's or listed
in CDS_DICOMWEB_ALLOWED_HOSTS, and credentials go only to the configured server's origin.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from cds.config import Settings
from cds.dicom.errors import IngestKind, ingest_error
from cds.dicom.limits import DEFAULT_LIMITS, IngestLimits
from cds.dicom.sources.dicomweb import DicomWebAuth, DicomWebSource, RetryPolicy

WADO_RS = "dicom-wado-rs"
CONNECTION_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
DICOM_UID_SYSTEM = "urn:dicom:uid"
_UNUSABLE_STATUS = frozenset({"off", "error", "entered-in-error", "suspended"})


def study_uid_of(imaging_study: Mapping[str, Any]) -> str:
    """The StudyInstanceUID of an ImagingStudy (identifier system urn:dicom:uid, value urn:oid:...)."""
    for ident in imaging_study.get("identifier") or []:
        value = str(ident.get("value", ""))
        if ident.get("system") == DICOM_UID_SYSTEM or value.startswith("urn:oid:"):
            uid = value.removeprefix("urn:oid:")
            if uid:
                return uid
    raise ingest_error(
        IngestKind.UNSUPPORTED_ENDPOINT, "ImagingStudy has no DICOM StudyInstanceUID identifier"
    )


def source_for_endpoint(
    endpoint: Mapping[str, Any],
    study_uid: str,
    settings: Settings,
    *,
    limits: IngestLimits = DEFAULT_LIMITS,
) -> DicomWebSource:
    """A DicomWebSource for one Endpoint resource (R4 or R5 shape) and study."""
    if endpoint.get("resourceType") != "Endpoint":
        raise ingest_error(IngestKind.UNSUPPORTED_ENDPOINT, "expected an Endpoint resource")
    if str(endpoint.get("status", "active")) in _UNUSABLE_STATUS:
        raise ingest_error(IngestKind.UNSUPPORTED_ENDPOINT, f"Endpoint status is {endpoint.get('status')}")
    if WADO_RS not in _connection_codes(endpoint):
        raise ingest_error(IngestKind.UNSUPPORTED_ENDPOINT, "Endpoint connectionType is not dicom-wado-rs")
    address = str(endpoint.get("address", "")).rstrip("/")
    parts = urlsplit(address)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ingest_error(IngestKind.UNSUPPORTED_ENDPOINT, "Endpoint address is not an http(s) URL")
    configured = urlsplit(settings.dicomweb_url) if settings.dicomweb_url else None
    allowed = {h.lower() for h in settings.dicomweb_allowed_hosts}
    if configured is not None and configured.hostname:
        allowed.add(configured.hostname.lower())
    if parts.hostname.lower() not in allowed:
        raise ingest_error(IngestKind.UNSUPPORTED_ENDPOINT, f"Endpoint host {parts.hostname} is not allowed")
    same_origin = configured is not None and (configured.scheme, configured.netloc) == (
        parts.scheme,
        parts.netloc,
    )
    auth = settings_auth(settings) if same_origin else DicomWebAuth()
    return DicomWebSource(address, study_uid, auth=auth, retry=settings_retry(settings), limits=limits)


def source_for_imaging_study(
    imaging_study: Mapping[str, Any],
    endpoints: Iterable[Mapping[str, Any]],
    settings: Settings,
    *,
    limits: IngestLimits = DEFAULT_LIMITS,
) -> DicomWebSource:
    """Resolve ImagingStudy.endpoint (then series[].endpoint) against `endpoints` and contained resources."""
    by_ref: dict[str, Mapping[str, Any]] = {}
    for ep in endpoints:
        if ep.get("id"):
            by_ref[f"Endpoint/{ep['id']}"] = ep
    for ep in imaging_study.get("contained") or []:
        if ep.get("resourceType") == "Endpoint" and ep.get("id"):
            by_ref[f"#{ep['id']}"] = ep
    refs = [r.get("reference", "") for r in imaging_study.get("endpoint") or []]
    for series in imaging_study.get("series") or []:
        refs += [r.get("reference", "") for r in series.get("endpoint") or []]
    study_uid = study_uid_of(imaging_study)
    last_error = None
    for ref in refs:
        key = ref if ref.startswith("#") else "Endpoint/" + ref.rsplit("Endpoint/", 1)[-1]
        endpoint = by_ref.get(key)
        if endpoint is None:
            continue
        try:
            return source_for_endpoint(endpoint, study_uid, settings, limits=limits)
        except Exception as exc:  # try the next endpoint; report the last reason
            last_error = exc
    if last_error is not None:
        raise last_error
    raise ingest_error(
        IngestKind.UNSUPPORTED_ENDPOINT, "ImagingStudy has no resolvable dicom-wado-rs Endpoint"
    )


def configured_source(
    settings: Settings, study_uid: str, *, limits: IngestLimits = DEFAULT_LIMITS
) -> DicomWebSource:
    """The study on the PACS configured by CDS_DICOMWEB_URL (with its credentials and timeout)."""
    if not settings.dicomweb_url:
        raise ingest_error(
            IngestKind.UNSUPPORTED_ENDPOINT, "no DICOMweb server configured (CDS_DICOMWEB_URL)"
        )
    return DicomWebSource(
        settings.dicomweb_url,
        study_uid,
        auth=settings_auth(settings),
        retry=settings_retry(settings),
        limits=limits,
    )


def settings_auth(settings: Settings) -> DicomWebAuth:
    return DicomWebAuth(
        username=settings.dicomweb_username,
        password=settings.dicomweb_password,
        bearer_token=settings.dicomweb_bearer_token,
    )


def settings_retry(settings: Settings) -> RetryPolicy:
    return RetryPolicy(read_timeout_s=settings.dicomweb_timeout_s)


def _connection_codes(endpoint: Mapping[str, Any]) -> set[str]:
    """R4: connectionType is one Coding; R5: a list of CodeableConcepts."""
    raw = endpoint.get("connectionType")
    items = raw if isinstance(raw, list) else [raw] if raw else []
    codes = set()
    for item in items:
        codings = item.get("coding", [item]) if isinstance(item, Mapping) else []
        for coding in codings:
            if coding.get("system", CONNECTION_TYPE_SYSTEM) == CONNECTION_TYPE_SYSTEM and coding.get("code"):
                codes.add(str(coding["code"]))
    return codes
