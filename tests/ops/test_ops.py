"""/healthz, /readyz and /metrics (cds.ops) on SQLite and PostgreSQL.

Readiness is checked against real dependencies where they are cheap to run (the database, a real
Redis from tests/jobs/celery_harness.py) and against small local HTTP servers standing in for a
PACS at its boundary (status codes are what the check reads). Model checks use a temporary models
folder with cards whose sha256 match or do not match their weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from flask import Flask

from cds.config import Settings
from cds.extensions import services
from cds.jobs.kinds import JobKind
from cds.ops import metrics
from cds.ops.readiness import REQUIRED_MODELS
from cds.store.db import Database

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
from celery_harness import spare_port, start_redis

ROOT = Path(__file__).resolve().parents[2]


def _card(name: str, weights: bytes, sha: str | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "version": "9.9.9",
        "sha256": sha or hashlib.sha256(weights).hexdigest(),
        "architecture": {"type": "UNet2D"},
        "input": {
            "orientation": "sagittal",
            "target_spacing_mm": [1.0, 1.0],
            "input_size": [64, 64],
            "intensity_normalisation": "zscore",
            "clip_percentiles": [1.0, 99.0],
        },
        "labels": ["background"],
    }


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    for name in REQUIRED_MODELS:
        folder = root / name
        folder.mkdir(parents=True)
        weights = f"weights of {name}".encode()
        (folder / "model.safetensors").write_bytes(weights)
        (folder / "card.json").write_text(json.dumps(_card(name, weights)))
    return root


def _app(app: Flask, models_dir: Path, **overrides: Any) -> Flask:
    """A second app on the same database with other settings (e.g. the Celery backend)."""
    from cds import create_app

    settings = services(app).settings.with_overrides(**overrides)
    built = create_app(settings) if overrides else app
    built.config["CDS_MODELS_DIR"] = models_dir
    return built


def test_healthz_needs_nothing(tmp_path: Path) -> None:
    from cds import create_app

    # The database does not even exist: liveness must still answer.
    app = create_app(Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/none/x.db"))
    response = app.test_client().get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}
    assert response.headers["Cache-Control"] == "no-store"


def test_readyz_ready_on_a_migrated_database(app: Flask, models_dir: Path) -> None:
    response = _app(app, models_dir).test_client().get("/readyz")
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "models"}  # local jobs, no PACS configured
    assert body["checks"]["models"]["detail"] == "sagittal_seg@9.9.9, axial_seg@9.9.9, classifier@9.9.9"


def test_readyz_refuses_weights_that_do_not_match_their_card(app: Flask, models_dir: Path) -> None:
    (models_dir / "axial_seg" / "model.safetensors").write_bytes(b"something else")
    body = _app(app, models_dir).test_client().get("/readyz")
    assert body.status_code == 503
    check = body.get_json()["checks"]["models"]
    assert check == {
        **check,
        "ok": False,
        "detail": "model axial_seg: weights do not match the card's sha256",
    }


def test_readyz_reports_a_missing_model(app: Flask, models_dir: Path) -> None:
    (models_dir / "classifier" / "model.safetensors").unlink()
    body = _app(app, models_dir).test_client().get("/readyz").get_json()
    assert body["status"] == "not_ready"
    assert body["checks"]["models"]["detail"] == "model classifier: weights file missing"


def test_readyz_reports_an_old_schema(database_url: str, tmp_path: Path, models_dir: Path) -> None:
    from cds import create_app
    from cds.store.migrate import upgrade

    upgrade(database_url, "0002")
    app = create_app(Settings(data_dir=tmp_path, database_url=database_url))
    app.config["CDS_MODELS_DIR"] = models_dir
    try:
        body = app.test_client().get("/readyz").get_json()
    finally:
        services(app).close()
    assert body["checks"]["database"]["ok"] is False
    assert "run `cds db upgrade`" in body["checks"]["database"]["detail"]


def test_readyz_checks_the_broker_with_celery(app: Flask, models_dir: Path) -> None:
    down = _app(app, models_dir, jobs_backend="celery", broker_url=f"redis://127.0.0.1:{spare_port()}/0")
    body = down.test_client().get("/readyz")
    assert body.status_code == 503
    assert body.get_json()["checks"]["broker"]["detail"].startswith("broker unreachable")
    services(down).close()
    redis = start_redis()
    try:
        up = _app(app, models_dir, jobs_backend="celery", broker_url=redis.url)
        assert up.test_client().get("/readyz").status_code == 200
        services(up).close()
    finally:
        redis.stop()


class _Pacs(BaseHTTPRequestHandler):
    status: ClassVar[int] = 200
    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self) -> None:
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        self.send_response(type(self).status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"[]")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def pacs() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pacs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        server.shutdown()
        _Pacs.status = 200
        _Pacs.seen.clear()


def test_readyz_checks_the_configured_pacs_with_its_credentials(
    app: Flask, models_dir: Path, pacs: str
) -> None:
    configured = _app(app, models_dir, dicomweb_url=pacs, dicomweb_username="cds", dicomweb_password="pw")
    client = configured.test_client()
    assert client.get("/readyz").status_code == 200
    path, auth = _Pacs.seen[-1]
    assert path == "/dicom-web/studies?limit=1" and auth is not None and auth.startswith("Basic ")
    _Pacs.status = 401
    body = client.get("/readyz").get_json()
    assert body["checks"]["pacs"] == {**body["checks"]["pacs"], "ok": False}
    assert body["checks"]["pacs"]["detail"] == "PACS refused the credentials (HTTP 401)"
    assert "pw" not in json.dumps(body) and pacs not in json.dumps(body)
    services(configured).close()


def test_metrics_exposes_hooks_jobs_queue_and_models(app: Flask, models_dir: Path, db: Database) -> None:
    metrics.observe_hook("lumbar-mri-patient-view", "service", 200, 0.012)
    metrics.observe_hook("/etc/passwd-or-any-posted-id", "service", 404, 0.001)
    metrics.observe_job(JobKind.ANALYZE, "done", 2.5)
    jobs = services(app).jobs
    jobs.enqueue(JobKind.ANALYZE, "a1", {})
    jobs.enqueue(JobKind.ANALYZE, "a2", {})
    jobs.enqueue(JobKind.EXPLAIN, "e1", {})
    response = _app(app, models_dir).test_client().get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    text = response.get_data(as_text=True)
    assert (
        'cds_hook_request_duration_seconds_count{endpoint="service",service="lumbar-mri-patient-view",'
        'status="200"}' in text
    )
    assert 'service="unknown",status="404"' in text and "passwd" not in text
    assert 'cds_job_duration_seconds_bucket{kind="analyze",le="3.0",outcome="done"}' in text
    assert 'cds_jobs{kind="analyze",status="queued"} 2.0' in text
    assert 'cds_jobs{kind="explain",status="queued"} 1.0' in text
    assert 'cds_jobs{kind="analyze",status="failed"} 0.0' in text
    assert 'cds_model_info{name="axial_seg",sha256="' in text and 'version="9.9.9"' in text


def test_multiprocess_mode_adds_up_every_process(tmp_path: Path) -> None:
    """Two processes observe (as two gunicorn workers or Celery children would); a third renders."""
    mp = tmp_path / "prom"
    mp.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp)}
    observe = "from cds.ops import metrics; metrics.observe_job('analyze', 'done', 1.0)"
    for _ in range(2):
        subprocess.run([sys.executable, "-c", observe], env=env, check=True, cwd=ROOT)
    render = textwrap.dedent("""
        from prometheus_client import CollectorRegistry, generate_latest
        from cds.ops.metrics import process_collector
        registry = CollectorRegistry()
        registry.register(process_collector())
        print(generate_latest(registry).decode())
    """)
    out = subprocess.run(
        [sys.executable, "-c", render], env=env, check=True, cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert 'cds_job_duration_seconds_count{kind="analyze",outcome="done"} 2.0' in out


def test_ops_endpoints_import_neither_torch_nor_celery(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import sys
        from cds import create_app
        from cds.config import Settings
        from cds.store.migrate import upgrade
        upgrade("sqlite:///{tmp_path}/cds.db")
        app = create_app(Settings(data_dir=__import__("pathlib").Path("{tmp_path}"), jobs_backend="celery",
                                  broker_url="redis://127.0.0.1:1/0"))
        client = app.test_client()
        for path in ("/healthz", "/readyz", "/metrics"):
            client.get(path)
        print(sorted(m for m in ("torch", "celery", "cds.pipeline", "cds.ml.loading") if m in sys.modules))
    """)
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"
