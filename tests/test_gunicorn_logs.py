"""gunicorn with the production config (docker/gunicorn.conf.py) writes JSON lines only: its own
lines and the app's, and answers with the request id it was given."""

from __future__ import annotations

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


def test_gunicorn_logs_are_json_lines_with_request_ids(tmp_path: Path) -> None:
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
        assert rid == "gunicorn-log-test"
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]  # every line is JSON
    assert any(line["logger"] == "gunicorn.error" for line in lines)
    unauthorized = [line for line in lines if str(line["msg"]).startswith("hook_call unauthorized")]
    assert unauthorized and unauthorized[0]["request_id"] == "gunicorn-log-test"
    assert unauthorized[0]["status"] == 401 and "eyJhbGciOi" not in output
