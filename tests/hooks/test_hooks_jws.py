"""The hooks' own JWS verification accepts exactly what PyJWT (with the previous options) accepted.

cds.hooks.auth used to call jwt.decode; it now splits and verifies tokens itself (cds.hooks.jws)
for speed. These tests run both on the same tokens (every allowed algorithm, tampered signatures,
wrong key types and curves, odd base64, odd claims and headers) and require the same verdict.
"""

from __future__ import annotations

import base64
import json
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cds.errors import Unauthorized
from cds.hooks import jws
from cds.hooks.auth import MAX_LIFETIME_S, Authenticator
from cds.hooks.clients import parse_clients
from cds.hooks.jwks import ALLOWED_ALGORITHMS

ISS = "https://ehr.example.org"
AUD = "https://cds.example.org/cds-services/lumbar-mri-patient-view"
LEEWAY = 30

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_EC = {
    "ES256": ec.generate_private_key(ec.SECP256R1()),
    "ES384": ec.generate_private_key(ec.SECP384R1()),
    "ES512": ec.generate_private_key(ec.SECP521R1()),
}


def _private(alg: str) -> Any:
    return _EC[alg] if alg.startswith("ES") else _RSA


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _pyjwt_signature_ok(token: str, alg: str, key: Any) -> bool:
    try:
        jwt.api_jws.PyJWS().decode(token, key, algorithms=[alg])
    except Exception:  # PyJWT raises TypeError/InvalidKeyError for a wrong key type, too
        return False
    return True


def _ours_signature_ok(token: str, alg: str, key: Any) -> bool:
    try:
        compact = jws.split(token)
    except jws.MalformedToken:
        return False
    return compact.header.get("alg") == alg and jws.verify_signature(
        alg, key, compact.signing_input, compact.signature
    )


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": ISS, "sub": "c", "aud": AUD, "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not ...}


def _token(alg: str = "ES384", headers: dict[str, Any] | None = None, **over: Any) -> str:
    """Signed by hand (PyJWT's encoder refuses some of the odd headers tested here)."""
    header = {"alg": alg, "typ": "JWT", "kid": alg, **(headers or {})}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(_claims(**over)).encode())}"
    signature = jwt.algorithms.get_default_algorithms()[alg].sign(signing_input.encode(), _private(alg))
    return f"{signing_input}.{_b64(signature)}"


def _header(token: str) -> dict[str, Any]:
    header: dict[str, Any] = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    return header


def _mutations(token: str) -> list[str]:
    h, p, s = token.split(".")
    flipped = s[:10] + ("A" if s[10] != "A" else "B") + s[11:]
    return [
        token,
        f"{h}.{p}.{flipped}",  # tampered signature
        f"{h}.{p}.{s[:-4]}",  # truncated signature
        f"{h}.{_b64(b'{}')}.{s}",  # other payload, same signature
        f"{h}.{p}.{s}=",  # padding on a partial quantum
        f"{h}=.{p}.{s}" if len(h) % 4 else f"{h}==.{p}.{s}",
        f"{h}.{p}.{s}!",  # outside the alphabet
        f"{h}.{p}.{s}.x",  # four segments
        f"{h}.{p}",  # two segments
        f"{h}.{p}.{s[:-1] + ('B' if s[-1] == 'A' else 'A')}",  # non-canonical / changed last char
        f"{h}.{p}.{s}" + "=" * (4 - len(s) % 4 if len(s) % 4 else 0),  # correct padding: accepted
    ]


@pytest.mark.parametrize("alg", sorted(ALLOWED_ALGORITHMS))
def test_signature_verdicts_match_pyjwt(alg: str) -> None:
    public = _private(alg).public_key()
    other_keys = [_RSA.public_key(), *(k.public_key() for k in _EC.values())]
    for token in _mutations(_token(alg)):
        for key in [public, *other_keys]:
            assert _ours_signature_ok(token, alg, key) == _pyjwt_signature_ok(token, alg, key), (alg, token)
    assert _ours_signature_ok(_token(alg), alg, public)


def test_unknown_algorithm_or_key_type_is_false_not_an_error() -> None:
    compact = jws.split(_token("RS384"))
    assert not jws.verify_signature("HS256", b"secret", compact.signing_input, compact.signature)
    assert not jws.verify_signature(
        "RS384", _EC["ES384"].public_key(), compact.signing_input, compact.signature
    )
    assert not jws.verify_signature("ES384", _RSA.public_key(), compact.signing_input, compact.signature)


def _jwk(alg: str) -> dict[str, Any]:
    key = _private(alg).public_key()
    algo = jwt.algorithms.RSAAlgorithm if alg[0] in "RP" else jwt.algorithms.ECAlgorithm
    jwk: dict[str, Any] = json.loads(algo.to_jwk(key))
    jwk.update({"kid": alg, "use": "sig"})
    return jwk


_AUTH = Authenticator(
    parse_clients([{"iss": ISS, "jwks": {"keys": [_jwk(a) for a in ("RS384", "ES256", "ES384", "ES512")]}}]),
    leeway_s=LEEWAY,
)


def _old_verdict(token: str, alg: str) -> bool:
    """The previous implementation: jwt.decode with the old options, then the same extra checks."""
    try:
        claims = jwt.decode(
            token,
            key=_private(alg).public_key(),
            algorithms=[alg],
            audience=AUD,
            issuer=ISS,
            leeway=LEEWAY,
            # verify_iat=True: PyJWT then rejects a NaN/Infinity iat (the old path did not; fixed).
            options={"require": ["iss", "aud", "exp", "iat", "jti"], "verify_iat": True},
        )
    except jwt.PyJWTError:
        return False
    # Deliberately stricter than PyJWT: a NumericDate is a finite JSON number (RFC 7519 section 2),
    # so no bool (int(True) == 1 for PyJWT) and no numeric string, and it must fit a datetime.
    for name in ("iat", "exp", "nbf"):
        value = claims.get(name)
        if name in claims and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not 0 <= value <= 32_503_680_000
        ):
            return False
    header = jwt.get_unverified_header(token)
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
        return False
    now = time.time()
    iat, exp, jti = claims.get("iat"), claims.get("exp"), claims.get("jti")
    if not isinstance(iat, int | float) or iat > now + LEEWAY:
        return False
    if not isinstance(exp, int | float) or exp - iat > MAX_LIFETIME_S:
        return False
    return isinstance(jti, str) and 0 < len(jti) <= 255


def _new_verdict(token: str) -> bool:
    try:
        _AUTH.verify("Bearer " + token, AUD)
    except Unauthorized:
        return False
    return True


NOW = int(time.time())
CASES: list[tuple[str, Callable[[], str]]] = [
    ("valid", lambda: _token()),
    ("valid RS384", lambda: _token("RS384")),
    ("valid ES512", lambda: _token("ES512")),
    ("valid without typ", lambda: _token(headers={"typ": None})),
    ("aud list holding the url", lambda: _token(aud=["https://other", AUD])),
    ("aud list without the url", lambda: _token(aud=["https://other"])),
    ("aud list with a number", lambda: _token(aud=[AUD, 5])),
    ("aud number", lambda: _token(aud=5)),
    ("aud empty", lambda: _token(aud="")),
    ("aud trailing slash", lambda: _token(aud=AUD + "/")),
    ("expired beyond leeway", lambda: _token(iat=NOW - 400, exp=NOW - 100)),
    ("expired within leeway", lambda: _token(iat=NOW - 310, exp=NOW - 10)),
    ("exp float", lambda: _token(exp=NOW + 300.5)),
    ("exp numeric string", lambda: _token(exp=str(NOW + 300))),
    ("exp garbage", lambda: _token(exp="soon")),
    ("exp missing", lambda: _token(exp=...)),
    ("exp null", lambda: _token(exp=None)),
    ("iat missing", lambda: _token(iat=...)),
    ("iat future", lambda: _token(iat=NOW + 120, exp=NOW + 300)),
    ("iat within leeway", lambda: _token(iat=NOW + 20)),
    ("iat string", lambda: _token(iat=str(NOW))),
    ("lifetime too long", lambda: _token(exp=NOW + MAX_LIFETIME_S + 10)),
    ("nbf future", lambda: _token(nbf=NOW + 120)),
    ("nbf within leeway", lambda: _token(nbf=NOW + 20)),
    ("nbf garbage", lambda: _token(nbf="x")),
    ("nbf numeric string", lambda: _token(nbf=str(NOW))),
    ("nbf bool", lambda: _token(nbf=True)),
    ("nbf NaN", lambda: _token(nbf=math.nan)),
    ("nbf Infinity", lambda: _token(nbf=math.inf)),
    ("iat NaN, exp in 10 years", lambda: _token(iat=math.nan, exp=NOW + 10 * 365 * 86400)),
    ("iat NaN, exp 1e12", lambda: _token(iat=math.nan, exp=1e12)),
    ("iat Infinity", lambda: _token(iat=math.inf)),
    ("iat -Infinity", lambda: _token(iat=-math.inf)),
    ("iat bool", lambda: _token(iat=True)),
    ("iat negative", lambda: _token(iat=-1)),
    ("exp NaN", lambda: _token(exp=math.nan)),
    ("exp Infinity", lambda: _token(exp=math.inf)),
    ("exp bool", lambda: _token(exp=True)),
    ("exp 1e12 (year out of range)", lambda: _token(iat=1e12 - 60, exp=1e12)),
    ("exp huge int", lambda: _token(exp=10**30)),
    ("sub number", lambda: _token(sub=5)),
    ("sub missing", lambda: _token(sub=...)),
    ("jti number", lambda: _token(jti=5)),
    ("jti empty", lambda: _token(jti="")),
    ("jti too long", lambda: _token(jti="j" * 256)),
    ("jti missing", lambda: _token(jti=...)),
    ("iss missing", lambda: _token(iss=...)),
    ("typ jwt lower", lambda: _token(headers={"typ": "jwt"})),
    ("typ other", lambda: _token(headers={"typ": "at+jwt"})),
    ("crit b64 true", lambda: _token(headers={"crit": ["b64"], "b64": True})),
    ("crit unknown", lambda: _token(headers={"crit": ["exp"]})),
    ("crit empty", lambda: _token(headers={"crit": []})),
    ("crit b64 missing", lambda: _token(headers={"crit": ["b64"]})),
    ("kid number", lambda: _token(headers={"kid": 5})),
    ("kid unknown", lambda: _token(headers={"kid": "nope"})),
]


@pytest.mark.parametrize(("name", "make"), CASES, ids=[c[0] for c in CASES])
def test_claim_and_header_verdicts_match_the_previous_pyjwt_path(name: str, make: Callable[[], str]) -> None:
    token = make()
    header = _header(token)
    kid = header.get("kid")
    # The previous path picked the key by kid (a string naming a configured key) before jwt.decode.
    old = isinstance(kid, str) and kid in {"RS384", "ES256", "ES384", "ES512"}
    old = old and _old_verdict(token, header["alg"])
    assert _new_verdict(token) == old, name
