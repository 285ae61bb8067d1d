"""App-wide error responses: every error leaves as status + FHIR OperationOutcome JSON.

The one place that decides what a client sees when something fails (ARCHITECTURE principle 9):
CdsError -> its http_status and issue code; HTTP errors raised by Flask/Werkzeug (unknown URL,
wrong method, body over MAX_CONTENT_LENGTH) -> their status; anything else -> 500 "internal error"
with the traceback in the server log only (no request data is logged: it may hold PHI or tokens).
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from cds.errors import CdsError, PayloadTooLarge
from cds.hooks.outcome import operation_outcome, outcome_for_error, outcome_for_unexpected

log = logging.getLogger(__name__)

#: http://hl7.org/fhir/issue-type codes for plain HTTP errors.
_HTTP_ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    410: "not-found",
    413: "too-costly",
    415: "not-supported",
    429: "throttled",
}


def _respond(status: int, body: dict[str, Any]) -> Response:
    response = jsonify(body)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


def handle_cds_error(error: CdsError) -> Response:
    if error.http_status >= 500:
        log.error("request failed: %s (%s)", type(error).__name__, error.issue_code)
    response = _respond(error.http_status, outcome_for_error(error))  # 401: no diagnostics
    if error.http_status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def handle_http_error(error: HTTPException) -> Response:
    if isinstance(error, RequestEntityTooLarge):
        return handle_cds_error(PayloadTooLarge("request body too large"))
    status = error.code or 500
    code = _HTTP_ISSUE_CODES.get(status, "exception" if status >= 500 else "invalid")
    response = _respond(status, operation_outcome(code, error.name))
    if status == 405 and error.get_response().headers.get("Allow"):
        response.headers["Allow"] = error.get_response().headers["Allow"]
    return response


def handle_unexpected(error: Exception) -> Response:
    # Where it broke, not what it said: an exception message may quote request data (PHI).
    where = "".join(traceback.format_tb(error.__traceback__))
    log.error("unhandled %s at\n%s", type(error).__name__, where)
    return _respond(500, outcome_for_unexpected())


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(CdsError, handle_cds_error)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(Exception, handle_unexpected)
