"""The app factory: wiring, app-wide error responses, request limits, and no torch in the web app."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from cds.config import Settings
from cds.errors import BadRequest, PrefetchUnavailable, Unauthorized
from cds.extensions import Services, services


def _body(response: TestResponse) -> dict[str, Any]:
    body = response.get_json()
    assert isinstance(body, dict)
    return body


def _add_route(app: Flask, path: str, exc: Exception) -> None:
    def view() -> str:
        raise exc

    app.add_url_rule(path, endpoint=path, view_func=view, methods=["GET", "POST"])


def test_services_are_wired_to_settings(app: Flask, app_settings: Settings) -> None:
    with app.app_context():
        found = services()
    assert isinstance(found, Services)
    assert found.settings is app_settings
    assert found.db.url.render_as_string(hide_password=False).split("://")[0] in {
        "sqlite",
        "postgresql+psycopg",
    }
    assert app.config["MAX_CONTENT_LENGTH"] == app_settings.max_request_bytes


def test_cds_errors_become_operation_outcomes(app: Flask) -> None:
    _add_route(app, "/t/bad", BadRequest("context.patientId is required"))
    _add_route(app, "/t/unauth", Unauthorized("signature invalid for kid abc"))
    _add_route(app, "/t/prefetch", PrefetchUnavailable("prefetch 'patient' missing and no fhirServer"))
    client = app.test_client()

    bad = client.get("/t/bad")
    assert bad.status_code == 400
    assert bad.json == {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": "context.patientId is required"}],
    }
    unauth = client.get("/t/unauth")
    assert unauth.status_code == 401
    assert unauth.json == {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "login"}],
    }
    assert b"kid" not in unauth.data
    prefetch = client.get("/t/prefetch")
    assert prefetch.status_code == 412 and _body(prefetch)["issue"][0]["code"] == "incomplete"


def test_unexpected_error_is_500_without_trace(app: Flask) -> None:
    _add_route(app, "/t/boom", KeyError("Patient/123 secret detail"))
    response = app.test_client().get("/t/boom")
    assert response.status_code == 500
    assert response.json == {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception", "diagnostics": "internal error"}],
    }
    assert b"Traceback" not in response.data and b"secret" not in response.data


def test_http_errors_are_operation_outcomes(client: FlaskClient) -> None:
    missing = client.get("/no/such/path")
    assert missing.status_code == 404
    assert _body(missing)["resourceType"] == "OperationOutcome"
    assert _body(missing)["issue"][0]["code"] == "not-found"


def test_request_body_limit(app: Flask, app_settings: Settings) -> None:
    from flask import request

    app.add_url_rule("/t/echo", "echo", lambda: str(len(request.get_data())), methods=["POST"])
    client = app.test_client()
    assert client.post("/t/echo", data=b"x" * 100).data == b"100"
    too_big = client.post("/t/echo", data=b"x" * (app_settings.max_request_bytes + 1))
    assert too_big.status_code == 413
    assert _body(too_big)["issue"][0]["code"] == "too-costly"


def test_create_app_and_a_request_do_not_import_torch(tmp_path: Path) -> None:
    """The web process must never load torch (or the models): hooks answer from the store."""
    script = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        from cds import create_app
        from cds.config import Settings
        from cds.store.migrate import upgrade
        settings = Settings(data_dir=Path({str(tmp_path)!r}))
        upgrade(settings.resolved_database_url)
        app = create_app(settings)
        client = app.test_client()
        statuses = [client.get(p).status_code for p in ("/cds-services", "/no/such/path")]
        watched = ("torch", "torchvision", "transformers", "pydicom", "cds.pipeline", "cds.ml")
        heavy = sorted(m for m in watched if m in sys.modules)
        print(json.dumps({{"statuses": statuses, "heavy": heavy}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["heavy"] == [], f"create_app/request imported {report['heavy']}"
    assert all(isinstance(s, int) for s in report["statuses"])
