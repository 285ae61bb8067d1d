"""Everything the report page shows, read from the store and the artifact folder in one go.

Flask-free (the blueprint passes the database and the data folder), so the page's content can be
assembled and tested without a request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cds.domain import AnalysisStatus, Grade
from cds.signing import CardIdSigner
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
    #: The ``?card=`` uuid when it is a card this deployment showed for this patient, else None
    #: (feedback.linked_card_uuid): only this one is shown, carried in forms and stored.
    card_uuid: str | None = None


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
    db: Database, data_dir: Path, analysis_id: str, card_uuid: str | None, card_ids: CardIdSigner
) -> ReportView | None:
    """The report of one analysis, or None when there is no such analysis.

    ``card_uuid`` (from the link) is checked against the hook calls about this analysis's patient
    (feedback.linked_card_uuid) before any EHR feedback is read with it."""
    from cds.store import queries

    with db.session(readonly=True) as session:
        record = queries.get_analysis(session, analysis_id)
        if record is None:
            return None
        page = page_of(record)
        complete = record.status is AnalysisStatus.COMPLETE
        explanation = build_view(record.explanation, grades_of(record), complete)
        shown = fb.latest(session, analysis_id)
        linked = fb.linked_card_uuid(session, card_uuid, record.study.patient_ref, card_ids)
        card_fb = fb.card_feedback(session, linked)
    targets = frozenset({fb.CARD_TARGET, *(f"{r.level.value}/{r.condition.value}" for r in page.rows)})
    images = images_of(data_dir, analysis_id, complete)
    return ReportView(page, images, explanation, shown, card_fb, targets, linked)
