"""LinkPresenter: signed links memoised within the second they were signed, never longer."""

from __future__ import annotations

import pytest

from cds.hooks import presenter as presenter_mod
from cds.hooks.presenter import LinkPresenter
from cds.signing import LinkPurpose, LinkSigner

SECRET = "test-secret-key-0123456789abcdef"


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock(1_800_000_000.2)
    monkeypatch.setattr(presenter_mod.time, "time", fake)
    monkeypatch.setattr("itsdangerous.timed.time.time", fake)
    return fake


def _presenter() -> LinkPresenter:
    return LinkPresenter(
        "https://cds.example.org/",
        LinkSigner(SECRET, LinkPurpose.VIEWER).sign,
        LinkSigner(SECRET, LinkPurpose.EXPLAIN).sign,
        600,
    )


def test_links_are_what_a_fresh_signature_gives_in_the_same_second(clock: _Clock) -> None:
    p = _presenter()
    first = p.viewer_url("a-1")
    clock.now += 0.5
    assert p.viewer_url("a-1") == first
    fresh = LinkSigner(SECRET, LinkPurpose.VIEWER).sign("a-1", 600)
    assert first == f"https://cds.example.org/viewer/{fresh}"
    assert LinkSigner(SECRET, LinkPurpose.VIEWER).verify(first.rsplit("/", 1)[1], now=clock.now) == "a-1"


def test_a_new_second_signs_again_and_purposes_and_ids_never_mix(clock: _Clock) -> None:
    p = _presenter()
    viewer, explain, other = p.viewer_url("a-1"), p.explain_url("a-1"), p.viewer_url("a-2")
    assert len({viewer, explain, other}) == 3
    assert explain.startswith("https://cds.example.org/explain/")
    clock.now += 1.0
    later = p.viewer_url("a-1")
    assert later != viewer
    token = later.rsplit("/", 1)[1]
    assert LinkSigner(SECRET, LinkPurpose.VIEWER).verify(token, now=clock.now) == "a-1"
