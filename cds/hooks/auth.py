"""Authenticating the calling EHR: the CDS Hooks JWT in `Authorization: Bearer`.

Rules (CDS Hooks 2.0, "Trusting CDS Clients"): the issuer must be on the allow-list; the
signature must verify with an asymmetric key of that issuer (never `none` or HMAC); `aud` must be
the exact URL that was called; `exp`/`iat` are checked with a small leeway; `jti` may be used
once (a replayed token is rejected). Every failure is the same 401 to the caller; the reason goes
to our log only, without the token.

The replay check is behind `ReplayGuard` because it must be shared by every worker process (an
in-process set would let a token be replayed against another gunicorn worker): production uses
a database-backed guard.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from cds.errors import Unauthorized
from cds.hooks import jws
from cds.hooks.clients import TrustedClient
from cds.hooks.jwks import ALLOWED_ALGORITHMS, JwksCache

log = logging.getLogger(__name__)

#: Longest token lifetime (exp - iat) accepted. Bounds how long a jti must be remembered.
MAX_LIFETIME_S = 3600
_MAX_TOKEN_CHARS = 16_384
_REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "jti")
#: JWS header extensions understood (RFC 7515 `crit`); as PyJWT: only b64, and b64=false (a
#: detached payload) is never accepted here.
_SUPPORTED_CRIT = frozenset({"b64"})


#: Latest NumericDate accepted (3000-01-01T00:00:00Z): far beyond any real token, far below
#: datetime's year-9999 limit, so a checked value can always become a datetime.
_MAX_NUMERIC_DATE = 32_503_680_000


def _numeric_date(value: Any) -> float | None:
    """A NumericDate (RFC 7519: a JSON number of seconds), None where `value` is not a sane one.

    json.loads accepts NaN and Infinity, and every comparison with NaN is False, so a NaN iat
    would slip through "iat in the future" and "lifetime too long"; a huge exp would make
    datetime.fromtimestamp raise (a 500, not a 401). bool is an int in Python but not a number
    in JSON; numeric strings are not numbers either. Checked before any comparison.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if not 0 <= value <= _MAX_NUMERIC_DATE:
        return None
    return float(value)


def _crit_ok(header: Mapping[str, Any]) -> bool:
    crit = header.get("crit")
    if "crit" in header and (
        not isinstance(crit, list)
        or not crit
        or any(not isinstance(e, str) or e not in _SUPPORTED_CRIT or e not in header for e in crit)
    ):
        return False
    return header.get("b64", True) is not False


def _audience_ok(aud: Any, audience: str) -> bool:
    """PyJWT's (non-strict) rule: a string equal to the URL called, or a list of strings holding it."""
    claims = [aud] if isinstance(aud, str) else aud
    if not isinstance(claims, list) or any(not isinstance(c, str) for c in claims):
        return False
    return audience in claims


class ReplayGuard(Protocol):
    def first_use(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        """Record (issuer, jti); True the first time, False if it was seen before (a replay)."""
        ...


@dataclass(frozen=True)
class CallerIdentity:
    """Who called: safe to log (no token, no PHI)."""

    issuer: str
    subject: str | None
    tenant: str | None


@dataclass(frozen=True)
class VerifiedToken:
    """A token whose signature, issuer, audience and times checked out; its jti not yet claimed."""

    caller: CallerIdentity
    jti: str
    #: When the replay record may be forgotten (exp + leeway).
    expires_at: datetime


class Authenticator:
    def __init__(
        self,
        clients: Mapping[str, TrustedClient],
        replay_guard: ReplayGuard | None = None,
        jwks_cache: JwksCache | None = None,
        leeway_s: int = 30,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clients = clients
        self._replay = replay_guard
        self._jwks = jwks_cache or JwksCache()
        self._leeway_s = leeway_s
        self._clock = clock

    @staticmethod
    def _reject(reason: str) -> Unauthorized:
        log.info("jwt rejected: %s", reason)
        return Unauthorized(reason)

    def _key(self, client: TrustedClient, header: Mapping[str, Any]) -> Any:
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise self._reject("kid is not a string")
        jku = header.get("jku")
        if jku is not None:
            if jku not in client.jku_allowed:
                raise self._reject("jku not on the issuer's allow-list")
            key = self._jwks.get(jku, kid)
        elif client.jwks is not None:
            key = client.jwks.find(kid)
            if key is None and client.jwks_url is not None:
                key = self._jwks.get(client.jwks_url, kid)
        elif client.jwks_url is not None:
            key = self._jwks.get(client.jwks_url, kid)
        else:
            key = None
        if key is None:
            raise self._reject("no matching key for kid")
        return key

    def authenticate(self, authorization: str | None, audience: str) -> CallerIdentity:
        """Verify the bearer JWT for a call to `audience` and claim its jti (replay check)."""
        token = self.verify(authorization, audience)
        if self._replay is None:
            raise RuntimeError("authenticate() needs a replay guard; use verify() and claim the jti")
        if not self._replay.first_use(token.caller.issuer, token.jti, token.expires_at):
            raise self.replay_rejected()
        return token.caller

    @classmethod
    def replay_rejected(cls) -> Unauthorized:
        return cls._reject("jti replayed")

    def verify(self, authorization: str | None, audience: str) -> VerifiedToken:
        """Verify the bearer JWT for a call to `audience` (the exact URL called), except the jti.

        Cheap checks first (shape, algorithm, issuer, key), then the signature, then the claims:
        required iss/aud/exp/iat/jti; nbf and exp with leeway; iss the client's; aud the URL
        called (a string, or a list of strings holding it); sub and jti strings; iat not in the
        future; exp - iat at most MAX_LIFETIME_S.
        """
        if not authorization or not authorization.startswith("Bearer "):
            raise self._reject("missing bearer token")
        token = authorization[len("Bearer ") :].strip()
        if not token or len(token) > _MAX_TOKEN_CHARS:
            raise self._reject("empty or oversized token")
        try:
            compact = jws.split(token)
        except jws.MalformedToken as exc:
            raise self._reject(f"token is not a JWT ({exc})") from None
        header, claims = compact.header, compact.claims
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise self._reject("algorithm not allowed")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise self._reject("typ is not JWT")
        if not _crit_ok(header):
            raise self._reject("unsupported critical header")
        iss = claims.get("iss")
        client = self._clients.get(iss) if isinstance(iss, str) else None
        if client is None:
            raise self._reject("issuer not trusted")
        key = self._key(client, header)
        if not jws.verify_signature(alg, key.key, compact.signing_input, compact.signature):
            raise self._reject("invalid token (signature)")
        return self._check_claims(client, claims, audience)

    def _check_claims(self, client: TrustedClient, claims: Mapping[str, Any], audience: str) -> VerifiedToken:
        for name in _REQUIRED_CLAIMS:
            if claims.get(name) is None:
                raise self._reject(f"invalid token (missing {name})")
        now = self._clock()
        iat, exp = _numeric_date(claims["iat"]), _numeric_date(claims["exp"])
        if iat is None or exp is None:
            raise self._reject("invalid token (iat/exp not a NumericDate)")
        if "nbf" in claims:
            nbf = _numeric_date(claims["nbf"])
            if nbf is None or nbf > now + self._leeway_s:
                raise self._reject("invalid token (nbf)")
        if exp <= now - self._leeway_s:
            raise self._reject("invalid token (expired)")
        if claims["iss"] != client.iss:
            raise self._reject("invalid token (issuer)")
        if not _audience_ok(claims["aud"], audience):
            raise self._reject("invalid token (audience)")
        sub, tenant = claims.get("sub"), claims.get("tenant")
        if "sub" in claims and not isinstance(sub, str):
            raise self._reject("invalid token (sub)")
        jti = claims["jti"]
        if iat > now + self._leeway_s:
            raise self._reject("iat in the future")
        if exp - iat > MAX_LIFETIME_S:
            raise self._reject("token lifetime too long")
        if not isinstance(jti, str) or not 0 < len(jti) <= 255:
            raise self._reject("bad jti")
        expires_at = datetime.fromtimestamp(exp + self._leeway_s, tz=UTC)
        caller = CallerIdentity(
            client.iss, sub if isinstance(sub, str) else None, tenant if isinstance(tenant, str) else None
        )
        return VerifiedToken(caller, jti, expires_at)
