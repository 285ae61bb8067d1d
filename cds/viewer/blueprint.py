"""Clinician viewer (first version): GET /viewer/<token> renders one analysis as a report page;
GET /explain/<token> (the card's "explain" link) requests the on-demand explanation and shows its
status.

Access is only through the signed, expiring link a card carries (cds.signing): the URL holds the
analysis id, signed, and nothing about the patient. An expired link gets a 410 page telling the
user to reopen the card, a tampered one a 403 page; neither shows a stack trace.

Responses carry no-store caching (the page holds PHI), no-referrer (the token must not leak to
other sites through the Referer header) and a restrictive Content-Security-Policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, Response, render_template

from cds.signing import (
    LinkExpired,
    LinkInvalid,
    LinkPurpose,
    LinkSigner,
    sign_viewer_token,
    verify_viewer_token,
)
from cds.viewer.page import ReportPage, build_report_page

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"

bp = Blueprint("viewer", __name__, template_folder=str(TEMPLATES))

_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'self'"
    ),
}


@bp.after_request
def _security_headers(response: Response) -> Response:
    for name, value in _SECURITY_HEADERS.items():
        response.headers[name] = value
    return response


def _services() -> Any:
    from cds.extensions import services  # app wiring (platform); imported lazily

    return services()


def _error_page(status: int, title: str, message: str) -> tuple[str, int]:
    return render_template("link_error.html", status=status, title=title, message=message), status


def load_page(analysis_id: str) -> ReportPage | None:
    """The report page of a stored analysis, or None when there is no such analysis."""
    from cds.store import queries

    with _services().db.session(readonly=True) as session:
        record = queries.get_analysis(session, analysis_id)
        if record is None:
            return None
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


@bp.get("/viewer/<token>")
def report(token: str) -> Any:
    try:
        analysis_id = verify_viewer_token(token)
    except LinkExpired:
        return _error_page(
            410,
            "This link has expired",
            "Viewer links expire to protect the patient's privacy. "
            "Open the card in the EHR again to get a fresh link.",
        )
    except LinkInvalid:
        return _error_page(
            403,
            "This link is not valid",
            "The link is incomplete or has been changed. "
            "Open the card in the EHR again to get a working link.",
        )
    page = load_page(analysis_id)
    if page is None:
        return _error_page(404, "Analysis not found", "The analysis this link points to no longer exists.")
    return render_template("report.html", page=page)


def _link_error(exc: LinkExpired | LinkInvalid) -> tuple[str, int]:
    if isinstance(exc, LinkExpired):
        return _error_page(
            410,
            "This link has expired",
            "Links expire to protect the patient's privacy. "
            "Open the card in the EHR again to get a fresh link.",
        )
    return _error_page(
        403,
        "This link is not valid",
        "The link is incomplete or has been changed. Open the card in the EHR again to get a working link.",
    )


_EXPLANATION_TEXT = {
    "pending": "Requested: waiting for a worker to compute it.",
    "running": "Being computed now.",
    "complete": "Ready.",
    "failed": "No explanation could be produced.",
}
#: While an explanation is on its way the page reloads itself this often (seconds).
EXPLAIN_REFRESH_S = 10


@bp.get("/explain/<token>")
def explain(token: str) -> Any:
    """Request the explanation of the analysis the token names (idempotent) and show its status.

    GET with a side effect on purpose: the card link is opened by a click in the EHR. The effect is
    idempotent (one explanation record and one job per analysis, however often the link is opened),
    and the token is signed for the EXPLAIN purpose, so a viewer link cannot trigger it.
    """
    from cds.domain import AnalysisStatus
    from cds.jobs.explanation import request_explanation
    from cds.store import queries

    svc = _services()
    try:
        analysis_id = LinkSigner(svc.settings.secret_key, LinkPurpose.EXPLAIN).verify(token)
    except (LinkExpired, LinkInvalid) as exc:
        return _link_error(exc)
    with svc.db.session(readonly=True) as session:
        record = queries.get_analysis(session, analysis_id)
        analysis_status = None if record is None else record.status
    if analysis_status is None:
        return _error_page(404, "Analysis not found", "The analysis this link points to no longer exists.")
    viewer_url = "/viewer/" + sign_viewer_token(analysis_id, svc.settings.viewer_link_ttl_s)
    if analysis_status is not AnalysisStatus.COMPLETE:
        return render_template(
            "explain.html",
            status="unavailable",
            status_text="Only a completed analysis can be explained.",
            reason=None,
            writer=None,
            rationale=None,
            refresh_s=None,
            viewer_url=viewer_url,
        )
    explanation = request_explanation(svc.db, svc.jobs, analysis_id)
    status = explanation.status.value
    return render_template(
        "explain.html",
        status=status,
        status_text=_EXPLANATION_TEXT.get(status, status),
        reason=explanation.reason if status == "failed" else None,
        writer=explanation.writer if status == "complete" else None,
        rationale=explanation.rationale if status == "complete" else None,
        refresh_s=EXPLAIN_REFRESH_S if status in ("pending", "running") else None,
        viewer_url=viewer_url,
    )
