"""A real Orthanc (with the DICOMweb plugin) for the DICOMweb source tests.

Started once per session from a private config in a temporary folder: HTTP on a spare port,
RemoteAccessAllowed false (Orthanc has no bind-address setting; it then refuses non-local
clients), DICOM networking off, basic auth on. Skipped when Orthanc is not installed locally, but
under CI=true a missing Orthanc is a failure: CI must exercise the real server
(Debian packages: orthanc, orthanc-dicomweb).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from orthanc_server import OrthancServer

ORTHANC_BINARY = "Orthanc"
DICOMWEB_PLUGIN_PATHS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: install the Debian packages orthanc and orthanc-dicomweb)")
    pytest.skip(reason)


def _spare_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    binary = shutil.which(ORTHANC_BINARY) or (
        f"/usr/sbin/{ORTHANC_BINARY}" if Path("/usr/sbin/Orthanc").exists() else None
    )
    plugin = next((p for p in DICOMWEB_PLUGIN_PATHS if Path(p).exists()), None)
    if binary is None or plugin is None:
        _missing("Orthanc or its DICOMweb plugin is not installed")
        return
    work = tmp_path_factory.mktemp("orthanc")
    port = _spare_port()
    server = OrthancServer(f"http://127.0.0.1:{port}", "cds-test", "not-a-real-secret")
    config = {
        "Name": "cds-test",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "HttpPort": port,
        "HttpServerEnabled": True,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {server.username: server.password},
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StableAge": 1,
        "ConcurrentJobs": 1,
    }
    config_path = work / "orthanc.json"
    config_path.write_text(json.dumps(config))
    log = (work / "orthanc.log").open("wb")
    proc = subprocess.Popen([binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=work)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                ok = requests.get(
                    f"{server.base_url}/system", auth=(server.username, server.password), timeout=1
                ).ok
            except requests.ConnectionError:
                ok = False
            if ok:
                break
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
