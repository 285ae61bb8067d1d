"""Clinician viewer routes: the report (/viewer/<token>) with its images, explanation and feedback,
the card's explain link (/explain/<token>) and the demo study list (/studies/<token>, 404 unless
CDS_STUDY_LIST_ENABLED: `cds demo` turns it on).

Access is only through signed, expiring links (cds.signing): the URL holds a signed analysis id
and nothing about the patient. An expired link gets a 410 page telling the user to reopen the
card, a tampered one a 403 page; neither shows a stack trace. State-changing requests (start an
explanation, give feedback) are POSTs to the same signed URL: a cross-site page cannot forge them
without the token, and a foreign Origin / Sec-Fetch-Site is refused on top.

Responses carry no-store caching (pages hold PHI) except the rendered images (private, short
max-age, ETag: they never change for a given analysis), no-referrer (the token must not leak
through the Referer header) and a Content-Security-Policy allowing only this origin's script.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, jsonify, redirect, render_template, request, send_file, url_for
from werkzeug.exceptions import HTTPException

from cds.signing import (
    STUDY_LIST_SUBJECT,
    LinkExpired,
    LinkInvalid,
    LinkPurpose,
    LinkSigner,
    sign_viewer_token,
)

if TYPE_CHECKING:
    from cds.viewer.report_view import ReportView

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"

bp = Blueprint(
    "viewer",
    __name__,
    template_folder=str(TEMPLATES),
    static_folder="static",
    static_url_path="/viewer-static",
)

#: Rendered images are cached by the browser this long (they are immutable per analysis).
IMAGE_MAX_AGE_S = 3600

_SECURITY_HEADERS = {
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
}


@bp.after_request
def _security_headers(response: Response) -> Response:
    for name, value in _SECURITY_HEADERS.items():
        response.headers[name] = value
    if "Cache-Control" not in response.headers or not response.headers["Cache-Control"].startswith("private"):
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
    return response


def _services() -> Any:
    from cds.extensions import services  # app wiring (platform); imported lazily

    return services()


def _error_page(status: int, title: str, message: str) -> tuple[str, int]:
    return render_template("link_error.html", status=status, title=title, message=message), status


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


def _not_found() -> tuple[str, int]:
    return _error_page(404, "Analysis not found", "The analysis this link points to no longer exists.")


class _LinkRejected(Exception):
    def __init__(self, page: tuple[str, int]) -> None:
        super().__init__("link rejected")
        self.page = page


def _verify(token: str, purpose: LinkPurpose = LinkPurpose.VIEWER) -> str:
    try:
        return LinkSigner(_services().settings.secret_key, purpose).verify(token)
    except (LinkExpired, LinkInvalid) as exc:
        raise _LinkRejected(_link_error(exc)) from exc


@bp.errorhandler(_LinkRejected)
def _rejected(exc: _LinkRejected) -> tuple[str, int]:
    return exc.page


def _machine_reader() -> bool:
    """Images and JSON endpoints keep the app's OperationOutcome errors; pages get an HTML page."""
    return request.path.endswith(".png") or request.path.endswith("/status") or _wants_json()


#: Routing errors (unknown path, wrong method) never reach a blueprint's handlers; these are the
#: statuses a viewer route itself raises.
_HTTP_TEXT = {
    403: "This request was refused. Open the card in the EHR again.",
    404: "There is nothing at this address. Open the card in the EHR again.",
}


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Any:
    from cds.weberrors import handle_http_error

    if _machine_reader() or (exc.code or 500) == 413:
        return handle_http_error(exc)
    status = exc.code or 500
    return _error_page(status, exc.name, _HTTP_TEXT.get(status, "The request could not be completed."))


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Any:
    """A clear page instead of JSON or a stack trace; logged the app's way (where, never what)."""
    from cds.weberrors import handle_unexpected

    logged = handle_unexpected(exc)
    if _machine_reader():
        return logged
    return _error_page(
        500,
        "Something went wrong",
        "The page could not be shown; the error has been logged. Please try again, or reopen the card.",
    )


def _same_origin_post() -> None:
    """Refuse a POST another site's page made (defence in depth on top of the secret token)."""
    if request.headers.get("Sec-Fetch-Site", "") == "cross-site":
        abort(403)
    origin = request.headers.get("Origin")
    if origin and origin != "null":
        mine = urlsplit(request.host_url)
        theirs = urlsplit(origin)
        if (theirs.scheme, theirs.netloc) != (mine.scheme, mine.netloc):
            abort(403)


def _wants_json() -> bool:
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "application/json"


# --- the report -----------------------------------------------------------------------------------


def load_context(analysis_id: str, card_uuid: str | None) -> ReportView | None:
    from cds.signing import CardIdSigner
    from cds.viewer.report_view import load_report_view

    svc = _services()
    card_ids = CardIdSigner(svc.settings.secret_key)
    return load_report_view(svc.db, svc.settings.data_dir, analysis_id, card_uuid, card_ids)


def _render_report(
    token: str, ctx: ReportView, card: str | None, errors: dict[str, str] | None = None, form: Any = None
) -> str:
    from cds.viewer.feedback import DisagreeReason
    from cds.viewer.imaging import PRESETS

    return render_template(
        "report.html",
        token=token,
        page=ctx.page,
        images=ctx.images,
        presets=PRESETS,
        explanation=ctx.explanation,
        feedback=ctx.feedback,
        card_feedback=ctx.card_feedback,
        card=card,
        reasons=list(DisagreeReason),
        errors=errors or {},
        form=form or {},
        heatmap_token=token,
    )


@bp.get("/viewer/<token>")
def report(token: str) -> Any:
    from cds.viewer.feedback import valid_card_uuid

    analysis_id = _verify(token)
    ctx = load_context(analysis_id, valid_card_uuid(request.args.get("card")))
    if ctx is None:
        return _not_found()
    return _render_report(token, ctx, ctx.card_uuid)


@bp.post("/viewer/<token>/feedback")
def give_feedback(token: str) -> Any:
    from cds.viewer import feedback as fb

    _same_origin_post()
    analysis_id = _verify(token)
    ctx = load_context(analysis_id, fb.valid_card_uuid(request.form.get("card")))
    if ctx is None:
        return _not_found()
    card = ctx.card_uuid  # None unless a card shown for this patient (never a typed-in foreign one)
    try:
        item = fb.parse_form(request.form, set(ctx.targets))
    except fb.FeedbackInvalid as exc:
        target = request.form.get("target", "")
        key = target if target in ctx.targets else fb.CARD_TARGET
        html = _render_report(token, ctx, card, errors={key: exc.message}, form=request.form)
        return html, 400
    if item.card_uuid != card:
        item = replace(item, card_uuid=None)  # still saved, just not linked to the EHR's card
    with _services().db.session() as session:
        fb.save(session, analysis_id, item)
    location = url_for("viewer.report", token=token, card=card) + "#" + item.target.anchor
    return redirect(location, code=303)


# --- explanation ------------------------------------------------------------------------------------


def _explanation_status(analysis_id: str) -> dict[str, Any]:
    from cds.domain import AnalysisStatus
    from cds.store import queries
    from cds.viewer.explanation import status_text

    with _services().db.session(readonly=True) as session:
        record = queries.get_analysis(session, analysis_id)
        if record is None:
            abort(404)
        if record.status is not AnalysisStatus.COMPLETE:
            status, reason = "unavailable", None
        elif record.explanation is None:
            status, reason = "none", None
        else:
            status = record.explanation.status.value
            reason = record.explanation.reason if status == "failed" else None
    return {"status": status, "status_text": status_text(status), "reason": reason}


@bp.post("/viewer/<token>/explain")
def start_explanation(token: str) -> Any:
    """Start (or restart after a failure) the explanation job; idempotent while one is on its way."""
    from cds.domain import AnalysisStatus, ExplanationStatus
    from cds.jobs.explanation import request_explanation
    from cds.store import queries

    _same_origin_post()
    analysis_id = _verify(token)
    svc = _services()
    with svc.db.session() as session:
        record = queries.get_analysis(session, analysis_id)
        if record is None:
            return _not_found()
        if record.status is not AnalysisStatus.COMPLETE:
            if _wants_json():
                return jsonify(_explanation_status(analysis_id)), 409
            return redirect(url_for("viewer.report", token=token) + "#explanation", code=303)
        existing = record.explanation
        if existing is not None and existing.status is ExplanationStatus.FAILED:
            queries.save_explanation(session, analysis_id, status=ExplanationStatus.PENDING)
    request_explanation(svc.db, svc.jobs, analysis_id)
    if _wants_json():
        return jsonify(_explanation_status(analysis_id)), 202
    return redirect(url_for("viewer.report", token=token) + "#explanation", code=303)


@bp.get("/viewer/<token>/explain/status")
def explanation_status(token: str) -> Any:
    analysis_id = _verify(token)
    return jsonify(_explanation_status(analysis_id))


#: While an explanation is on its way the (script-free) explain page reloads itself this often (s).
EXPLAIN_REFRESH_S = 10


@bp.get("/explain/<token>")
def explain(token: str) -> Any:
    """The card's explain link: request the explanation (idempotent) and show its status.

    GET with a side effect on purpose: the card link is opened by a click in the EHR. The effect is
    idempotent (one explanation record and one job per analysis, however often the link is opened),
    and the token is signed for the EXPLAIN purpose, so a viewer link cannot trigger it.
    """
    from cds.domain import AnalysisStatus
    from cds.jobs.explanation import request_explanation
    from cds.store import queries
    from cds.viewer.explanation import build_view
    from cds.viewer.report_view import grades_of

    analysis_id = _verify(token, LinkPurpose.EXPLAIN)
    svc = _services()
    with svc.db.session(readonly=True) as session:
        record = queries.get_analysis(session, analysis_id)
        analysis_status = None if record is None else record.status
    if analysis_status is None:
        return _not_found()
    viewer_token = sign_viewer_token(analysis_id, svc.settings.viewer_link_ttl_s)
    if analysis_status is AnalysisStatus.COMPLETE:
        request_explanation(svc.db, svc.jobs, analysis_id)
    with svc.db.session(readonly=True) as session:
        record = queries.get_analysis(session, analysis_id)
        assert record is not None
        complete = analysis_status is AnalysisStatus.COMPLETE
        view = build_view(record.explanation, grades_of(record), complete)
    return render_template(
        "explain.html",
        explanation=view,
        status=view.status,
        refresh_s=EXPLAIN_REFRESH_S if view.in_progress else None,
        viewer_url=url_for("viewer.report", token=viewer_token),
        heatmap_token=viewer_token,
    )


# --- images -----------------------------------------------------------------------------------------


def _png(path: Path) -> Response:
    response = send_file(path, mimetype="image/png", conditional=True, etag=True, max_age=IMAGE_MAX_AGE_S)
    response.headers["Cache-Control"] = f"private, max-age={IMAGE_MAX_AGE_S}"
    response.headers.pop("Expires", None)
    return response


def _artifact_dir(analysis_id: str) -> Path:
    from cds.viewer.artifacts import viewer_dir

    return viewer_dir(_services().settings.data_dir, analysis_id)


@bp.get("/viewer/<token>/img/sagittal/<layer>.png")
def sagittal_png(token: str, layer: str) -> Any:
    from cds.viewer.layers import LayerNotFound, sagittal_layer

    directory = _artifact_dir(_verify(token))
    try:
        return _png(sagittal_layer(directory, layer, request.args.get("wl")))
    except LayerNotFound:
        abort(404)


@bp.get("/viewer/<token>/img/axial/<level>/<int:row>/<layer>.png")
def axial_png(token: str, level: str, row: int, layer: str) -> Any:
    from cds.viewer.layers import LayerNotFound, axial_layer

    directory = _artifact_dir(_verify(token))
    try:
        return _png(axial_layer(directory, level, row, layer, request.args.get("wl")))
    except LayerNotFound:
        abort(404)


@bp.get("/viewer/<token>/heatmap/<int:index>.png")
def heatmap_png(token: str, index: int) -> Any:
    from cds.store import queries
    from cds.viewer.explanation import heatmap_path

    analysis_id = _verify(token)
    with _services().db.session(readonly=True) as session:
        record = queries.get_analysis(session, analysis_id)
        heatmaps = dict(record.explanation.heatmaps or {}) if record and record.explanation else {}
    entries = [entry for _, entry in sorted(heatmaps.items())]
    if not 0 <= index < len(entries) or not isinstance(entries[index], dict):
        abort(404)
    path = heatmap_path(_services().settings.data_dir, analysis_id, str(entries[index].get("overlay", "")))
    if path is None:
        abort(404)
    return _png(path)


# --- the demo study list ------------------------------------------------------------------------------


@bp.route("/studies/<token>", methods=["GET", "POST"])
def studies(token: str) -> Any:
    from cds.viewer import studies as st

    svc = _services()
    if not svc.settings.study_list_enabled:  # a demo page: it lists every patient's studies
        abort(404)
    if _verify(token, LinkPurpose.STUDY_LIST) != STUDY_LIST_SUBJECT:
        return _link_error(LinkInvalid("not a study-list link"))
    error = None
    flt = st.StudyFilter()
    status = 200
    if request.method == "POST":
        _same_origin_post()
        try:
            flt = st.parse_filter(request.form)
        except st.FilterInvalid as exc:
            error, status = exc.message, 400
    with svc.db.session(readonly=True) as session:
        rows = st.list_studies(session, flt)
    ttl = svc.settings.viewer_link_ttl_s
    links = {
        r.analysis_id: url_for("viewer.report", token=sign_viewer_token(r.analysis_id, ttl))
        for r in rows
        if r.analysis_id
    }
    from cds.domain import AnalysisStatus

    return (
        render_template(
            "studies.html",
            token=token,
            rows=rows,
            links=links,
            flt=flt,
            form=request.form if request.method == "POST" else {},
            error=error,
            statuses=[s.value for s in AnalysisStatus],
            no_analysis=st.NO_ANALYSIS,
            max_rows=st.MAX_ROWS,
        ),
        status,
    )
