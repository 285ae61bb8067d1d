"""`cds demo`: the whole product on one machine, with data it makes itself.

1. synthetic lumbar MRI studies (cds.synth) written as DICOM under CDS_DATA_DIR/dicom;
2. the studies registered in the store and their analyses queued (in-process workers run them);
3. a local "EHR" identity: an EC P-384 signing key and a clients file trusting its public key
   (inline JWKS), so hook calls are authenticated exactly as in production (there is no auth-off);
4. the service on 127.0.0.1:8080, printing the discovery URL, a ready-to-run signed patient-view
   call (curl) and where everything lives.
Re-running reuses what exists. `--curl-only` prints a fresh signed call (tokens are single use).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import shlex
import time
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

DEMO_ISSUER = "cds-demo-ehr"
PATIENT_VIEW = "lumbar-mri-patient-view"
TOKEN_LIFETIME_S = 3600


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="generate demo studies, analyse them and serve with a local signing key"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--studies", type=int, default=3, help="synthetic studies to generate (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first study (default 1)")
    parser.add_argument("--prepare-only", action="store_true", help="prepare data and print, do not serve")
    parser.add_argument("--curl-only", action="store_true", help="print a fresh signed example call and exit")
    parser.set_defaults(handler=_demo)


# --- the demo EHR identity --------------------------------------------------------------------


@dataclass(frozen=True)
class DemoPaths:
    root: Path

    @property
    def key(self) -> Path:
        return self.root / "ehr-signing-key.pem"

    @property
    def clients(self) -> Path:
        return self.root / "clients.json"

    @property
    def secret(self) -> Path:
        return self.root / "secret-key"

    @property
    def requests(self) -> Path:
        return self.root / "requests"

    @property
    def patients(self) -> Path:
        return self.root / "patients.json"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by the owner only (created 0600, never world-readable in between)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def ensure_signing_key(paths: DemoPaths) -> Any:
    """The demo EHR's EC P-384 private key (created once)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if paths.key.is_file():
        return serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(paths.key, pem)
    return key


def public_jwk(private_key: Any) -> dict[str, str]:
    """Public JWK with an RFC 7638 thumbprint as kid."""
    numbers = private_key.public_key().public_numbers()
    size = (private_key.curve.key_size + 7) // 8
    jwk = {
        "crv": "P-384",
        "kty": "EC",
        "x": _b64url(numbers.x.to_bytes(size, "big")),
        "y": _b64url(numbers.y.to_bytes(size, "big")),
    }
    thumbprint = _b64url(
        hashlib.sha256(json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()).digest()
    )
    return {**jwk, "kid": thumbprint, "use": "sig", "alg": "ES384"}


def write_clients_file(paths: DemoPaths, jwk: dict[str, str]) -> None:
    clients = [{"iss": DEMO_ISSUER, "jwks": {"keys": [jwk]}}]
    paths.clients.write_text(json.dumps(clients, indent=2) + "\n")


def ensure_secret_key(paths: DemoPaths) -> str:
    if paths.secret.is_file():
        return paths.secret.read_text().strip()
    value = secrets.token_hex(32)
    _write_private(paths.secret, value.encode())
    return value


def sign_token(private_key: Any, kid: str, audience: str) -> str:
    import jwt

    now = int(time.time())
    claims = {
        "iss": DEMO_ISSUER,
        "aud": audience,
        "iat": now,
        "exp": now + TOKEN_LIFETIME_S,
        "jti": str(uuid.uuid4()),
        "sub": DEMO_ISSUER,
    }
    return jwt.encode(claims, private_key, algorithm="ES384", headers={"kid": kid, "typ": "JWT"})


# --- studies ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoStudy:
    study_uid: str
    patient_id: str
    study_date: date | None
    description: str | None
    folder: Path


def generate_studies(dicom_dir: Path, first_seed: int, count: int) -> list[Path]:
    """The study folders (DIR/<study>/dicom), generating the ones not there yet."""
    from cds.synth.study import generate_study

    folders = []
    for seed in range(first_seed, first_seed + count):
        name = f"SYN-{seed:06d}"
        folder = dicom_dir / name
        if not (folder / "dicom").is_dir():
            print(f"  generating synthetic study {name} (seed {seed}) ...", flush=True)
            folder = generate_study(seed, dicom_dir, study_name=name)
        folders.append(folder / "dicom")
    return folders


def register_studies(settings: Any, folders: list[Path]) -> list[DemoStudy]:
    """Register each study (and its series) in the store and request its analysis (idempotent)."""
    from cds.dicom import load_study
    from cds.domain import AnalysisStatus
    from cds.jobs.analysis import request_analysis
    from cds.jobs.queue import JobQueue
    from cds.store import queries
    from cds.store.db import Database

    db = Database(settings.resolved_database_url)
    jobs = JobQueue(db)
    registered = []
    try:
        for folder in folders:
            study = load_study(folder)
            with db.session() as s:
                record = queries.upsert_study(
                    s,
                    study.study_uid,
                    patient_ref=f"Patient/{study.patient_id}",
                    study_date=study.study_date,
                    description=study.description,
                    source_uri=str(folder.resolve()),
                )
                for volume in study.series:
                    queries.upsert_series(
                        s,
                        record,
                        volume.series_uid,
                        kind=str(volume.kind.value),
                        description=volume.description,
                        instance_count=int(volume.array.shape[0]),
                    )
            analysis = request_analysis(db, jobs, study.study_uid)
            state = analysis.status.value
            if analysis.status is AnalysisStatus.FAILED:
                state = f"failed before ({analysis.reason}); queued again"
            print(f"  {folder.parent.name}: study {study.study_uid} -> analysis {state}")
            registered.append(
                DemoStudy(study.study_uid, str(study.patient_id), study.study_date, study.description, folder)
            )
    finally:
        db.dispose()
    return registered


def imaging_study(study: DemoStudy, index: int) -> dict[str, Any]:
    """The FHIR R4 ImagingStudy an EHR would hold for the study (what the prefetch carries)."""
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": f"demo-{index}",
        "status": "available",
        "subject": {"reference": f"Patient/{study.patient_id}"},
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study.study_uid}"}],
        "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "MR"}],
        "procedureCode": [
            {"coding": [{"system": "http://loinc.org", "code": "24968-0", "display": "MR Lumbar spine"}]}
        ],
        "description": study.description or "MR lumbar spine",
    }
    if study.study_date is not None:
        resource["started"] = study.study_date.isoformat()
    return resource


def patient_view_request(patient_id: str, studies: list[DemoStudy]) -> dict[str, Any]:
    own = [s for s in studies if s.patient_id == patient_id]
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/demo", "patientId": patient_id},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": patient_id},
            "studies": {
                "resourceType": "Bundle",
                "type": "searchset",
                "total": len(own),
                "entry": [{"resource": imaging_study(s, i)} for i, s in enumerate(own)],
            },
            "reports": None,
        },
    }


def write_requests(paths: DemoPaths, studies: list[DemoStudy]) -> dict[str, Path]:
    paths.requests.mkdir(parents=True, exist_ok=True)
    out = {}
    for patient_id in dict.fromkeys(s.patient_id for s in studies):
        path = paths.requests / f"patient-view-{patient_id}.json"
        path.write_text(json.dumps(patient_view_request(patient_id, studies), indent=2) + "\n")
        out[patient_id] = path
    paths.patients.write_text(json.dumps({p: str(f) for p, f in out.items()}, indent=2) + "\n")
    return out


def curl_command(base_url: str, token: str, request_file: Path) -> str:
    url = f"{base_url}/cds-services/{PATIENT_VIEW}"
    return " ".join(
        [
            "curl -sS -X POST",
            shlex.quote(url),
            "-H 'Content-Type: application/json'",
            "-H",
            shlex.quote(f"Authorization: Bearer {token}"),
            "--data",
            shlex.quote(f"@{request_file}"),
        ]
    )


# --- the command --------------------------------------------------------------------------------


def demo_settings(args: argparse.Namespace) -> tuple[Any, DemoPaths]:
    from cds.config import Settings

    env = Settings.from_env()
    paths = DemoPaths(env.data_dir / "demo")
    paths.root.mkdir(parents=True, exist_ok=True)
    base_url = os.environ.get("CDS_PUBLIC_BASE_URL", "").rstrip("/") or f"http://{args.host}:{args.port}"
    settings = env.with_overrides(
        clients_file=paths.clients,
        secret_key=env.secret_key or ensure_secret_key(paths),
        public_base_url=base_url,
        job_workers=max(1, env.job_workers),
        # The study list is a demo page (off in a deployment): on here unless the environment says.
        study_list_enabled=env.study_list_enabled or "CDS_STUDY_LIST_ENABLED" not in os.environ,
    )
    return settings, paths


def print_curl(settings: Any, paths: DemoPaths) -> int:
    if not paths.patients.is_file():
        print("no demo data yet: run `cds demo` (or `cds demo --prepare-only`) first")
        return 1
    key = ensure_signing_key(paths)
    kid = public_jwk(key)["kid"]
    requests_by_patient = json.loads(paths.patients.read_text())
    patient_id, request_file = next(iter(requests_by_patient.items()))
    token = sign_token(key, kid, f"{settings.public_base_url}/cds-services/{PATIENT_VIEW}")
    print(f"Example patient-view call for Patient/{patient_id} (signed JWT, single use, valid 1 h):")
    print(curl_command(settings.public_base_url, token, Path(request_file)))
    print("A fresh token for another call: `cds demo --curl-only`.")
    return 0


#: Lifetime of the study-list link the demo prints (the viewer links it mints live CDS_VIEWER_LINK_TTL_S).
STUDY_LIST_TTL_S = 24 * 3600


def study_list_url(settings: Any) -> str:
    """The demo's signed study-list link (cds.viewer): filters travel in POST bodies, not the URL."""
    from cds.viewer.studies import sign_study_list_token

    token = sign_study_list_token(settings.secret_key, STUDY_LIST_TTL_S)
    return f"{settings.public_base_url}/studies/{token}"


def missing_parts() -> list[str]:
    """What the demo needs from other packages and cannot find (it says so instead of pretending)."""
    import importlib

    missing = []
    for module, attr in (("cds.synth.study", "generate_study"), ("cds.dicom", "load_study")):
        try:
            if not hasattr(importlib.import_module(module), attr):
                missing.append(f"{module}.{attr}")
        except ImportError:
            missing.append(f"{module}.{attr}")
    return missing


def _demo(args: argparse.Namespace) -> int:
    from cds.store.db import normalise_url
    from cds.store.migrate import upgrade

    settings, paths = demo_settings(args)
    if args.curl_only:
        return print_curl(settings, paths)
    missing = missing_parts()
    if missing:
        print("The demo cannot make its data: missing " + ", ".join(missing))
        return 1
    key = ensure_signing_key(paths)
    write_clients_file(paths, public_jwk(key))
    upgrade(settings.resolved_database_url)
    print(f"Preparing {args.studies} synthetic lumbar MRI studies:", flush=True)
    folders = generate_studies(settings.resolved_dicom_dir, args.seed, args.studies)
    studies = register_studies(settings, folders)
    write_requests(paths, studies)

    base = settings.public_base_url
    print()
    print(f"Discovery:      {base}/cds-services")
    if settings.study_list_enabled:
        print(f"Study list:     {study_list_url(settings)}  (signed, valid {STUDY_LIST_TTL_S // 3600} h)")
    print_curl(settings, paths)
    print()
    print(f"Data directory: {settings.data_dir.resolve()}")
    print(f"  DICOM studies: {settings.resolved_dicom_dir.resolve()}")
    database = normalise_url(settings.resolved_database_url).render_as_string(hide_password=True)
    print(f"  database:      {database}")
    print(f"  demo EHR key:  {paths.key.resolve()} (EC P-384, trusted through {paths.clients.resolve()})")
    print(f"  hook requests: {paths.requests.resolve()}")
    print("Analyses run in the background; until one finishes, the card says results are pending.")
    if args.prepare_only:
        return 0
    from cds.commands.serve import serve

    print()
    return serve(settings, args.host, args.port)
