"""`cds roundtrip`: the whole EHR round trip against any FHIR R4 server, one pass/fail row per step.

For integrators: point it at a sandbox (or the test server) and see which part of the integration
works there. Steps: capability statement; create + read a Patient; a lumbar MRI ServiceRequest;
an Endpoint (dicom-wado-rs) + ImagingStudy, resolved back by StudyInstanceUID with its Endpoint;
this service's hooks fetching from the server (prefetch omitted); the write-back transaction; read
back + validation (fhir.resources); the idempotent retry (still one report); cleanup (DELETE of
everything created, newest first). Everything is tagged and the Patient is a synthetic test person;
the analysis written is fixed sandbox content (model "roundtrip-sandbox"), never a clinical result.
A step whose prerequisite failed is reported as skipped; any failure gives a non-zero exit code.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import requests

from cds.domain import (
    THRESHOLDS,
    AnalysisResult,
    AnalysisStatus,
    Condition,
    Finding,
    Grade,
    Level,
    MeasurementName,
)
from cds.errors import CdsError
from cds.fhir import codes
from cds.fhir.client import FHIR_JSON, FhirClient
from cds.fhir.report import ReportContext
from cds.fhir.resources import validate_resource
from cds.fhir.roundtrip_imaging import ResolvedStudy, resolve_imaging_study
from cds.fhir.writeback import PROVENANCE_TAG_SYSTEM, WritebackResult, write_back

TAG_SYSTEM = f"{codes.PROJECT_BASE}/CodeSystem/roundtrip"
CPT = "http://www.ama-assn.org/go/cpt"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
PLACEHOLDER_DICOMWEB = "https://pacs.example.invalid/dicom-web"


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "FAIL"
    SKIP = "skip"


@dataclass(frozen=True)
class StepResult:
    name: str
    outcome: Outcome
    detail: str
    ms: float


@dataclass
class RoundTripState:
    run_id: str
    created: list[str] = field(default_factory=list)  # "Type/id" in creation order
    patient_id: str = ""
    order_id: str = ""
    endpoint_id: str = ""
    study_uid: str = ""
    study: ResolvedStudy | None = None
    writeback: WritebackResult | None = None


class StepFailed(Exception):
    """A step's check did not hold (the message is the row's detail)."""


def sandbox_analysis() -> AnalysisResult:
    """Fixed sandbox content: moderate canal stenosis at L4-L5, every other finding normal/mild."""
    findings = []
    for level in Level:
        for condition in Condition:
            t = THRESHOLDS[condition]
            grade = (
                Grade.MODERATE
                if (level, condition) == (Level.L4_L5, Condition.SPINAL_CANAL)
                else Grade.NORMAL_MILD
            )
            value = (
                (t.moderate_below + t.severe_below) / 2 if grade is Grade.MODERATE else t.moderate_below * 1.2
            )
            measurements = {condition.deciding_measurement: value}
            if condition is Condition.SPINAL_CANAL:
                measurements[MeasurementName.AP_DIAMETER_MM] = 10.0
            findings.append(Finding(level, condition, grade, 0.9, measurements))
    return AnalysisResult(AnalysisStatus.COMPLETE, tuple(findings), model_versions={"roundtrip-sandbox": "1"})


class RoundTrip:
    def __init__(
        self,
        fhir_base: str,
        token: str | None = None,
        *,
        dicomweb: str | None = None,
        study_uid: str | None = None,
        timeout_s: float = 20.0,
        cleanup: bool = True,
    ) -> None:
        self.base = fhir_base.rstrip("/")
        self.token = token
        self.dicomweb = dicomweb.rstrip("/") if dicomweb else None
        #: Fetch through the Endpoint only for a study the DICOMweb server really holds.
        self.check_dicomweb = bool(self.dicomweb and study_uid)
        self.cleanup_enabled = cleanup
        host = urlsplit(self.base).hostname or ""
        self.client = FhirClient(self.base, token, [host], timeout_s, total_timeout_s=3 * timeout_s)
        self.http = requests.Session()
        self.http.trust_env = False
        self.http.headers.update({"Accept": FHIR_JSON, "Content-Type": FHIR_JSON})
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"
        self.timeout_s = timeout_s
        run = uuid.uuid4().hex[:12]
        self.state = RoundTripState(run_id=f"rt-{run}", study_uid=study_uid or f"2.25.{uuid.uuid4().int}")
        self.analysis = sandbox_analysis()

    # --- plumbing -----------------------------------------------------------------------------

    def _tag(self) -> dict[str, Any]:
        return {"tag": [{"system": TAG_SYSTEM, "code": self.state.run_id}]}

    def _create(self, resource: dict[str, Any]) -> dict[str, Any]:
        rtype = resource["resourceType"]
        validate_resource(resource, rtype)
        response = self.http.post(
            f"{self.base}/{rtype}", json=resource, timeout=self.timeout_s, allow_redirects=False
        )
        if response.status_code not in (200, 201):
            raise StepFailed(f"POST {rtype} answered {response.status_code}")
        created = response.json() if response.content else {}
        rid = created.get("id") or _id_from_location(response.headers.get("Location", ""))
        if not rid:
            raise StepFailed(f"POST {rtype}: the server did not say the new id")
        self.state.created.append(f"{rtype}/{rid}")
        return {**resource, **created, "id": rid}

    # --- steps --------------------------------------------------------------------------------

    def capability(self) -> str:
        meta = self.client.read("metadata")
        if meta.get("resourceType") != "CapabilityStatement":
            raise StepFailed("metadata is not a CapabilityStatement")
        version = str(meta.get("fhirVersion", ""))
        if not version.startswith("4.0"):
            raise StepFailed(f"fhirVersion {version or '(none)'} is not R4 (4.0.x)")
        software = (meta.get("software") or {}).get("name", "unnamed server")
        return f"FHIR {version}, {software}"

    def patient(self) -> str:
        made = self._create(
            {
                "resourceType": "Patient",
                "meta": self._tag(),
                "active": True,
                "identifier": [{"system": TAG_SYSTEM, "value": self.state.run_id}],
                "name": [{"family": "Roundtrip", "given": ["Test"]}],
                "gender": "unknown",
            }
        )
        self.state.patient_id = made["id"]
        back = validate_resource(self.client.read(f"Patient/{made['id']}"), "Patient")
        if back.get("id") != made["id"]:
            raise StepFailed("read-back returned another Patient")
        return f"Patient/{made['id']}"

    def order(self) -> str:
        made = self._create(
            {
                "resourceType": "ServiceRequest",
                "meta": self._tag(),
                "status": "active",
                "intent": "order",
                "code": {
                    "coding": [
                        {"system": CPT, "code": "72148", "display": "MRI lumbar spine without contrast"}
                    ]
                },
                "subject": {"reference": f"Patient/{self.state.patient_id}"},
            }
        )
        self.state.order_id = made["id"]
        return f"ServiceRequest/{made['id']}"

    def imaging_study(self) -> str:
        address = self.dicomweb or PLACEHOLDER_DICOMWEB
        endpoint = self._create(
            {
                "resourceType": "Endpoint",
                "meta": self._tag(),
                "status": "active",
                "connectionType": {"system": CONNECTION_TYPE, "code": "dicom-wado-rs"},
                "payloadType": [{"text": "DICOM"}],
                "payloadMimeType": ["application/dicom"],
                "address": address,
            }
        )
        self.state.endpoint_id = endpoint["id"]
        mr = {"system": DCM, "code": "MR"}
        self._create(
            {
                "resourceType": "ImagingStudy",
                "meta": self._tag(),
                "status": "available",
                "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{self.state.study_uid}"}],
                "subject": {"reference": f"Patient/{self.state.patient_id}"},
                "started": "2026-07-01T10:00:00Z",
                "modality": [mr],
                "basedOn": [{"reference": f"ServiceRequest/{self.state.order_id}"}],
                "endpoint": [{"reference": f"Endpoint/{endpoint['id']}"}],
                "description": "MRI LUMBAR SPINE WITHOUT CONTRAST",
                "series": [
                    {
                        "uid": f"{self.state.study_uid}.1",
                        "modality": mr,
                        "description": "Sag T2",
                        "bodySite": {
                            "system": "http://snomed.info/sct",
                            "code": "122496007",
                            "display": "Lumbar spine structure",
                        },
                    }
                ],
            }
        )
        found = resolve_imaging_study(self.client, self.state.study_uid, patient_id=self.state.patient_id)
        if found is None:
            raise StepFailed("the ImagingStudy is not found by its StudyInstanceUID")
        if found.patient_ref != f"Patient/{self.state.patient_id}":
            raise StepFailed("the ImagingStudy found names another patient")
        addresses = [str(e.get("address", "")).rstrip("/") for e in found.endpoints]
        if address not in addresses:
            raise StepFailed("the ImagingStudy's Endpoint was neither included nor readable")
        self.state.study = found
        detail = f"{found.reference} + Endpoint resolved by UID"
        if self.check_dicomweb:
            detail += "; " + self._dicomweb_check(found)
        return detail

    def _dicomweb_check(self, found: ResolvedStudy) -> str:
        """With --dicomweb: the Endpoint must lead to the study on that DICOMweb server.

        Credentials come from CDS_DICOMWEB_* and are sent only when --dicomweb is CDS_DICOMWEB_URL's
        origin (the same rule the service applies to EHR Endpoints).
        """
        from cds.config import Settings
        from cds.dicom.sources.endpoint import source_for_imaging_study

        host = urlsplit(self.dicomweb or "").hostname or ""
        env = Settings.from_env()
        settings = env.with_overrides(dicomweb_allowed_hosts=(*env.dicomweb_allowed_hosts, host))
        source = source_for_imaging_study(found.imaging_study, found.endpoints, settings)
        try:
            series = source.series_uids()
        except CdsError as exc:
            raise StepFailed(f"DICOMweb through the Endpoint: {exc.message}") from exc
        return f"DICOMweb: {len(series)} series via the Endpoint"

    def hooks(self) -> str:
        from cds.fhir.roundtrip_hooks import ORDER_SELECT, PATIENT_VIEW, hook_harness

        patient = self.state.patient_id
        with hook_harness(
            self.base, self.token, self.state.study_uid, f"Patient/{patient}", self.analysis
        ) as h:
            status, body = h.call(
                PATIENT_VIEW, "patient-view", {"userId": "Practitioner/roundtrip", "patientId": patient}
            )
            cards = body.get("cards") or []
            if status != 200 or not cards:
                raise StepFailed(f"patient-view answered {status} with {len(cards)} card(s)")
            if "moderate" not in cards[0].get("summary", ""):
                raise StepFailed("patient-view card does not show the stored analysis")
            new_order = {
                "resourceType": "ServiceRequest",
                "id": "roundtrip-draft",
                "status": "draft",
                "intent": "order",
                "subject": {"reference": f"Patient/{patient}"},
                "code": {"coding": [{"system": CPT, "code": "72148"}]},
            }
            context = {
                "userId": "Practitioner/roundtrip",
                "patientId": patient,
                "draftOrders": {
                    "resourceType": "Bundle",
                    "type": "collection",
                    "entry": [{"resource": new_order}],
                },
                "selections": ["ServiceRequest/roundtrip-draft"],
            }
            status, body = h.call(ORDER_SELECT, "order-select", context)
            prior = body.get("cards") or []
            if status != 200 or not prior or "Prior" not in prior[0].get("summary", ""):
                raise StepFailed(f"order-select answered {status} without a prior-study card")
        return "patient-view + order-select fetched the ImagingStudy (prefetch omitted)"

    def _context(self) -> ReportContext:
        study = self.state.study
        return ReportContext(
            analysis_id=self.state.run_id,
            patient_ref=f"Patient/{self.state.patient_id}",
            issued=datetime.now(UTC),
            study_uid=self.state.study_uid,
            imaging_study_ref=study.reference if study is not None else None,
            study_date=date(2026, 7, 1),
        )

    def writeback(self) -> str:
        based_on = self.state.study.based_on if self.state.study else ()
        result = write_back(self.client, self.analysis, self._context(), based_on=based_on, attempts=2)
        if result.created == 0:
            raise StepFailed("the transaction created nothing")
        self.state.writeback = result
        return f"DiagnosticReport/{result.report_id}: {result.created} created"

    def read_back(self) -> str:
        reports = self._reports()
        if len(reports) != 1:
            raise StepFailed(f"{len(reports)} reports carry the analysis identifier")
        report = validate_resource(reports[0], "DiagnosticReport")
        if report.get("subject", {}).get("reference", "").rsplit("/", 1)[-1] != self.state.patient_id:
            raise StepFailed("the report's subject is not the patient")
        if report.get("status") != "preliminary" or not report.get("basedOn"):
            raise StepFailed("the report is not preliminary or lost basedOn")
        observations = [
            validate_resource(self.client.read(r["reference"]), "Observation") for r in report["result"]
        ]
        devices = {o["device"]["reference"] for o in observations}
        for ref in devices:
            validate_resource(self.client.read(ref), "Device")
        provenance = self.client.search_resources(
            "Provenance", {"_tag": f"{PROVENANCE_TAG_SYSTEM}|{self.state.run_id}"}
        )
        if len(provenance) != 1:
            raise StepFailed(f"{len(provenance)} Provenance resources for the analysis")
        validate_resource(provenance[0], "Provenance")
        return f"report + {len(observations)} Observations + Device + Provenance valid R4"

    def retry(self) -> str:
        again = write_back(
            self.client,
            self.analysis,
            self._context(),
            based_on=self.state.study.based_on if self.state.study else (),
        )
        reports = self._reports()
        if again.created != 0 or len(reports) != 1:
            raise StepFailed(f"the repeat created {again.created} entries; {len(reports)} reports now")
        return f"repeat matched all {again.existing} entries; still one report"

    def cleanup(self) -> str:
        targets: list[str] = []
        if self.state.writeback is not None:
            targets += [
                f"Provenance/{p['id']}"
                for p in self.client.search_resources(
                    "Provenance", {"_tag": f"{PROVENANCE_TAG_SYSTEM}|{self.state.run_id}"}
                )
            ]
            for report in self._reports():
                targets.append(f"DiagnosticReport/{report['id']}")
                targets += [r["reference"] for r in report.get("result", [])]
                targets += [m["link"]["reference"] for m in report.get("media", [])]
            targets += sorted({o for o in self._device_refs()})
        targets += list(reversed(self.state.created))
        failed = []
        for ref in targets:
            response = self.http.delete(f"{self.base}/{ref}", timeout=self.timeout_s)
            if response.status_code not in (200, 202, 204, 404, 410):
                failed.append(f"{ref.split('/')[0]} {response.status_code}")
        if failed:
            raise StepFailed("could not delete: " + ", ".join(failed[:5]))
        return f"deleted {len(targets)} resources"

    def _reports(self) -> list[dict[str, Any]]:
        return self.client.search_resources(
            "DiagnosticReport", {"identifier": f"{codes.ANALYSIS_IDENTIFIER_SYSTEM}|{self.state.run_id}"}
        )

    def _device_refs(self) -> set[str]:
        refs = set()
        for report in self._reports():
            for r in report.get("result", [])[:1]:
                refs.add(self.client.read(r["reference"])["device"]["reference"])
        return refs

    # --- the run ------------------------------------------------------------------------------

    def steps(self) -> list[tuple[str, Callable[[], str], tuple[str, ...]]]:
        """(name, step, names of the steps it needs)."""
        return [
            ("capability statement", self.capability, ()),
            ("create/read Patient", self.patient, ("capability statement",)),
            ("ServiceRequest", self.order, ("create/read Patient",)),
            ("ImagingStudy + Endpoint", self.imaging_study, ("ServiceRequest",)),
            ("hook fetch", self.hooks, ("ImagingStudy + Endpoint",)),
            ("write-back transaction", self.writeback, ("ImagingStudy + Endpoint",)),
            ("read-back + validate", self.read_back, ("write-back transaction",)),
            ("idempotent retry", self.retry, ("write-back transaction",)),
            ("cleanup", self.cleanup, ()),
        ]

    def run(self) -> list[StepResult]:
        results: list[StepResult] = []
        passed: set[str] = set()
        for name, step, needs in self.steps():
            if name == "cleanup" and not self.cleanup_enabled:
                results.append(
                    StepResult(name, Outcome.SKIP, "--keep given: resources left on the server", 0.0)
                )
                continue
            missing = [n for n in needs if n not in passed]
            if missing:
                results.append(StepResult(name, Outcome.SKIP, f"needs: {', '.join(missing)}", 0.0))
                continue
            t0 = time.perf_counter()
            try:
                detail = step()
                outcome = Outcome.PASS
                passed.add(name)
            except StepFailed as exc:
                outcome, detail = Outcome.FAIL, str(exc)
            except CdsError as exc:
                outcome, detail = Outcome.FAIL, f"{type(exc).__name__}: {exc.message}"
            except requests.RequestException as exc:
                outcome, detail = Outcome.FAIL, f"HTTP failure ({type(exc).__name__})"
            results.append(StepResult(name, outcome, detail, 1000 * (time.perf_counter() - t0)))
        return results


def _id_from_location(location: str) -> str:
    parts = urlsplit(location).path.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return parts[-1] if len(parts) >= 2 else ""


def format_table(results: list[StepResult]) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"{'step':<{width}}  result  {'ms':>7}  detail", "-" * (width + 40)]
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.outcome.value:<6}  {r.ms:7.0f}  {r.detail}")
    failed = sum(r.outcome is Outcome.FAIL for r in results)
    lines.append(
        f"{'PASS' if not failed else 'FAIL'}: {sum(r.outcome is Outcome.PASS for r in results)} passed, "
        f"{failed} failed, {sum(r.outcome is Outcome.SKIP for r in results)} skipped"
    )
    return "\n".join(lines)
