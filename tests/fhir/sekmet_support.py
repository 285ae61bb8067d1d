"""A real FHIR R4 server for the integration tests: sekmet-fhir (pinned test dependency) on a spare
loopback port, started in a work folder and stopped afterwards. One helper for every test module
that writes to or reads from a FHIR server (tests/fhir, tests/jobs)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests


def sekmet_command() -> str:
    """The sekmet executable of this virtual environment (or on PATH); a test failure if absent."""
    exe = Path(sys.executable).with_name("sekmet")
    if exe.exists():
        return str(exe)
    found = shutil.which("sekmet")
    if found is None:
        pytest.fail("sekmet-fhir is a test dependency (pyproject [test]) but is not installed")
    return found


@contextmanager
def running_sekmet(workdir: Path, start_timeout_s: float = 60.0) -> Iterator[str]:
    """Start sekmet-fhir with its data and log under ``workdir``; yields its base URL
    (``http://127.0.0.1:<port>/fhir``) once ``/metadata`` answers; always stops it."""
    workdir.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    base = f"http://127.0.0.1:{port}/fhir"
    config = workdir / "settings.yaml"
    config.write_text(
        f"base_url: {base}\nhost: 127.0.0.1\nport: {port}\ndata_dir: {workdir / 'data'}\n"
        "simulator:\n  enabled: false\n"
    )
    with (workdir / "server.log").open("wb") as log:
        proc = subprocess.Popen(
            [sekmet_command(), "serve", "-c", str(config)],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SEKMET_CONFIG": str(config)},
        )
        try:
            deadline = time.monotonic() + start_timeout_s
            while True:
                try:
                    if requests.get(f"{base}/metadata", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"sekmet-fhir did not start; see {workdir / 'server.log'}")
                time.sleep(0.2)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
