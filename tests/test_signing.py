"""Signed viewer links: round trip, expiry vs tampering, purpose separation, no PHI in the token."""

from __future__ import annotations

import base64
import json
import time

import pytest

from cds.errors import BadRequest, Forbidden
from cds.signing import (
    MAX_TTL_S,
    LinkExpired,
    LinkInvalid,
    LinkPurpose,
    LinkSigner,
    SigningKeyMissing,
    sign_viewer_token,
    verify_viewer_token,
)

KEY = "test-secret-key-0123456789"
ANALYSIS = "6f1c2b8e-0d4a-4d38-9a51-2b7f3c9e1a10"


def test_round_trip() -> None:
    token = sign_viewer_token(ANALYSIS, 60, secret_key=KEY)
    assert verify_viewer_token(token, secret_key=KEY) == ANALYSIS


def test_token_is_url_safe_and_carries_only_the_analysis_id() -> None:
    token = sign_viewer_token(ANALYSIS, 60, secret_key=KEY)
    assert all(c.isalnum() or c in "-_." for c in token)
    payload_b64 = token.split(".")[0]
    payload = json.loads(base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4)))
    assert payload == {"a": ANALYSIS, "t": 60}


def test_expired_is_distinguished_from_tampered() -> None:
    signer = LinkSigner(KEY)
    token = signer.sign(ANALYSIS, 60)
    assert signer.verify(token, now=time.time() + 30) == ANALYSIS
    with pytest.raises(LinkExpired) as expired:
        signer.verify(token, now=time.time() + 120)
    assert expired.value.http_status == 410
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    with pytest.raises(LinkInvalid) as invalid:
        signer.verify(tampered)
    assert invalid.value.http_status == 403
    assert isinstance(expired.value, Forbidden) and isinstance(invalid.value, Forbidden)


def test_payload_swapped_under_old_signature_is_rejected() -> None:
    token = LinkSigner(KEY).sign(ANALYSIS, 60)
    other = base64.urlsafe_b64encode(json.dumps({"a": "other-analysis", "t": 60}).encode()).rstrip(b"=")
    forged = other.decode() + token[token.index(".") :]
    with pytest.raises(LinkInvalid):
        LinkSigner(KEY).verify(forged)


def test_wrong_key_and_wrong_purpose_are_invalid() -> None:
    token = LinkSigner(KEY).sign(ANALYSIS, 60)
    with pytest.raises(LinkInvalid):
        LinkSigner("another-key").verify(token)
    with pytest.raises(LinkInvalid):
        LinkSigner(KEY, LinkPurpose.EXPLAIN).verify(token)


@pytest.mark.parametrize("token", ["", "x", "a.b.c", "x" * 600, "eyJhIjoiYiJ9.AAAA.BBBB"])
def test_garbage_tokens_are_invalid(token: str) -> None:
    with pytest.raises(LinkInvalid):
        LinkSigner(KEY).verify(token)


def test_ttl_is_bounded_and_id_validated() -> None:
    signer = LinkSigner(KEY)
    for ttl in (0, -1, MAX_TTL_S + 1):
        with pytest.raises(BadRequest):
            signer.sign(ANALYSIS, ttl)
    with pytest.raises(BadRequest):
        signer.sign("Patient Jane Doe", 60)


def test_empty_secret_refused() -> None:
    with pytest.raises(SigningKeyMissing):
        sign_viewer_token(ANALYSIS, 60, secret_key="")
