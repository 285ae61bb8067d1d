"""LinkPresenter's report cache holds one JSON text per cached report and nothing else.

The soak (bench/soak_bench.py --probe) traced the web workers' growth to this cache: each cached
report kept its ~330 kB dict next to its ~80 kB JSON text, a report built by two threads at once
(the first calls for a new study come together) left the replaced report's text behind for good,
and each link-refresh epoch of an explained report stayed cached until LRU eviction although it is
never asked for again.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from hooks_support import SEVERE_L4_L5, analysis, lumbar_study, stored

from cds.domain import ExplanationStatus
from cds.hooks import presenter as presenter_mod
from cds.hooks.explanations import StoredExplanation, card_heatmaps
from cds.hooks.presenter import REFRESH_PARTS, LinkPresenter, ReportJson
from cds.signing import LinkPurpose, LinkSigner

SECRET = "test-secret-key-0123456789abcdef"
TTL_S = 600


def _presenter() -> LinkPresenter:
    return LinkPresenter(
        "https://cds.example.org",
        LinkSigner(SECRET, LinkPurpose.VIEWER).sign,
        LinkSigner(SECRET, LinkPurpose.EXPLAIN).sign,
        TTL_S,
    )


def _held(p: LinkPresenter) -> tuple[int, int]:
    """(reports cached, bytes counted); the count must be the texts' true size."""
    assert p._text_bytes == sum(len(r.text) for r in p._reports.values())
    return len(p._reports), p._text_bytes


def test_a_cached_report_is_its_json_text_and_reads_as_the_report() -> None:
    p = _presenter()
    report = p.report(stored(analysis()), lumbar_study(), "pat-1")
    assert isinstance(report, ReportJson) and not isinstance(report, dict)  # no dict kept
    assert p.fragment(report) is report.text and p.fragment({"resourceType": "DiagnosticReport"}) is None
    parsed = json.loads(report.text)
    assert dict(report) == parsed and report == parsed and report != {}
    assert report["resourceType"] == "DiagnosticReport" and len(report["contained"]) == 26
    assert list(report) == list(parsed) and "status" in report and "nope" not in report
    with pytest.raises(TypeError):  # a serialiser that does not splice it fails, never writes {}
        json.dumps({"resource": report})


def test_a_report_built_by_two_threads_at_once_is_cached_once(monkeypatch: pytest.MonkeyPatch) -> None:
    p = _presenter()
    item, study = stored(analysis()), lumbar_study()
    real_build = p._build
    both_building = threading.Barrier(2)

    def build(*args: Any) -> dict[str, Any]:
        both_building.wait(timeout=10)  # neither finds the report cached: both build it
        return real_build(*args)

    monkeypatch.setattr(p, "_build", build)
    results: list[ReportJson] = []
    threads = [
        threading.Thread(target=lambda: results.append(p.report(item, study, "pat-1"))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    first, second = results
    assert first is second  # the later thread serves the report the earlier one cached
    reports, size = _held(p)
    assert reports == 1 and size == len(p.fragment(first) or b"") > 10_000


def test_a_refreshed_report_replaces_its_older_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_800_000_000.2]
    monkeypatch.setattr(presenter_mod.time, "time", lambda: now[0])
    monkeypatch.setattr("itsdangerous.timed.time.time", lambda: now[0])
    base = stored(analysis(SEVERE_L4_L5))
    entry = {
        "overlay": f"artifacts/{base.analysis_id}/gradcam/L4-L5_spinal_canal.png",
        "level": "L4-L5",
        "condition": "spinal_canal",
    }
    explanation = StoredExplanation(
        ExplanationStatus.COMPLETE,
        datetime(2026, 7, 3, tzinfo=UTC),
        rationale="L4-L5: severe central canal stenosis.",
        writer="template",
        heatmaps=card_heatmaps(base.analysis_id, {"L4-L5/spinal_canal": entry}),
    )
    assert explanation.heatmaps
    item = type(base)(**{**base.__dict__, "explanation": explanation})
    other = stored(analysis(), uid="1.2.3.999")
    p = _presenter()
    p.report(other, lumbar_study("1.2.3.999"), "pat-2")
    reports = []
    for _ in range(5):  # five refresh periods of the same explained report
        reports.append(p.report(item, lumbar_study(), "pat-1"))
        now[0] += TTL_S / REFRESH_PARTS + 1
    assert len({id(r) for r in reports}) == 5  # each period signs its image URLs afresh ...
    reports_held, _ = _held(p)
    assert reports_held == 2  # ... but only the newest stays, next to the other study's
    assert reports[-1] in p._reports.values() and reports[0] not in p._reports.values()


def test_the_cache_is_bounded_by_its_text_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    p = _presenter()
    one = len(p.fragment(p.report(stored(analysis(), uid="1.2.3.0"), lumbar_study("1.2.3.0"), "p")) or b"")
    monkeypatch.setattr(presenter_mod, "CACHE_TEXT_BYTES", int(one * 3.5))
    for i in range(1, 8):
        uid = f"1.2.3.{i}"
        p.report(stored(analysis(), uid=uid), lumbar_study(uid), "p")
    reports, size = _held(p)
    assert reports == 3 and size <= one * 3.5
