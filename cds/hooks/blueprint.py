"""HTTP edge of the CDS services: /cds-services (discovery), /{id} (hooks), /{id}/feedback.

Thin on purpose: size limit -> authenticate -> claim jti -> parse -> one decision -> serialise
-> audit. The token's jti is claimed (replay protection shared by all workers) right after its
signature checks out and before anything else happens, so a replayed token is answered 401 without
a single side effect: no FHIR fetch, no study registered, no job. The evaluation itself only reads
(one status statement); analyses it asks for are registered and enqueued after it, and the audit
row is the call's last write. The claim, the status read and the audit row go straight to the
database driver (cds.hooks.hotstore): they are most of a call's database cost. Calls that never
authenticated (no valid token, a replayed one, a body over the limit before the token was
checked) write no audit row (an attacker could otherwise fill the table); they are counted in the
log instead.

Logs carry a request id, the service, status and latency: never tokens, bodies or patient ids.

A hook call is served by HookFastPath (WSGI middleware inside the request-id middleware) without
Flask's request machinery, through the same _serve_hook as the Flask route; everything unusual
(other methods and paths, chunked bodies) still goes through Flask.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from flask import Blueprint, Flask, Response, current_app, request
from flask.blueprints import BlueprintSetupState
from werkzeug.http import HTTP_STATUS_CODES, parse_options_header

from cds.domain import FeedbackOutcome
from cds.errors import BadRequest, CdsError, NotFound, PayloadTooLarge
from cds.hooks.auth import Authenticator, VerifiedToken
from cds.hooks.cards import is_offered_override_reason, prune_empty
from cds.hooks.encode import encode_cards
from cds.hooks.fhirsource import source_for
from cds.hooks.hotstore import AuditRow
from cds.hooks.models import FeedbackRequest, HookRequest, parse_json_model, parse_model
from cds.hooks.outcome import outcome_for_error, outcome_for_unexpected
from cds.hooks.registry import BY_ID, discovery
from cds.hooks.runtime import HooksRuntime, runtime
from cds.hooks.service import HookCall, ServiceDefinition
from cds.hooks.storecatalog import StoreCatalog
from cds.logs import ENVIRON_KEY, RequestIdMiddleware, StartResponse, WsgiApp, request_id_for
from cds.ops.metrics import observe_hook
from cds.store import queries
from cds.store.records import HookCallRecord

log = logging.getLogger(__name__)

bp = Blueprint("cds_hooks", __name__, url_prefix="/cds-services")

_JSON = "application/json"
_DISCOVERY_BODY: bytes | None = None
_unauthorized_lock = threading.Lock()
_unauthorized_count = 0


def _count_unauthorized(rid: str, service_id: str) -> None:
    """A log line with this process's running count of 401s, instead of an audit row per call."""
    global _unauthorized_count
    with _unauthorized_lock:
        _unauthorized_count += 1
        count = _unauthorized_count
    log.info(
        "hook_call unauthorized request_id=%s service=%s unauthorized_total=%d",
        rid,
        service_id,
        count,
        extra={"request_id": rid, "service": service_id, "status": 401},
    )


def _request_id(environ: dict[str, Any] | None = None) -> str:
    """The request id cds.logs' middleware assigned (X-Request-ID if well-formed, else fresh)."""
    environ = request.environ if environ is None else environ
    found = environ.get(ENVIRON_KEY)
    return found if isinstance(found, str) else request_id_for(environ.get("HTTP_X_REQUEST_ID"))


def _json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status, mimetype=_JSON)


def _error_response(error: CdsError, rid: str | None = None) -> Response:
    resp = _json_response(outcome_for_error(error), error.http_status)
    if error.http_status == 401:
        resp.headers["WWW-Authenticate"] = "Bearer"
    if rid:
        resp.headers["X-Request-ID"] = rid
    return resp


def _read_body(environ: dict[str, Any], limit: int) -> bytes:
    """The body, refusing more than `limit` bytes (declared or actual) with 413, and a body
    shorter than its Content-Length with 400.

    With a valid Content-Length the body is read from the WSGI input directly (what werkzeug's
    stream wrapper would do, minus its objects); otherwise (chunked) through request.stream (only
    under Flask: the lean path of HookFastPath takes requests with a Content-Length only).
    """
    declared = environ.get("CONTENT_LENGTH")
    # isdigit() alone is True for "²" (int() then raises: a 500 under the werkzeug server).
    if declared and not (declared.isascii() and declared.isdigit()):
        raise BadRequest("Content-Length is not a non-negative decimal integer")
    if declared:
        length = int(declared)
        if length > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        body: bytes = environ["wsgi.input"].read(length)
        if len(body) < length:
            # The client closed (or half-closed) its side before sending what it declared: what
            # arrived is a prefix, and a prefix can still be valid JSON. Never evaluate it.
            raise BadRequest("incomplete body: fewer bytes than Content-Length")
        return body
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body larger than {limit} bytes")
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge(f"request body larger than {limit} bytes")
    return body


def _require_json(environ: dict[str, Any]) -> None:
    """werkzeug's Request.mimetype rule: the Content-Type's value without parameters, lower case."""
    mimetype = parse_options_header(environ.get("CONTENT_TYPE", ""))[0].lower()
    if mimetype not in {"application/json", "application/fhir+json"}:
        raise BadRequest("Content-Type must be application/json")


def _audience(rt: HooksRuntime, path: str) -> str:
    """`aud` must be the URL called: the public base URL + the request path (werkzeug's
    Request.path: one leading slash)."""
    return rt.settings.public_base_url.rstrip("/") + "/" + path.lstrip("/")


@dataclass
class _Audit:
    """What one call leaves in the hook_calls table (and the log, minus the patient)."""

    service: ServiceDefinition
    hook_instance: str = ""
    patient_ref: str | None = None
    outcome: str = "error"
    status: int = 500
    cards: int = 0
    card_uuids: str | None = None
    #: cds_hook_request_duration_seconds' endpoint label: "service" (a hook call) or "feedback".
    endpoint: str = "service"


def _finish(
    rt: HooksRuntime,
    token: VerifiedToken | None,
    audit: _Audit,
    started: float,
    rid: str,
    extra: Callable[[Any], None] | None = None,
) -> None:
    """The call's last write: audit row and (feedback) payload rows; nothing for unauthenticated
    calls (`token` is the verified and claimed token, or None)."""
    latency_ms = (time.perf_counter() - started) * 1000.0
    observe_hook(audit.service.id, audit.endpoint, audit.status, latency_ms / 1000.0)
    if token is None:
        _count_unauthorized(rid, audit.service.id)
        return
    row = AuditRow(
        hook_instance=audit.hook_instance or "-",
        service_id=audit.service.id,
        hook=audit.service.hook,
        patient_ref=audit.patient_ref,
        latency_ms=latency_ms,
        outcome=audit.outcome,
        status_code=audit.status,
        card_count=audit.cards,
        card_uuids=audit.card_uuids,
    )
    if extra is None:
        rt.store.audit(row)  # hook calls: one statement straight to the driver
    else:
        with rt.db.session() as s:  # feedback rows and the audit row in one transaction
            extra(s)
            s.add(HookCallRecord(**row.__dict__))
    log.info(
        "hook_call request_id=%s service=%s status=%d outcome=%s cards=%d latency_ms=%.1f",
        rid,
        audit.service.id,
        audit.status,
        audit.outcome,
        audit.cards,
        latency_ms,
        extra={
            "request_id": rid,
            "service": audit.service.id,
            "status": audit.status,
            "outcome": audit.outcome,
            "cards": audit.cards,
            "latency_ms": round(latency_ms, 1),
        },
    )


def _authenticate(rt: HooksRuntime, environ: dict[str, Any], path: str) -> VerifiedToken:
    """Verify the bearer JWT for the URL called and claim its jti, before anything else happens.

    The claim is its own write (independent_writes): a replayed token raises 401 here, so it never
    reaches parsing, prefetch fetches or the store.
    """
    token = rt.authenticator.verify(environ.get("HTTP_AUTHORIZATION"), _audience(rt, path))
    if not rt.store.claim(token.caller.issuer, token.jti, token.expires_at):
        raise Authenticator.replay_rejected()
    return token


def _outcome_name(error: CdsError) -> str:
    return {
        400: "bad_request",
        401: "unauthorized",
        404: "not_found",
        412: "prefetch_unavailable",
        413: "too_large",
    }.get(error.http_status, "error")


@bp.get("")
def discover() -> Response:
    """Open (no auth): the services, generated from the registry."""
    global _DISCOVERY_BODY
    if _DISCOVERY_BODY is None:
        _DISCOVERY_BODY = json.dumps(discovery(), separators=(",", ":")).encode()
    return Response(_DISCOVERY_BODY, mimetype=_JSON)


def _lookup_service(service_id: str) -> ServiceDefinition:
    service = BY_ID.get(service_id)
    if service is None:
        raise NotFound("no such CDS service")
    return service


def _evaluate(
    rt: HooksRuntime, service: ServiceDefinition, raw: bytes, audit: _Audit
) -> tuple[list[dict[str, Any]], StoreCatalog]:
    """The cards, and the catalog holding the (not yet written) analysis requests."""
    hook_request = parse_json_model(HookRequest, raw)
    audit.hook_instance = str(hook_request.hookInstance)
    if hook_request.hook != service.hook:
        raise BadRequest(
            f"service {service.id} answers hook {service.hook}, not the hook named in the request"
        )
    context = parse_model(service.context_model, hook_request.context, "context")
    audit.patient_ref = f"Patient/{context.patientId}"  # type: ignore[attr-defined]
    settings = rt.settings
    catalog = StoreCatalog(rt.store, rt.db, rt.jobs, rt.results, settings.dicomweb_url, settings)
    call = HookCall(
        service=service,
        request=hook_request,
        context=context,
        catalog=catalog,
        presenter=rt.presenter,
        today=datetime.now(UTC).date(),
        fhir_source=source_for(hook_request, settings.fhir_allowed_hosts, settings.fhir_timeout_s),
    )
    return service.decide(call), catalog


@dataclass(frozen=True)
class _Reply:
    """A hook call's answer, before it becomes a werkzeug Response or a bare WSGI response."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def _error_reply(error: CdsError, rid: str) -> _Reply:
    """What _error_response sends, as a _Reply."""
    headers = (("WWW-Authenticate", "Bearer"),) if error.http_status == 401 else ()
    body = json.dumps(outcome_for_error(error), separators=(",", ":")).encode()
    return _Reply(error.http_status, body, (*headers, ("X-Request-ID", rid)))


def _serve_hook(
    rt: HooksRuntime, service: ServiceDefinition, environ: dict[str, Any], path: str, started: float, rid: str
) -> _Reply:
    """One hook call, from the WSGI environ to the reply: shared by the Flask view and HookFastPath."""
    audit = _Audit(service)
    token: VerifiedToken | None = None
    try:
        raw = _read_body(environ, rt.settings.max_request_bytes)
        token = _authenticate(rt, environ, path)
        _require_json(environ)
        decided, catalog = _evaluate(rt, service, raw, audit)
        cards = [prune_empty(c) for c in decided]
        catalog.run_requests()  # register studies and enqueue analyses the decision asked for
    except CdsError as exc:
        audit.outcome, audit.status = _outcome_name(exc), exc.http_status
        _finish(rt, token, audit, started, rid)
        return _error_reply(exc, rid)
    except Exception as exc:
        # Type and request id only: an exception's text (or its traceback's locals, SQL bound
        # parameters) may carry patient identifiers. As in cds.weberrors.
        log.error(
            "hook_call failed request_id=%s service=%s error=%s",
            rid,
            service.id,
            type(exc).__name__,
            extra={"request_id": rid, "service": service.id, "status": 500},
        )
        _finish(rt, token, audit, started, rid)
        return _Reply(500, json.dumps(outcome_for_unexpected(), separators=(",", ":")).encode())
    viewer = rt.settings.public_base_url.rstrip("/") + "/viewer/"
    for card in cards:  # ids that prove we issued the card (feedback names cards by uuid only)
        card["uuid"] = rt.card_ids.issue(service.id)
        for link in card.get("links", ()):  # the viewer ties its own feedback to the card
            if link["url"].startswith(viewer):
                link["url"] += "?card=" + card["uuid"]
    audit.card_uuids = " ".join(c["uuid"] for c in cards) or None
    audit.outcome, audit.status, audit.cards = ("cards" if cards else "no_cards"), 200, len(cards)
    _finish(rt, token, audit, started, rid)
    return _Reply(200, encode_cards(cards, rt.presenter.fragment), (("X-Request-ID", rid),))


@bp.post("/<service_id>")
def call_service(service_id: str) -> Response:
    """The Flask route of a hook call (HookFastPath serves the usual case without Flask)."""
    started, rid = time.perf_counter(), _request_id()
    try:
        service = _lookup_service(service_id)
    except NotFound as exc:
        return _error_response(exc)
    rt = runtime(current_app._get_current_object())  # type: ignore[attr-defined]
    reply = _serve_hook(rt, service, request.environ, request.path, started, rid)
    return Response(reply.body, status=reply.status, mimetype=_JSON, headers=list(reply.headers))


#: Exact paths of the hook calls HookFastPath may serve (PATH_INFO, as Flask routes them).
_HOOK_PATHS = {f"{bp.url_prefix}/{service_id}": service for service_id, service in BY_ID.items()}


class HookFastPath:
    """WSGI middleware: the usual hook call (POST to a registered service's exact path, with a
    Content-Length, once this app's hooks runtime exists) served by _serve_hook without Flask.

    Why: a hook call needs none of Flask's request machinery (URL map, request and response
    objects, session, before/after-request dispatch), and on the hook's hot path that machinery
    cost more CPU than the JWT signature check. Behaviour stays the Flask route's, because both
    run _serve_hook and everything else is reproduced here: the app context, the blueprint's CORS
    headers, werkzeug's status line and headers, and app-wide error handling of an unexpected
    exception (cds.weberrors.handle_unexpected's 500 OperationOutcome). Anything else (another
    path or method, a chunked body) goes to Flask.
    """

    def __init__(self, app: Flask, inner: WsgiApp) -> None:
        self.app = app
        self.inner = inner

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Any:
        service = _HOOK_PATHS.get(environ.get("PATH_INFO", ""))
        if service is None or environ.get("REQUEST_METHOD") != "POST" or not environ.get("CONTENT_LENGTH"):
            return self.inner(environ, start_response)
        started, rid = time.perf_counter(), _request_id(environ)
        try:
            with self.app.app_context():
                rt = runtime(self.app)
                reply = _serve_hook(rt, service, environ, environ["PATH_INFO"], started, rid)
        except Exception as exc:  # what Flask answers: cds.weberrors' handler, then the CORS headers
            from cds.weberrors import handle_unexpected

            with self.app.app_context():
                flask_response = handle_unexpected(exc)
            flask_response.headers.extend(_CORS)
            return flask_response(environ, start_response)
        headers = [
            ("Content-Type", _JSON),
            ("Content-Length", str(len(reply.body))),
            *reply.headers,
            *_CORS,
        ]
        start_response(f"{reply.status} {HTTP_STATUS_CODES.get(reply.status, 'UNKNOWN').upper()}", headers)
        return [reply.body]


@bp.record_once
def _install_fast_path(state: BlueprintSetupState) -> None:
    """Put HookFastPath right inside cds.logs' request-id middleware (request ids and their log
    context stay as they are), or around the app when that middleware is not installed."""
    app = cast(Flask, state.app)
    outer = app.wsgi_app
    if isinstance(outer, RequestIdMiddleware):
        outer.app = HookFastPath(app, outer.app)
    else:
        app.wsgi_app = HookFastPath(app, outer)  # type: ignore[method-assign]


def _check_override_reasons(parsed: FeedbackRequest) -> None:
    """An overrideReason must be one this service offered on its cards (400 otherwise)."""
    for item in parsed.feedback:
        coding = item.overrideReason.reason if item.overrideReason else None
        if coding is not None and not is_offered_override_reason(coding.system, coding.code):
            raise BadRequest("feedback overrideReason is not one of the card's overrideReasons")


def _check_cards_issued(rt: HooksRuntime, service: ServiceDefinition, parsed: FeedbackRequest) -> None:
    """Feedback only for cards this service issued (404 otherwise): see cds.signing.CardIdSigner.

    A card whose uuid does not carry this deployment's tag may still be ours: issued before card
    ids were signed, or before CDS_SECRET_KEY was rotated. Those are found on the audit rows of
    this service's calls (hook_calls.card_uuids); the query runs only for such cards.
    """
    unsigned = {
        str(item.card) for item in parsed.feedback if not rt.card_ids.issued(str(item.card), service.id)
    }
    if unsigned and not unsigned <= _audited_card_uuids(rt, service.id, unsigned):
        raise NotFound("feedback names a card this service did not issue")


def _audited_card_uuids(rt: HooksRuntime, service_id: str, wanted: set[str]) -> set[str]:
    """Those of `wanted` that an audited call of `service_id` returned."""
    column = HookCallRecord.card_uuids
    query = sa.select(column).where(
        HookCallRecord.service_id == service_id,
        sa.or_(*(column.contains(u, autoescape=True) for u in sorted(wanted))),
    )
    with rt.db.session(readonly=True) as s:
        found = {u for uuids in s.scalars(query) for u in (uuids or "").split()}
    return wanted & found


def _feedback_rows(service: ServiceDefinition, parsed: FeedbackRequest) -> Callable[[Any], None]:
    def write(session: Any) -> None:
        for item in parsed.feedback:
            reason = item.overrideReason
            coding = reason.reason if reason else None
            queries.save_feedback(
                session,
                queries.Feedback(
                    card_uuid=str(item.card),
                    service_id=service.id,
                    outcome=FeedbackOutcome(item.outcome),
                    outcome_timestamp=item.outcomeTimestamp.astimezone(UTC),
                    accepted_suggestions=tuple(s.id for s in item.acceptedSuggestions or ()),
                    override_reason_code=coding.code if coding else None,
                    override_reason_system=coding.system if coding else None,
                    override_reason_display=coding.display if coding else None,
                    user_comment=reason.userComment if reason else None,
                ),
            )

    return write


@bp.post("/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    """Store feedback on cards; idempotent (the same entry twice is stored once)."""
    started, rid = time.perf_counter(), _request_id()
    try:
        service = _lookup_service(service_id)
    except NotFound as exc:
        return _error_response(exc)
    rt = runtime(current_app._get_current_object())  # type: ignore[attr-defined]
    audit = _Audit(service, hook_instance="feedback", endpoint="feedback")
    token: VerifiedToken | None = None
    try:
        raw = _read_body(request.environ, rt.settings.max_request_bytes)
        token = _authenticate(rt, request.environ, request.path)
        _require_json(request.environ)
        parsed = parse_json_model(FeedbackRequest, raw)
        _check_cards_issued(rt, service, parsed)
        _check_override_reasons(parsed)
    except CdsError as exc:
        audit.outcome, audit.status = _outcome_name(exc), exc.http_status
        _finish(rt, token, audit, started, rid)
        return _error_response(exc, rid)
    audit.outcome, audit.status, audit.cards = "feedback", 200, len(parsed.feedback)
    _finish(rt, token, audit, started, rid, extra=_feedback_rows(service, parsed))
    resp = Response(status=200)
    resp.headers["X-Request-ID"] = rid
    return resp


_CORS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
    ("Access-Control-Allow-Headers", "Authorization, Content-Type, X-Request-ID"),
    ("Access-Control-Expose-Headers", "X-Request-ID"),
    ("Access-Control-Max-Age", "600"),
)


@bp.after_request
def cors(resp: Response) -> Response:
    """CORS for browser-based CDS clients. Calls authenticate with a bearer header, not cookies,
    so `*` is allowed and credentials are not: no Access-Control-Allow-Credentials, ever."""
    headers = resp.headers
    if "Access-Control-Allow-Origin" in headers:
        for name, value in _CORS:
            headers[name] = value
    else:  # the usual case: append, no search-and-replace per header
        headers.extend(_CORS)
    return resp
