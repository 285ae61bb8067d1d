"""Request parsing at the boundary, lumbar MRI order and study recognition, prefetch rules."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hooks_support import (
    OLD_STUDY_UID,
    PATIENT_ID,
    STUDY_UID,
    FakeServer,
    bundle,
    draft_orders,
    imaging_study,
    patient,
    service_request,
)

from cds.errors import BadRequest, PrefetchUnavailable
from cds.fhir.client import FhirClient, HostNotAllowed
from cds.hooks.fhirsource import ClientSource
from cds.hooks.models import (
    FeedbackRequest,
    HookRequest,
    OrderSelectContext,
    PatientViewContext,
    parse_json_model,
    parse_model,
)
from cds.hooks.orders import lumbar_mri_orders
from cds.hooks.prefetch import PrefetchTemplate, render, resolve, validate_template
from cds.hooks.registry import SERVICES, discovery
from cds.hooks.studies import lumbar_mri_studies, study_uid

HOOK_INSTANCE = "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"


def _envelope(**over: Any) -> bytes:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": HOOK_INSTANCE,
        "context": {"userId": "Practitioner/1", "patientId": PATIENT_ID},
    }
    body.update(over)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


# --- envelope -----------------------------------------------------------------------------------


def test_valid_envelope_tolerates_extensions_and_unknown_members() -> None:
    req = parse_json_model(HookRequest, _envelope(extension={"com.example.x": {"a": 1}}, somethingNew=True))
    assert str(req.hookInstance) == HOOK_INSTANCE
    assert req.extension == {"com.example.x": {"a": 1}}


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "body"),
        (_envelope(hook=...), "hook"),
        (_envelope(hookInstance="not-a-uuid"), "hookInstance: must be a UUID"),
        (_envelope(hookInstance=12), "hookInstance"),
        (_envelope(context=...), "context"),
        (_envelope(context="x"), "context"),
        (_envelope(prefetch=[]), "prefetch"),
        (_envelope(prefetch={"studies": "x"}), "prefetch"),
        (_envelope(fhirServer="not a url"), "fhirServer"),
        (
            _envelope(
                fhirAuthorization={
                    "access_token": "t",
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "scope": "patient/*.read",
                    "subject": "cds",
                }
            ),
            "fhirAuthorization requires fhirServer",
        ),
        (
            _envelope(
                fhirServer="https://ehr.example.org/fhir",
                fhirAuthorization={
                    "access_token": "t",
                    "token_type": "MAC",
                    "expires_in": 1,
                    "scope": "s",
                    "subject": "c",
                },
            ),
            "token_type",
        ),
        (
            _envelope(
                fhirServer="https://ehr.example.org/fhir",
                fhirAuthorization={
                    "access_token": "t",
                    "token_type": "Bearer",
                    "expires_in": "300",
                    "scope": "s",
                    "subject": "c",
                },
            ),
            "expires_in",
        ),
    ],
)
def test_bad_envelopes_are_400_naming_the_field(body: bytes, where: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse_json_model(HookRequest, body)
    assert where in err.value.message


def test_validation_messages_never_echo_values() -> None:
    with pytest.raises(BadRequest) as err:
        parse_model(PatientViewContext, {"userId": "Practitioner/1", "patientId": "SECRET NAME"}, "context")
    assert "SECRET" not in err.value.message
    assert "context.patientId" in err.value.message


def test_access_token_never_in_repr() -> None:
    req = parse_json_model(
        HookRequest,
        _envelope(
            fhirServer="https://ehr.example.org/fhir",
            fhirAuthorization={
                "access_token": "TOPSECRET",
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "s",
                "subject": "c",
            },
        ),
    )
    assert "TOPSECRET" not in repr(req) and "TOPSECRET" not in repr(req.fhirAuthorization)
    assert "TOPSECRET" not in str(req.fhirAuthorization)


@pytest.mark.parametrize(
    "context",
    [
        {"patientId": PATIENT_ID},  # userId missing
        {"userId": "Practitioner/1"},  # patientId missing
        {"userId": "Device/1", "patientId": PATIENT_ID},  # not a user resource type
        {"userId": "Practitioner/1", "patientId": 42},  # wrong type
        {"userId": "Practitioner/1", "patientId": "a/b"},  # not a FHIR id
    ],
)
def test_patient_view_context_rules(context: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        parse_model(PatientViewContext, context, "context")


@pytest.mark.parametrize(
    "change",
    [
        {"selections": []},
        {"selections": ["not a reference"]},
        {"selections": ...},
        {"draftOrders": {"resourceType": "Patient"}},
        {"draftOrders": {"resourceType": "Bundle", "entry": {}}},
        {"draftOrders": ...},
    ],
)
def test_order_select_context_rules(change: dict[str, Any]) -> None:
    context: dict[str, Any] = {
        "userId": "Practitioner/1",
        "patientId": PATIENT_ID,
        "selections": ["ServiceRequest/sr-1"],
        "draftOrders": draft_orders(service_request("sr-1")),
    }
    context.update(change)
    context = {k: v for k, v in context.items() if v is not ...}
    with pytest.raises(BadRequest):
        parse_model(OrderSelectContext, context, "context")


@pytest.mark.parametrize(
    "item",
    [
        {
            "card": "not-uuid",
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": "x"}],
            "outcomeTimestamp": "2026-01-01T00:00:00Z",
        },
        {"card": HOOK_INSTANCE, "outcome": "ignored", "outcomeTimestamp": "2026-01-01T00:00:00Z"},
        {"card": HOOK_INSTANCE, "outcome": "accepted", "outcomeTimestamp": "2026-01-01T00:00:00Z"},
        {
            "card": HOOK_INSTANCE,
            "outcome": "overridden",
            "acceptedSuggestions": [{"id": "x"}],
            "outcomeTimestamp": "2026-01-01T00:00:00Z",
        },
        {"card": HOOK_INSTANCE, "outcome": "overridden", "outcomeTimestamp": "2026-01-01T00:00:00"},
        {"card": HOOK_INSTANCE, "outcome": "overridden"},
    ],
)
def test_feedback_rules(item: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        parse_json_model(FeedbackRequest, json.dumps({"feedback": [item]}).encode())


def test_feedback_empty_list_rejected() -> None:
    with pytest.raises(BadRequest):
        parse_json_model(FeedbackRequest, b'{"feedback": []}')


# --- orders -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("system", "code"),
    [
        ("http://www.ama-assn.org/go/cpt", "72148"),
        ("http://www.ama-assn.org/go/cpt", "72149"),
        ("http://www.ama-assn.org/go/cpt", "72158"),
        ("urn:oid:2.16.840.1.113883.6.12", "72148"),
        ("http://loinc.org", "24968-0"),
        ("http://loinc.org", "24967-2"),
        ("http://snomed.info/sct", "41333006"),
        ("http://snomed.info/sct", "394451000119106"),
    ],
)
def test_lumbar_mri_orders_recognised(system: str, code: str) -> None:
    orders = lumbar_mri_orders(draft_orders(service_request("sr-1", code, system)), None)
    assert [o.reference for o in orders] == ["ServiceRequest/sr-1"]


@pytest.mark.parametrize(
    ("system", "code"),
    [
        ("http://www.ama-assn.org/go/cpt", "72141"),  # MRI cervical spine
        ("http://loinc.org", "24590-2"),  # other LOINC
        ("http://snomed.info/sct", "2690005"),  # MRI of pelvis, not lumbar
        ("http://example.org/local", "72148"),  # right code, unknown system
    ],
)
def test_other_orders_ignored(system: str, code: str) -> None:
    assert lumbar_mri_orders(draft_orders(service_request("sr-1", code, system)), None) == ()


def test_order_select_looks_only_at_selections() -> None:
    orders = draft_orders(service_request("old-lumbar"), service_request("new-chest", "71045"))
    assert lumbar_mri_orders(orders, frozenset({"ServiceRequest/new-chest"})) == ()
    assert len(lumbar_mri_orders(orders, frozenset({"ServiceRequest/old-lumbar"}))) == 1
    assert len(lumbar_mri_orders(orders, None)) == 1


def test_revoked_orders_and_non_service_requests_ignored() -> None:
    med = {"resourceType": "MedicationRequest", "id": "m1", "code": {"coding": [{"code": "72148"}]}}
    orders = draft_orders(service_request("sr-1", status="revoked"), med)
    assert lumbar_mri_orders(orders, None) == ()


# --- studies ------------------------------------------------------------------------------------


def test_lumbar_studies_found_newest_first() -> None:
    found = lumbar_mri_studies(
        bundle(
            imaging_study(OLD_STUDY_UID, rid="old", started="2024-01-05"),
            imaging_study(STUDY_UID, rid="new", started="2026-07-01T10:00:00+02:00"),
        ),
        PATIENT_ID,
    )
    assert [s.study_uid for s in found] == [STUDY_UID, OLD_STUDY_UID]
    assert found[0].started is not None and found[0].started.isoformat() == "2026-07-01"
    assert found[0].resource_id == "new"


@pytest.mark.parametrize(
    "kw",
    [
        {"modality": "CT"},  # not MR
        {"description": "MRI BRAIN"},  # not lumbar
        {"description": None},  # nothing says lumbar
        {"patient": "someone-else"},  # another patient's study in the bundle
    ],
)
def test_non_lumbar_or_foreign_studies_skipped(kw: dict[str, Any]) -> None:
    assert lumbar_mri_studies(bundle(imaging_study(**kw)), PATIENT_ID) == ()


def test_lumbar_by_body_site_code() -> None:
    study = imaging_study(description="MRI", body_site="122496007")
    assert len(lumbar_mri_studies(bundle(study), PATIENT_ID)) == 1


def test_study_uid_from_dicom_identifier_or_any_uid_identifier() -> None:
    assert study_uid(imaging_study()) == STUDY_UID
    other = imaging_study(uid_system="http://pacs.example.org/accession")
    assert study_uid(other) == STUDY_UID
    other["identifier"] = [{"system": "http://pacs/acc", "value": "ACC-123"}]
    assert study_uid(other) is None
    assert lumbar_mri_studies(bundle(other), PATIENT_ID) == ()


def test_operation_outcome_entries_in_bundle_ignored() -> None:
    b = bundle(imaging_study())
    b["entry"].append({"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}})
    assert len(lumbar_mri_studies(b, PATIENT_ID)) == 1


# --- prefetch -----------------------------------------------------------------------------------

STUDIES = PrefetchTemplate(
    "studies",
    "ImagingStudy?patient={{context.patientId}}&modality=MR&_include=ImagingStudy:endpoint",
    "Bundle",
    True,
)
PATIENT = PrefetchTemplate("patient", "Patient/{{context.patientId}}", "Patient", False)
CONTEXT = {"patientId": PATIENT_ID, "userId": "Practitioner/7"}


class RecordingSource:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.calls: list[str] = []

    def read(self, path: str) -> dict[str, Any] | None:
        self.calls.append(path)
        return self.data.get(path)

    def search(self, query: str) -> dict[str, Any]:
        self.calls.append(query)
        return self.data[query]


def test_discovery_templates_use_only_2_0_tokens() -> None:
    for service in SERVICES:
        for template in service.prefetch:
            validate_template(template.query)
    services = discovery()["services"]
    assert {s["hook"] for s in services} == {"order-select", "order-sign", "patient-view"}
    for s in services:
        assert s["id"] and s["description"] and s["prefetch"]["studies"].startswith("ImagingStudy?")
        assert s["prefetch"]["patient"] == "Patient/{{context.patientId}}"
        assert s["prefetch"]["reports"].startswith("DiagnosticReport?patient={{context.patientId}}")


@pytest.mark.parametrize("token", ["{{context.draftOrders.id}}", "{{Patient.id}}", "{{context.selections}}"])
def test_non_2_0_tokens_rejected(token: str) -> None:
    with pytest.raises(ValueError):
        validate_template(f"Observation?patient={token}")


def test_render_tokens() -> None:
    assert render("Patient/{{context.patientId}}", CONTEXT) == f"Patient/{PATIENT_ID}"
    assert render("Practitioner/{{userPractitionerId}}", CONTEXT) == "Practitioner/7"
    assert render("Encounter/{{context.encounterId}}", CONTEXT) is None


def test_supplied_prefetch_used_without_fetching() -> None:
    source = RecordingSource({})
    data = resolve((STUDIES, PATIENT), {"studies": bundle(), "patient": patient()}, CONTEXT, source)
    assert data["studies"] == bundle() and data["patient"] == patient()
    assert source.calls == []


def test_null_prefetch_means_no_data_and_is_not_refetched() -> None:
    source = RecordingSource({})
    data = resolve((STUDIES,), {"studies": None}, CONTEXT, source)
    assert data == {"studies": None}
    assert source.calls == []


def test_absent_key_fetched_from_fhir_server() -> None:
    query = f"ImagingStudy?patient={PATIENT_ID}&modality=MR&_include=ImagingStudy:endpoint"
    source = RecordingSource({query: bundle(imaging_study())})
    data = resolve((STUDIES, PATIENT), {}, CONTEXT, source)
    assert data["studies"] == bundle(imaging_study())
    assert data["patient"] is None  # read returned not found -> no data
    assert source.calls == [query, f"Patient/{PATIENT_ID}"]


def test_absent_required_key_without_server_is_412() -> None:
    with pytest.raises(PrefetchUnavailable):
        resolve((STUDIES,), None, CONTEXT, None)
    assert resolve((PATIENT,), None, CONTEXT, None) == {}  # optional: just left out


def test_operation_outcome_in_prefetch_is_412_for_required_and_none_for_optional() -> None:
    oo = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden"}]}
    with pytest.raises(PrefetchUnavailable):
        resolve((STUDIES,), {"studies": oo}, CONTEXT, None)
    assert resolve((PATIENT,), {"patient": oo}, CONTEXT, None) == {"patient": None}


def test_wrong_resource_type_in_prefetch_is_400() -> None:
    with pytest.raises(BadRequest):
        resolve((STUDIES,), {"studies": patient()}, CONTEXT, None)
    with pytest.raises(BadRequest):
        resolve((STUDIES,), {"studies": {"resourceType": "Bundle", "entry": {}}}, CONTEXT, None)


def test_fetch_over_http_follows_pages_sends_bearer_and_respects_allow_list() -> None:
    server = FakeServer()
    first = f"/ImagingStudy?patient={PATIENT_ID}&modality=MR&_include=ImagingStudy:endpoint"
    server.routes[first] = (
        200,
        bundle(imaging_study(OLD_STUDY_UID, started="2024-01-05"), next_url=f"{server.base}/page2"),
    )
    server.routes["/page2"] = (200, bundle(imaging_study(STUDY_UID, rid="is-2")))
    with server.running():
        client = FhirClient(server.base, "fhir-token", ["127.0.0.1"], timeout_s=2)
        data = resolve((STUDIES,), None, CONTEXT, ClientSource(client))
        assert [s.study_uid for s in lumbar_mri_studies(data["studies"], PATIENT_ID)] == [
            STUDY_UID,
            OLD_STUDY_UID,
        ]
        assert {auth for _, auth in server.requests} == {"Bearer fhir-token"}
        server.requests.clear()
        server.routes[first] = (503, {"resourceType": "OperationOutcome"})
        with pytest.raises(PrefetchUnavailable):
            resolve((STUDIES,), None, CONTEXT, ClientSource(client))


def test_supplied_first_page_is_completed_through_the_allowed_fhir_client() -> None:
    """A prefetched searchset with link[next] holds one page only: the rest is followed, not dropped."""
    server = FakeServer()
    server.routes["/page2"] = (200, bundle(imaging_study(STUDY_UID, rid="is-2")))
    first_page = bundle(imaging_study(OLD_STUDY_UID, started="2024-01-05"), next_url=f"{server.base}/page2")
    with server.running():
        client = FhirClient(server.base, "fhir-token", ["127.0.0.1"], timeout_s=2)
        data = resolve((STUDIES,), {"studies": first_page}, CONTEXT, ClientSource(client))
        assert [s.study_uid for s in lumbar_mri_studies(data["studies"], PATIENT_ID)] == [
            STUDY_UID,
            OLD_STUDY_UID,
        ]
        assert data["studies"] is not None and "link" not in data["studies"]
        assert server.requests == [("/page2", "Bearer fhir-token")]


class _NoAbsoluteLinks(RecordingSource):
    """A FHIR client refusing a link off its server's origin, as cds.fhir.client does."""

    def search(self, query: str) -> dict[str, Any]:
        if "://" in query:
            self.calls.append(query)
            raise HostNotAllowed("FHIR server link leaves the server's origin")
        return super().search(query)


def test_supplied_first_page_that_cannot_be_completed_counts_as_absent() -> None:
    first_page = bundle(imaging_study(OLD_STUDY_UID), next_url="https://ehr.example.org/fhir/page2")
    with pytest.raises(PrefetchUnavailable):  # required, and no fhirServer to follow the link
        resolve((STUDIES,), {"studies": first_page}, CONTEXT, None)
    # a server that cannot follow the link (e.g. another origin): the whole search is fetched instead
    query = f"ImagingStudy?patient={PATIENT_ID}&modality=MR&_include=ImagingStudy:endpoint"
    everything = bundle(imaging_study(OLD_STUDY_UID), imaging_study(STUDY_UID, rid="is-2"))
    source = _NoAbsoluteLinks({query: everything})
    data = resolve((STUDIES,), {"studies": first_page}, CONTEXT, source)
    assert data["studies"] == everything
    assert source.calls == ["https://ehr.example.org/fhir/page2", query]
    optional = PrefetchTemplate("studies", STUDIES.query, "Bundle", required=False)
    assert resolve((optional,), {"studies": first_page}, CONTEXT, None) == {}
