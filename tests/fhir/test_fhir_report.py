"""DiagnosticReport / Observation / Device / Media / Bundle builders, validated by fhir.resources."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from cds.domain import AnalysisResult, AnalysisStatus, Condition, Finding, Grade, Level, MeasurementName
from cds.errors import BadRequest, Conflict
from cds.fhir import codes
from cds.fhir.report import (
    DISCLAIMER,
    ReportContext,
    ReportImage,
    ReportUnavailable,
    build_diagnostic_report,
    build_report_bundle,
)
from cds.fhir.resources import InvalidResource, validate_resource

AIAST = {"system": codes.V3_OBSERVATION_VALUE, "code": "AIAST", "display": "Artificial Intelligence asserted"}


def _contained(report: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [r for r in report["contained"] if r["resourceType"] == resource_type]


def _observation(report: dict[str, Any], level: Level, condition: Condition) -> dict[str, Any]:
    wanted = f"/{level.value}/{condition.value}"
    matches = [o for o in _contained(report, "Observation") if o["identifier"][0]["value"].endswith(wanted)]
    assert len(matches) == 1
    return matches[0]


def _component(obs: dict[str, Any], code: codes.Code) -> dict[str, Any]:
    found = [c for c in obs["component"] if c["code"]["coding"][0]["code"] == code.code]
    assert len(found) == 1, code
    return found[0]


def _canonical(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True)


def test_contained_report_validates_and_round_trips_unchanged(
    analysis: AnalysisResult, ctx: ReportContext
) -> None:
    report = build_diagnostic_report(analysis, ctx)
    model = DiagnosticReport.model_validate(report)
    # what we return is exactly what the model serialises: nothing dropped, nothing renamed
    assert _canonical(model.model_dump(mode="json", exclude_none=True)) == _canonical(report)
    json.dumps(report)  # plain JSON types only


def test_report_header(analysis: AnalysisResult, ctx: ReportContext) -> None:
    report = build_diagnostic_report(analysis, ctx)
    assert report["status"] == "preliminary"
    assert report["code"]["coding"][0] == codes.REPORT_MR_LUMBAR_SPINE.coding()
    assert report["category"][0]["coding"][0]["code"] == "RAD"
    assert report["subject"] == {"reference": "Patient/pat-42"}
    assert report["effectiveDateTime"] == "2025-03-03"
    assert report["issued"] == "2025-03-04T10:30:00Z"
    assert report["identifier"] == [{"system": codes.ANALYSIS_IDENTIFIER_SYSTEM, "value": ctx.analysis_id}]
    assert report["imagingStudy"] == [
        {
            "type": "ImagingStudy",
            "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{ctx.study_uid}"},
        }
    ]
    assert report["meta"]["security"] == [AIAST]
    assert report["conclusionCode"][0]["coding"][0]["code"] == "18347007"


def test_every_contained_resource_is_labelled_and_referenced(
    analysis: AnalysisResult, ctx: ReportContext
) -> None:
    report = build_diagnostic_report(analysis, ctx)
    ids = [r["id"] for r in report["contained"]]
    assert len(ids) == len(set(ids)) == 1 + 25
    for resource in report["contained"]:
        assert resource["meta"]["security"] == [AIAST]
        assert "versionId" not in resource["meta"]  # dom-4
    # dom-3: every contained resource is referenced from somewhere in the report
    text = json.dumps(report)
    for rid in ids:
        assert f'"#{rid}"' in text
    assert [r["reference"] for r in report["result"]] == [
        f"#{o['id']}" for o in _contained(report, "Observation")
    ]


def test_device_lists_model_versions(analysis: AnalysisResult, ctx: ReportContext) -> None:
    (device,) = _contained(build_diagnostic_report(analysis, ctx), "Device")
    assert {v["type"]["text"]: v["value"] for v in device["version"]} == {
        "segmenter": "1.2.0",
        "grader": "0.4.1",
    }
    assert device["identifier"][0]["system"] == codes.DEVICE_IDENTIFIER_SYSTEM
    other = replace(analysis, model_versions={"segmenter": "1.3.0", "grader": "0.4.1"})
    (device2,) = _contained(build_diagnostic_report(other, ctx), "Device")
    assert device2["identifier"] != device["identifier"]  # new versions, new device identity


def test_severe_canal_observation(analysis: AnalysisResult, ctx: ReportContext) -> None:
    report = build_diagnostic_report(analysis, ctx)
    obs = _observation(report, Level.L4_L5, Condition.SPINAL_CANAL)
    Observation.model_validate(obs)
    assert obs["status"] == "preliminary"
    assert obs["code"]["coding"] == [codes.SPINAL_STENOSIS.coding()]
    assert obs["bodySite"]["coding"] == [codes.LEVEL_CODES[Level.L4_L5].coding()]
    assert "extension" not in obs["bodySite"]  # central: no laterality
    severity = [c["code"] for c in obs["valueCodeableConcept"]["coding"] if c["system"] == codes.SNOMED]
    assert severity == ["24484000"]
    assert obs["interpretation"][0]["coding"][0]["code"] == "A"
    assert obs["device"] == {"reference": "#device"}
    assert obs["derivedFrom"][0]["identifier"]["value"] == f"urn:oid:{ctx.study_uid}"
    assert obs["subject"] == {"reference": "Patient/pat-42"}
    dsca = _component(obs, codes.MEASUREMENT_CODES[MeasurementName.DSCA_MM2])
    assert dsca["valueQuantity"] == {"value": 61.8, "unit": "mm2", "system": codes.UCUM, "code": "mm2"}
    assert dsca["referenceRange"][0]["low"]["value"] == 100.0
    assert "severe < 75 mm2" in dsca["referenceRange"][0]["text"]
    ap = _component(obs, codes.MEASUREMENT_CODES[MeasurementName.AP_DIAMETER_MM])
    assert ap["valueQuantity"]["code"] == "mm"
    assert "referenceRange" not in ap  # thresholds only on the deciding measurement
    assert _component(obs, codes.STENOSIS_PRESENCE)["valueCodeableConcept"]["coding"][0]["code"] == "52101004"
    assert _component(obs, codes.PROBABILITY)["valueQuantity"]["value"] == 0.97
    assert _component(obs, codes.UNCERTAIN)["valueBoolean"] is False
    assert "note" not in obs


def test_foraminal_observation_has_laterality_ratio_and_uncertainty(
    analysis: AnalysisResult, ctx: ReportContext
) -> None:
    obs = _observation(build_diagnostic_report(analysis, ctx), Level.L5_S1, Condition.LEFT_FORAMINAL)
    assert obs["code"]["coding"][0]["system"] == codes.PROJECT_CODE_SYSTEM
    assert obs["code"]["text"] == "left neural foraminal narrowing at L5-S1"
    (ext,) = obs["bodySite"]["extension"]
    assert ext["url"] == codes.LATERALITY_EXTENSION
    assert ext["valueCodeableConcept"]["coding"][0]["code"] == "7771000"
    ratio = _component(obs, codes.MEASUREMENT_CODES[MeasurementName.FORAMINAL_AREA_RATIO])
    assert ratio["valueQuantity"] == {"value": 0.42, "unit": "1", "system": codes.UCUM, "code": "1"}
    assert [c["code"] for c in obs["valueCodeableConcept"]["coding"]] == ["6736007", "grade-moderate"]
    assert _component(obs, codes.UNCERTAIN)["valueBoolean"] is True
    assert "Uncertain" in obs["note"][0]["text"]


def test_right_subarticular_laterality_and_normal_grade(analysis: AnalysisResult, ctx: ReportContext) -> None:
    obs = _observation(build_diagnostic_report(analysis, ctx), Level.L1_L2, Condition.RIGHT_SUBARTICULAR)
    assert obs["bodySite"]["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "24028007"
    assert obs["valueCodeableConcept"]["text"] == "normal/mild"
    assert obs["interpretation"][0]["coding"][0]["code"] == "N"
    assert _component(obs, codes.STENOSIS_PRESENCE)["valueCodeableConcept"]["coding"][0]["code"] == "2667000"
    assert obs["code"]["coding"][0]["code"] == "lateral-recess-stenosis"


def test_conclusion_names_worst_findings_first(analysis: AnalysisResult, ctx: ReportContext) -> None:
    conclusion = build_diagnostic_report(analysis, ctx)["conclusion"]
    assert conclusion.startswith(
        "Severe central canal stenosis at L4-L5 (dural sac area 61.8 mm2; severe < 75 mm2)"
    )
    assert "Moderate left neural foraminal narrowing at L5-S1 (foraminal area ratio 42 %" in conclusion
    assert conclusion.index("L4-L5") < conclusion.index("L5-S1")
    assert "1 finding(s) flagged uncertain" in conclusion
    assert conclusion.endswith(DISCLAIMER)


def test_all_normal_report_has_no_conclusion_code(analysis: AnalysisResult, ctx: ReportContext) -> None:
    normal = replace(
        analysis,
        findings=tuple(replace(f, grade=Grade.NORMAL_MILD, uncertain=False) for f in analysis.findings),
    )
    report = build_diagnostic_report(normal, ctx)
    assert "conclusionCode" not in report
    assert report["conclusion"].startswith("No moderate or severe stenosis.")


def test_partial_levels_and_labelling_uncertain(ctx: ReportContext) -> None:
    finding = Finding(
        Level.L5_S1, Condition.SPINAL_CANAL, Grade.MODERATE, 0.8, {MeasurementName.DSCA_MM2: 80.0}
    )
    partial = AnalysisResult(AnalysisStatus.COMPLETE, (finding,), labelling_uncertain=True)
    report = build_diagnostic_report(partial, ctx)
    assert "Levels graded: L5-S1." in report["conclusion"]
    assert "Level labelling uncertain" in report["conclusion"]
    (device,) = _contained(report, "Device")
    assert "version" not in device  # no versions known: omitted, never empty


@pytest.mark.parametrize("status", [s for s in AnalysisStatus if s is not AnalysisStatus.COMPLETE])
def test_incomplete_analysis_is_not_reported(status: AnalysisStatus, ctx: ReportContext) -> None:
    with pytest.raises(ReportUnavailable):
        build_diagnostic_report(AnalysisResult(status, reason="x"), ctx)
    with pytest.raises(Conflict):
        build_report_bundle(AnalysisResult(status, reason="x"), ctx)


def test_imaging_study_reference_by_id_when_known(analysis: AnalysisResult, ctx: ReportContext) -> None:
    report = build_diagnostic_report(analysis, replace(ctx, imaging_study_ref="ImagingStudy/abc"))
    assert report["imagingStudy"] == [{"reference": "ImagingStudy/abc"}]
    bare = build_diagnostic_report(analysis, replace(ctx, study_uid=None, study_date=None))
    assert "imagingStudy" not in bare and "effectiveDateTime" not in bare
    assert all("derivedFrom" not in o for o in _contained(bare, "Observation"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"patient_ref": "Patient/../admin"},
        {"patient_ref": "Practitioner/1"},
        {"analysis_id": "has space"},
        {"imaging_study_ref": "Patient/1"},
        {"study_uid": "1.2.abc"},
        {"issued": datetime(2025, 1, 1)},  # naive
    ],
)
def test_context_rejects_bad_input(ctx: ReportContext, kwargs: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        replace(ctx, **kwargs)


def test_bare_patient_id_is_prefixed(ctx: ReportContext) -> None:
    assert replace(ctx, patient_ref="pat-7").patient_ref == "Patient/pat-7"


def test_images_become_media_linked_from_report_and_finding(
    analysis: AnalysisResult, ctx: ReportContext
) -> None:
    png = b"\x89PNG\r\n\x1a\n fake"
    images = (
        ReportImage("gradcam-L4-L5-canal", "Grad-CAM: L4-L5 canal", data=png, level=Level.L4_L5,
                    condition=Condition.SPINAL_CANAL),
        ReportImage("sagittal", "Mid-sagittal T2 with levels", url="https://viewer.example/img/1.png"),
    )  # fmt: skip
    report = build_diagnostic_report(analysis, replace(ctx, images=images))
    DiagnosticReport.model_validate(report)
    media = {m["id"]: m for m in _contained(report, "Media")}
    assert set(media) == {"media-gradcam-L4-L5-canal", "media-sagittal"}
    assert base64.b64decode(media["media-gradcam-L4-L5-canal"]["content"]["data"]) == png
    assert media["media-sagittal"]["content"]["url"] == "https://viewer.example/img/1.png"
    assert all(m["meta"]["security"] == [AIAST] for m in media.values())
    assert [m["link"]["reference"] for m in report["media"]] == [
        "#media-gradcam-L4-L5-canal",
        "#media-sagittal",
    ]
    obs = _observation(report, Level.L4_L5, Condition.SPINAL_CANAL)
    assert {"reference": "#media-gradcam-L4-L5-canal"} in obs["derivedFrom"]
    other = _observation(report, Level.L3_L4, Condition.SPINAL_CANAL)
    assert {"reference": "#media-gradcam-L4-L5-canal"} not in other["derivedFrom"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"key": "a b", "title": "t", "data": b"x"},
        {"key": "k", "title": "t"},
        {"key": "k", "title": "t", "data": b"x", "url": "https://x"},
        {"key": "k", "title": "t", "data": b"x", "content_type": "text/html"},
        {"key": "k", "title": "t", "data": b"x", "level": Level.L1_L2},
    ],
)
def test_report_image_rejects_bad_input(kwargs: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        ReportImage(**kwargs)


def test_transaction_bundle(analysis: AnalysisResult, ctx: ReportContext) -> None:
    bundle = build_report_bundle(analysis, ctx)
    model = Bundle.model_validate(bundle)
    assert _canonical(model.model_dump(mode="json", exclude_none=True)) == _canonical(bundle)
    assert bundle["type"] == "transaction"
    entries = bundle["entry"]
    kinds = [e["resource"]["resourceType"] for e in entries]
    assert kinds == ["Device"] + ["Observation"] * 25 + ["DiagnosticReport"]
    urls = [e["fullUrl"] for e in entries]
    assert all(u.startswith("urn:uuid:") for u in urls) and len(set(urls)) == len(urls)
    for entry in entries:
        resource = entry["resource"]
        assert "id" not in resource  # the server assigns ids
        assert resource["meta"]["security"] == [AIAST]
        request = entry["request"]
        assert request["method"] == "POST" and request["url"] == resource["resourceType"]
        ident = resource["identifier"][0]
        assert request["ifNoneExist"] == f"identifier={ident['system']}|{ident['value']}"
    report = entries[-1]["resource"]
    assert [r["reference"] for r in report["result"]] == urls[1:-1]
    assert all(e["resource"]["device"] == {"reference": urls[0]} for e in entries[1:-1])
    assert "contained" not in report


def test_bundle_is_deterministic_for_idempotent_write_back(
    analysis: AnalysisResult, ctx: ReportContext
) -> None:
    assert build_report_bundle(analysis, ctx) == build_report_bundle(analysis, ctx)
    other = build_report_bundle(analysis, replace(ctx, analysis_id="another-analysis"))
    assert other["entry"][0]["fullUrl"] != build_report_bundle(analysis, ctx)["entry"][0]["fullUrl"]


def test_validate_resource_rejects_without_echoing_values() -> None:
    with pytest.raises(InvalidResource) as err:
        validate_resource({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                           "valueQuantity": {"value": "SECRET-NAME"}})  # fmt: skip
    assert "SECRET-NAME" not in err.value.message
    assert "valueQuantity" in err.value.message
    with pytest.raises(InvalidResource):
        validate_resource({"resourceType": "NoSuchThing"})
    with pytest.raises(InvalidResource):
        validate_resource({"resourceType": "Patient"}, "Observation")
    with pytest.raises(InvalidResource):
        validate_resource({"resourceType": "Patient", "bogus": 1})
    assert validate_resource({"resourceType": "Patient", "id": "p1"}) == {
        "resourceType": "Patient",
        "id": "p1",
    }


def test_report_narrative_is_well_formed_xhtml_with_every_finding(
    analysis: AnalysisResult, ctx: ReportContext
) -> None:
    report = build_diagnostic_report(analysis, ctx)
    assert report["text"]["status"] == "generated"
    div = ET.fromstring(report["text"]["div"])
    assert div.tag == "{http://www.w3.org/1999/xhtml}div"
    rows = div.findall(".//{http://www.w3.org/1999/xhtml}tr")
    assert len(rows) == 1 + 25
    cells = [[td.text for td in row] for row in rows[1:]]
    assert ["L4-L5", "central canal stenosis", "severe", "dural sac area 61.8 mm2", "97 %"] in cells
    foramen = [
        "L5-S1",
        "left neural foraminal narrowing",
        "moderate (uncertain)",
        "foraminal area ratio 42 %",
        "64 %",
    ]
    assert foramen in cells
    assert all("text" not in r for r in report["contained"])  # contained resources carry no narrative
