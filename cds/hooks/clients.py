"""The allow-list of CDS clients (EHRs) trusted to call the services: CDS_CLIENTS_FILE.

Format: a JSON list of objects, one per issuer:
    {"iss": "https://ehr.example.org", "jwks_url": "https://ehr.example.org/jwks.json"}
    {"iss": "https://other.example.org", "jwks": {"keys": [...]}, "jku": ["https://other.example.org/k.json"]}
`jwks` (inline) or `jwks_url` gives the issuer's keys; `jku` optionally lists the key-set URLs
this issuer may name in a token's `jku` header. A token's `jku` outside that list is rejected: a
jku accepted blindly would let anyone sign tokens with keys they host themselves.
An unreadable or invalid file stops the service at start-up rather than at the first call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cds.config import SettingsError
from cds.hooks.jwks import KeySet, KeySetError, parse_jwks


@dataclass(frozen=True)
class TrustedClient:
    iss: str
    jwks: KeySet | None
    jwks_url: str | None
    jku_allowed: frozenset[str]


def _url(value: Any, what: str) -> str:
    if not isinstance(value, str) or urlsplit(value).scheme not in {"http", "https"}:
        raise SettingsError(f"CDS_CLIENTS_FILE: {what} must be an http(s) URL")
    return value


def parse_clients(data: Any) -> Mapping[str, TrustedClient]:
    if not isinstance(data, list):
        raise SettingsError("CDS_CLIENTS_FILE must hold a JSON list of clients")
    clients: dict[str, TrustedClient] = {}
    for i, item in enumerate(data):
        if not isinstance(item, Mapping) or not isinstance(item.get("iss"), str) or not item["iss"]:
            raise SettingsError(f"CDS_CLIENTS_FILE entry {i}: 'iss' (string) is required")
        iss = item["iss"]
        if iss in clients:
            raise SettingsError(f"CDS_CLIENTS_FILE entry {i}: duplicate iss")
        jwks = None
        if "jwks" in item:
            try:
                jwks = parse_jwks(item["jwks"])
            except KeySetError as exc:
                raise SettingsError(f"CDS_CLIENTS_FILE entry {i}: {exc}") from None
        jwks_url = _url(item["jwks_url"], f"entry {i} jwks_url") if "jwks_url" in item else None
        jku_raw = item.get("jku", [])
        if not isinstance(jku_raw, list):
            raise SettingsError(f"CDS_CLIENTS_FILE entry {i}: 'jku' must be a list of URLs")
        jku = frozenset(_url(u, f"entry {i} jku") for u in jku_raw)
        if jwks is None and jwks_url is None and not jku:
            raise SettingsError(f"CDS_CLIENTS_FILE entry {i}: give 'jwks', 'jwks_url' or 'jku'")
        clients[iss] = TrustedClient(iss, jwks, jwks_url, jku)
    return clients


def load_clients(path: Path | None) -> Mapping[str, TrustedClient]:
    """Clients from the file; no file means no client is trusted (every call gets 401)."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SettingsError(f"CDS_CLIENTS_FILE unreadable: {type(exc).__name__}") from None
    return parse_clients(data)
