"""Pages fail with a clear HTML page (right status, no stack trace, no exception text); images and
JSON endpoints keep the app's OperationOutcome errors."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient
from viewer_support import store_analysis, viewer_path


def test_unexpected_page_error_is_a_clear_500_page(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = viewer_path(app, store_analysis(app))

    def broken(*args: object) -> None:
        raise RuntimeError("Patient/p-viewer-1 broke the page")

    monkeypatch.setattr("cds.viewer.blueprint.load_context", broken)
    resp = client.get(path)
    assert resp.status_code == 500 and resp.mimetype == "text/html"
    html = resp.get_data(as_text=True)
    assert "Something went wrong" in html
    assert "Traceback" not in html and "p-viewer-1" not in html
    assert resp.headers["Cache-Control"] == "no-store"


def test_missing_image_stays_machine_readable(app: Flask, client: FlaskClient) -> None:
    path = viewer_path(app, store_analysis(app))  # no artifacts stored for this analysis
    resp = client.get(f"{path}/img/sagittal/base.png")
    assert resp.status_code == 404 and resp.mimetype == "application/json"
    html = client.get(path).get_data(as_text=True)
    assert 'id="no-images"' in html and "No images were stored with this analysis" in html
