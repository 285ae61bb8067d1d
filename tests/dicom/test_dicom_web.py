"""DICOMweb source: against a real Orthanc, plus retries/timeouts against a local HTTP server,
plus FHIR Endpoint resolution."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from dicom_factory import write_lumbar_study
from orthanc_server import OrthancServer

from cds.config import Settings
from cds.dicom import IngestKind, load_study
from cds.dicom.sources.dicomweb import DicomWebAuth, DicomWebSource, RetryPolicy
from cds.dicom.sources.endpoint import (
    configured_source,
    source_for_endpoint,
    source_for_imaging_study,
    study_uid_of,
)
from cds.errors import IngestError, UpstreamError

# ---------------------------------------------------------------- real Orthanc


@pytest.fixture(scope="module")
def uploaded(orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    folder = tmp_path_factory.mktemp("orthanc-study")
    study_uid, _ = write_lumbar_study(folder)
    for path in sorted(folder.glob("*.dcm")):
        orthanc.upload(path)
    return study_uid, folder


@pytest.mark.integration
def test_load_study_from_orthanc_matches_folder(orthanc: OrthancServer, uploaded: tuple[str, Path]) -> None:
    study_uid, folder = uploaded
    source = DicomWebSource(
        orthanc.dicomweb_url,
        study_uid,
        auth=DicomWebAuth(username=orthanc.username, password=orthanc.password),
    )
    remote = load_study(source)
    local = load_study(folder)
    assert remote.study_uid == study_uid
    assert [v.kind for v in remote.series] == [v.kind for v in local.series]
    for r, v in zip(remote.series, local.series, strict=True):
        np.testing.assert_array_equal(r.array, v.array)
        np.testing.assert_allclose(r.affine, v.affine, atol=1e-6)


@pytest.mark.integration
def test_orthanc_wrong_credentials_is_upstream_error_without_secret(
    orthanc: OrthancServer, uploaded: tuple[str, Path]
) -> None:
    study_uid, _ = uploaded
    source = DicomWebSource(
        orthanc.dicomweb_url, study_uid, auth=DicomWebAuth(username="cds-test", password="wrong")
    )
    with pytest.raises(UpstreamError) as info:
        load_study(source)
    assert "401" in info.value.message and "wrong" not in info.value.message
    assert "wrong" not in repr(source) and orthanc.password not in repr(DicomWebAuth("u", orthanc.password))


@pytest.mark.integration
def test_orthanc_unknown_study(orthanc: OrthancServer, uploaded: tuple[str, Path]) -> None:
    source = DicomWebSource(
        orthanc.dicomweb_url,
        "1.2.3.4.5",
        auth=DicomWebAuth(username=orthanc.username, password=orthanc.password),
    )
    with pytest.raises(IngestError) as info:
        load_study(source)
    assert info.value.kind == IngestKind.STUDY_NOT_FOUND


# ---------------------------------------------------------------- retries and timeouts (local HTTP server)


class FlakyHandler(BaseHTTPRequestHandler):
    plan: ClassVar[list[tuple[int, float]]] = []  # (status, delay) per request; the last one repeats
    seen: ClassVar[list[str]] = []
    auth_headers: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        type(self).auth_headers.append(self.headers.get("Authorization"))
        status, delay = self.plan[min(len(self.seen) - 1, len(self.plan) - 1)]
        time.sleep(delay)
        body = json.dumps([]).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky() -> Iterator[tuple[str, type[FlakyHandler]]]:
    FlakyHandler.seen, FlakyHandler.auth_headers = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web", FlakyHandler
    finally:
        server.shutdown()
        server.server_close()


def test_transient_errors_are_retried_with_backoff(flaky: tuple[str, type[FlakyHandler]]) -> None:
    url, handler = flaky
    handler.plan = [(503, 0.0), (502, 0.0), (200, 0.0)]
    source = DicomWebSource(url, "1.2.3", retry=RetryPolicy(attempts=3, backoff_s=0.01))
    with pytest.raises(IngestError) as info:  # third answer is an empty series list
        list(source.iter_headers())
    assert info.value.kind == IngestKind.STUDY_NOT_FOUND
    assert len(handler.seen) == 3 and all("/studies/1.2.3/series" in p for p in handler.seen)


def test_persistent_errors_become_upstream_error(flaky: tuple[str, type[FlakyHandler]]) -> None:
    url, handler = flaky
    handler.plan = [(503, 0.0)]
    source = DicomWebSource(url, "1.2.3", retry=RetryPolicy(attempts=2, backoff_s=0.01))
    with pytest.raises(UpstreamError) as info:
        list(source.iter_headers())
    assert "503" in info.value.message and len(handler.seen) == 3


def test_read_timeout_becomes_upstream_error(flaky: tuple[str, type[FlakyHandler]]) -> None:
    url, handler = flaky
    handler.plan = [(200, 1.0)]
    source = DicomWebSource(url, "1.2.3", retry=RetryPolicy(attempts=0, read_timeout_s=0.2))
    started = time.monotonic()
    with pytest.raises(UpstreamError):
        list(source.iter_headers())
    assert time.monotonic() - started < 0.9


def test_bearer_token_is_sent(flaky: tuple[str, type[FlakyHandler]]) -> None:
    url, handler = flaky
    handler.plan = [(200, 0.0)]
    source = DicomWebSource(url, "1.2.3", auth=DicomWebAuth(bearer_token="tok-123"))
    with pytest.raises(IngestError):
        list(source.iter_headers())
    assert handler.auth_headers == ["Bearer tok-123"]
    assert "tok-123" not in repr(source)


# ---------------------------------------------------------------- FHIR Endpoint resolution

SETTINGS = Settings(
    dicomweb_url="https://pacs.example.org/dicom-web",
    dicomweb_username="svc",
    dicomweb_password="pw",
    dicomweb_allowed_hosts=("archive.example.org",),
)


def endpoint(address: str, code: str = "dicom-wado-rs", status: str = "active", r5: bool = False) -> dict:
    coding = {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": code}
    return {
        "resourceType": "Endpoint",
        "id": "ep1",
        "status": status,
        "connectionType": [{"coding": [coding]}] if r5 else coding,
        "payloadType": [{"text": "DICOM"}],
        "address": address,
    }


@pytest.mark.parametrize("r5", [False, True])
def test_endpoint_resolves_to_dicomweb_source_with_configured_credentials(r5: bool) -> None:
    source = source_for_endpoint(endpoint("https://pacs.example.org/dicom-web/", r5=r5), "1.2.3", SETTINGS)
    assert source.base_url == "https://pacs.example.org/dicom-web" and source.study_uid == "1.2.3"
    assert source._session.auth == ("svc", "pw")


def test_credentials_are_not_sent_to_other_allowed_hosts() -> None:
    source = source_for_endpoint(endpoint("https://archive.example.org/wado"), "1.2.3", SETTINGS)
    assert source._session.auth is None and "Authorization" not in source._session.headers


@pytest.mark.parametrize(
    "bad",
    [
        endpoint("https://evil.example.com/dicom-web"),  # host not allowed (SSRF)
        endpoint("https://pacs.example.org/dicom-web", code="hl7-fhir-rest"),
        endpoint("https://pacs.example.org/dicom-web", status="off"),
        endpoint("file:///etc/passwd"),
        {"resourceType": "Patient"},
    ],
)
def test_unusable_endpoints_are_refused(bad: dict) -> None:
    with pytest.raises(IngestError) as info:
        source_for_endpoint(bad, "1.2.3", SETTINGS)
    assert info.value.kind == IngestKind.UNSUPPORTED_ENDPOINT


def test_imaging_study_endpoint_reference_is_followed() -> None:
    imaging_study = {
        "resourceType": "ImagingStudy",
        "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.840.99.1"}],
        "endpoint": [{"reference": "Endpoint/ep1"}],
    }
    assert study_uid_of(imaging_study) == "1.2.840.99.1"
    source = source_for_imaging_study(
        imaging_study, [endpoint("https://pacs.example.org/dicom-web")], SETTINGS
    )
    assert source.study_uid == "1.2.840.99.1"
    contained = dict(
        imaging_study, endpoint=[{"reference": "#ep1"}], contained=[endpoint("https://pacs.example.org/x")]
    )
    assert source_for_imaging_study(contained, [], SETTINGS).base_url == "https://pacs.example.org/x"
    with pytest.raises(IngestError):
        source_for_imaging_study(dict(imaging_study, endpoint=[]), [], SETTINGS)


def test_configured_source_uses_settings() -> None:
    source = configured_source(SETTINGS.with_overrides(dicomweb_timeout_s=7.5), "1.2.3")
    assert source.base_url == SETTINGS.dicomweb_url and source._session.auth == ("svc", "pw")
    assert source._retry.read_timeout_s == 7.5
    with pytest.raises(IngestError) as info:
        configured_source(Settings(), "1.2.3")
    assert info.value.kind == IngestKind.UNSUPPORTED_ENDPOINT
