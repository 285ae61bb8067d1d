"""Compact JWS parsing and signature verification for the asymmetric algorithms we accept.

Why not jwt.decode: on every hook call PyJWT re-parses a token we have already split and decoded
(to find the issuer's key), checks base64 text character by character in Python, and looks the
algorithm up again; together that cost about as much as an RS384 signature check. Here each
segment is decoded once, strictly (the rules of PyJWT's decoder: URL-safe alphabet, canonical
encoding, at most two '=' of padding and only on a whole quantum), and the signature is checked
with `cryptography` directly, with the same padding, hash and curve per algorithm as PyJWT uses
(tests/hooks/test_hooks_jws.py compares both on valid and tampered tokens).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

_SEGMENT = re.compile(rb"[A-Za-z0-9_-]*={0,2}")


class MalformedToken(Exception):
    """Not a compact JWS we accept (the reason is for our log, never for the caller)."""


@dataclass(frozen=True)
class Compact:
    """A compact JWS split and decoded; nothing about it is verified yet."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def b64url_decode(segment: bytes) -> bytes:
    """Strict base64url: the alphabet, padding only on a full quantum, canonical encoding."""
    if _SEGMENT.fullmatch(segment) is None:
        raise MalformedToken("not base64url")
    stripped = segment.rstrip(b"=")
    if (len(stripped) != len(segment) and len(segment) % 4) or len(stripped) % 4 == 1:
        raise MalformedToken("bad base64url padding")
    try:
        decoded = base64.urlsafe_b64decode(stripped + b"=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError):
        raise MalformedToken("bad base64url") from None
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != stripped:
        raise MalformedToken("non-canonical base64url")
    return decoded


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise MalformedToken(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise MalformedToken(f"{what} is not a JSON object")
    return value


def split(token: str) -> Compact:
    """Header, claims, signing input and signature of a compact JWS (three segments)."""
    try:
        raw = token.encode("ascii")
    except UnicodeEncodeError:
        raise MalformedToken("token is not ASCII") from None
    parts = raw.split(b".")
    if len(parts) != 3:
        raise MalformedToken("not three segments")
    header = _json_object(b64url_decode(parts[0]), "header")
    claims = _json_object(b64url_decode(parts[1]), "payload")
    return Compact(header, claims, parts[0] + b"." + parts[1], b64url_decode(parts[2]))


@dataclass(frozen=True)
class _Scheme:
    hash: hashes.HashAlgorithm
    #: RSA: the padding; None for ECDSA.
    padding: padding.AsymmetricPadding | None = None
    #: ECDSA: the curve the key must be on.
    curve: type[ec.EllipticCurve] | None = None


def _pss(h: hashes.HashAlgorithm) -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)


#: Exactly the asymmetric algorithms of cds.hooks.jwks.ALLOWED_ALGORITHMS, as PyJWT defines them.
SCHEMES: dict[str, _Scheme] = {
    "RS256": _Scheme(hashes.SHA256(), padding.PKCS1v15()),
    "RS384": _Scheme(hashes.SHA384(), padding.PKCS1v15()),
    "RS512": _Scheme(hashes.SHA512(), padding.PKCS1v15()),
    "PS256": _Scheme(hashes.SHA256(), _pss(hashes.SHA256())),
    "PS384": _Scheme(hashes.SHA384(), _pss(hashes.SHA384())),
    "PS512": _Scheme(hashes.SHA512(), _pss(hashes.SHA512())),
    "ES256": _Scheme(hashes.SHA256(), curve=ec.SECP256R1),
    "ES384": _Scheme(hashes.SHA384(), curve=ec.SECP384R1),
    "ES512": _Scheme(hashes.SHA512(), curve=ec.SECP521R1),
}


def verify_signature(alg: str, key: Any, signing_input: bytes, signature: bytes) -> bool:
    """Whether `signature` is `alg`'s signature of `signing_input` under the public `key`.

    False (never an exception) for an unknown algorithm, a key of the wrong type or curve for the
    algorithm, a malformed signature, or a signature that does not verify.
    """
    scheme = SCHEMES.get(alg)
    if scheme is None:
        return False
    try:
        if scheme.padding is not None:
            if not isinstance(key, rsa.RSAPublicKey):
                return False
            key.verify(signature, signing_input, scheme.padding, scheme.hash)
            return True
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, scheme.curve):  # type: ignore[arg-type]
            return False
        size = (key.curve.key_size + 7) // 8
        if len(signature) != 2 * size:  # JWS ECDSA signatures are R || S, each of the curve's size
            return False
        der = encode_dss_signature(
            int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
        )
        key.verify(der, signing_input, ec.ECDSA(scheme.hash))
        return True
    except (InvalidSignature, ValueError):
        return False
