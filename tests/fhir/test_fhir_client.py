"""FhirClient against a real local HTTP server (http.server in a thread).

The server plays an EHR FHIR endpoint: paginated searchsets, slow answers, errors, redirects and
next links that try to leave the server. It records the headers it received.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from cds.errors import Forbidden, NotFound, UpstreamError
from cds.fhir.client import FhirAccessDenied, FhirClient, HostNotAllowed, ResourceNotFound

TOKEN = "s3cret-bearer-token"


class _FhirHandler(BaseHTTPRequestHandler):
    server: _FhirServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.server.seen.append((parts.path, query, dict(self.headers)))
        path = parts.path.removeprefix("/fhir/")
        base = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        if path == "Patient/p1":
            self._send(200, {"resourceType": "Patient", "id": "p1"})
        elif path == "ImagingStudy":
            page = int(query.get("_page", "1"))
            entries = [
                {"resource": {"resourceType": "ImagingStudy", "id": f"s{page}-{i}", "status": "available"}}
                for i in range(2)
            ]
            bundle: dict[str, Any] = {
                "resourceType": "Bundle",
                "type": "searchset",
                "total": 5,
                "entry": entries,
            }
            if page == 1:
                bundle["entry"].append(
                    {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}}
                )
            if page < 3:
                bundle["link"] = [
                    {"relation": "self", "url": f"{base}/ImagingStudy?_page={page}"},
                    {"relation": "next", "url": f"{base}/ImagingStudy?_page={page + 1}"},
                ]
            else:
                bundle["entry"] = bundle["entry"][:1]
            self._send(200, bundle)
        elif path == "Empty":
            self._send(200, {"resourceType": "Bundle", "type": "searchset", "total": 0})
        elif path == "Endless":
            n = int(query.get("n", "0"))
            self._send(200, {"resourceType": "Bundle", "type": "searchset",
                             "link": [{"relation": "next", "url": f"Endless?n={n + 1}"}]})  # fmt: skip
        elif path == "Escape":
            self._send(200, {"resourceType": "Bundle", "type": "searchset",
                             "link": [{"relation": "next", "url": self.server.escape_url}]})  # fmt: skip
        elif path == "Slow":
            time.sleep(3.0)
            self._send(200, {"resourceType": "Patient", "id": "slow"})
        elif path == "Unauthorized":
            self._send(401, {"resourceType": "OperationOutcome"})
        elif path == "Forbidden":
            self._send(403, {"resourceType": "OperationOutcome"})
        elif path == "Boom":
            self._send(500, b"internal error")
        elif path == "Redirect":
            self._send(302, b"", {"Location": self.server.escape_url})
        elif path == "NotJson":
            self._send(200, b"<html>login</html>")
        elif path == "NotFhir":
            self._send(200, [1, 2, 3])
        elif path == "Outcome":
            self._send(200, {"resourceType": "OperationOutcome", "issue": []})
        elif path == "Huge":
            self._send(200, {"resourceType": "Binary", "data": "A" * 200_000})
        else:
            self._send(404, {"resourceType": "OperationOutcome"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length))
        self.server.seen.append(
            (self.path, {"content-type": self.headers.get("Content-Type", "")}, dict(self.headers))
        )
        if self.path != "/fhir":
            self._send(404, {"resourceType": "OperationOutcome"})
        elif body.get("type") == "transaction" and body.get("entry"):
            entries = [{"response": {"status": "201 Created"}} for _ in body["entry"]]
            self._send(200, {"resourceType": "Bundle", "type": "transaction-response", "entry": entries})
        else:
            self._send(422, {"resourceType": "OperationOutcome"})


class _FhirServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FhirHandler)
        self.seen: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.escape_url = "http://localhost:1/fhir/Patient/p1"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that give up (timeouts, size limits) close early: expected here, not noise."""


@pytest.fixture(scope="module")
def server() -> Iterator[_FhirServer]:
    srv = _FhirServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def base(server: _FhirServer) -> str:
    server.seen.clear()
    return f"http://127.0.0.1:{server.server_address[1]}/fhir"


@pytest.fixture
def client(base: str) -> FhirClient:
    return FhirClient(base, TOKEN, allowed_hosts=["127.0.0.1"], timeout_s=0.5, max_pages=5)


def test_read_sends_bearer_token_and_fhir_accept(client: FhirClient, server: _FhirServer) -> None:
    assert client.read("Patient/p1") == {"resourceType": "Patient", "id": "p1"}
    path, _, headers = server.seen[-1]
    assert path == "/fhir/Patient/p1"
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Accept"] == "application/fhir+json"


def test_no_token_no_authorization_header(base: str, server: _FhirServer) -> None:
    FhirClient(base, None, ["127.0.0.1"], 0.5).read("Patient/p1")
    assert "Authorization" not in server.seen[-1][2]


def test_search_follows_next_links_and_merges_pages(client: FhirClient, server: _FhirServer) -> None:
    bundle = client.search("ImagingStudy", {"patient": "p1"})
    ids = [e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ImagingStudy"]
    assert ids == ["s1-0", "s1-1", "s2-0", "s2-1", "s3-0"]
    assert bundle["type"] == "searchset" and bundle["total"] == 5
    assert "link" not in bundle
    assert len(server.seen) == 3
    assert server.seen[0][1] == {"patient": "p1"}
    assert all(h["Authorization"] == f"Bearer {TOKEN}" for _, _, h in server.seen)


def test_search_resources_drops_outcome_entries(client: FhirClient) -> None:
    resources = client.search_resources("ImagingStudy", {"patient": "p1"})
    assert [r["resourceType"] for r in resources] == ["ImagingStudy"] * 5


def test_empty_search(client: FhirClient) -> None:
    assert client.search("Empty") == {"resourceType": "Bundle", "type": "searchset", "total": 0}
    assert client.search_resources("Empty") == []


def test_search_accepts_absolute_next_link_on_same_server(client: FhirClient, base: str) -> None:
    bundle = client.search(f"{base}/ImagingStudy?_page=3")
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["s3-0"]


def test_page_count_is_bounded(client: FhirClient, server: _FhirServer) -> None:
    with pytest.raises(UpstreamError, match="more than 5 pages"):
        client.search("Endless")
    assert len(server.seen) == 5


@pytest.mark.parametrize(
    "escape",
    [
        "http://localhost:1/fhir/Patient",  # allow-listed? no: other host name
        "http://169.254.169.254/latest/meta-data",  # cloud metadata address
        "file:///etc/passwd",
    ],
)
def test_next_link_may_not_leave_the_server(client: FhirClient, server: _FhirServer, escape: str) -> None:
    server.escape_url = escape
    with pytest.raises(HostNotAllowed):
        client.search("Escape")
    assert len(server.seen) == 1  # nothing was requested from the escape URL


def test_next_link_to_other_port_on_allowed_host_is_refused(client: FhirClient, server: _FhirServer) -> None:
    server.escape_url = "http://127.0.0.1:1/fhir/Patient"
    with pytest.raises(HostNotAllowed, match="origin"):
        client.search("Escape")


@pytest.mark.parametrize(
    "url",
    [
        "http://evil.example/fhir",
        "ftp://127.0.0.1/fhir",
        "file:///etc/passwd",
        "gopher://127.0.0.1/",
        "http://user:pw@127.0.0.1/fhir",
        "127.0.0.1/fhir",
        "http://[::1/fhir",
    ],
)
def test_disallowed_base_urls_are_forbidden(url: str) -> None:
    with pytest.raises(Forbidden):
        FhirClient(url, TOKEN, ["127.0.0.1"], 1.0)


def test_empty_allow_list_allows_nothing(base: str) -> None:
    with pytest.raises(HostNotAllowed):
        FhirClient(base, TOKEN, [], 1.0)


def test_allowed_host_with_port(base: str, server: _FhirServer) -> None:
    port = server.server_address[1]
    FhirClient(base, TOKEN, [f"127.0.0.1:{port}"], 1.0).read("Patient/p1")
    with pytest.raises(HostNotAllowed):
        FhirClient(base, TOKEN, [f"127.0.0.1:{port + 1}"], 1.0)


@pytest.mark.parametrize("path", ["../admin", "/etc/passwd", "Patient/../../x", "http://localhost:1/x"])
def test_paths_cannot_escape_the_base(client: FhirClient, path: str) -> None:
    with pytest.raises(HostNotAllowed):
        client.read(path)


def test_timeout_is_upstream_error(client: FhirClient) -> None:
    started = time.monotonic()
    with pytest.raises(UpstreamError, match="timed out"):
        client.read("Slow")
    assert time.monotonic() - started < 2.5  # gave up at the timeout, not when the server answered (3 s)


def test_connection_refused_is_upstream_error() -> None:
    with pytest.raises(UpstreamError, match="could not be reached"):
        FhirClient("http://127.0.0.1:1/fhir", TOKEN, ["127.0.0.1"], 0.5).read("Patient/p1")


@pytest.mark.parametrize("path,status", [("Unauthorized", 401), ("Forbidden", 403)])
def test_access_refused(client: FhirClient, path: str, status: int) -> None:
    with pytest.raises(FhirAccessDenied) as err:
        client.read(path)
    assert err.value.status == status
    assert isinstance(err.value, UpstreamError)


def test_not_found(client: FhirClient) -> None:
    with pytest.raises(ResourceNotFound):
        client.read("Patient/missing")
    with pytest.raises(NotFound):
        client.read("Patient/missing")


@pytest.mark.parametrize("path", ["Boom", "NotJson", "NotFhir", "Huge", "Redirect"])
def test_bad_answers_are_upstream_errors(base: str, path: str) -> None:
    small = FhirClient(base, TOKEN, ["127.0.0.1"], 0.5, max_response_bytes=100_000)
    with pytest.raises(UpstreamError):
        small.read(path)


def test_search_answered_with_operation_outcome(client: FhirClient) -> None:
    with pytest.raises(UpstreamError, match="OperationOutcome"):
        client.search("Outcome")


def test_token_never_appears_in_errors_repr_or_logs(
    client: FhirClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    messages = [repr(client)]
    for path in ("Slow", "Unauthorized", "Boom", "NotJson", "Patient/missing"):
        with pytest.raises((UpstreamError, NotFound)) as err:
            client.read(path)
        messages.append(str(err.value))
    messages.extend(r.getMessage() for r in caplog.records)
    assert messages
    assert not any(TOKEN in m for m in messages)


def test_errors_do_not_echo_paths_or_queries(client: FhirClient) -> None:
    with pytest.raises(NotFound) as err:
        client.read("Patient/Jane-Doe-1970")
    assert "Jane" not in str(err.value)


def test_shared_session_is_pooled_and_ignores_environment(base: str) -> None:
    a = FhirClient(base, "t1", ["127.0.0.1"], 1.0)
    b = FhirClient(base, "t2", ["127.0.0.1"], 1.0)
    assert a._session is b._session
    assert a._session.trust_env is False
    assert "Authorization" not in a._session.headers


def test_custom_session_is_used(base: str) -> None:
    session = requests.Session()
    client = FhirClient(base, TOKEN, ["127.0.0.1"], 1.0, session=session)
    assert client.read("Patient/p1")["id"] == "p1"
    assert client._session is session


def test_transaction_posts_fhir_json_to_the_base(client: FhirClient, server: _FhirServer) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "POST"}}]}
    response = client.transaction(bundle)
    assert response["type"] == "transaction-response"
    path, meta, headers = server.seen[-1]
    assert path == "/fhir" and meta["content-type"] == "application/fhir+json"
    assert headers["Authorization"] == f"Bearer {TOKEN}"


def test_transaction_rejected_by_server_is_upstream_error(client: FhirClient) -> None:
    with pytest.raises(UpstreamError, match="422"):
        client.transaction({"resourceType": "Bundle", "type": "transaction"})
    with pytest.raises(ValueError):
        client.transaction({"resourceType": "Bundle", "type": "searchset"})
