"""Explainable mode on the cards (issue 5): the patient-view and prior-study cards show a finished
explanation, announce a pending one and report a failed one; the suggested DiagnosticReport gains
presentedForm (the rationale) and Media (the heatmaps, by the viewer's signed URL).

Real app (create_app) on SQLite and PostgreSQL, real JWTs, explanations stored through the store
API exactly as the explain job stores them (cds.explain.job), heatmap PNGs on disk where the job
writes them. No job worker runs: the test sees every job that is enqueued.
"""

from __future__ import annotations

import base64
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from hooks_support import (
    PATIENT_ID,
    SEVERE_L4_L5,
    STUDY_UID,
    Caller,
    analysis,
    bundle,
    draft_orders,
    imaging_study,
    patient,
    service_request,
)

from cds.config import Settings
from cds.domain import Condition, ExplanationStatus, Grade, Level
from cds.extensions import services
from cds.fhir.resources import validate_resource
from cds.hooks.cards import EXPLAIN_LABEL, PENDING_LABEL
from cds.jobs.kinds import JobKind
from cds.signing import verify_viewer_token
from cds.store import queries
from cds.store.records import JobRecord

PV = "/cds-services/lumbar-mri-patient-view"
OSIGN = "/cds-services/lumbar-mri-order-sign"
BASE = "https://cds.example.org"
RATIONALE = (
    "L4-L5: severe central canal stenosis, dural sac area 60.0 mm2 (< 75 mm2). "
    "L5-S1: moderate left neural foraminal stenosis. "
    "The heatmap centres on the posterior disc margin."
)
#: Stored like cds.explain.job.writer_label() labels a model draft that passed the verifier.
MODEL_WRITER = "model:local:qwen2.5-0.5b-instruct"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@pytest.fixture
def hooks_settings(hooks_settings: Settings) -> Settings:
    """No local job worker: every enqueued job stays visible (and no model is ever loaded)."""
    return hooks_settings.with_overrides(job_workers=0)


def _special() -> dict[tuple[Level, Condition], Grade]:
    special = dict(SEVERE_L4_L5)
    special[(Level.L5_S1, Condition.LEFT_FORAMINAL)] = Grade.MODERATE
    return special


def _store_analysis(app: Flask) -> str:
    with services(app).db.session() as s:
        queries.upsert_study(s, STUDY_UID, patient_ref="MRN-1", source_uri="/data/x")
        return queries.save_analysis(s, STUDY_UID, analysis(_special())).id


def _heatmap(
    app: Flask, analysis_id: str, level: str, condition: str, *, write: bool = True
) -> dict[str, Any]:
    """A heatmap entry as cds.explain.job stores it (overlay path relative to data_dir)."""
    relative = f"artifacts/{analysis_id}/gradcam/{level}_{condition}.png"
    if write:
        path = Path(services(app).settings.data_dir) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(PNG + level.encode() + condition.encode())
    return {
        "overlay": relative,
        "raw": relative.replace(".png", ".npz"),
        "series_uid": "1.2.3",
        "slice_index": 4,
        "peak_mm": [1.0, 2.0, 3.0],
        "level": level,
        "condition": condition,
    }


def _explain(
    app: Flask,
    analysis_id: str,
    status: ExplanationStatus,
    *,
    rationale: str | None = None,
    writer: str | None = None,
    heatmaps: dict[str, Any] | None = None,
    reason: str | None = None,
) -> None:
    with services(app).db.session() as s:
        queries.save_explanation(
            s,
            analysis_id,
            status=status,
            rationale=rationale,
            writer=writer,
            heatmaps=heatmaps,
            reason=reason,
        )


def _complete(app: Flask, analysis_id: str, rationale: str = RATIONALE, writer: str = "template") -> None:
    heatmaps = {
        "L4-L5/spinal_canal": _heatmap(app, analysis_id, "L4-L5", "spinal_canal"),
        "L5-S1/left_foraminal": _heatmap(app, analysis_id, "L5-S1", "left_foraminal"),
        # Neither is served by the viewer, so neither may appear on a card or in the report:
        "L3-L4/spinal_canal": _heatmap(app, analysis_id, "L3-L4", "spinal_canal", write=False),
        "L2-L3/spinal_canal": {
            "overlay": "../../etc/passwd.png",
            "level": "L2-L3",
            "condition": "spinal_canal",
        },
    }
    _explain(
        app, analysis_id, ExplanationStatus.COMPLETE, rationale=rationale, writer=writer, heatmaps=heatmaps
    )


def _pv_body() -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/doc-1", "patientId": PATIENT_ID},
        "prefetch": {"patient": patient(), "studies": bundle(imaging_study())},
    }


def _card(caller: Caller, path: str = PV, body: dict[str, Any] | None = None) -> dict[str, Any]:
    resp = caller.post(path, body or _pv_body())
    assert resp.status_code == 200, resp.get_data(as_text=True)
    (card,) = resp.get_json()["cards"]
    return card


def _report(card: dict[str, Any]) -> dict[str, Any]:
    (suggestion,) = card["suggestions"]
    (action,) = suggestion["actions"]
    report: dict[str, Any] = action["resource"]
    return report


def _explain_jobs(app: Flask) -> int:
    with services(app).db.session(readonly=True) as s:
        query = sa.select(sa.func.count()).select_from(JobRecord).where(JobRecord.kind == JobKind.EXPLAIN)
        return int(s.scalar(query) or 0)


def _local(url: str) -> str:
    assert url.startswith(BASE + "/"), url
    return url.removeprefix(BASE)


# --- finished explanation -------------------------------------------------------------------------


def test_finished_explanation_is_on_the_card_and_in_the_report(
    caller: Caller, hooks_app: Flask, hooks_client: Any
) -> None:
    analysis_id = _store_analysis(hooks_app)
    _complete(hooks_app, analysis_id)
    card = _card(caller)

    # detail: the verified rationale, escaped, labelled machine-generated with its writer
    detail = card["detail"]
    assert "**Explanation** (machine-generated rationale; writer: template" in detail
    quoted = next(line for line in detail.splitlines() if line.startswith("> "))
    assert r"L4\-L5\: severe central canal stenosis, dural sac area 60\.0 mm2 \(&lt; 75 mm2\)\." in quoted
    assert "posterior disc margin" in quoted
    # one line with the number of heatmaps the viewer serves, linked to the viewer's explanation
    (line,) = [ln for ln in detail.splitlines() if "heatmaps (Grad-CAM" in ln]
    assert line.startswith("2 heatmaps")
    link = re.search(r"\]\((https://[^)\s]+)#explanation\)", line)
    assert link is not None
    with hooks_app.app_context():
        assert verify_viewer_token(link.group(1).rsplit("/", 1)[1]) == analysis_id

    # links: the viewer, and "view explanation" instead of "explain"
    viewer, explanation = card["links"]
    assert viewer["label"] == "Images with AI findings"
    assert explanation["label"] == "View explanation (2 heatmaps, rationale)"
    assert explanation["url"].startswith(BASE + "/explain/")
    page = hooks_client.get(_local(explanation["url"]))
    assert page.status_code == 200 and b"posterior disc margin" in page.data
    assert _explain_jobs(hooks_app) == 0  # viewing a finished explanation enqueues nothing

    # the report: valid R4 (fhir.resources R4B), presentedForm = the rationale, one Media per heatmap
    report = _report(card)
    validate_resource(report, "DiagnosticReport", normalise=False)
    (form,) = report["presentedForm"]
    assert base64.b64decode(form["data"]).decode() == RATIONALE
    assert form["contentType"].startswith("text/plain") and "writer: template" in form["title"]
    media = [r for r in report["contained"] if r["resourceType"] == "Media"]
    assert len(media) == 2 == len(report["media"])
    for m in media:
        validate_resource(m, "Media", normalise=False)
        assert m["meta"]["security"][0]["code"] == "AIAST"
        assert m["content"]["contentType"] == "image/png" and "data" not in m["content"]
        assert "Grad-CAM heatmap" in m["content"]["title"]
    by_site = {m["bodySite"]["text"]: m for m in media}
    assert set(by_site) == {"L4-L5", "L5-S1"}
    # every Media URL is the viewer's signed image endpoint and serves that very PNG
    for level, condition in (("L4-L5", "spinal_canal"), ("L5-S1", "left_foraminal")):
        url = by_site[level]["content"]["url"]
        assert re.fullmatch(rf"{re.escape(BASE)}/viewer/[^/]+/heatmap/\d+\.png", url)
        png = hooks_client.get(_local(url))
        assert png.status_code == 200 and png.mimetype == "image/png"
        assert png.data == PNG + level.encode() + condition.encode()
    # the Observation of a finding with a heatmap points at its Media
    obs = next(
        r
        for r in report["contained"]
        if r["resourceType"] == "Observation"
        and "L4-L5" in r["bodySite"]["text"]
        and "canal" in r["code"]["text"]
    )
    media_id = by_site["L4-L5"]["id"]
    assert {"reference": f"#{media_id}"} in obs["derivedFrom"]


def test_model_written_rationale_and_writer_are_escaped(caller: Caller, hooks_app: Flask) -> None:
    analysis_id = _store_analysis(hooks_app)
    hostile = (
        "L4-L5: severe central canal stenosis. [Open](https://evil.example/x) <img src=x onerror=alert(1)> "
        "| a | b |\n# heading ![beacon](https://evil.example/p.png) **bold** `code`."
    )
    _complete(hooks_app, analysis_id, rationale=hostile, writer=MODEL_WRITER)
    card = _card(caller)
    detail = card["detail"]
    assert "writer: language model (local\\:qwen2\\.5\\-0\\.5b\\-instruct)" in detail
    quoted = next(line for line in detail.splitlines() if line.startswith("> "))
    for raw in ("[Open](", "<img", "![beacon]", "| a |", "**bold**", "`code`", "\n# heading"):
        assert raw not in quoted
    assert "&lt;img src=x onerror=alert\\(1\\)&gt;" in quoted
    assert r"\[Open\]\(https\:" in quoted
    # the only markdown links in the detail are this service's own
    for url in re.findall(r"\]\(([^)]*)\)", detail.replace("\\]", "").replace("\\(", "")):
        assert url.startswith(BASE + "/viewer/"), url
    # presentedForm is a plain-text attachment: the text as stored, the writer named in the title
    (form,) = _report(card)["presentedForm"]
    assert base64.b64decode(form["data"]).decode() == hostile
    assert MODEL_WRITER in form["title"]


def test_a_long_rationale_is_cut_at_a_sentence_and_continued_in_the_viewer(
    caller: Caller, hooks_app: Flask
) -> None:
    analysis_id = _store_analysis(hooks_app)
    long_text = " ".join(
        f"Sentence {i} says what the heatmap shows at L4-L5 in many words." for i in range(60)
    )
    _complete(hooks_app, analysis_id, rationale=long_text)
    quoted = next(line for line in _card(caller)["detail"].splitlines() if line.startswith("> "))
    assert quoted.endswith(r"words\. (continued in the viewer)")
    assert len(quoted) < 2000


def test_prior_study_card_of_an_order_hook_shows_the_explanation(caller: Caller, hooks_app: Flask) -> None:
    analysis_id = _store_analysis(hooks_app)
    _complete(hooks_app, analysis_id)
    orders = draft_orders(service_request("sr-1", "72148"))
    body = {
        "hook": "order-sign",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/doc-1", "patientId": PATIENT_ID, "draftOrders": orders},
        "prefetch": {"studies": bundle(imaging_study())},
    }
    card = _card(caller, OSIGN, body)
    assert card["summary"].startswith("Prior lumbar MRI")
    assert "**Explanation** (machine-generated rationale" in card["detail"]
    assert card["links"][1]["label"].startswith("View explanation")
    report = _report(card)
    assert report["presentedForm"] and len(report["media"]) == 2


# --- pending and failed ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [ExplanationStatus.PENDING, ExplanationStatus.RUNNING])
def test_pending_explanation_is_announced_without_a_second_job(
    caller: Caller, hooks_app: Flask, hooks_client: Any, status: ExplanationStatus
) -> None:
    analysis_id = _store_analysis(hooks_app)
    _explain(hooks_app, analysis_id, status)
    svc = services(hooks_app)
    svc.jobs.enqueue(JobKind.EXPLAIN, f"explain:{analysis_id}", {"analysis_id": analysis_id})

    card = _card(caller)
    assert "has been requested and is being computed" in card["detail"]
    assert "machine-generated rationale" not in card["detail"]
    _viewer, progress = card["links"]
    assert progress["label"] == PENDING_LABEL and progress["url"].startswith(BASE + "/explain/")
    report = _report(card)
    assert "presentedForm" not in report and "media" not in report
    assert _explain_jobs(hooks_app) == 1  # the hook call enqueued nothing
    # following the card's link shows the status and still makes no second job
    assert hooks_client.get(_local(progress["url"])).status_code == 200
    assert _card(caller)["links"][1]["label"] == PENDING_LABEL
    assert _explain_jobs(hooks_app) == 1


def test_failed_explanation_says_why_and_keeps_the_explain_link(caller: Caller, hooks_app: Flask) -> None:
    analysis_id = _store_analysis(hooks_app)
    _explain(
        hooks_app,
        analysis_id,
        ExplanationStatus.FAILED,
        reason="the study could not be loaded: [PACS](https://evil.example) <b>down</b>",
    )
    card = _card(caller)
    detail = card["detail"]
    assert "could not be produced. Reason: the study could not be loaded" in detail
    assert "[PACS](" not in detail and "<b>" not in detail and "&lt;b&gt;" in detail
    assert card["links"][1]["label"] == EXPLAIN_LABEL
    assert card["links"][1]["url"].startswith(BASE + "/explain/")
    report = _report(card)
    assert "presentedForm" not in report and "media" not in report
    assert _explain_jobs(hooks_app) == 0


def test_never_requested_explanation_keeps_the_card_as_before(caller: Caller, hooks_app: Flask) -> None:
    _store_analysis(hooks_app)
    card = _card(caller)
    assert "**Explanation**" not in card["detail"]
    assert card["links"][1]["label"] == EXPLAIN_LABEL
    assert "presentedForm" not in _report(card)


def test_the_card_follows_the_explanation_from_pending_to_complete(caller: Caller, hooks_app: Flask) -> None:
    """Cached card texts and reports are keyed on the explanation's version: no stale card."""
    analysis_id = _store_analysis(hooks_app)
    assert _card(caller)["links"][1]["label"] == EXPLAIN_LABEL
    _explain(hooks_app, analysis_id, ExplanationStatus.PENDING)
    assert _card(caller)["links"][1]["label"] == PENDING_LABEL
    _explain(hooks_app, analysis_id, ExplanationStatus.RUNNING)
    assert _card(caller)["links"][1]["label"] == PENDING_LABEL
    _complete(hooks_app, analysis_id)
    card = _card(caller)
    assert card["links"][1]["label"] == "View explanation (2 heatmaps, rationale)"
    assert len(_report(card)["media"]) == 2
    _explain(hooks_app, analysis_id, ExplanationStatus.FAILED, reason="re-run disagreed")
    card = _card(caller)
    assert "Reason: re\\-run disagreed" in card["detail"]
    assert "presentedForm" not in _report(card)


def test_a_crashed_explanation_shows_no_exception_text_on_the_card(
    caller: Caller, hooks_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exception text can carry PHI (a patient's name in a file path) or infrastructure detail:
    the stored reason, shown on the card, is a fixed sentence; the detail stays in the job."""
    import sys
    import types

    from cds.hooks.markdown import escape
    from cds.jobs.explanation import REASON_EXPLAIN_FAILED, request_explanation
    from cds.jobs.handlers import default_registry
    from cds.jobs.queue import JobQueue
    from cds.jobs.runner import LocalRunner

    secret = "/data/incoming/DOE^JANE_1961/axial.dcm @ db-prod-7.hospital.internal"

    def explain_analysis(*_args: Any) -> None:
        raise OSError(f"cannot read {secret}")

    fake = types.ModuleType("cds.explain.job")
    fake.explain_analysis = explain_analysis  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cds.explain.job", fake)
    analysis_id = _store_analysis(hooks_app)
    db = services(hooks_app).db
    queue = JobQueue(db)
    request_explanation(db, queue, analysis_id)
    runner = LocalRunner(queue, default_registry(), services(hooks_app).settings, retry_delay_s=0)
    while runner.run_until_idle():
        pass
    with db.session(readonly=True) as s:
        explanation = queries.ensure_explanation(s, analysis_id)
        (job,) = s.scalars(sa.select(JobRecord).where(JobRecord.kind == JobKind.EXPLAIN)).all()
        assert explanation.status is ExplanationStatus.FAILED
        assert explanation.reason == REASON_EXPLAIN_FAILED
        assert job.last_error is not None and "DOE^JANE" in job.last_error  # kept for operators
    detail = _card(caller)["detail"]
    assert "could not be produced. Reason: " + escape(REASON_EXPLAIN_FAILED) in detail
    for leak in ("DOE", "JANE", "/data/incoming", "db-prod", "OSError"):
        assert leak not in detail
