"""cds.logs: JSON lines with fixed keys, request ids in and out, secrets masked."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from flask import Flask

from cds.logs import (
    JsonFormatter,
    TextFormatter,
    configure_logging,
    current_request_id,
    init_app,
    mask_secrets,
    request_id_for,
)

JWT_LIKE = "eyJhbGciOiJFUzM4NCJ9.eyJpc3MiOiJodHRwczovL2VociJ9.c2lnbmF0dXJlLWJ5dGVz"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    try:
        yield out
    finally:
        configure_logging("INFO", "text")  # back to a plain handler on stderr
        logging.getLogger().handlers = [
            h for h in logging.getLogger().handlers if not getattr(h, "_cds_logs_handler", False)
        ]


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def test_one_json_object_per_line_with_the_fixed_keys(stream: io.StringIO) -> None:
    logging.getLogger("cds.test").info(
        "hook_call", extra={"request_id": "r-1", "service": "svc", "status": 200, "latency_ms": 3.2}
    )
    (line,) = _lines(stream)
    assert line["level"] == "INFO" and line["logger"] == "cds.test" and line["msg"] == "hook_call"
    assert (line["request_id"], line["service"], line["status"], line["latency_ms"]) == (
        "r-1",
        "svc",
        200,
        3.2,
    )
    assert str(line["ts"]).endswith("+00:00")


def test_tokens_are_masked_and_exceptions_leave_without_their_message(stream: io.StringIO) -> None:
    log = logging.getLogger("cds.test")
    log.warning("got Authorization: Bearer abc.def.ghi and %s", JWT_LIKE)
    try:
        raise ValueError("patient MRN-123 not found")
    except ValueError:
        log.exception("lookup failed")
    first, second = _lines(stream)
    assert "abc.def.ghi" not in str(first["msg"]) and JWT_LIKE not in str(first["msg"])
    assert second["exc_type"] == "ValueError" and "test_logs.py" in str(second["where"])
    assert "MRN-123" not in json.dumps(second)


def test_text_format_masks_too_and_names_the_fields() -> None:
    record = logging.LogRecord("cds.x", logging.INFO, __file__, 1, "call %s", (JWT_LIKE,), None)
    record.service = "svc"
    text = TextFormatter().format(record)
    assert JWT_LIKE not in text and "service=svc" in text
    json_text = JsonFormatter().format(record)
    assert JWT_LIKE not in json_text


def test_mask_secrets() -> None:
    assert mask_secrets("Bearer x.y.z") == "Bearer [redacted]"
    assert mask_secrets(f"token={JWT_LIKE}") == "token=[redacted]"
    assert mask_secrets("nothing secret here") == "nothing secret here"


@pytest.mark.parametrize(
    ("supplied", "kept"),
    [
        ("abc-123_X.y", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("bad id", False),
        ("<script>", False),
        ("", False),
    ],
)
def test_request_id_accepts_only_well_formed_ids(supplied: str, kept: bool) -> None:
    rid = request_id_for(supplied)
    assert (rid == supplied) is kept
    assert 1 <= len(rid) <= 64


def test_middleware_returns_the_id_and_sets_it_for_the_request() -> None:
    app = Flask(__name__)
    seen: list[str | None] = []

    @app.get("/x")
    def x() -> str:
        seen.append(current_request_id())
        return "ok"

    init_app(app)
    init_app(app)  # idempotent
    client = app.test_client()
    assert client.get("/x", headers={"X-Request-ID": "req-1"}).headers["X-Request-ID"] == "req-1"
    fresh = client.get("/x", headers={"X-Request-ID": "not ok!"}).headers["X-Request-ID"]
    assert fresh != "not ok!" and len(fresh) == 32
    assert client.get("/missing").headers["X-Request-ID"]  # every response, errors too
    assert seen == ["req-1", fresh] and current_request_id() is None
    assert client.get("/x").headers.getlist("X-Request-ID").__len__() == 1


def test_bad_format_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="CDS_LOG_FORMAT"):
        configure_logging("INFO", "xml")
