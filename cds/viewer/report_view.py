"""Everything the report page shows, read from the store and the artifact folder in one go.

Flask-free (the blueprint passes the database and the data folder), so the page's content can be
assembled and tested without a request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cds.domain import AnalysisStatus, Grade
from cds.store.db import Database
from cds.viewer import artifacts as art
from cds.viewer import feedback as fb
from cds.viewer.explanation import ExplanationView, build_view
from cds.viewer.imaging import ImagesView, build_images
from cds.viewer.page import ReportPage, build_report_page


@dataclass(frozen=True)
class ReportView:
    page: ReportPage
    images: ImagesView
    explanation: ExplanationView
    feedback: dict[str, fb.ShownFeedback] = field(default_factory=dict)
    card_feedback: tuple[fb.CardFeedback, ...] = ()
    #: The feedback targets of this analysis: "card" and "<level>/<condition>" of each finding.
    targets: frozenset[str] = frozenset()


def grades_of(record: Any) -> dict[str, Grade]:
    """ "<level>/<condition>" -> grade of a stored analysis (for the heatmap captions)."""
    return {f"{r.level.value}/{r.condition.value}": r.grade for r in record.findings}


def page_of(record: Any) -> ReportPage:
    study = record.study
    return build_report_page(
        record.to_result(),
        analysis_id=record.id,
        mode=record.mode,
        patient_ref=study.patient_ref,
        study_date=study.study_date,
        study_description=study.description,
        analysed_at=record.finished_at,
    )


def images_of(data_dir: Path, analysis_id: str, complete: bool) -> ImagesView:
    if not complete:
        return build_images(None, "Images are shown once the analysis is complete.")
    try:
        manifest = art.read_manifest(art.viewer_dir(data_dir, analysis_id))
    except art.ArtifactsMissing:
        return build_images(
            None, "No images were stored with this analysis (analysed before the viewer kept them)."
        )
    return build_images(manifest)


def load_report_view(
    db: Database, data_dir: Path, analysis_id: str, card_uuid: str | None
) -> ReportView | None:
    """The report of one analysis, or None when there is no such analysis."""
    from cds.store import queries

    with db.session(readonly=True) as session:
        record = queries.get_analysis(session, analysis_id)
        if record is None:
            return None
        page = page_of(record)
        complete = record.status is AnalysisStatus.COMPLETE
        explanation = build_view(record.explanation, grades_of(record), complete)
        shown = fb.latest(session, analysis_id)
        card_fb = fb.card_feedback(session, card_uuid)
    targets = frozenset({fb.CARD_TARGET, *(f"{r.level.value}/{r.condition.value}" for r in page.rows)})
    return ReportView(page, images_of(data_dir, analysis_id, complete), explanation, shown, card_fb, targets)
