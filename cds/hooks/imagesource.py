"""Where the images of a study known only from the EHR are: the source_uri it is registered with.

In order of preference:
1. the ImagingStudy's own Endpoint (ImagingStudy.endpoint or series[].endpoint, resolved against
   contained resources and Endpoints in the searchset), through
   cds.dicom.sources.endpoint.source_for_imaging_study, which accepts only dicom-wado-rs
   Endpoints on the configured PACS or a host in CDS_DICOMWEB_ALLOWED_HOSTS (no SSRF);
2. the local DICOM folder, when a folder named after the StudyInstanceUID exists there
   (<CDS_DICOM_DIR>/<uid>, or <uid>/dicom as the demo lays studies out);
3. the configured PACS (CDS_DICOMWEB_URL), asked for the study by UID.
None when none applies: the analysis then fails with a retryable reason and is tried again later.
"""

from __future__ import annotations

import logging

from cds.config import Settings
from cds.errors import CdsError
from cds.hooks.fhirjson import as_dict, as_list
from cds.hooks.studies import LumbarStudy

log = logging.getLogger(__name__)


def _has_endpoint_refs(study: LumbarStudy) -> bool:
    resource = study.resource or {}
    if as_list(resource.get("endpoint")):
        return True
    return any(as_list(as_dict(s).get("endpoint")) for s in as_list(resource.get("series")))


def _from_endpoint(study: LumbarStudy, settings: Settings) -> str | None:
    if study.resource is None or not _has_endpoint_refs(study):
        return None
    # Imported here: the DICOMweb source brings pydicom, needed only when an Endpoint is given.
    from cds.dicom.sources.endpoint import source_for_imaging_study

    try:
        source = source_for_imaging_study(study.resource, study.endpoints, settings)
    except CdsError as exc:  # not allowed, wrong type, unresolvable: fall back to the others
        log.info("imaging study endpoint not usable: %s", type(exc).__name__)
        return None
    return f"{source.base_url}/studies/{study.study_uid}"


def _from_local_folder(study: LumbarStudy, settings: Settings) -> str | None:
    # study_uid is a validated DICOM UID (digits and dots): it cannot leave the folder.
    root = settings.resolved_dicom_dir / study.study_uid
    for candidate in (root / "dicom", root):
        if candidate.is_dir():
            return str(candidate)
    return None


def source_uri_for(study: LumbarStudy, settings: Settings) -> str | None:
    """The source_uri to register for `study` (see the module docstring), or None."""
    found = _from_endpoint(study, settings) or _from_local_folder(study, settings)
    if found is None and settings.dicomweb_url:
        found = f"{settings.dicomweb_url.rstrip('/')}/studies/{study.study_uid}"
    return found
