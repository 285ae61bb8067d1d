"""Code systems and the code sets that identify a lumbar spine MRI (order or study).

Kept apart from cds.fhir.codes (which codes what the *report* asserts) because these sets decide
what the hooks *recognise*; every code here was checked against a published source:
- CPT 72148 / 72149 / 72158: MRI lumbar spinal canal without / with / without-then-with contrast.
- LOINC 24968-0 "MR Lumbar spine", 24967-2 "MR Lumbar spine WO and W contrast" (FINDINGS.md).
- SNOMED CT procedures "Magnetic resonance imaging of lumbar spine ..." as listed in the Belgian
  eHealth value set be-vs-diagnostic-imaging-procedure (SNOMED CT International + US extension):
  41333006 (with contrast), 394451000119106 (without contrast), 433141005 (lumbar and sacral
  spine), 433140006 (lumbar and sacral spine with contrast), 726546000 (lumbar spine and
  sacroiliac joint), 709653005 (lumbar spine and sacroiliac joint with contrast).
- Body site: SNOMED 122496007 "Lumbar spine structure" (DICOM CID 4031 for Body Part Examined
  LSPINE / LSSPINE). Not 18347007: FINDINGS.md calls it "lumbar region", but in SNOMED CT it is the
  disorder "Spinal stenosis of lumbar region" (see cds.fhir.codes), never a body site.
"""

from __future__ import annotations

from types import MappingProxyType

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
CPT = "http://www.ama-assn.org/go/cpt"
DICOM_DCM = "http://dicom.nema.org/resources/ontology/DCM"

#: Alternative spellings of the same code systems that EHRs send (HL7 OIDs).
SYSTEM_ALIASES = MappingProxyType(
    {
        "urn:oid:2.16.840.1.113883.6.96": SNOMED,
        "urn:oid:2.16.840.1.113883.6.1": LOINC,
        "urn:oid:2.16.840.1.113883.6.12": CPT,
        "urn:oid:1.2.840.10008.2.16.4": DICOM_DCM,
    }
)

LUMBAR_MRI_PROCEDURES: frozenset[tuple[str, str]] = frozenset(
    {
        (CPT, "72148"),
        (CPT, "72149"),
        (CPT, "72158"),
        (LOINC, "24968-0"),
        (LOINC, "24967-2"),
        (SNOMED, "41333006"),
        (SNOMED, "394451000119106"),
        (SNOMED, "433141005"),
        (SNOMED, "433140006"),
        (SNOMED, "726546000"),
        (SNOMED, "709653005"),
    }
)

LUMBAR_BODY_SITES: frozenset[tuple[str, str]] = frozenset({(SNOMED, "122496007")})

#: DICOM Body Part Examined values that mean the lumbar spine (PS3.16 Annex L).
LUMBAR_BODY_PART_EXAMINED: frozenset[str] = frozenset({"LSPINE", "LSSPINE"})


def canonical_system(system: object) -> str | None:
    """The canonical URI for a coding system (OIDs mapped), or None for a non-string."""
    if not isinstance(system, str):
        return None
    return SYSTEM_ALIASES.get(system, system)
