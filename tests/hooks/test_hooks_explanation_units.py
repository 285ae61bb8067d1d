"""The parts of explainable mode on cards that need no app: which heatmaps a card may list (the
viewer's index and serving rule), and the report's signed image URLs staying fresh."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hooks_support import SEVERE_L4_L5, analysis, lumbar_study, stored

from cds.domain import Condition, ExplanationStatus, Level
from cds.fhir.resources import InvalidResource
from cds.hooks import presenter as presenter_mod
from cds.hooks.explanations import StoredExplanation, card_heatmaps
from cds.hooks.presenter import REFRESH_PARTS, LinkPresenter
from cds.signing import LinkPurpose, LinkSigner

SECRET = "test-secret-key-0123456789abcdef"
TTL_S = 600
AID = "a-1"


def _entry(level: str, condition: str, overlay: str | None = None) -> dict[str, Any]:
    return {
        "overlay": overlay if overlay is not None else f"artifacts/{AID}/gradcam/{level}_{condition}.png",
        "level": level,
        "condition": condition,
    }


def test_card_heatmaps_keep_the_viewers_index_and_only_what_it_serves(tmp_path: Path) -> None:
    heatmaps = {
        "L1-L2/spinal_canal": _entry("L1-L2", "spinal_canal", overlay="artifacts/other/x.png"),  # 0
        "L3-L4/left_foraminal": _entry("L3-L4", "left_foraminal"),  # 1
        "L4-L5/spinal_canal": _entry("L4-L5", "spinal_canal"),  # 2
        "L4-L5/x": _entry(
            "L4-L5", "spinal_canal", overlay=f"artifacts/{AID}/gradcam/dup.png"
        ),  # 3: same finding
        "L5-S1/spinal_canal": _entry(
            "L5-S1", "spinal_canal", overlay=f"artifacts/{AID}/../../etc/p.png"
        ),  # 4
        "L5-S1/right_foraminal": _entry("L5-S1", "right_foraminal", overlay=f"artifacts/{AID}/g/a.npz"),  # 5
        "L5-S1/unknown": {
            "overlay": f"artifacts/{AID}/g/u.png",
            "level": "L5-S1",
            "condition": "herniation",
        },  # 6
        "zz": "not an object",  # 7
    }
    found = card_heatmaps(AID, heatmaps)  # no data folder: the path rule alone
    assert [(h.index, h.level, h.condition) for h in found] == [
        (1, Level.L3_L4, Condition.LEFT_FORAMINAL),
        (2, Level.L4_L5, Condition.SPINAL_CANAL),
    ]
    # with the data folder: the file must exist too (the viewer would 404 otherwise)
    target = tmp_path / f"artifacts/{AID}/gradcam/L4-L5_spinal_canal.png"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\x89PNG")
    assert [h.index for h in card_heatmaps(AID, heatmaps, tmp_path)] == [2]


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
        "https://cds.example.org",
        LinkSigner(SECRET, LinkPurpose.VIEWER).sign,
        LinkSigner(SECRET, LinkPurpose.EXPLAIN).sign,
        TTL_S,
    )


def _explained(heatmaps: tuple[Any, ...], writer: str = "template") -> Any:
    base = stored(analysis(SEVERE_L4_L5))
    explanation = StoredExplanation(
        ExplanationStatus.COMPLETE,
        datetime(2026, 7, 3, tzinfo=UTC),
        rationale="L4-L5: severe central canal stenosis.",
        writer=writer,
        heatmaps=heatmaps,
    )
    return type(base)(**{**base.__dict__, "explanation": explanation})


def _media_urls(report: dict[str, Any]) -> list[str]:
    return [r["content"]["url"] for r in report["contained"] if r["resourceType"] == "Media"]


def test_report_image_urls_are_signed_afresh_before_they_age(clock: _Clock) -> None:
    heatmaps = card_heatmaps(AID, {"L4-L5/spinal_canal": _entry("L4-L5", "spinal_canal")})
    item = _explained(heatmaps)
    p = _presenter()
    first = p.report(item, lumbar_study(), "pat-1")
    (url,) = _media_urls(first)
    token = url.split("/viewer/", 1)[1].split("/", 1)[0]
    assert url.endswith("/heatmap/0.png")
    assert LinkSigner(SECRET, LinkPurpose.VIEWER).verify(token, now=clock.now) == item.analysis_id
    clock.now += TTL_S / REFRESH_PARTS - 1  # the clock starts at a period's start: still the same one
    assert p.report(item, lumbar_study(), "pat-1") is first
    clock.now += TTL_S / REFRESH_PARTS + 1  # past it: a new signature with a full lifetime
    later = p.report(item, lumbar_study(), "pat-1")
    assert later is not first
    (fresh,) = _media_urls(later)
    assert fresh != url
    fresh_token = fresh.split("/viewer/", 1)[1].split("/", 1)[0]
    assert LinkSigner(SECRET, LinkPurpose.VIEWER).verify(fresh_token, now=clock.now + TTL_S * 0.7)
    # without images the report never expires from the cache
    plain = _explained(())
    assert p.report(plain, lumbar_study(), "pat-1") is p.report(plain, lumbar_study(), "pat-1")


def test_an_explanation_that_does_not_validate_leaves_the_findings_report(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The findings must reach the clinician even if the explanation's parts are refused."""
    real = presenter_mod.build_diagnostic_report

    def refuse_explanations(result: Any, ctx: Any) -> dict[str, Any]:
        if ctx.rationale is not None:
            raise InvalidResource("presentedForm: invalid")
        return real(result, ctx)

    monkeypatch.setattr(presenter_mod, "build_diagnostic_report", refuse_explanations)
    item = _explained(card_heatmaps(AID, {"L4-L5/spinal_canal": _entry("L4-L5", "spinal_canal")}))
    report = _presenter().report(item, lumbar_study(), "pat-1")
    assert report["resourceType"] == "DiagnosticReport" and report["result"]
    assert "media" not in report and "presentedForm" not in report
    assert "explanation left out of the report" in caplog.text
