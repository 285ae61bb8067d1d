"""Public keys of trusted CDS clients: configured inline or fetched from JWKS URLs, cached.

Why a cache with a refresh throttle: every hook call verifies a JWT, and fetching the client's
JWKS each time would add a network round trip (and a dependency on the EHR's key server) to the
hot path. Keys are kept for `ttl_s`; a token naming an unknown `kid` may trigger one refresh
(key rotation), but at most once per `min_refresh_s`, so garbage tokens cannot make the service
hammer the key server.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import requests

log = logging.getLogger(__name__)

#: Asymmetric signature algorithms accepted on client JWTs. `none` and HMAC (HS*) are never
#: accepted: with HMAC, anyone holding the verification key can forge tokens.
ALLOWED_ALGORITHMS = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)
_ASYMMETRIC_KTY = frozenset({"EC", "RSA"})
_MAX_JWKS_BYTES = 256 * 1024


class KeySetError(Exception):
    """A key set could not be obtained or parsed (logged without secrets, mapped to 401)."""


@dataclass(frozen=True)
class KeySet:
    keys: tuple[jwt.PyJWK, ...]

    def find(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            return self.keys[0] if len(self.keys) == 1 else None
        return next((k for k in self.keys if k.key_id == kid), None)


def parse_jwks(data: Any) -> KeySet:
    """Asymmetric signing keys of a JWKS document; symmetric (`oct`) and encryption keys dropped."""
    if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
        raise KeySetError("JWKS must be an object with a 'keys' list")
    keys: list[jwt.PyJWK] = []
    for raw in data["keys"]:
        if not isinstance(raw, Mapping) or raw.get("kty") not in _ASYMMETRIC_KTY:
            continue
        if raw.get("use", "sig") != "sig" or "d" in raw:
            continue  # encryption keys, and private keys published by mistake, are not used
        try:
            keys.append(jwt.PyJWK(dict(raw)))
        except jwt.PyJWTError:
            continue
    if not keys:
        raise KeySetError("JWKS holds no usable asymmetric signing key")
    return KeySet(tuple(keys))


def http_fetch_json(url: str, timeout_s: float) -> Any:
    """GET a JWKS over HTTP(S) with a timeout and a size cap, never following a redirect.

    The URL is an allow-listed one (configured jwks_url or jku); a redirect would let whoever
    answers there send us to keys (or internal addresses) that nobody allow-listed.
    """
    try:
        with requests.get(
            url, timeout=(min(timeout_s, 3.0), timeout_s), stream=True, allow_redirects=False
        ) as resp:
            if resp.is_redirect or 300 <= resp.status_code < 400:
                raise KeySetError(f"JWKS fetch was redirected (HTTP {resp.status_code}); not followed")
            if resp.status_code != 200:
                raise KeySetError(f"JWKS fetch returned HTTP {resp.status_code}")
            body = resp.raw.read(_MAX_JWKS_BYTES + 1, decode_content=True)
    except requests.RequestException as exc:
        raise KeySetError(f"JWKS fetch failed: {type(exc).__name__}") from None
    if len(body) > _MAX_JWKS_BYTES:
        raise KeySetError("JWKS document too large")
    try:
        return json.loads(body)
    except ValueError:
        raise KeySetError("JWKS document is not JSON") from None


@dataclass
class _Entry:
    keys: KeySet | None
    fetched_at: float


class JwksCache:
    """Thread-safe cache of key sets fetched from URLs (one per gunicorn worker process)."""

    def __init__(
        self,
        fetch: Callable[[str, float], Any] = http_fetch_json,
        ttl_s: float = 300.0,
        min_refresh_s: float = 30.0,
        timeout_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._ttl_s = ttl_s
        self._min_refresh_s = min_refresh_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def _load(self, url: str) -> KeySet | None:
        try:
            return parse_jwks(self._fetch(url, self._timeout_s))
        except KeySetError as exc:
            log.warning("jwks unavailable: %s", exc)  # the URL is configuration, not a secret
            return None

    def get(self, url: str, kid: str | None) -> jwt.PyJWK | None:
        """The key `kid` from `url`, refreshing on expiry or (throttled) on an unknown kid."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(url)
        fresh = entry is not None and now - entry.fetched_at < self._ttl_s
        if entry is not None and fresh and entry.keys is not None:
            key = entry.keys.find(kid)
            if key is not None:
                return key
        if entry is not None and now - entry.fetched_at < self._min_refresh_s:
            return entry.keys.find(kid) if entry.keys else None
        keys = self._load(url)
        if keys is None and entry is not None and entry.keys is not None and fresh:
            keys = entry.keys  # a failed refresh keeps the still-valid keys
        with self._lock:
            self._entries[url] = _Entry(keys, now)
        return keys.find(kid) if keys else None
