"""Card uuids that prove this deployment issued them (cds.signing.CardIdSigner)."""

from __future__ import annotations

import uuid

import pytest

from cds.signing import CardIdSigner, SigningKeyMissing


def test_issued_ids_are_uuid4_and_verify_for_their_service_only() -> None:
    signer = CardIdSigner("secret-a")
    card = signer.issue("svc-1")
    parsed = uuid.UUID(card)
    assert parsed.version == 4 and str(parsed) == card
    assert signer.issued(card, "svc-1")
    assert not signer.issued(card, "svc-2")
    assert not CardIdSigner("secret-b").issued(card, "svc-1")  # another deployment's key
    assert len({signer.issue("svc-1") for _ in range(200)}) == 200


@pytest.mark.parametrize("bad", ["", "not-a-uuid", str(uuid.uuid4()), "0" * 32])
def test_foreign_or_malformed_ids_are_not_ours(bad: str) -> None:
    assert not CardIdSigner("secret-a").issued(bad, "svc-1")


def test_every_changed_hex_digit_breaks_the_tag() -> None:
    signer = CardIdSigner("secret-a")
    card = signer.issue("svc-1")
    for i, ch in enumerate(card):
        if ch == "-" or i in (14, 19):  # the version digit and the variant digit are fixed bits
            continue
        changed = card[:i] + ("0" if ch != "0" else "1") + card[i + 1 :]
        assert not signer.issued(changed, "svc-1"), i


def test_no_secret_no_ids() -> None:
    with pytest.raises(SigningKeyMissing):
        CardIdSigner("")
