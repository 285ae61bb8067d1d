"""The EXPLAIN job: Grad-CAM + rationale for one stored analysis, on demand.

The work itself belongs to cds.explain; this module only makes the request idempotent
(one ExplanationRecord and one job per analysis) and records a clear failure when the explain
package is not installed. The explain package provides
`cds.explain.job.explain_analysis(db: Database, settings: Settings, analysis_id: str) -> None`,
which stores its outcome with cds.store.queries.save_explanation.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from cds.domain import ExplanationStatus
from cds.jobs.kinds import JobKind
from cds.jobs.queue import JobQueue
from cds.jobs.registry import JobContext, PermanentJobError
from cds.store import queries
from cds.store.db import Database
from cds.store.records import ExplanationRecord


def explain_key(analysis_id: str) -> str:
    return f"explain:{analysis_id}"


def request_explanation(db: Database, jobs: JobQueue, analysis_id: str) -> ExplanationRecord:
    """Ensure an explanation record exists and, unless complete, a job computes it (idempotent)."""
    with db.session() as s:
        explanation = queries.ensure_explanation(s, analysis_id)
    if explanation.status is not ExplanationStatus.COMPLETE:
        jobs.enqueue(JobKind.EXPLAIN, explain_key(analysis_id), {"analysis_id": analysis_id})
    return explanation


def _resolve() -> Callable[..., Any]:
    module = importlib.import_module("cds.explain.job")
    fn = getattr(module, "explain_analysis", None)
    if not callable(fn):
        raise ImportError("cds.explain.job.explain_analysis is missing")
    return fn


def _analysis_id(ctx: JobContext) -> str:
    value = ctx.payload.get("analysis_id")
    if not isinstance(value, str) or not value:
        raise PermanentJobError("bad explain payload: analysis_id missing")
    return value


def run_explain(ctx: JobContext) -> None:
    analysis_id = _analysis_id(ctx)
    with ctx.db.session() as s:
        explanation = queries.ensure_explanation(s, analysis_id)
        already_done = explanation.status is ExplanationStatus.COMPLETE
        if not already_done:
            explanation.status = ExplanationStatus.RUNNING
    if already_done:  # a duplicate delivery, or the retry of a failed write-back
        _write_back(ctx, analysis_id)
        return
    try:
        explain_analysis = _resolve()
    except ImportError as exc:
        # The stored reason is shown to clinicians: fixed wording; the import error goes to the job.
        reason = "explanation module unavailable on this server; no explanation was produced"
        with ctx.db.session() as s:
            queries.save_explanation(s, analysis_id, status=ExplanationStatus.FAILED, reason=reason)
        raise PermanentJobError(f"{reason} ({exc})") from exc
    explain_analysis(ctx.db, ctx.settings, analysis_id)
    _write_back(ctx, analysis_id)


def _write_back(ctx: JobContext, analysis_id: str) -> None:
    """With CDS_FHIR_WRITEBACK_URL set, write the report again now that its heatmaps exist: the
    conditional update adds their Media to the report already in the EHR (cds.fhir.writeback)."""
    if not ctx.settings.fhir_writeback_url:
        return
    from cds.fhir.writeback import write_back_in_job

    write_back_in_job(ctx.db, ctx.settings, analysis_id, attempt=ctx.attempt, final_attempt=ctx.final_attempt)


#: Stored as the explanation's reason and shown to clinicians on the card: fixed, PHI-free wording.
#: Exception text (file paths naming patients, database hosts) stays in the job's last_error only.
REASON_EXPLAIN_FAILED = "an internal error stopped the computation"


def on_explain_failure(ctx: JobContext, error: str) -> None:
    """Final failure of an EXPLAIN job. `error` (exception type and text) is already in the job's
    last_error for operators; it never reaches the record clinicians see (see REASON_EXPLAIN_FAILED)."""
    del error
    try:
        analysis_id = _analysis_id(ctx)
    except PermanentJobError:
        return
    with ctx.db.session() as s:
        explanation = queries.ensure_explanation(s, analysis_id)
        if explanation.status is not ExplanationStatus.FAILED:
            queries.save_explanation(
                s, analysis_id, status=ExplanationStatus.FAILED, reason=REASON_EXPLAIN_FAILED
            )
