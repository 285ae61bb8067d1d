"""What the three lumbar MRI services share: prefetch templates and the study-based decision."""

from __future__ import annotations

from typing import Any

from cds.hooks.advice import advise
from cds.hooks.cards import Framing
from cds.hooks.prefetch import PrefetchTemplate
from cds.hooks.service import HookCall
from cds.hooks.studies import lumbar_mri_studies

PATIENT = PrefetchTemplate("patient", "Patient/{{context.patientId}}", "Patient", required=False)
#: The patient's MR studies; lumbar ones are picked out locally (EHRs code body sites unevenly).
#: `_include=ImagingStudy:endpoint` brings each study's DICOMweb Endpoint into the same Bundle, so
#: cds.hooks.imagesource reads the images where the EHR says they are (not only CDS_DICOMWEB_URL).
STUDIES = PrefetchTemplate(
    "studies",
    "ImagingStudy?patient={{context.patientId}}&modality=MR&_include=ImagingStudy:endpoint",
    "Bundle",
    required=True,
)
#: Prior lumbar MRI reports (LOINC 24968-0, 24967-2): a radiologist's read on file is worth saying.
REPORTS = PrefetchTemplate(
    "reports",
    "DiagnosticReport?patient={{context.patientId}}&code=http://loinc.org|24968-0,http://loinc.org|24967-2",
    "Bundle",
    required=False,
)
TEMPLATES = (PATIENT, STUDIES, REPORTS)

USAGE = (
    "Send a JWT signed with a key from the JWKS registered for your issuer. Provide the prefetch "
    "keys, or fhirServer with fhirAuthorization (host must be allow-listed). Lumbar spine MRI "
    "studies must be reachable by the service's PACS connection to be analysed."
)


def study_cards(
    call: HookCall, framing: Framing, exclude_orders: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    data = call.prefetched()
    studies = lumbar_mri_studies(data.get("studies"), call.patient_id)
    return advise(studies, call.card_request(framing), call.catalog, call.presenter, exclude_orders)
