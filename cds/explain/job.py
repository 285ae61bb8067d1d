"""explain_analysis: the EXPLAIN job's work -- heatmaps and a rationale for one stored analysis.

Called by cds.jobs.explanation.run_explain (which makes the request idempotent and marks the
record RUNNING). The explanation must explain *the stored result*, so the study is read again
from the same source the analysis used and the quick read is re-run traced (the crops are not
stored); the re-run must reproduce the stored model versions and grades, otherwise the record
FAILS with a reason rather than showing heatmaps of a different result.

Outcomes, all stored with queries.save_explanation (clinician-facing reasons are fixed wording;
technical detail goes to the job's last_error through the raised PermanentJobError):
COMPLETE with artifacts under data_dir/artifacts/<analysis_id>/gradcam/; FAILED when the analysis
has nothing to explain, the study cannot be loaded, or the re-run disagrees. Running it twice
gives the same files and the same record (idempotent).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from cds.config import Settings
from cds.domain import AnalysisResult, AnalysisStatus, ExplanationStatus
from cds.errors import CdsError
from cds.jobs.registry import PermanentJobError
from cds.store import queries
from cds.store.db import Database

log = logging.getLogger(__name__)

ARTIFACT_SUBDIR = "gradcam"
REASON_NOT_COMPLETE = "The analysis has no completed findings to explain."
REASON_NO_SOURCE = "The images of this study could not be located; no explanation was produced."
REASON_UNREADABLE = "The images of this study could not be read again; no explanation was produced."
REASON_CHANGED = (
    "The analysis could not be reproduced with the current models; re-analyse the study to explain it."
)


def artifact_dir(settings: Settings, analysis_id: str) -> Path:
    return settings.data_dir / "artifacts" / analysis_id / ARTIFACT_SUBDIR


def writer_label(rationale: Any) -> str:
    """ExplanationRecord.writer: "template" or "model:<backend>:<model id>"."""
    if rationale.writer.value == "template":
        return "template"
    return f"model:{rationale.backend}:{rationale.model_id or 'unknown'}"


def _fail(db: Database, analysis_id: str, reason: str, detail: str) -> PermanentJobError:
    with db.session() as s:
        queries.save_explanation(s, analysis_id, status=ExplanationStatus.FAILED, reason=reason)
    return PermanentJobError(f"{reason} ({detail})")


def _grades(result: AnalysisResult) -> set[tuple[str, str, str]]:
    return {(f.level.value, f.condition.value, f.grade.value) for f in result.findings}


def explain_analysis(db: Database, settings: Settings, analysis_id: str) -> None:
    """Compute and store the explanation of one analysis (see the module docstring)."""
    with db.session() as s:
        analysis = queries.get_analysis(s, analysis_id)
        if analysis is None:
            raise PermanentJobError(f"analysis {analysis_id} does not exist")
        explanation = queries.ensure_explanation(s, analysis_id)
        if explanation.status is ExplanationStatus.COMPLETE:
            return
        stored = analysis.to_result()
        source = analysis.study.source_uri
        study_uid = analysis.study.study_uid
    if stored.status is not AnalysisStatus.COMPLETE:
        raise _fail(db, analysis_id, REASON_NOT_COMPLETE, f"analysis status {stored.status.value}")
    if not source:
        raise _fail(db, analysis_id, REASON_NO_SOURCE, "study has no source_uri")

    from cds.dicom import load_study
    from cds.explain.gradcam_inputs import traced_quick_read
    from cds.jobs.analysis import open_source

    try:
        study = load_study(open_source(source, study_uid, settings))
    except (CdsError, OSError) as exc:
        raise _fail(db, analysis_id, REASON_UNREADABLE, f"{type(exc).__name__}: {exc}") from exc
    traced = traced_quick_read(study)
    if dict(traced.result.model_versions) != dict(stored.model_versions) or _grades(traced.result) != _grades(
        stored
    ):
        raise _fail(db, analysis_id, REASON_CHANGED, "re-run differs from the stored analysis")
    store_explanation(db, settings, analysis_id, stored, traced)


def store_explanation(
    db: Database, settings: Settings, analysis_id: str, stored: AnalysisResult, traced: Any
) -> None:
    """Heatmaps for the stored result's moderate/severe findings + the rationale, then COMPLETE."""
    from cds.explain.gradcam_study import heatmaps_for_study, select_targets
    from cds.explain.rationale import write_rationale

    out_dir = artifact_dir(settings, analysis_id)
    if out_dir.exists():  # a re-run replaces, never mixes, the files of an earlier attempt
        shutil.rmtree(out_dir)
    targets = [t for t in select_targets(stored) if t.level in traced.inputs]
    heatmaps = heatmaps_for_study(
        stored, traced.inputs, out_dir, targets=targets, foramina=traced.foramina, recesses=traced.recesses
    )
    rationale = write_rationale(stored.to_json()["levels"], heatmaps.notes(), settings=settings)
    records = {h.key: h.record(settings.data_dir) for h in heatmaps.heatmaps}
    with db.session() as s:
        queries.save_explanation(
            s,
            analysis_id,
            status=ExplanationStatus.COMPLETE,
            rationale=rationale.text,
            writer=writer_label(rationale),
            heatmaps=records,
        )
    log.info(
        "explanation complete: %d heatmaps, writer %s, gradcam %.0f ms",
        len(records),
        rationale.writer.value,
        heatmaps.timings_ms.get("gradcam_ms", 0.0),
    )
