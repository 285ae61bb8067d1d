"""The ANALYZE job: load a study, run the quick read, store the result (or why there is none).

Hooks call request_analysis(); it makes the PENDING analysis row (so a card can say "pending")
and enqueues one job per (study, mode, revision), however many hook calls race for it.
The pipeline is imported only inside the handler (torch never enters the web process). When the
pipeline or its models are missing the analysis FAILS with a stored reason: results are never faked.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cds.config import Settings
from cds.domain import AnalysisMode, AnalysisResult, AnalysisStatus
from cds.errors import CdsError, Forbidden, IngestError, ModelError, StageError, UpstreamError
from cds.jobs.kinds import JobKind
from cds.jobs.queue import JobQueue
from cds.jobs.registry import JobContext, PermanentJobError
from cds.store import queries
from cds.store.db import Database
from cds.store.records import AnalysisRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalyzeRequest:
    """The ANALYZE job payload."""

    study_uid: str
    analysis_id: str
    mode: AnalysisMode = AnalysisMode.QUICK

    def to_payload(self) -> dict[str, Any]:
        return {"study_uid": self.study_uid, "analysis_id": self.analysis_id, "mode": self.mode.value}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> AnalyzeRequest:
        try:
            return cls(
                study_uid=str(payload["study_uid"]),
                analysis_id=str(payload["analysis_id"]),
                mode=AnalysisMode(payload.get("mode", AnalysisMode.QUICK.value)),
            )
        except (KeyError, ValueError) as exc:
            raise PermanentJobError(f"bad analyze payload: {exc}") from exc


def analyze_key(study_uid: str, mode: AnalysisMode, revision: int) -> str:
    return f"analyze:{mode.value}:r{revision}:{study_uid}"


def request_analysis(
    db: Database, jobs: JobQueue, study_uid: str, mode: AnalysisMode = AnalysisMode.QUICK
) -> AnalysisRecord:
    """Ensure the study's analysis exists and a job computes it; idempotent and race-safe.

    A complete analysis is returned as is (no new job); a pending/running one keeps its job; a
    failed one is queued again (its job key is the same, and enqueue re-queues failed jobs).
    The study must be registered (queries.upsert_study) first, with its source_uri.
    """
    with db.session() as s:
        analysis = queries.ensure_analysis(s, study_uid, mode)
    if analysis.status in (AnalysisStatus.COMPLETE, AnalysisStatus.UNANALYSABLE):
        return analysis
    request = AnalyzeRequest(study_uid=study_uid, analysis_id=analysis.id, mode=mode)
    jobs.enqueue(JobKind.ANALYZE, analyze_key(study_uid, mode, analysis.revision), request.to_payload())
    return analysis


QuickRead = Callable[[Any], AnalysisResult]

# Reasons stored on the analysis are shown to clinicians (cards, viewer): fixed, plain wording.
# Technical detail (exception text, host names, file paths) goes to the job's last_error only.
REASON_PIPELINE_UNAVAILABLE = "The AI analysis is not available on this server; no result was produced."
REASON_NO_SOURCE = "The images of this study could not be located; no result was produced."
REASON_SOURCE_REFUSED = "The images of this study are on a server this service may not use."
REASON_MODEL_FAILED = "The AI models could not process this study; no result was produced."
REASON_RETRYING = "Retrieving or analysing the images failed; the analysis will be retried."
REASON_FAILED = "The analysis failed after repeated attempts; no result was produced."
REASON_PACS_RETRYING = (
    "The image archive (PACS) could not be reached; the analysis will be retried automatically."
)
REASON_PACS_UNREACHABLE = (
    "The image archive (PACS) could not be reached after repeated attempts; it will be tried again later."
)

#: Failures whose cause can pass (the images were not reachable): retried on a later request.
RETRYABLE_REASONS = frozenset({REASON_NO_SOURCE, REASON_FAILED, REASON_PACS_UNREACHABLE})
#: At most this many FAILED analyses (revisions) per study before a failure stays final.
MAX_FAILED_ATTEMPTS = 4
#: Wait after the n-th failure before retrying: REQUEUE_BACKOFF * 2**(n-1).
REQUEUE_BACKOFF = timedelta(minutes=10)


def retry_due(reason: str | None, failed_count: int, finished_at: datetime | None, now: datetime) -> bool:
    """Whether a FAILED analysis may be tried again now (retryable cause, budget left, back-off over)."""
    if reason not in RETRYABLE_REASONS or failed_count >= MAX_FAILED_ATTEMPTS or finished_at is None:
        return False
    return now >= finished_at + REQUEUE_BACKOFF * 2 ** max(0, failed_count - 1)


def retry_failed_analysis(
    db: Database, jobs: JobQueue, study_uid: str, mode: AnalysisMode = AnalysisMode.QUICK
) -> AnalysisRecord:
    """A new revision of a FAILED analysis, with its job (the failed one stays as history).

    Race-safe: concurrent callers compute the same next revision and the unique (study, mode,
    revision) key gives them one row; the job key is per revision. Anything but a FAILED latest
    analysis is handled by request_analysis.
    """
    with db.session() as s:
        latest = queries.latest_analysis(s, study_uid, mode)
        if latest is None or latest.status is not AnalysisStatus.FAILED:
            analysis = None
        else:
            analysis = queries.new_revision(s, study_uid, mode)
    if analysis is None:
        return request_analysis(db, jobs, study_uid, mode)
    request = AnalyzeRequest(study_uid=study_uid, analysis_id=analysis.id, mode=mode)
    jobs.enqueue(JobKind.ANALYZE, analyze_key(study_uid, mode, analysis.revision), request.to_payload())
    return analysis


def resolve_quick_read() -> QuickRead:
    """cds.pipeline.quick_read, as a function or as a module holding one (imported lazily)."""
    pipeline = importlib.import_module("cds.pipeline")
    candidate: Any = getattr(pipeline, "quick_read", None)
    if candidate is None:
        candidate = importlib.import_module("cds.pipeline.quick_read")
    if not callable(candidate):
        candidate = getattr(candidate, "quick_read", None)
    if not callable(candidate):
        raise ImportError("cds.pipeline.quick_read is not a function")
    return candidate


def resolve_load_study() -> Callable[[Any], Any]:
    """cds.dicom.load_study, imported lazily (pydicom and NumPy stay out of the web process)."""
    load_study = getattr(importlib.import_module("cds.dicom"), "load_study", None)
    if not callable(load_study):
        raise ImportError("cds.dicom.load_study is missing")
    return load_study


def open_source(source_uri: str, study_uid: str, settings: Settings) -> Any:
    """What load_study reads: a local folder/zip path, or a DICOMweb study (URL .../studies/<uid>).

    A DICOMweb URL must point at the configured PACS (CDS_DICOMWEB_URL) or a host in
    CDS_DICOMWEB_ALLOWED_HOSTS (Forbidden otherwise: a stored URL must not aim the worker at
    internal addresses), and the PACS credentials are sent only to the configured PACS.
    """
    if not source_uri.startswith(("http://", "https://")):
        return Path(source_uri)
    from cds.dicom.sources.dicomweb import DicomWebAuth, DicomWebSource, RetryPolicy

    base = source_uri.split("/studies/", 1)[0].rstrip("/")
    host = urlsplit(base).hostname or ""
    configured = bool(settings.dicomweb_url) and base == settings.dicomweb_url.rstrip("/")
    if not configured and host not in settings.dicomweb_allowed_hosts:
        raise Forbidden(
            f"DICOMweb host {host!r} is neither CDS_DICOMWEB_URL nor in CDS_DICOMWEB_ALLOWED_HOSTS"
        )
    auth = None
    if configured:
        auth = DicomWebAuth(
            username=settings.dicomweb_username,
            password=settings.dicomweb_password,
            bearer_token=settings.dicomweb_bearer_token,
        )
    retry = RetryPolicy(read_timeout_s=settings.dicomweb_timeout_s)
    return DicomWebSource(base, study_uid, auth=auth, retry=retry)


def _store(ctx: JobContext, request: AnalyzeRequest, result: AnalysisResult) -> None:
    with ctx.db.session() as s:
        queries.save_analysis(s, request.study_uid, result, analysis_id=request.analysis_id)


def _fail(ctx: JobContext, request: AnalyzeRequest, reason: str) -> None:
    _store(ctx, request, AnalysisResult(status=AnalysisStatus.FAILED, reason=reason))


def run_analyze(ctx: JobContext) -> None:
    request = AnalyzeRequest.from_payload(ctx.payload)
    with ctx.db.session() as s:
        analysis = queries.get_analysis(s, request.analysis_id)
        if analysis is None:
            raise PermanentJobError(f"analysis {request.analysis_id} does not exist")
        already_done = analysis.status is AnalysisStatus.COMPLETE
        if not already_done:
            source = analysis.study.source_uri
            queries.mark_analysis_running(s, request.analysis_id)
    if already_done:  # a duplicate delivery, or the retry of a failed write-back: no new analysis
        _write_back(ctx, request)
        return
    if not source:
        source = _source_from_ehr(ctx, request)
    if not source:
        _fail(ctx, request, REASON_NO_SOURCE)
        raise PermanentJobError("study has no image source")

    try:
        _analyze(ctx, request, source)
    except PermanentJobError:
        raise
    except UpstreamError:
        # The PACS is down or failing: a clear FAILED state (the card shows the reason) while the
        # job waits for its retry; after the last attempt a retryable reason (hooks retry later).
        _fail(ctx, request, REASON_PACS_UNREACHABLE if ctx.final_attempt else REASON_PACS_RETRYING)
        raise
    except Exception:
        if not ctx.final_attempt:  # transient (e.g. PACS down): say so while the job waits to retry
            with ctx.db.session() as s:
                analysis = queries.get_analysis(s, request.analysis_id)
                if analysis is not None:
                    analysis.status = AnalysisStatus.PENDING
                    analysis.reason = REASON_RETRYING
        raise
    _write_back(ctx, request)


def _source_from_ehr(ctx: JobContext, request: AnalyzeRequest) -> str | None:
    """Images not located yet: ask the configured EHR server (CDS_FHIR_WRITEBACK_URL, the service's
    own credential) for the study's ImagingStudy Endpoint, and keep what it says as the source."""
    if not ctx.settings.fhir_writeback_url:
        return None
    from cds.fhir.roundtrip_imaging import imaging_source_uri

    try:
        found = imaging_source_uri(ctx.settings, request.study_uid)
    except CdsError as exc:  # EHR down, Endpoint not allowed or unusable: no source, as before
        log.info("no image source from the EHR (%s)", type(exc).__name__)
        return None
    if found:
        with ctx.db.session() as s:
            queries.upsert_study(s, request.study_uid, source_uri=found)
    return found


def _write_back(ctx: JobContext, request: AnalyzeRequest) -> None:
    """Where configured (CDS_FHIR_WRITEBACK_URL), send the COMPLETE analysis to the EHR's FHIR server.

    The transaction is idempotent, so a transient failure fails this job attempt and the retry
    redoes only the write-back (the analysis is stored and stays COMPLETE); see
    cds.fhir.writeback.write_back_in_job.
    """
    if not ctx.settings.fhir_writeback_url:
        return
    from cds.fhir.writeback import write_back_in_job

    write_back_in_job(
        ctx.db, ctx.settings, request.analysis_id, attempt=ctx.attempt, final_attempt=ctx.final_attempt
    )


def _analyze(ctx: JobContext, request: AnalyzeRequest, source: str) -> None:
    try:
        quick_read = resolve_quick_read()
        load_study = resolve_load_study()
    except ImportError as exc:
        _fail(ctx, request, REASON_PIPELINE_UNAVAILABLE)
        raise PermanentJobError(f"analysis pipeline unavailable ({exc})") from exc

    from cds.viewer.capture import recorder_for, write_viewer_artifacts

    recorder = recorder_for(quick_read)  # keeps the stage outputs the viewer draws (no recompute)
    try:
        study = load_study(open_source(source, request.study_uid, ctx.settings))
        result = quick_read(study) if recorder is None else recorder.run(quick_read, study)
    except Forbidden as exc:
        _fail(ctx, request, REASON_SOURCE_REFUSED)
        raise PermanentJobError(exc.message) from exc
    except IngestError as exc:
        # A readable answer, not a job failure: the study cannot be analysed, and the card says why.
        _store(
            ctx,
            request,
            AnalysisResult(status=AnalysisStatus.UNANALYSABLE, reason=f"{exc.kind}: {exc.message}"),
        )
        return
    except (ModelError, StageError) as exc:
        # Deterministic for these inputs and weights: retrying cannot help.
        _fail(ctx, request, REASON_MODEL_FAILED)
        raise PermanentJobError(exc.message) from exc
    if not isinstance(result, AnalysisResult):
        _fail(ctx, request, REASON_MODEL_FAILED)
        raise PermanentJobError(f"quick_read returned {type(result).__name__}, not AnalysisResult")
    _store(ctx, request, result)
    if recorder is not None:  # best effort: the findings are stored whatever happens here
        write_viewer_artifacts(recorder, result, ctx.settings.data_dir, request.analysis_id)
    from cds.explain.policy import explain_if_wanted

    explain_if_wanted(ctx.db, ctx.settings, request.analysis_id, result)  # eager policy (issue 5)


def on_analyze_failure(ctx: JobContext, error: str) -> None:
    """Final failure (retries exhausted): the analysis must say FAILED and why, never stay pending."""
    try:
        request = AnalyzeRequest.from_payload(ctx.payload)
    except PermanentJobError:
        return
    with ctx.db.session() as s:
        analysis = queries.get_analysis(s, request.analysis_id)
        if analysis is None or analysis.status is AnalysisStatus.FAILED:
            return
        queries.fail_analysis(s, request.analysis_id, REASON_FAILED)  # `error` stays in jobs.last_error
