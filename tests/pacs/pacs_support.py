"""Test material for the PACS trigger: a real Orthanc (DICOMweb + Lua), a live app server, studies.

Orthanc runs from a private config in a temporary folder on 127.0.0.1 (RemoteAccessAllowed false,
DICOM networking off, basic auth on), like tests/dicom/conftest.py, plus the product's Lua script
(docker/orthanc/notify.lua) when asked. Missing Orthanc: skipped locally, a failure under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from werkzeug.serving import make_server

REPO = Path(__file__).resolve().parents[2]
NOTIFY_LUA = REPO / "docker" / "orthanc" / "notify.lua"
DICOMWEB_PLUGIN_PATHS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)
USER, PASSWORD = "cds-test", "not-a-real-secret"


def missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: install the Debian packages orthanc and orthanc-dicomweb)")
    pytest.skip(reason)


def spare_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Orthanc:
    base_url: str
    work: Path

    @property
    def auth(self) -> tuple[str, str]:
        return (USER, PASSWORD)

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicom-web"

    def upload_folder(self, folder: Path) -> int:
        count = 0
        with requests.Session() as session:
            for path in sorted(folder.rglob("*.dcm")):
                session.post(
                    f"{self.base_url}/instances", data=path.read_bytes(), auth=self.auth, timeout=30
                ).raise_for_status()
                count += 1
        return count

    def log(self) -> str:
        return (self.work / "orthanc.log").read_text(errors="replace")


@contextmanager
def running_orthanc(
    work: Path, *, lua: bool = False, env: Mapping[str, str] | None = None
) -> Iterator[Orthanc]:
    binary = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
    plugin = next((p for p in DICOMWEB_PLUGIN_PATHS if Path(p).exists()), None)
    if binary is None or plugin is None:
        missing("Orthanc or its DICOMweb plugin is not installed")
        raise AssertionError("unreachable")
    work.mkdir(parents=True, exist_ok=True)
    port = spare_port()
    config: dict[str, Any] = {
        "Name": "cds-pacs-test",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "HttpPort": port,
        "HttpServerEnabled": True,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StableAge": 1,
        "ConcurrentJobs": 1,
    }
    if lua:
        config["LuaScripts"] = [str(NOTIFY_LUA)]
    (work / "orthanc.json").write_text(json.dumps(config))
    server = Orthanc(f"http://127.0.0.1:{port}", work)
    log = (work / "orthanc.log").open("wb")
    proc = subprocess.Popen(
        [binary, str(work / "orthanc.json")],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=work,
        env={**os.environ, **(env or {})},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{server.base_url}/system", auth=server.auth, timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not start; log in {work / 'orthanc.log'}")
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextmanager
def live_app(app: Flask) -> Iterator[str]:
    """Serve `app` on a spare loopback port in a thread (the Lua script needs a real URL)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def notification(study_uid: str, **overrides: Any) -> dict[str, Any]:
    """The body notify.lua sends for a lumbar MRI (the shape cds.pacs.blueprint validates)."""
    body: dict[str, Any] = {
        "event": "StableStudy",
        "studyInstanceUid": study_uid,
        "pacsStudyId": "0f3e9a1c-5b2f4d11-8c7e6a90-1d2b3c4e-5f607182",
        "patientId": "SYN-000001",
        "studyDate": "20260701",
        "studyDescription": "MRI LUMBAR SPINE WO CONTRAST",
        "series": [
            {"modality": "MR", "seriesDescription": "Sag T2 FSE", "bodyPartExamined": "LSPINE"},
            {"modality": "MR", "seriesDescription": "Ax T2 FSE", "bodyPartExamined": "LSPINE"},
        ],
    }
    body.update(overrides)
    return body
