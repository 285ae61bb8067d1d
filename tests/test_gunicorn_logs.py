"""gunicorn with the production config (docker/gunicorn.conf.py) writes JSON lines only: its own
lines and the app's, and answers with the request id it was given."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _serve_and_collect(tmp_path: Path, extra_env: dict[str, str], paths: tuple[str, ...]) -> tuple[str, str]:
    """Start gunicorn with the production config, make one unauthenticated hook call (retried
    until the server answers) and GET each of `paths`; the X-Request-ID answered and all output."""
    from cds.store.migrate import upgrade

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "CDS_DATA_DIR": str(tmp_path),
        "CDS_WEB_BIND": f"127.0.0.1:{port}",
        "CDS_WEB_WORKERS": "1",
        "CDS_WEB_THREADS": "2",
        "CDS_SECRET_KEY": "test-only-secret-key-0123456789abcdef",
    }
    for name in ("CDS_DATABASE_URL", "CDS_LOG_FORMAT", "CDS_LOG_LEVEL", "CDS_WEB_LOG_LEVEL"):
        env.pop(name, None)
    env.pop("CDS_WEB_ACCESS_LOG", None)
    env.update(extra_env)
    upgrade(f"sqlite:///{tmp_path / 'cds.db'}")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("gunicorn")), "-c", str(ROOT / "docker" / "gunicorn.conf.py")],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        rid = None
        deadline = time.monotonic() + 60
        while rid is None and time.monotonic() < deadline:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/cds-services/lumbar-mri-patient-view",
                data=b"{}",
                headers={"X-Request-ID": "gunicorn-log-test", "Authorization": "Bearer eyJhbGciOi.x.y"},
            )
            try:
                urllib.request.urlopen(request, timeout=2)
            except urllib.error.HTTPError as exc:  # 401: no trusted clients configured
                rid = exc.headers.get("X-Request-ID")
            except OSError:
                time.sleep(0.2)
        for path in paths:
            # a bad viewer token answers 403, which is what we want logged
            with contextlib.suppress(urllib.error.HTTPError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    return str(rid), output


#: A viewer link as a card carries it: the signed token is a path segment (fake here).
_VIEWER_PATH = "/viewer/SECRETVIEWERTOKEN123/img/sagittal/t2.png?card=SECRETQUERY"


def test_gunicorn_logs_are_json_lines_with_request_ids(tmp_path: Path) -> None:
    rid, output = _serve_and_collect(tmp_path, {}, (_VIEWER_PATH,))
    assert rid == "gunicorn-log-test"
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]  # every line is JSON
    assert any(line["logger"] == "gunicorn.error" for line in lines)
    unauthorized = [line for line in lines if str(line["msg"]).startswith("hook_call unauthorized")]
    assert unauthorized and unauthorized[0]["request_id"] == "gunicorn-log-test"
    assert unauthorized[0]["status"] == 401 and "eyJhbGciOi" not in output
    # Access log off by default (stock gunicorn would write it because of logconfig_dict).
    assert not [line for line in lines if line["logger"] == "gunicorn.access"]
    assert "SECRETVIEWERTOKEN123" not in output and "SECRETQUERY" not in output


def test_gunicorn_access_log_when_asked_redacts_tokens(tmp_path: Path) -> None:
    _, output = _serve_and_collect(tmp_path, {"CDS_WEB_ACCESS_LOG": "1"}, (_VIEWER_PATH,))
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    access = [str(line["msg"]) for line in lines if line["logger"] == "gunicorn.access"]
    viewer = [msg for msg in access if "/viewer/" in msg]
    assert viewer and "/viewer/<redacted>/img/sagittal/t2.png?<redacted>" in viewer[0]
    assert " 403 " in viewer[0]
    assert "SECRETVIEWERTOKEN123" not in output and "SECRETQUERY" not in output


def test_redact_url_replaces_token_segments_and_queries() -> None:
    from cds.weblog import redact_url

    assert redact_url("GET /explain/abc.def-ghi HTTP/1.1") == "GET /explain/<redacted> HTTP/1.1"
    assert redact_url("https://h/studies/tok?x=1") == "https://h/studies/<redacted>?<redacted>"
    assert redact_url("POST /cds-services/lumbar-mri-patient-view HTTP/1.1") == (
        "POST /cds-services/lumbar-mri-patient-view HTTP/1.1"
    )
