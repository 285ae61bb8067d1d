"""A small FHIR REST client for the EHR's server: read, and search that follows Bundle paging.

Why so guarded: the FHIR base URL arrives in the hook request (`fhirServer`), i.e. from the caller.
Without an allow-list a caller could make this service send requests (with a bearer token) to
internal addresses. So every URL this client touches, including each `next` link the server
returns, must be http(s) on an allow-listed host, and must stay on the base URL's origin;
redirects are not followed and proxies/netrc from the environment are ignored.

Errors: a disallowed URL -> HostNotAllowed (Forbidden); the server refusing the token (401/403) ->
FhirAccessDenied; not found on read -> ResourceNotFound; timeouts, connection failures, 5xx,
non-JSON or oversized bodies -> UpstreamError. Messages name the host and status only: never the
token, and never the path or query (they can hold patient identifiers).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from cds.errors import Forbidden, NotFound, UpstreamError

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"


class HostNotAllowed(Forbidden):
    """The URL's scheme, host or origin is not one this deployment may call."""


class FhirAccessDenied(UpstreamError):
    """The FHIR server rejected our credentials (401/403): the data cannot be fetched."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class FhirVersionConflict(UpstreamError):
    """409/412: a conditional or versioned write lost to another writer (If-Match no longer holds).

    The caller re-reads and decides again (cds.fhir.writeback); retrying the same request cannot help.
    """


class ResourceNotFound(NotFound):
    """The FHIR server answered 404/410 to a read."""


_session_lock = threading.Lock()
_shared_session: requests.Session | None = None


def shared_session() -> requests.Session:
    """One pooled session per process: connections to the EHR are reused across hook calls.

    Safe to share because the bearer token is sent per request, never stored on the session.
    """
    global _shared_session
    with _session_lock:
        if _shared_session is None:
            session = requests.Session()
            session.trust_env = False  # no proxies or netrc credentials from the environment
            adapter = HTTPAdapter(pool_connections=8, pool_maxsize=32, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            _shared_session = session
        return _shared_session


def _normalise_hosts(hosts: Iterable[str]) -> frozenset[str]:
    return frozenset(h.strip().lower() for h in hosts if h.strip())


def _host_allowed(netloc_host: str, port: int | None, allowed: frozenset[str]) -> bool:
    """An entry 'host' allows any port; 'host:port' allows only that port."""
    host = netloc_host.lower()
    if host in allowed:
        return True
    return port is not None and f"{host}:{port}" in allowed


class FhirClient:
    """Calls one FHIR server on behalf of one hook request.

    base_url: the FHIR base (e.g. https://ehr.example/fhir); access_token: bearer token or None;
    allowed_hosts: hosts (or host:port) this deployment may call; timeout_s: per request
    (connect and read), with a whole-operation deadline of total_timeout_s (default 3 x timeout_s).
    """

    def __init__(
        self,
        base_url: str,
        access_token: str | None,
        allowed_hosts: Iterable[str],
        timeout_s: float = 5.0,
        *,
        max_pages: int = 20,
        max_response_bytes: int = 10 * 1024 * 1024,
        total_timeout_s: float | None = None,
        session: requests.Session | None = None,
    ) -> None:
        if timeout_s <= 0 or max_pages < 1 or max_response_bytes < 1:
            raise ValueError("timeout_s, max_pages and max_response_bytes must be positive")
        self._allowed = _normalise_hosts(allowed_hosts)
        base = base_url.strip()
        self._check_url(base, same_origin=False)
        self._base = base if base.endswith("/") else base + "/"
        parts = urlsplit(self._base)
        self._origin = (parts.scheme.lower(), parts.netloc.lower())
        self._token = access_token
        self._timeout_s = float(timeout_s)
        self._total_timeout_s = float(total_timeout_s) if total_timeout_s else 3.0 * self._timeout_s
        self._max_pages = max_pages
        self._max_bytes = max_response_bytes
        self._session = session if session is not None else shared_session()

    def __repr__(self) -> str:  # never show the token
        return f"FhirClient(host={urlsplit(self._base).hostname!r})"

    @property
    def base_url(self) -> str:
        return self._base

    # --- URL policy ---------------------------------------------------------------------------

    def _check_url(self, url: str, *, same_origin: bool) -> None:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise HostNotAllowed("malformed FHIR server URL") from exc
        scheme = parts.scheme.lower()
        if scheme not in {"http", "https"}:
            raise HostNotAllowed(f"FHIR server URL scheme {scheme or '(none)'!r} is not http(s)")
        if not parts.hostname:
            raise HostNotAllowed("FHIR server URL has no host")
        if parts.username is not None or parts.password is not None:
            raise HostNotAllowed("FHIR server URL must not carry credentials")
        if not _host_allowed(parts.hostname, port, self._allowed):
            raise HostNotAllowed(f"FHIR server host {parts.hostname!r} is not in the allowed hosts")
        if same_origin and (scheme, parts.netloc.lower()) != self._origin:
            raise HostNotAllowed(f"FHIR server link leaves the server's origin (to {parts.hostname!r})")

    def _resolve(self, path: str) -> str:
        """A path relative to the base (e.g. 'Patient/123'), or an absolute URL on the same origin."""
        if "://" in path:
            self._check_url(path, same_origin=True)
            return path
        if path.startswith("/") or any(seg in {"..", "."} for seg in path.split("?")[0].split("/")):
            raise HostNotAllowed("FHIR path must be relative to the server base, without '..'")
        url = urljoin(self._base, path)
        self._check_url(url, same_origin=True)
        return url

    # --- HTTP ---------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": FHIR_JSON}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def _get(self, url: str, params: Mapping[str, Any] | None, deadline: float) -> dict[str, Any]:
        return self._request("GET", url, params, None, deadline)

    def _request(
        self,
        method: str,
        url: str,
        params: Mapping[str, Any] | None,
        body_json: Mapping[str, Any] | None,
        deadline: float,
    ) -> dict[str, Any]:
        host = urlsplit(url).hostname
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UpstreamError(f"FHIR server {host!r} did not answer in time")
        timeout = min(self._timeout_s, remaining)
        try:
            headers = self._headers()
            data = None
            if body_json is not None:
                headers["Content-Type"] = FHIR_JSON
                data = json.dumps(body_json).encode()
            response = self._session.request(
                method,
                url,
                params=dict(params) if params else None,
                data=data,
                headers=headers,
                timeout=(timeout, timeout),
                allow_redirects=False,
                stream=True,
            )
        except requests.Timeout as exc:
            raise UpstreamError(f"FHIR server {host!r} timed out") from exc
        except requests.RequestException as exc:
            raise UpstreamError(f"FHIR server {host!r} could not be reached ({type(exc).__name__})") from exc
        with response:
            status = response.status_code
            log.debug("FHIR %s host=%s status=%s", method, host, status)
            if status in (401, 403):
                raise FhirAccessDenied(f"FHIR server {host!r} refused access ({status})", status)
            if status in (404, 410):
                raise ResourceNotFound(f"FHIR server {host!r}: resource not found ({status})")
            if status in (409, 412):
                raise FhirVersionConflict(
                    f"FHIR server {host!r} refused a stale or conflicting write ({status})"
                )
            if 300 <= status < 400:
                raise UpstreamError(f"FHIR server {host!r} redirected ({status}); redirects are not followed")
            if status >= 400:
                raise UpstreamError(f"FHIR server {host!r} answered {status}")
            body = self._read_body(response, host, deadline)
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise UpstreamError(f"FHIR server {host!r} sent a body that is not JSON") from exc
        if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
            raise UpstreamError(f"FHIR server {host!r} sent JSON that is not a FHIR resource")
        return data

    def _read_body(self, response: requests.Response, host: str | None, deadline: float) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(chunk_size=65536):
                size += len(chunk)
                if size > self._max_bytes:
                    raise UpstreamError(f"FHIR server {host!r} response exceeds {self._max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise UpstreamError(f"FHIR server {host!r} did not answer in time")
                chunks.append(chunk)
        except requests.RequestException as exc:
            raise UpstreamError(f"FHIR server {host!r} failed while sending ({type(exc).__name__})") from exc
        return b"".join(chunks)

    # --- API ----------------------------------------------------------------------------------

    def read(self, path: str) -> dict[str, Any]:
        """GET one resource, e.g. read('Patient/123')."""
        deadline = time.monotonic() + self._total_timeout_s
        return self._get(self._resolve(path), None, deadline)

    def transaction(self, bundle: Mapping[str, Any]) -> dict[str, Any]:
        """POST a transaction Bundle to the base; returns the transaction-response Bundle.

        Used for write-back (cds.fhir.report.build_report_bundle, idempotent by conditional create).
        Not retried here: the caller decides, and a retry is safe only for idempotent bundles.
        """
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") not in {"transaction", "batch"}:
            raise ValueError("transaction() needs a Bundle of type transaction or batch")
        deadline = time.monotonic() + self._total_timeout_s
        response = self._request("POST", self._base.rstrip("/"), None, bundle, deadline)
        if response.get("resourceType") != "Bundle":
            raise UpstreamError("FHIR server did not answer the transaction with a Bundle")
        return response

    def search(self, path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Search and follow `link[next]`; returns one searchset Bundle with every page's entries.

        `path` is relative ('ImagingStudy') or an absolute next link on the same server. More than
        max_pages pages raises UpstreamError rather than silently returning a partial list.
        """
        deadline = time.monotonic() + self._total_timeout_s
        url: str | None = self._resolve(path)
        query: Mapping[str, Any] | None = params
        entries: list[Any] = []
        total: Any = None
        pages = 0
        while url is not None:
            if pages >= self._max_pages:
                raise UpstreamError(f"FHIR search has more than {self._max_pages} pages")
            page = self._get(url, query, deadline)
            pages += 1
            if page.get("resourceType") != "Bundle":
                if page.get("resourceType") == "OperationOutcome":
                    raise UpstreamError("FHIR server answered the search with an OperationOutcome")
                raise UpstreamError("FHIR search did not return a Bundle")
            if pages == 1:
                total = page.get("total")
            page_entries = page.get("entry") or []
            if not isinstance(page_entries, list):
                raise UpstreamError("FHIR search Bundle has a malformed entry list")
            entries.extend(page_entries)
            url = _next_link(page)
            if url is not None:
                url = urljoin(self._base, url)
                self._check_url(url, same_origin=True)
            query = None  # the next link carries its own query
        merged: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
        if isinstance(total, int):
            merged["total"] = total
        if entries:
            merged["entry"] = entries
        return merged

    def search_resources(self, path: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """The matched resources of a search (entries with search.mode 'outcome' left out)."""
        bundle = self.search(path, params)
        out: list[dict[str, Any]] = []
        for entry in bundle.get("entry", []):
            if not isinstance(entry, dict):
                continue
            if (entry.get("search") or {}).get("mode") == "outcome":
                continue
            resource = entry.get("resource")
            if isinstance(resource, dict):
                out.append(resource)
        return out


def _next_link(bundle: Mapping[str, Any]) -> str | None:
    links = bundle.get("link") or []
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return str(link["url"])
    return None
