"""HookFastPath (cds.hooks.blueprint) answers hook calls exactly as the Flask route does.

Each case is sent twice, once through the fast path and once with it bypassed (the Flask route),
and the two answers are compared: status, headers (names and values, except the per-call
X-Request-ID) and body (except what is fresh per call: card uuids and signed links). SQLite and
PostgreSQL, through the real app.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from hooks_support import PATIENT_ID, STUDY_UID, Caller, analysis, bundle, imaging_study, patient

from cds.extensions import services
from cds.hooks import blueprint
from cds.hooks.blueprint import HookFastPath
from cds.logs import RequestIdMiddleware
from cds.store import queries

PV = "/cds-services/lumbar-mri-patient-view"


def _fast_path(app: Flask) -> HookFastPath:
    outer = app.wsgi_app
    assert isinstance(outer, RequestIdMiddleware)
    fast = outer.app
    assert isinstance(fast, HookFastPath)
    return fast


def _body(**over: Any) -> dict[str, Any]:
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/doc-1", "patientId": PATIENT_ID},
        "prefetch": {"patient": patient(), "studies": bundle(imaging_study()), "reports": None},
    }
    body.update(over)
    return body


def _spy(fast: HookFastPath, reached: list[str]) -> Callable[[dict[str, Any], Any], Any]:
    """fast.inner (the Flask app), noting each request that reaches it."""
    inner = fast.inner

    def spy(environ: dict[str, Any], start: Any) -> Any:
        reached.append(environ["PATH_INFO"])
        return inner(environ, start)

    return spy


def _both(app: Flask, monkeypatch: pytest.MonkeyPatch, send: Callable[[], Any]) -> tuple[Any, Any]:
    """The answer through the fast path (checked: Flask never saw it), then through Flask (fast
    path bypassed)."""
    fast = _fast_path(app)
    reached: list[str] = []
    with monkeypatch.context() as m:
        m.setattr(fast, "inner", _spy(fast, reached))
        via_fast = send()
    assert not reached, "the fast path handed the call to Flask"
    with monkeypatch.context() as m:
        m.setattr(app.wsgi_app, "app", fast.inner)
        via_flask = send()
    return via_fast, via_flask


def _headers(resp: Any) -> dict[str, str]:
    return {k: v for k, v in resp.headers.items() if k != "X-Request-ID"}


_FRESH = ("uuid", "url")  # card/suggestion uuids and signed links differ on every call


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("<fresh>" if k in _FRESH else _stable(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _assert_alike(via_fast: Any, via_flask: Any) -> None:
    assert via_fast.status_code == via_flask.status_code
    assert _headers(via_fast) == _headers(via_flask)
    assert via_fast.headers["X-Request-ID"] and via_flask.headers["X-Request-ID"]
    assert _stable(json.loads(via_fast.get_data())) == _stable(json.loads(via_flask.get_data()))


def test_installed_inside_the_request_id_middleware(hooks_app: Flask) -> None:
    fast = _fast_path(hooks_app)
    assert fast.app is hooks_app


def test_result_card_alike(hooks_app: Flask, caller: Caller, monkeypatch: pytest.MonkeyPatch) -> None:
    with services(hooks_app).db.session() as s:
        queries.upsert_study(s, STUDY_UID, patient_ref="MRN-1", source_uri="/data/x")
        queries.save_analysis(s, STUDY_UID, analysis())
    via_fast, via_flask = _both(hooks_app, monkeypatch, lambda: caller.post(PV, _body()))
    assert via_fast.status_code == 200, via_fast.get_data(as_text=True)
    assert via_fast.get_json()["cards"][0]["summary"].startswith("Lumbar MRI")
    assert via_fast.headers["Content-Type"] == "application/json"
    assert via_fast.headers["Access-Control-Allow-Origin"] == "*"
    _assert_alike(via_fast, via_flask)


def test_request_id_kept(hooks_app: Flask, caller: Caller, monkeypatch: pytest.MonkeyPatch) -> None:
    def send() -> Any:
        headers = {"Authorization": "Bearer " + caller.token(PV), "X-Request-ID": "req-fast-1"}
        return caller.client.post(
            PV, data=json.dumps(_body()), headers=headers, content_type="application/json"
        )

    via_fast, via_flask = _both(hooks_app, monkeypatch, send)
    assert via_fast.headers["X-Request-ID"] == via_flask.headers["X-Request-ID"] == "req-fast-1"


_ERRORS: dict[str, Callable[[Caller], Any]] = {
    "bad token": lambda c: c.post(PV, _body(), token="not-a-jwt"),
    "wrong content type": lambda c: c.post(PV, _body(), content_type="text/plain"),
    "json with charset": lambda c: c.post(PV, _body(), content_type="Application/JSON; charset=utf-8"),
    "malformed json": lambda c: c.post(PV, None, raw=b"{not json"),
    "not a uuid": lambda c: c.post(PV, _body(hookInstance="nope")),
    "wrong hook": lambda c: c.post(PV, _body(hook="order-sign")),
    "too large": lambda c: c.post(PV, None, raw=b"{" + b" " * (70 * 1024) + b"}"),
    "no card": lambda c: c.post(
        PV, _body(prefetch={"patient": patient(), "studies": bundle(), "reports": None})
    ),
}


@pytest.mark.parametrize("send", list(_ERRORS.values()), ids=list(_ERRORS))
def test_other_outcomes_alike(
    hooks_app: Flask, caller: Caller, monkeypatch: pytest.MonkeyPatch, send: Callable[[Caller], Any]
) -> None:
    via_fast, via_flask = _both(hooks_app, monkeypatch, lambda: send(caller))
    _assert_alike(via_fast, via_flask)


def test_unexpected_error_alike(hooks_app: Flask, caller: Caller, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception outside the call's own error handling: the app-wide 500 OperationOutcome."""

    def broken(*_: Any) -> bytes:
        raise RuntimeError("boom Patient/secret")

    monkeypatch.setattr(blueprint, "encode_cards", broken)
    via_fast, via_flask = _both(hooks_app, monkeypatch, lambda: caller.post(PV, _body()))
    assert via_fast.status_code == 500
    assert via_fast.get_json()["resourceType"] == "OperationOutcome"
    assert "secret" not in via_fast.get_data(as_text=True)
    _assert_alike(via_fast, via_flask)


def test_other_requests_go_to_flask(
    hooks_app: Flask, caller: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = _fast_path(hooks_app)
    reached: list[str] = []
    monkeypatch.setattr(fast, "inner", _spy(fast, reached))
    assert caller.client.get(PV).status_code == 405
    assert caller.post("/cds-services/no-such-service", _body()).status_code == 404
    assert caller.client.get("/cds-services").status_code == 200
    assert caller.post(PV + "/", _body()).status_code in {308, 404}
    assert len(reached) == 4


def test_body_shorter_than_content_length_is_400(
    hooks_app: Flask, caller: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that half-closes after part of its body: the bytes read fall short of the declared
    Content-Length. That is an incomplete request (400), on both paths, never parsed as if whole."""
    full = json.dumps(_body()).encode()

    def send() -> Any:
        return caller.client.post(
            PV,
            data=full[: len(full) // 2],
            headers={"Authorization": "Bearer " + caller.token(PV)},
            content_type="application/json",
            environ_overrides={"CONTENT_LENGTH": str(len(full))},
        )

    via_fast, via_flask = _both(hooks_app, monkeypatch, send)
    for resp in (via_fast, via_flask):
        assert resp.status_code == 400, resp.get_data(as_text=True)
        outcome = resp.get_json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert "incomplete body" in json.dumps(outcome)
    _assert_alike(via_fast, via_flask)
