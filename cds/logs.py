"""Structured logs: one JSON object per line, with the request id, and never PHI or tokens.

Why JSON lines: the web processes (gunicorn workers, `cds serve`) and the job workers of several
hosts write to one log pipeline; one object per line with fixed keys (ts, level, logger, msg,
request_id, service, status, latency_ms, ...) is what such pipelines index without parsing rules.

Why a request id: a client (or a proxy in front of us) may send `X-Request-ID`; a well-formed one
(1-64 of [A-Za-z0-9-_.]) is kept so its logs and ours line up, anything else is replaced by a
fresh id. Either way it is returned in the response's X-Request-ID header and carried by every log
line written while the request runs (a context variable, so gunicorn's threads never mix them up).

PHI and tokens: the code logs identifiers of its own (request id, service, status, job ids), never
request bodies, patient ids or tokens, and exceptions leave as their type and where they were
raised, not their message (it may quote request data). As a second line of defence, anything that
looks like a bearer token or a JWT is masked in every line before it is written.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import traceback
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

REQUEST_ID_HEADER = "X-Request-ID"
ENVIRON_KEY = "cds.request_id"
_WELL_FORMED = re.compile(r"[A-Za-z0-9\-_.]{1,64}")
#: Structured fields copied from a record's `extra=` into the line (nothing else is).
FIELDS = ("request_id", "service", "status", "latency_ms", "outcome", "cards", "kind", "job_id")
_SECRETS = re.compile(
    r"(?i)(bearer\s+)[A-Za-z0-9\-_.~+/=]+"  # an Authorization header value
    r"|eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"  # a compact JWS/JWT
)
_HANDLER_MARK = "_cds_logs_handler"

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("cds_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being served by this thread, if any."""
    return _request_id.get()


def request_id_for(supplied: str | None) -> str:
    """The supplied X-Request-ID if well-formed, else a fresh random id."""
    if supplied and _WELL_FORMED.fullmatch(supplied):
        return supplied
    return uuid.uuid4().hex


def mask_secrets(text: str) -> str:
    return _SECRETS.sub(lambda m: (m.group(1) or "") + "[redacted]", text)


def _where(exc_info: Any) -> str:
    """Frames of a traceback (file, line, function): no exception message, no source text."""
    tb = exc_info[2] if exc_info else None
    if tb is None:
        return ""
    return "\n".join(f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(tb))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, request_id and the FIELDS given."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": mask_secrets(record.getMessage()),
        }
        rid = getattr(record, "request_id", None) or _request_id.get()
        if rid:
            line["request_id"] = rid
        for name in FIELDS[1:]:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            line["where"] = _where(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable lines for the terminal, with the same fields and the same masking."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        rid = getattr(record, "request_id", None) or _request_id.get()
        values = {"request_id": rid, **{n: getattr(record, n, None) for n in FIELDS[1:]}}
        # Fields the message already states (older `key=value` messages) are not repeated.
        extras = [f"{n}={v}" for n, v in values.items() if v is not None and f"{n}=" not in text]
        return mask_secrets(" ".join([text, *extras]))

    def formatException(self, ei: Any) -> str:
        return f"{ei[0].__name__ if ei[0] else 'Exception'} at\n{_where(ei)}".rstrip()


def configure_logging(
    level: str | int | None = None, fmt: str | None = None, stream: TextIO | None = None
) -> None:
    """Install one handler on the root logger (replacing any this function installed before).

    level: default CDS_LOG_LEVEL or INFO; fmt: "json" or "text", default CDS_LOG_FORMAT or json.
    """
    level = level or os.environ.get("CDS_LOG_LEVEL", "INFO").upper()
    fmt = (fmt or os.environ.get("CDS_LOG_FORMAT", "json")).lower()
    if fmt not in {"json", "text"}:
        raise ValueError(f"CDS_LOG_FORMAT must be json or text, got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries whose INFO lines carry URLs with signed tokens or SQL with bound values.
    for noisy in ("werkzeug", "alembic.runtime.plugins", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class RequestIdMiddleware:
    """WSGI middleware: a request id per request (context variable, environ, response header)."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        rid = request_id_for(environ.get("HTTP_X_REQUEST_ID"))
        environ[ENVIRON_KEY] = rid

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if not any(k.lower() == "x-request-id" for k, _ in headers):
                headers.append((REQUEST_ID_HEADER, rid))
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        token = _request_id.set(rid)
        try:
            return self.app(environ, start)
        finally:
            _request_id.reset(token)


def init_app(app: Any) -> None:
    """Wrap a Flask app's WSGI callable with the request-id middleware (once)."""
    if not isinstance(app.wsgi_app, RequestIdMiddleware):
        app.wsgi_app = RequestIdMiddleware(app.wsgi_app)
