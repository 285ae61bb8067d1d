"""Settings from CDS_* environment variables: one source for web, worker, CLI and Alembic.

Config flows one way (environment -> Settings -> app/worker); nothing else reads os.environ.
Every setting is documented in the README's settings table; add a row there when adding one here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cds.errors import CdsError


class SettingsError(CdsError):
    """A CDS_* variable has a value the service cannot start with."""


def _bool(raw: str, name: str) -> bool:
    low = raw.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off", ""}:
        return False
    raise SettingsError(f"{name} must be a boolean (true/false), got {raw!r}")


def _int(raw: str, name: str) -> int:
    try:
        return int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from exc


def _float(raw: str, name: str) -> float:
    try:
        return float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from exc


def _positive(raw: str, name: str) -> float:
    value = _float(raw, name)
    if value <= 0:
        raise SettingsError(f"{name} must be > 0, got {raw!r}")
    return value


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """All runtime settings. Defaults are the embedded, one-machine deployment."""

    data_dir: Path = Path("var")
    database_url: str = ""  # default: sqlite file under data_dir
    clients_file: Path | None = None
    public_base_url: str = "http://127.0.0.1:8080"
    fhir_allowed_hosts: tuple[str, ...] = ()
    fhir_timeout_s: float = 5.0
    secret_key: str = ""  # signs viewer links; required outside dev/test
    viewer_link_ttl_s: int = 3600
    # The demo study list (/studies/<token>: every study with its patient, minting viewer links) is
    # for the demo only; off = 404. `cds demo` turns it on for its own process.
    study_list_enabled: bool = False
    jobs_backend: str = "local"  # local | celery
    job_workers: int = 1
    # `cds serve`: most requests handled at once (one thread each, each with at most one database
    # driver connection); further connections wait in the listen backlog. Bounds PostgreSQL connections.
    serve_max_threads: int = 32
    # `cds worker` adds this to its nice value (pool processes and torch threads inherit it): where
    # analyses share CPUs with the web tier, hook requests are then scheduled first. 0 = unchanged.
    worker_nice: int = 10
    broker_url: str = "redis://127.0.0.1:6379/0"
    # Celery backend (cds.jobs.celery_*): the database job row stays the source of truth.
    job_soft_time_limit_s: float = 600.0  # SoftTimeLimitExceeded inside the job: a failed attempt
    job_time_limit_s: float = 660.0  # the worker child is killed; the lease sweeper requeues the job
    job_lease_s: float = 120.0  # a running job whose heartbeat is older than this is taken over
    job_retry_delay_s: float = 5.0  # back-off after the n-th failed attempt: n * this
    broker_visibility_timeout_s: float = 3600.0  # Redis redelivers an unacknowledged message after this
    job_max_memory_mb: int = 0  # Celery: replace a pool process after a job leaves it above this RSS; 0 = off
    dicom_dir: Path | None = None  # default: data_dir / "dicom"
    dicomweb_url: str = ""
    dicomweb_username: str = ""
    dicomweb_password: str = ""
    dicomweb_bearer_token: str = ""  # sent instead of basic auth when set
    dicomweb_allowed_hosts: tuple[str, ...] = ()  # hosts an ImagingStudy Endpoint may point at
    dicomweb_timeout_s: float = 60.0
    max_request_bytes: int = 2 * 1024 * 1024
    jwt_leeway_s: int = 30
    dev_mode: bool = False
    # Rationale writer (cds.explain): auto = local model when installed, else the template.
    rationale_backend: str = "auto"  # auto | local | openai | template
    rationale_url: str = ""  # OpenAI-compatible base URL, e.g. http://vllm:8000/v1
    rationale_model: str = ""  # model name sent to the OpenAI-compatible endpoint
    rationale_api_key: str = ""  # bearer token for that endpoint (never logged)
    rationale_timeout_s: float = 30.0
    rationale_max_new_tokens: int = 200
    rationale_model_file: Path | None = None  # local GGUF; default: the pinned PyPI package
    rationale_threads: int = 0  # torch threads for the local model; 0 = leave torch's default
    rationale_int8: bool = False  # dynamic int8 Linear layers for the local model (faster, outputs change)
    # PACS trigger (cds.pacs): Orthanc notifies POST /pacs/notifications with this bearer token;
    # empty = the endpoint is off (404). The poller follows Orthanc's /changes at pacs_orthanc_url
    # (default: CDS_DICOMWEB_URL without its /dicom-web suffix), with the DICOMweb credentials.
    pacs_notify_token: str = ""
    pacs_orthanc_url: str = ""
    pacs_poll_interval_s: float = 10.0
    # FHIR write-back (cds.fhir.writeback): off unless CDS_FHIR_WRITEBACK_URL is set.
    fhir_writeback_url: str = ""
    fhir_writeback_token: str = ""  # bearer token for that server (never logged)
    # Explainable mode (cds.explain.policy): when a finished analysis gets its explanation eagerly.
    explain_eager: str = "uncertain_or_near_threshold"  # uncertain_or_near_threshold | uncertain | off
    explain_near_margin: float = 0.10  # relative distance to a grade threshold that counts as "near"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'cds.db').resolve()}"

    @property
    def resolved_pacs_orthanc_url(self) -> str:
        """Orthanc's REST root for the /changes poller ("" when no PACS is configured)."""
        if self.pacs_orthanc_url:
            return self.pacs_orthanc_url
        return self.dicomweb_url.rstrip("/").removesuffix("/dicom-web")

    @property
    def resolved_dicom_dir(self) -> Path:
        return self.dicom_dir if self.dicom_dir is not None else self.data_dir / "dicom"

    def with_overrides(self, **kwargs: Any) -> Settings:
        return replace(self, **kwargs)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        s = cls()
        kw: dict[str, Any] = {}
        if v := env.get("CDS_DATA_DIR"):
            kw["data_dir"] = Path(v)
        if v := env.get("CDS_DATABASE_URL"):
            kw["database_url"] = v
        if v := env.get("CDS_CLIENTS_FILE"):
            kw["clients_file"] = Path(v)
        if v := env.get("CDS_PUBLIC_BASE_URL"):
            kw["public_base_url"] = v.rstrip("/")
        if (v := env.get("CDS_FHIR_ALLOWED_HOSTS")) is not None:
            kw["fhir_allowed_hosts"] = _csv(v)
        if v := env.get("CDS_FHIR_TIMEOUT_S"):
            kw["fhir_timeout_s"] = _float(v, "CDS_FHIR_TIMEOUT_S")
        if v := env.get("CDS_SECRET_KEY"):
            kw["secret_key"] = v
        if v := env.get("CDS_VIEWER_LINK_TTL_S"):
            kw["viewer_link_ttl_s"] = _int(v, "CDS_VIEWER_LINK_TTL_S")
        if v := env.get("CDS_JOBS_BACKEND"):
            if v not in {"local", "celery"}:
                raise SettingsError(f"CDS_JOBS_BACKEND must be 'local' or 'celery', got {v!r}")
            kw["jobs_backend"] = v
        if v := env.get("CDS_JOB_WORKERS"):
            kw["job_workers"] = _int(v, "CDS_JOB_WORKERS")
        if v := env.get("CDS_WORKER_NICE"):
            kw["worker_nice"] = _int(v, "CDS_WORKER_NICE")
            if not 0 <= kw["worker_nice"] <= 19:
                raise SettingsError("CDS_WORKER_NICE must be 0..19")
        if v := env.get("CDS_SERVE_MAX_THREADS"):
            kw["serve_max_threads"] = _int(v, "CDS_SERVE_MAX_THREADS")
            if kw["serve_max_threads"] < 1:
                raise SettingsError("CDS_SERVE_MAX_THREADS must be at least 1")
        if v := env.get("CDS_BROKER_URL"):
            kw["broker_url"] = v
        for name, attr in (
            ("CDS_JOB_SOFT_TIME_LIMIT_S", "job_soft_time_limit_s"),
            ("CDS_JOB_TIME_LIMIT_S", "job_time_limit_s"),
            ("CDS_JOB_LEASE_S", "job_lease_s"),
            ("CDS_JOB_RETRY_DELAY_S", "job_retry_delay_s"),
            ("CDS_BROKER_VISIBILITY_TIMEOUT_S", "broker_visibility_timeout_s"),
        ):
            if v := env.get(name):
                kw[attr] = _positive(v, name)
        if v := env.get("CDS_JOB_MAX_MEMORY_MB"):
            kw["job_max_memory_mb"] = _int(v, "CDS_JOB_MAX_MEMORY_MB")
        if v := env.get("CDS_DICOM_DIR"):
            kw["dicom_dir"] = Path(v)
        if v := env.get("CDS_DICOMWEB_URL"):
            kw["dicomweb_url"] = v.rstrip("/")
        if v := env.get("CDS_DICOMWEB_USERNAME"):
            kw["dicomweb_username"] = v
        if v := env.get("CDS_DICOMWEB_PASSWORD"):
            kw["dicomweb_password"] = v
        if v := env.get("CDS_DICOMWEB_BEARER_TOKEN"):
            kw["dicomweb_bearer_token"] = v
        if (v := env.get("CDS_DICOMWEB_ALLOWED_HOSTS")) is not None:
            kw["dicomweb_allowed_hosts"] = _csv(v)
        if v := env.get("CDS_DICOMWEB_TIMEOUT_S"):
            kw["dicomweb_timeout_s"] = _float(v, "CDS_DICOMWEB_TIMEOUT_S")
        if v := env.get("CDS_MAX_REQUEST_BYTES"):
            kw["max_request_bytes"] = _int(v, "CDS_MAX_REQUEST_BYTES")
        if v := env.get("CDS_JWT_LEEWAY_S"):
            kw["jwt_leeway_s"] = _int(v, "CDS_JWT_LEEWAY_S")
        if v := env.get("CDS_DEV_MODE"):
            kw["dev_mode"] = _bool(v, "CDS_DEV_MODE")
        if v := env.get("CDS_STUDY_LIST_ENABLED"):
            kw["study_list_enabled"] = _bool(v, "CDS_STUDY_LIST_ENABLED")
        if v := env.get("CDS_RATIONALE_BACKEND"):
            if v not in {"auto", "local", "openai", "template"}:
                raise SettingsError(f"CDS_RATIONALE_BACKEND must be auto|local|openai|template, got {v!r}")
            kw["rationale_backend"] = v
        if v := env.get("CDS_RATIONALE_URL"):
            kw["rationale_url"] = v.rstrip("/")
        if v := env.get("CDS_RATIONALE_MODEL"):
            kw["rationale_model"] = v
        if v := env.get("CDS_RATIONALE_API_KEY"):
            kw["rationale_api_key"] = v
        if v := env.get("CDS_RATIONALE_TIMEOUT_S"):
            kw["rationale_timeout_s"] = _float(v, "CDS_RATIONALE_TIMEOUT_S")
        if v := env.get("CDS_RATIONALE_MAX_NEW_TOKENS"):
            kw["rationale_max_new_tokens"] = _int(v, "CDS_RATIONALE_MAX_NEW_TOKENS")
        if v := env.get("CDS_RATIONALE_MODEL_FILE"):
            kw["rationale_model_file"] = Path(v)
        if v := env.get("CDS_RATIONALE_THREADS"):
            kw["rationale_threads"] = _int(v, "CDS_RATIONALE_THREADS")
        if v := env.get("CDS_RATIONALE_INT8"):
            kw["rationale_int8"] = _bool(v, "CDS_RATIONALE_INT8")
        if v := env.get("CDS_PACS_NOTIFY_TOKEN"):
            kw["pacs_notify_token"] = v
        if v := env.get("CDS_PACS_ORTHANC_URL"):
            kw["pacs_orthanc_url"] = v.rstrip("/")
        if v := env.get("CDS_PACS_POLL_INTERVAL_S"):
            kw["pacs_poll_interval_s"] = _float(v, "CDS_PACS_POLL_INTERVAL_S")
        if v := env.get("CDS_FHIR_WRITEBACK_URL"):
            kw["fhir_writeback_url"] = v.rstrip("/")
        if v := env.get("CDS_FHIR_WRITEBACK_TOKEN"):
            kw["fhir_writeback_token"] = v
        if v := env.get("CDS_EXPLAIN_EAGER"):
            if v not in {"uncertain_or_near_threshold", "uncertain", "off"}:
                raise SettingsError(
                    f"CDS_EXPLAIN_EAGER must be uncertain_or_near_threshold|uncertain|off, got {v!r}"
                )
            kw["explain_eager"] = v
        if v := env.get("CDS_EXPLAIN_NEAR_MARGIN"):
            kw["explain_near_margin"] = _positive(v, "CDS_EXPLAIN_NEAR_MARGIN")
        return replace(s, **kw)
