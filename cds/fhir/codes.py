"""Terminology for the FHIR resources: LOINC, SNOMED CT, HL7 and the project's own code system.

Source: ../shared/spec/FINDINGS.md "Codes for FHIR". Every standard code below was checked
against a published value set (DICOM CID 1003 for the disc levels, CID 3832 / SNOMED qualifier
values for severity and laterality, LOINC for the report). Where no standard code exists (neural
foraminal and lateral recess stenosis as distinct findings, and the measurements the pipeline
makes) the code comes from the project's own code system, PROJECT_CODE_SYSTEM, with display text:
an invented SNOMED or LOINC code would look authoritative to a receiving system and be wrong.

Note on SNOMED 18347007: FINDINGS.md lists it as "lumbar region", but in SNOMED CT it is the
disorder "Spinal stenosis of lumbar region" (the concept ICD-10 M48.06 maps to). It is therefore
used as the report's conclusion code when a lumbar stenosis is present, never as a body site.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cds.domain import Condition, Grade, Level, MeasurementName, Side

# --- code system URIs -------------------------------------------------------------------------
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
V3_OBSERVATION_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
V3_OBSERVATION_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DICOM_UID = "urn:dicom:uid"

#: The project's namespace. It is a stable identifier, not a URL that must resolve; changing it
#: would orphan every identifier already written to an EHR, so it is fixed here once.
PROJECT_BASE = "https://cds-spine.example/fhir"
#: Project code system for findings and measurements that have no standard code.
PROJECT_CODE_SYSTEM = f"{PROJECT_BASE}/CodeSystem/finding"
#: Identifier systems (conditional create keys) for resources this service writes.
ANALYSIS_IDENTIFIER_SYSTEM = f"{PROJECT_BASE}/sid/analysis"
FINDING_IDENTIFIER_SYSTEM = f"{PROJECT_BASE}/sid/finding"
DEVICE_IDENTIFIER_SYSTEM = f"{PROJECT_BASE}/sid/device"
MEDIA_IDENTIFIER_SYSTEM = f"{PROJECT_BASE}/sid/media"
#: Core extension (FHIR Extensions Pack) for laterality on Observation.bodySite.
LATERALITY_EXTENSION = "http://hl7.org/fhir/StructureDefinition/observation-structureLaterality"


@dataclass(frozen=True)
class Code:
    """One code in one system, with its display text; renders as FHIR Coding / CodeableConcept."""

    system: str
    code: str
    display: str

    def coding(self) -> dict[str, Any]:
        return {"system": self.system, "code": self.code, "display": self.display}

    def concept(self, text: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"coding": [self.coding()]}
        if text:
            out["text"] = text
        return out


# --- report -----------------------------------------------------------------------------------
REPORT_MR_LUMBAR_SPINE = Code(LOINC, "24968-0", "MR Lumbar spine")
REPORT_MR_LUMBAR_SPINE_WO_W_CONTRAST = Code(LOINC, "24967-2", "MR Lumbar spine WO and W contrast IV")
#: LOINC codes a lumbar spine MRI report (or order) may carry.
LUMBAR_MRI_LOINC: frozenset[str] = frozenset(
    {REPORT_MR_LUMBAR_SPINE.code, REPORT_MR_LUMBAR_SPINE_WO_W_CONTRAST.code}
)
CATEGORY_RADIOLOGY = Code(V2_0074, "RAD", "Radiology")
OBSERVATION_CATEGORY_IMAGING = Code(OBSERVATION_CATEGORY, "imaging", "Imaging")

# --- security label ---------------------------------------------------------------------------
AI_ASSERTED = Code(V3_OBSERVATION_VALUE, "AIAST", "Artificial Intelligence asserted")

# --- body sites: disc levels (DICOM CID 1003) and laterality ------------------------------------
LEVEL_CODES: Mapping[Level, Code] = MappingProxyType(
    {
        Level.L1_L2: Code(SNOMED, "243920003", "Level of L1/L2 intervertebral disc"),
        Level.L2_L3: Code(SNOMED, "243921004", "Level of L2/L3 intervertebral disc"),
        Level.L3_L4: Code(SNOMED, "243922006", "Level of L3/L4 intervertebral disc"),
        Level.L4_L5: Code(SNOMED, "243923001", "Level of L4/L5 intervertebral disc"),
        Level.L5_S1: Code(SNOMED, "243927000", "Level of L5/S1 intervertebral disc"),
    }
)
LATERALITY_CODES: Mapping[Side, Code] = MappingProxyType(
    {
        Side.LEFT: Code(SNOMED, "7771000", "Left"),
        Side.RIGHT: Code(SNOMED, "24028007", "Right"),
    }
)

# --- findings (Observation.code) -------------------------------------------------------------
SPINAL_STENOSIS = Code(SNOMED, "76107001", "Spinal stenosis")
LUMBAR_SPINAL_STENOSIS = Code(SNOMED, "18347007", "Spinal stenosis of lumbar region")
FORAMINAL_STENOSIS = Code(PROJECT_CODE_SYSTEM, "neural-foraminal-stenosis", "Neural foraminal stenosis")
LATERAL_RECESS_STENOSIS = Code(
    PROJECT_CODE_SYSTEM, "lateral-recess-stenosis", "Subarticular (lateral recess) stenosis"
)

CONDITION_CODES: Mapping[Condition, Code] = MappingProxyType(
    {
        Condition.SPINAL_CANAL: SPINAL_STENOSIS,
        Condition.LEFT_FORAMINAL: FORAMINAL_STENOSIS,
        Condition.RIGHT_FORAMINAL: FORAMINAL_STENOSIS,
        Condition.LEFT_SUBARTICULAR: LATERAL_RECESS_STENOSIS,
        Condition.RIGHT_SUBARTICULAR: LATERAL_RECESS_STENOSIS,
    }
)

# --- severity (DICOM CID 3832 / SNOMED qualifier values) ----------------------------------------
SEVERITY_MILD = Code(SNOMED, "255604002", "Mild")
SEVERITY_MODERATE = Code(SNOMED, "6736007", "Moderate")
SEVERITY_SEVERE = Code(SNOMED, "24484000", "Severe")
#: The product's normal_mild grade lumps "normal" with "mild"; SNOMED "Mild" is the nearest code and
#: the project coding beside it keeps the exact grade for systems that read it.
GRADE_CODES: Mapping[Grade, Code] = MappingProxyType(
    {Grade.NORMAL_MILD: SEVERITY_MILD, Grade.MODERATE: SEVERITY_MODERATE, Grade.SEVERE: SEVERITY_SEVERE}
)
PROJECT_GRADE_CODES: Mapping[Grade, Code] = MappingProxyType(
    {
        Grade.NORMAL_MILD: Code(PROJECT_CODE_SYSTEM, "grade-normal-mild", "Normal or mild"),
        Grade.MODERATE: Code(PROJECT_CODE_SYSTEM, "grade-moderate", "Moderate"),
        Grade.SEVERE: Code(PROJECT_CODE_SYSTEM, "grade-severe", "Severe"),
    }
)
PRESENT = Code(SNOMED, "52101004", "Present")
ABSENT = Code(SNOMED, "2667000", "Absent")

#: Interpretation of a finding: moderate/severe stenosis is abnormal.
INTERPRETATION_ABNORMAL = Code(V3_OBSERVATION_INTERPRETATION, "A", "Abnormal")
INTERPRETATION_NORMAL = Code(V3_OBSERVATION_INTERPRETATION, "N", "Normal")

# --- components without a standard code ------------------------------------------------------
STENOSIS_PRESENCE = Code(PROJECT_CODE_SYSTEM, "stenosis-present", "Stenosis present (moderate or severe)")
PROBABILITY = Code(PROJECT_CODE_SYSTEM, "model-probability", "Model probability of the reported grade")
UNCERTAIN = Code(PROJECT_CODE_SYSTEM, "uncertain", "Finding flagged as uncertain")

MEASUREMENT_CODES: Mapping[MeasurementName, Code] = MappingProxyType(
    {
        MeasurementName.DSCA_MM2: Code(
            PROJECT_CODE_SYSTEM, "dural-sac-area", "Dural sac cross-sectional area (axial)"
        ),
        MeasurementName.AP_DIAMETER_MM: Code(
            PROJECT_CODE_SYSTEM, "canal-ap-diameter", "Spinal canal anteroposterior diameter (axial)"
        ),
        MeasurementName.LATERAL_RECESS_DEPTH_MM: Code(
            PROJECT_CODE_SYSTEM, "lateral-recess-depth", "Lateral recess depth (axial)"
        ),
        MeasurementName.FORAMINAL_AREA_RATIO: Code(
            PROJECT_CODE_SYSTEM,
            "foraminal-area-ratio",
            "Foraminal cross-sectional area relative to the unnarrowed foramen (parasagittal)",
        ),
        MeasurementName.DISC_HEIGHT_MM: Code(PROJECT_CODE_SYSTEM, "disc-height", "Disc height (sagittal)"),
    }
)


def ucum_quantity(value: float, unit: str) -> dict[str, Any]:
    """A FHIR Quantity in UCUM (unit '1' is the dimensionless ratio)."""
    return {"value": round(float(value), 4), "unit": unit, "system": UCUM, "code": unit}
