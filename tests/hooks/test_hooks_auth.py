"""JWT authentication of the calling EHR, with real ES384 tokens and real key sets."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from hooks_support import ISSUER, FakeServer, SigningKey

from cds.config import SettingsError
from cds.errors import Unauthorized
from cds.hooks.auth import Authenticator
from cds.hooks.clients import TrustedClient, load_clients, parse_clients
from cds.hooks.jwks import JwksCache, KeySetError, parse_jwks

AUD = "https://cds.example.org/cds-services/lumbar-mri-patient-view"


class MemoryGuard:
    """A replay guard for unit tests of the verifier (the app uses the database)."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()

    def first_use(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        if (issuer, jti) in self.seen:
            return False
        self.seen.add((issuer, jti))
        return True


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey()


def _auth(key: SigningKey, **client: Any) -> Authenticator:
    entry = {"iss": ISSUER, "jwks": key.jwks(), **client}
    return Authenticator(parse_clients([entry]), MemoryGuard(), leeway_s=30)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_valid_token_identifies_the_caller(key: SigningKey) -> None:
    caller = _auth(key).authenticate("Bearer " + key.token(AUD, tenant="t1"), AUD)
    assert (caller.issuer, caller.subject, caller.tenant) == (ISSUER, "client-1", "t1")


@pytest.mark.parametrize(
    "header",
    [None, "", "Basic abc", "Bearer ", "Bearer not-a-jwt", "Bearer " + "x" * 20000],
)
def test_missing_or_malformed_bearer_is_401(key: SigningKey, header: str | None) -> None:
    with pytest.raises(Unauthorized):
        _auth(key).authenticate(header, AUD)


def test_audience_must_be_the_exact_url_called(key: SigningKey) -> None:
    auth = _auth(key)
    for aud in (AUD + "/", "https://cds.example.org/cds-services", AUD.replace("https", "http")):
        with pytest.raises(Unauthorized):
            auth.authenticate("Bearer " + key.token(aud), AUD)


def test_expired_token_rejected_but_small_skew_tolerated(key: SigningKey) -> None:
    auth = _auth(key)
    with pytest.raises(Unauthorized):
        auth.authenticate("Bearer " + key.token(AUD, now=time.time() - 400, lifetime=300), AUD)
    # expired 10 s ago: inside the 30 s leeway
    auth.authenticate("Bearer " + key.token(AUD, now=time.time() - 310, lifetime=300), AUD)


def test_iat_in_the_future_rejected(key: SigningKey) -> None:
    with pytest.raises(Unauthorized):
        _auth(key).authenticate("Bearer " + key.token(AUD, now=time.time() + 120), AUD)


def test_overlong_lifetime_rejected(key: SigningKey) -> None:
    with pytest.raises(Unauthorized):
        _auth(key).authenticate("Bearer " + key.token(AUD, lifetime=24 * 3600), AUD)


@pytest.mark.parametrize("claim", ["iss", "aud", "exp", "iat", "jti"])
def test_required_claims(key: SigningKey, claim: str) -> None:
    with pytest.raises(Unauthorized):
        _auth(key).authenticate("Bearer " + key.token(AUD, drop=(claim,)), AUD)


def test_replayed_jti_rejected(key: SigningKey) -> None:
    auth = _auth(key)
    token = key.token(AUD, jti="same-jti")
    auth.authenticate("Bearer " + token, AUD)
    with pytest.raises(Unauthorized):
        auth.authenticate("Bearer " + token, AUD)
    with pytest.raises(Unauthorized):  # a different token with the same jti is a replay too
        auth.authenticate("Bearer " + key.token(AUD, jti="same-jti"), AUD)


def test_untrusted_issuer_rejected(key: SigningKey) -> None:
    with pytest.raises(Unauthorized):
        _auth(key).authenticate("Bearer " + key.token(AUD, iss="https://evil.example"), AUD)


def test_signature_from_another_key_rejected(key: SigningKey) -> None:
    other = SigningKey(kid=key.kid)  # same kid, different key: the signature must fail
    with pytest.raises(Unauthorized):
        _auth(key).authenticate("Bearer " + other.token(AUD), AUD)


def test_alg_none_rejected(key: SigningKey) -> None:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUD, "iat": now, "exp": now + 60, "jti": "n1"}
    token = f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': key.kid})}.{_b64(claims)}."
    with pytest.raises(Unauthorized):
        _auth(key).authenticate("Bearer " + token, AUD)


def test_hmac_with_public_key_as_secret_rejected(key: SigningKey) -> None:
    """The classic key-confusion attack: HS256 'signed' with the issuer's public key."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUD, "iat": now, "exp": now + 60, "jti": "h1"}
    public_pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64({"alg": "HS256", "typ": "JWT", "kid": key.kid})
    payload = _b64(claims)
    import hashlib
    import hmac

    sig = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    token = f"{header}.{payload}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"
    with pytest.raises(Unauthorized):
        _auth(key).authenticate("Bearer " + token, AUD)


def test_wrong_typ_rejected(key: SigningKey) -> None:
    with pytest.raises(Unauthorized):
        _auth(key).authenticate("Bearer " + key.token(AUD, headers={"typ": "at+jwt"}), AUD)


def test_unknown_kid_rejected(key: SigningKey) -> None:
    with pytest.raises(Unauthorized):
        _auth(key).authenticate("Bearer " + key.token(AUD, headers={"kid": "other"}), AUD)


def test_jku_only_when_on_the_issuers_allow_list(key: SigningKey) -> None:
    rotated = SigningKey(kid="rotated")
    server = FakeServer()
    server.routes["/jwks.json"] = (200, rotated.jwks())
    with server.running():
        jku = f"{server.base}/jwks.json"
        token = "Bearer " + rotated.token(AUD, headers={"jku": jku})
        with pytest.raises(Unauthorized):  # jku not listed for the issuer
            _auth(key).authenticate(token, AUD)
        assert server.requests == []  # and it was never fetched
        caller = _auth(key, jku=[jku]).authenticate(token, AUD)
        assert caller.issuer == ISSUER


def test_jwks_url_fetched_once_and_cached(key: SigningKey) -> None:
    server = FakeServer()
    server.routes["/keys"] = (200, key.jwks())
    with server.running():
        clients = parse_clients([{"iss": ISSUER, "jwks_url": f"{server.base}/keys"}])
        auth = Authenticator(clients, MemoryGuard(), JwksCache(ttl_s=300))
        for _ in range(3):
            auth.authenticate("Bearer " + key.token(AUD), AUD)
    assert len(server.requests) == 1


def test_jwks_unknown_kid_refresh_is_throttled(key: SigningKey) -> None:
    calls: list[str] = []

    def fetch(url: str, timeout: float) -> Any:
        calls.append(url)
        return key.jwks()

    clock = [1000.0]
    cache = JwksCache(fetch=fetch, ttl_s=300, min_refresh_s=30, clock=lambda: clock[0])
    assert cache.get("https://k", key.kid) is not None
    assert cache.get("https://k", "nope") is None
    assert cache.get("https://k", "nope") is None
    assert len(calls) == 1  # unknown kids within 30 s do not refetch
    clock[0] += 31
    assert cache.get("https://k", "nope") is None
    assert len(calls) == 2


def test_jwks_fetch_failure_keeps_fresh_keys(key: SigningKey) -> None:
    state = {"fail": False}

    def fetch(url: str, timeout: float) -> Any:
        if state["fail"]:
            raise KeySetError("down")
        return key.jwks()

    clock = [0.0]
    cache = JwksCache(fetch=fetch, ttl_s=300, min_refresh_s=30, clock=lambda: clock[0])
    assert cache.get("https://k", key.kid) is not None
    state["fail"] = True
    clock[0] = 60
    assert cache.get("https://k", "rotated-away") is None
    assert cache.get("https://k", key.kid) is not None


def test_symmetric_and_private_keys_are_never_used(key: SigningKey) -> None:
    oct_key = {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}
    with pytest.raises(KeySetError):
        parse_jwks({"keys": [oct_key]})
    private = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.private))
    with pytest.raises(KeySetError):
        parse_jwks({"keys": [private]})
    assert len(parse_jwks({"keys": [oct_key, key.public_jwk()]}).keys) == 1


@pytest.mark.parametrize(
    "data",
    [
        {},
        [{"jwks_url": "https://x"}],
        [{"iss": "a"}],
        [{"iss": "a", "jwks_url": "ftp://x"}],
        [{"iss": "a", "jwks": {"keys": []}}],
        [{"iss": "a", "jwks_url": "https://x", "jku": "https://y"}],
        [{"iss": "a", "jwks_url": "https://x"}, {"iss": "a", "jwks_url": "https://x"}],
    ],
)
def test_invalid_clients_file_fails_at_start(data: Any) -> None:
    with pytest.raises(SettingsError):
        parse_clients(data)


def test_clients_file_loaded_from_disk(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "clients.json"
    path.write_text(json.dumps([{"iss": ISSUER, "jwks": key.jwks()}]))
    clients = load_clients(path)
    assert isinstance(clients[ISSUER], TrustedClient)
    assert load_clients(None) == {}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SettingsError):
        load_clients(tmp_path / "bad.json")


_NOT_NUMERIC_DATES = {
    "iat NaN, exp in 10 years": {"iat": float("nan"), "exp": int(time.time()) + 10 * 365 * 86400},
    "iat NaN, exp 1e12": {"iat": float("nan"), "exp": 1e12},
    "iat Infinity": {"iat": float("inf")},
    "iat -Infinity": {"iat": float("-inf")},
    "exp NaN": {"exp": float("nan")},
    "exp Infinity": {"exp": float("inf")},
    "exp 1e12 (year out of range)": {"iat": 1e12 - 60, "exp": 1e12},
    "exp 1e300": {"exp": 1e300},
    "iat bool": {"iat": True},
    "exp bool": {"exp": True},
    "nbf bool": {"nbf": True},
    "nbf NaN": {"nbf": float("nan")},
    "iat string": {"iat": str(int(time.time()))},
    "exp string": {"exp": str(int(time.time()) + 300)},
    "nbf numeric string": {"nbf": str(int(time.time()))},
    "iat negative": {"iat": -1.0},
}


@pytest.mark.parametrize("claims", list(_NOT_NUMERIC_DATES.values()), ids=list(_NOT_NUMERIC_DATES))
def test_time_claims_must_be_finite_sane_numbers(key: SigningKey, claims: dict[str, Any]) -> None:
    """NaN compares False with everything: a NaN iat used to pass both the future and lifetime checks."""
    token = key.token(AUD, **claims)
    with pytest.raises(Unauthorized):
        _auth(key).verify("Bearer " + token, AUD)


def test_float_time_claims_still_accepted(key: SigningKey) -> None:
    now = time.time()
    verified = _auth(key).verify(
        "Bearer " + key.token(AUD, iat=now - 0.5, exp=now + 299.5, nbf=now - 1.5), AUD
    )
    assert verified.expires_at.timestamp() == pytest.approx(now + 299.5 + 30)
