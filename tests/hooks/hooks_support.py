"""Test material for the hooks: a real EC signing key, JWT minting, FHIR resources, analyses.

Tokens are real ES384 JWTs signed with a key generated per test session; nothing is mocked in the
verification path.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from flask.testing import FlaskClient

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
from cds.hooks.catalog import StoredAnalysis
from cds.hooks.studies import LumbarStudy

ISSUER = "https://ehr.example.org"
KID = "ehr-key-1"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
OLD_STUDY_UID = "1.2.826.0.1.3680043.8.498.2"
PATIENT_ID = "pat-1"


@dataclass
class SigningKey:
    kid: str = KID
    private: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP384R1())
    )

    def public_jwk(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "ES384"})
        return jwk

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk()]}

    def token(
        self,
        aud: str,
        *,
        iss: str = ISSUER,
        jti: str | None = None,
        now: float | None = None,
        lifetime: int = 300,
        headers: Mapping[str, Any] | None = None,
        drop: tuple[str, ...] = (),
        **extra: Any,
    ) -> str:
        t = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iss": iss,
            "sub": "client-1",
            "aud": aud,
            "iat": t,
            "exp": t + lifetime,
            "jti": jti or str(uuid.uuid4()),
            **extra,
        }
        for name in drop:
            claims.pop(name, None)
        hdr = {"kid": self.kid, "typ": "JWT", **(headers or {})}
        return jwt.encode(claims, self.private, algorithm="ES384", headers=hdr)


def finding(level: Level, condition: Condition, grade: Grade, value: float | None = None) -> Finding:
    thresholds = THRESHOLDS[condition]
    if value is None:
        value = {
            Grade.NORMAL_MILD: thresholds.moderate_below * 1.2,
            Grade.MODERATE: (thresholds.moderate_below + thresholds.severe_below) / 2,
            Grade.SEVERE: thresholds.severe_below * 0.8,
        }[grade]
    measurements = {condition.deciding_measurement: value}
    if condition is Condition.SPINAL_CANAL:
        measurements[MeasurementName.AP_DIAMETER_MM] = 10.0
    return Finding(level, condition, grade, 0.9, measurements)


def analysis(special: Mapping[tuple[Level, Condition], Grade] | None = None) -> AnalysisResult:
    special = special or {}
    findings = tuple(
        finding(lv, c, special.get((lv, c), Grade.NORMAL_MILD)) for lv in Level for c in Condition
    )
    return AnalysisResult(AnalysisStatus.COMPLETE, findings, model_versions={"segmenter": "1.0.0"})


SEVERE_L4_L5 = {(Level.L4_L5, Condition.SPINAL_CANAL): Grade.SEVERE}


def stored(
    result: AnalysisResult | None,
    status: AnalysisStatus = AnalysisStatus.COMPLETE,
    uid: str = STUDY_UID,
    reason: str | None = None,
) -> StoredAnalysis:
    return StoredAnalysis(
        analysis_id=str(uuid.uuid5(uuid.NAMESPACE_OID, uid)),
        study_uid=uid,
        status=status,
        result=result,
        reason=reason,
        updated_at=datetime(2026, 7, 2, 9, 0, tzinfo=UTC),
    )


def lumbar_study(uid: str = STUDY_UID, started: date | None = date(2026, 7, 1)) -> LumbarStudy:
    return LumbarStudy(uid, started, "MRI L-SPINE W/O", frozenset(), "is-1")


# --- FHIR resources -----------------------------------------------------------------------------


def imaging_study(
    uid: str = STUDY_UID,
    *,
    rid: str = "is-1",
    started: str = "2026-07-01T10:00:00Z",
    modality: str = "MR",
    description: str | None = "MRI LUMBAR SPINE WITHOUT CONTRAST",
    patient: str = PATIENT_ID,
    based_on: str | None = None,
    uid_system: str = "urn:dicom:uid",
    body_site: str | None = None,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": rid,
        "status": "available",
        "subject": {"reference": f"Patient/{patient}"},
        "identifier": [{"system": uid_system, "value": f"urn:oid:{uid}"}],
        "started": started,
        "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": modality}],
    }
    if description:
        resource["description"] = description
    if based_on:
        resource["basedOn"] = [{"reference": based_on}]
    if body_site:
        resource["series"] = [
            {
                "uid": uid + ".1",
                "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": modality},
                "bodySite": {"system": "http://snomed.info/sct", "code": body_site},
            }
        ]
    return resource


def bundle(*resources: Mapping[str, Any], next_url: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if resources:
        out["entry"] = [{"resource": dict(r)} for r in resources]
    if next_url:
        out["link"] = [{"relation": "next", "url": next_url}]
    return out


def patient(pid: str = PATIENT_ID) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid}


def service_request(
    rid: str, code: str = "72148", system: str = "http://www.ama-assn.org/go/cpt", status: str = "draft"
) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": rid,
        "status": status,
        "intent": "order",
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "code": {"coding": [{"system": system, "code": code}]},
    }


def draft_orders(*requests: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": dict(r)} for r in requests],
    }


# --- a tiny FHIR / JWKS server on loopback --------------------------------------------------------


class FakeServer:
    """Serves canned JSON by path+query on 127.0.0.1; records requests (path, Authorization)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, Any]] = {}
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append((self.path, self.headers.get("Authorization")))
                status, body = outer.routes.get(self.path, (404, {"resourceType": "OperationOutcome"}))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"

    @contextmanager
    def running(self) -> Iterator[FakeServer]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()


class Caller:
    """Posts to the app as the test EHR would: a fresh signed JWT per call, aud = URL called."""

    def __init__(self, client: FlaskClient, key: SigningKey, base: str) -> None:
        self.client = client
        self.key = key
        self.base = base

    def token(self, path: str, **kw: Any) -> str:
        return self.key.token(self.base + path, **kw)

    def post(
        self,
        path: str,
        body: Any,
        *,
        token: str | None = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Authorization": "Bearer " + (token or self.token(path))}
        data = raw if raw is not None else json.dumps(body).encode()
        return self.client.post(path, data=data, headers=headers, content_type=content_type)


def issued_card(app: Any, service_id: str = "lumbar-mri-patient-view") -> str:
    """A card uuid as the app would issue it on a card of `service_id` (feedback accepts only those)."""
    from cds.extensions import services
    from cds.signing import CardIdSigner

    return CardIdSigner(services(app).settings.secret_key).issue(service_id)
