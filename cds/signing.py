"""Signed, expiring link tokens (viewer links in cards): the analysis id, signed, and nothing else;
and card uuids that carry a tag proving this deployment issued them (CardIdSigner).

Why: a card's link is opened by a clinician's browser outside the hook's JWT-authenticated call,
and URLs end up in browser history, proxies and logs. So the token carries only the analysis id
(no patient data), is signed with the deployment's secret (itsdangerous, HMAC-SHA256, with a
per-purpose salt so a viewer token cannot be replayed as, say, an explain token) and expires.

The lifetime is chosen when signing and travels inside the signed payload, so tokens minted with a
shorter TTL expire sooner; it can never exceed MAX_TTL_S. Verification distinguishes an expired
link (410: ask for a fresh card) from a tampered or foreign one (403).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

from cds.errors import BadRequest, CdsError, Forbidden

#: Upper bound for any link lifetime (7 days): a leaked link stops working within a week at worst.
MAX_TTL_S = 7 * 24 * 3600
_ANALYSIS_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


class LinkPurpose(StrEnum):
    """One salt per purpose: a token signed for one purpose never verifies for another."""

    VIEWER = "cds.viewer-link"
    EXPLAIN = "cds.explain-link"
    #: The demo deployment's study list (cds.viewer); the signed subject is STUDY_LIST_SUBJECT.
    STUDY_LIST = "cds.study-list-link"


#: What a study-list token signs (it names no analysis and no patient).
STUDY_LIST_SUBJECT = "study-list"


class LinkTokenError(Forbidden):
    """Base of link verification failures."""


class LinkInvalid(LinkTokenError):
    """Bad signature, wrong purpose, wrong key or malformed token: treat as an attack or a typo."""

    http_status = 403
    issue_code = "forbidden"


class LinkExpired(LinkTokenError):
    """Genuine token, but older than its lifetime: the user needs a fresh link from the EHR."""

    http_status = 410
    issue_code = "expired"


class SigningKeyMissing(CdsError):
    """No CDS_SECRET_KEY configured: refuse to sign with an empty or default key."""


@dataclass(frozen=True)
class LinkSigner:
    """Signs and verifies link tokens for one purpose with one secret."""

    secret_key: str
    purpose: LinkPurpose = LinkPurpose.VIEWER

    def __post_init__(self) -> None:
        if not self.secret_key:
            raise SigningKeyMissing("CDS_SECRET_KEY is not set; signed links cannot be issued or checked")

    def _serializer(self) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(
            self.secret_key, salt=self.purpose.value, signer_kwargs={"digest_method": hashlib.sha256}
        )

    def sign(self, analysis_id: str, ttl_s: int) -> str:
        if not isinstance(analysis_id, str) or not _ANALYSIS_ID.match(analysis_id):
            raise BadRequest("analysis id must be letters, digits, '-' or '.'")
        if not 0 < ttl_s <= MAX_TTL_S:
            raise BadRequest(f"link lifetime must be 1..{MAX_TTL_S} seconds")
        token = self._serializer().dumps({"a": analysis_id, "t": int(ttl_s)})
        return str(token)

    def verify(self, token: str, now: float | None = None) -> str:
        """The analysis id of a genuine, unexpired token; LinkExpired / LinkInvalid otherwise."""
        if not isinstance(token, str) or not token or len(token) > 512:
            raise LinkInvalid("malformed link token")
        try:
            payload, signed_at = self._serializer().loads(token, return_timestamp=True)
        except BadSignature as exc:
            raise LinkInvalid("link token signature is not valid") from exc
        analysis_id, ttl_s = _parse_payload(payload)
        current = time.time() if now is None else now
        age = current - signed_at.timestamp()
        if age > ttl_s:
            raise LinkExpired("link has expired")
        if age < -60:  # signed in the future beyond clock skew: not ours to trust
            raise LinkInvalid("link token timestamp is in the future")
        return analysis_id


def _parse_payload(payload: Any) -> tuple[str, int]:
    if not isinstance(payload, dict):
        raise LinkInvalid("malformed link token payload")
    analysis_id, ttl_s = payload.get("a"), payload.get("t")
    if not isinstance(analysis_id, str) or not _ANALYSIS_ID.match(analysis_id):
        raise LinkInvalid("malformed link token payload")
    if not isinstance(ttl_s, int) or isinstance(ttl_s, bool) or not 0 < ttl_s <= MAX_TTL_S:
        raise LinkInvalid("malformed link token payload")
    return analysis_id, ttl_s


def _secret_from_app() -> str:
    """The running app's CDS_SECRET_KEY (for callers inside a Flask request or app context)."""
    from cds.extensions import services

    return services().settings.secret_key


def sign_viewer_token(analysis_id: str, ttl_s: int, *, secret_key: str | None = None) -> str:
    """A URL-safe token for /viewer/<token>; the secret defaults to the current app's settings."""
    key = secret_key if secret_key is not None else _secret_from_app()
    return LinkSigner(key, LinkPurpose.VIEWER).sign(analysis_id, ttl_s)


def verify_viewer_token(token: str, *, secret_key: str | None = None) -> str:
    """The analysis id in a viewer token; raises LinkExpired (410) or LinkInvalid (403)."""
    key = secret_key if secret_key is not None else _secret_from_app()
    return LinkSigner(key, LinkPurpose.VIEWER).verify(token)


class CardIdSigner:
    """Card uuids that prove they were issued by this deployment, for one service.

    CDS Hooks feedback names a card only by its uuid, so without this anyone holding a valid client
    token could file feedback for cards we never showed. A card uuid here is a version-4 UUID whose
    first 8 bytes are random and whose last 8 carry HMAC-SHA256(secret, "card", service id, first
    8 bytes) (the 6 version/variant bits of UUIDv4 aside): a 58-bit tag, checked without any
    database lookup. The uuids a call returned are also kept on its audit row (hook_calls.card_uuids)
    to trace feedback to the call. Rotating CDS_SECRET_KEY makes older cards' feedback unknown.
    """

    def __init__(self, secret_key: str) -> None:
        if not secret_key:
            raise SigningKeyMissing("CDS_SECRET_KEY is not set; card ids cannot be issued or checked")
        self._key = hashlib.sha256(b"cds-card-uuid\x00" + secret_key.encode()).digest()

    def _tag(self, service_id: str, head: bytes) -> bytes:
        return hmac.new(
            self._key, b"card\x00" + service_id.encode() + b"\x00" + head, hashlib.sha256
        ).digest()

    def _uuid(self, service_id: str, head: bytes) -> uuid.UUID:
        return uuid.UUID(bytes=head + self._tag(service_id, head)[:8], version=4)

    def issue(self, service_id: str) -> str:
        head = uuid.UUID(bytes=os.urandom(8) + bytes(8), version=4).bytes[:8]  # version bits fixed
        return str(self._uuid(service_id, head))

    def issued(self, card_uuid: str, service_id: str) -> bool:
        """Whether `card_uuid` is one this deployment issued on a card of `service_id`."""
        try:
            parsed = uuid.UUID(card_uuid)
        except (ValueError, TypeError, AttributeError):
            return False
        expected = self._uuid(service_id, parsed.bytes[:8])
        return hmac.compare_digest(expected.bytes, parsed.bytes)
