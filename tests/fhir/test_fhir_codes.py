"""The codes must be exactly those of FINDINGS.md "Codes for FHIR" (and nothing invented)."""

from __future__ import annotations

from cds.domain import Condition, Grade, Level, MeasurementName, Side
from cds.fhir import codes


def test_report_codes_match_findings_spec() -> None:
    assert (codes.REPORT_MR_LUMBAR_SPINE.system, codes.REPORT_MR_LUMBAR_SPINE.code) == (
        "http://loinc.org",
        "24968-0",
    )
    assert codes.REPORT_MR_LUMBAR_SPINE_WO_W_CONTRAST.code == "24967-2"
    assert {"24968-0", "24967-2"} == codes.LUMBAR_MRI_LOINC
    assert codes.CATEGORY_RADIOLOGY.coding() == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
        "code": "RAD",
        "display": "Radiology",
    }
    assert codes.AI_ASSERTED.system == "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
    assert codes.AI_ASSERTED.code == "AIAST"


def test_level_codes_are_the_dicom_cid_1003_snomed_codes() -> None:
    expected = {
        Level.L1_L2: "243920003",
        Level.L2_L3: "243921004",
        Level.L3_L4: "243922006",
        Level.L4_L5: "243923001",
        Level.L5_S1: "243927000",
    }
    assert {lv: c.code for lv, c in codes.LEVEL_CODES.items()} == expected
    assert all(c.system == codes.SNOMED for c in codes.LEVEL_CODES.values())
    # display names the same level as the enum (L4-L5 -> "L4/L5")
    for level, code in codes.LEVEL_CODES.items():
        assert level.value.replace("-", "/") in code.display


def test_severity_presence_laterality_and_stenosis_codes() -> None:
    assert {g: c.code for g, c in codes.GRADE_CODES.items()} == {
        Grade.NORMAL_MILD: "255604002",
        Grade.MODERATE: "6736007",
        Grade.SEVERE: "24484000",
    }
    assert (codes.PRESENT.code, codes.ABSENT.code) == ("52101004", "2667000")
    assert {s: c.code for s, c in codes.LATERALITY_CODES.items()} == {
        Side.LEFT: "7771000",
        Side.RIGHT: "24028007",
    }
    assert codes.CONDITION_CODES[Condition.SPINAL_CANAL].code == "76107001"
    assert codes.LUMBAR_SPINAL_STENOSIS.code == "18347007"


def test_foraminal_and_lateral_recess_use_the_project_system_never_snomed() -> None:
    for condition in (
        Condition.LEFT_FORAMINAL,
        Condition.RIGHT_FORAMINAL,
        Condition.LEFT_SUBARTICULAR,
        Condition.RIGHT_SUBARTICULAR,
    ):
        code = codes.CONDITION_CODES[condition]
        assert code.system == codes.PROJECT_CODE_SYSTEM
        assert code.display
    assert (
        codes.CONDITION_CODES[Condition.LEFT_FORAMINAL] != codes.CONDITION_CODES[Condition.LEFT_SUBARTICULAR]
    )


def test_every_measurement_has_a_distinct_project_code() -> None:
    assert set(codes.MEASUREMENT_CODES) == set(MeasurementName)
    assert all(c.system == codes.PROJECT_CODE_SYSTEM for c in codes.MEASUREMENT_CODES.values())
    assert len({c.code for c in codes.MEASUREMENT_CODES.values()}) == len(MeasurementName)


def test_only_known_snomed_codes_are_used() -> None:
    """Guard against an invented SNOMED code slipping in: the full list is the spec's list."""
    allowed = {
        "243920003", "243921004", "243922006", "243923001", "243927000",  # levels
        "255604002", "6736007", "24484000", "2667000", "52101004",  # severity, presence
        "76107001", "18347007", "7771000", "24028007",  # stenosis, laterality
    }  # fmt: skip
    used = {
        value.code
        for value in vars(codes).values()
        if isinstance(value, codes.Code) and value.system == codes.SNOMED
    }
    for mapping in (codes.LEVEL_CODES, codes.GRADE_CODES, codes.LATERALITY_CODES, codes.CONDITION_CODES):
        used |= {c.code for c in mapping.values() if c.system == codes.SNOMED}
    assert used <= allowed
    assert used == allowed


def test_ucum_quantity() -> None:
    assert codes.ucum_quantity(61.81234, "mm2") == {
        "value": 61.8123,
        "unit": "mm2",
        "system": "http://unitsofmeasure.org",
        "code": "mm2",
    }
