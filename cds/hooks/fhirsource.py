"""The EHR's FHIR server (from the hook request) as a prefetch source, via cds.fhir.client.

The client enforces the host allow-list (CDS_FHIR_ALLOWED_HOSTS), timeouts and paging; this
adapter only maps "not found" to "no data" and a disallowed server to "no source" (-> 412 when
required data is missing), so a caller cannot aim the service at an internal address.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from cds.fhir.client import FhirClient, HostNotAllowed, ResourceNotFound
from cds.hooks.models import HookRequest

log = logging.getLogger(__name__)


class ClientSource:
    def __init__(self, client: FhirClient) -> None:
        self._client = client

    def read(self, path: str) -> dict[str, Any] | None:
        try:
            return self._client.read(path)
        except ResourceNotFound:
            return None

    def search(self, query: str) -> dict[str, Any]:
        return self._client.search(query)


def source_for(request: HookRequest, allowed_hosts: Iterable[str], timeout_s: float) -> ClientSource | None:
    """A source for the request's fhirServer, or None (no server given, or host not allowed)."""
    if request.fhirServer is None:
        return None
    token = request.fhirAuthorization.access_token if request.fhirAuthorization else None
    try:
        client = FhirClient(request.fhirServer, token, allowed_hosts, timeout_s)
    except HostNotAllowed as exc:
        log.warning("fhirServer not usable: %s", exc.message)
        return None
    return ClientSource(client)
