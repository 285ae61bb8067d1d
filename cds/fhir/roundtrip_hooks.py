"""The hook step of the round trip: this service's own hooks, in process, fetching from the server.

A throwaway app (temporary SQLite store, its own signing key registered as the only client)
answers patient-view and order-select with prefetch omitted, so it must fetch the ImagingStudy
from the FHIR server under test (fhirServer + the given token). The analysis the cards show is
stored in that throwaway store beforehand; no models run.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cds.config import Settings
from cds.domain import AnalysisResult

ISSUER = "https://roundtrip.cds-spine.invalid"
PUBLIC = "https://cds-roundtrip.invalid"
PATIENT_VIEW = "/cds-services/lumbar-mri-patient-view"
ORDER_SELECT = "/cds-services/lumbar-mri-order-select"


@dataclass
class HookHarness:
    client: Any  # flask.testing.FlaskClient
    private_key: Any
    fhir_base: str
    token: str | None

    def call(self, path: str, hook: str, context: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        import jwt

        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": "roundtrip",
            "aud": PUBLIC + path,
            "iat": now,
            "exp": now + 60,
            "jti": str(uuid.uuid4()),
        }
        signed = jwt.encode(claims, self.private_key, algorithm="ES384", headers={"kid": "roundtrip-1"})
        body: dict[str, Any] = {
            "hook": hook,
            "hookInstance": str(uuid.uuid4()),
            "context": context,
            "fhirServer": self.fhir_base,
        }
        if self.token:
            body["fhirAuthorization"] = {
                "access_token": self.token,
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "patient/*.read",
                "subject": "cds-roundtrip",
            }
        response = self.client.post(path, json=body, headers={"Authorization": f"Bearer {signed}"})
        return response.status_code, response.get_json(silent=True) or {}


@contextmanager
def hook_harness(
    fhir_base: str, token: str | None, study_uid: str, patient_ref: str, result: AnalysisResult
) -> Iterator[HookHarness]:
    """The app, with `result` stored as the analysis of `study_uid` (patient `patient_ref`)."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    from cds import create_app
    from cds.extensions import services
    from cds.store import queries
    from cds.store.migrate import upgrade

    key = ec.generate_private_key(ec.SECP384R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "roundtrip-1", "use": "sig", "alg": "ES384"})
    with tempfile.TemporaryDirectory(prefix="cds-roundtrip-") as tmp:
        work = Path(tmp)
        (work / "clients.json").write_text(json.dumps([{"iss": ISSUER, "jwks": {"keys": [jwk]}}]))
        url = f"sqlite:///{work / 'cds.db'}"
        upgrade(url)
        settings = Settings(
            data_dir=work,
            database_url=url,
            clients_file=work / "clients.json",
            public_base_url=PUBLIC,
            secret_key=secrets.token_hex(16),
            fhir_allowed_hosts=(f"{urlsplit(fhir_base).hostname}",),
            fhir_timeout_s=20.0,
        )
        app = create_app(settings)
        try:
            with services(app).db.session() as s:
                queries.upsert_study(s, study_uid, patient_ref=patient_ref)
                queries.save_analysis(s, study_uid, result)
            yield HookHarness(app.test_client(), key, fhir_base, token)
        finally:
            services(app).close()
