"""CDS Hooks cards from stored analyses.

Client-enforced rules this module keeps (CDS-HOOKS.md): summary under 140 characters; indicator
info | warning | critical; source.label; uuid on every card and suggestion (no uuid, no
feedback); suggestions with selectionBehavior; links typed `absolute`; optional fields omitted
rather than null/empty. Indicator from the worst grade: severe -> critical, moderate -> warning,
normal/mild (or no result) -> info.

Wording says "AI" and "preliminary" everywhere: these are machine reads, not a radiologist's.
Order hooks speak of the PRIOR study only; the ordered study does not exist yet.

Explainable mode on the result card (StoredAnalysis.explanation): a finished explanation puts its
verified rationale in the detail (escaped, labelled machine-generated with its writer: language
model or template), says how many heatmaps the viewer has with a link to them, and the "explain"
link becomes "view explanation"; a pending one is announced (the card never enqueues anything; its
link leads to the status page, whose request is idempotent); a failed one is reported with its
reason and the explain link stays, to try again.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import Enum
from typing import Any, Protocol

from cds.domain import THRESHOLDS, AnalysisStatus, Condition, Finding, Indicator, MeasurementName
from cds.fhir.codes import PROJECT_BASE
from cds.hooks.catalog import StoredAnalysis
from cds.hooks.explanations import StoredExplanation
from cds.hooks.markdown import escape
from cds.hooks.reports import ReportOnFile
from cds.hooks.studies import LumbarStudy

SUMMARY_MAX = 139
SOURCE_LABEL = "Lumbar spine MRI AI (cds-spine)"
#: Project code system for override reasons (no standard value set exists for these), under the
#: project's one FHIR base (cds.fhir.codes.PROJECT_BASE) like every other project code system.
OVERRIDE_SYSTEM = f"{PROJECT_BASE}/CodeSystem/card-override-reason"
OVERRIDE_REASONS: tuple[tuple[str, str], ...] = (
    ("prior-imaging-reviewed", "Prior imaging already reviewed"),
    ("not-relevant", "Not relevant to this patient or order"),
    ("disagree-with-ai", "Disagree with the AI findings"),
)


class Framing(Enum):
    """How a card speaks about the study: order hooks speak only of a prior study."""

    CURRENT = "Lumbar MRI"
    PRIOR = "Prior lumbar MRI"


class Presenter(Protocol):
    """Links and the FHIR report for an analysis (signing and FHIR building live elsewhere)."""

    def viewer_url(self, analysis_id: str) -> str: ...

    def explain_url(self, analysis_id: str) -> str: ...

    def report(self, stored: StoredAnalysis, study: LumbarStudy, patient_id: str) -> Mapping[str, Any]: ...


class CleanCard(dict[str, Any]):
    """A card whose builder never leaves an optional member empty (prune_empty passes it as is).

    The result card is the one built on every call of a patient with an analysed study; walking
    it (and its 25-row detail, links, suggestion) again only to find nothing to drop cost more
    than building it.
    """


@dataclass(frozen=True)
class CardRequest:
    framing: Framing
    patient_id: str
    today: date
    #: Radiologist reports on file, by ImagingStudy id (prefetch `reports`).
    reports: Mapping[str, ReportOnFile] = field(default_factory=dict)


def _new_uuid() -> str:
    return str(uuid.uuid4())


def _when(study: LumbarStudy, req: CardRequest) -> str:
    if study.started is None:
        return "(date unknown)"
    return study.started.isoformat()


def _age(study: LumbarStudy, today: date) -> str | None:
    if study.started is None:
        return None
    days = (today - study.started).days
    if days < 0:
        return None
    if days < 60:
        return f"{days} days ago"
    return f"about {round(days / 30.44)} months ago"


def _fit(summary: str) -> str:
    return summary if len(summary) <= SUMMARY_MAX else summary[: SUMMARY_MAX - 1].rstrip() + "…"


def format_value(name: MeasurementName, value: float) -> str:
    if name.unit == "1":
        return f"{value * 100:.0f} %"
    return f"{value:.1f} {name.unit}"


def _ordered(findings: tuple[Finding, ...]) -> list[Finding]:
    conditions = list(Condition)
    return sorted(findings, key=lambda f: (f.level.index, conditions.index(f.condition)))


def findings_table(findings: tuple[Finding, ...]) -> str:
    """One row per level x condition: grade, the deciding measurement and the threshold it met."""
    rows = [
        "| Level | Condition | Grade | Deciding measurement | Threshold for this grade |",
        "|---|---|---|---|---|",
    ]
    for f in _ordered(findings):
        grade = f.grade.display + (" (uncertain)" if f.uncertain else "")
        if f.grade.present:
            grade = f"**{grade}**"
        name = f.condition.deciding_measurement
        value = f.deciding_value
        measured = f"{name.display} {format_value(name, value)}" if value is not None else "not measured"
        threshold = THRESHOLDS[f.condition].describe(f.grade)
        rows.append(f"| {f.level.value} | {f.condition.display} | {grade} | {measured} | {threshold} |")
    return "\n".join(rows)


def _summary(stored: StoredAnalysis, study: LumbarStudy, req: CardRequest) -> str:
    assert stored.result is not None
    head = f"{req.framing.value} {_when(study, req)} (AI, preliminary): "
    worst = stored.result.worst()
    if worst is None:
        return _fit(head + "no findings reported")
    if not worst.grade.present:
        return _fit(head + "no moderate or severe stenosis found")
    others = sum(1 for f in stored.result.findings if f.grade.present) - 1
    text = f"{worst.grade.display} {worst.condition.display} at {worst.level.value}"
    if others > 0:
        text += f"; +{others} more moderate/severe"
    return _fit(head + text)


def is_offered_override_reason(system: str | None, code: str | None) -> bool:
    """Whether (system, code) is one of the overrideReasons this service puts on its cards.

    Cards are not stored (they are rebuilt per call), but every result card offers exactly
    OVERRIDE_REASONS, so a feedback overrideReason outside them did not come from one of our cards.
    """
    return system == OVERRIDE_SYSTEM and any(code == c for c, _ in OVERRIDE_REASONS)


def _override_reasons() -> list[dict[str, str]]:
    return [
        {"system": OVERRIDE_SYSTEM, "code": code, "display": display} for code, display in OVERRIDE_REASONS
    ]


def _detail(stored: StoredAnalysis, study: LumbarStudy, req: CardRequest) -> str:
    assert stored.result is not None
    result = stored.result
    lines = [f"**AI read of the lumbar spine MRI of {_when(study, req)}**"]
    if study.description:
        lines[0] += f" ({escape(study.description, 120)})"
    age = _age(study, req.today)
    if req.framing is Framing.PRIOR:
        lines.append(
            f"This patient already has a lumbar spine MRI{f' from {age}' if age else ''}. "
            "These are its findings, not a read of the study being ordered."
        )
    on_file = req.reports.get(study.resource_id) if study.resource_id else None
    if on_file is not None:
        when = f" of {on_file.issued.isoformat()}" if on_file.issued else ""
        lines.append(
            f"A radiologist's report{when} ({on_file.status}) is on file for this study: read it first."
        )
    lines.append("Preliminary machine read: not reviewed by a radiologist.")
    lines.append("")
    lines.append(findings_table(result.findings))
    notes = []
    if result.labelling_uncertain:
        notes.append("Level labelling is uncertain (possible transitional anatomy): check the level count.")
    if any(f.uncertain for f in result.findings):
        notes.append("Findings marked uncertain are close to a threshold or of low model confidence.")
    if result.model_versions:
        versions = ", ".join(
            f"{escape(k, 40)} {escape(v, 40)}" for k, v in sorted(result.model_versions.items())
        )
        notes.append(f"Models: {versions}.")
    if notes:
        lines.append("")
        lines.extend(notes)
    return "\n".join(lines)


#: Characters of rationale shown in a card (whole sentences only; the viewer has the full text).
RATIONALE_MAX = 1500
_SENTENCE_END = re.compile(r"(?<=[.;])\s+")
EXPLAIN_LABEL = "Explain these findings (heatmaps, rationale)"
PENDING_LABEL = "Explanation in progress: see its status"


def _writer_words(explanation: StoredExplanation) -> str:
    """Who wrote the rationale, in words a clinician can weigh (model details escaped)."""
    writer = explanation.writer or ""
    if explanation.writer_is_model:
        detail = writer.split(":", 1)[1] if ":" in writer else ""
        return "language model" + (f" ({escape(detail, 80)})" if detail else "")
    if writer == "template":
        return "template, i.e. fixed sentences filled in from the measured findings"
    return escape(writer, 80)


def _rationale_shown(text: str) -> str:
    """Whole sentences up to RATIONALE_MAX characters, escaped; never a cut sentence."""
    sentences = _SENTENCE_END.split(" ".join(text.split()))
    shown: list[str] = []
    size = 0
    for sentence in sentences:
        if size + len(sentence) > RATIONALE_MAX:
            break
        shown.append(sentence)
        size += len(sentence) + 1
    body = escape(" ".join(shown), RATIONALE_MAX + 1)
    if len(shown) < len(sentences):
        body = (body + " " if body else "") + "(continued in the viewer)"
    return body


def _explanation_lines(explanation: StoredExplanation | None) -> list[str]:
    """The detail's explanation section (without the per-call viewer link)."""
    if explanation is None:
        return []
    if explanation.ready:
        assert explanation.rationale is not None
        return [
            "",
            f"**Explanation** (machine-generated rationale; writer: {_writer_words(explanation)}; "
            "checked against the findings above before display):",
            "",
            "> " + _rationale_shown(explanation.rationale),
        ]
    if explanation.in_progress:
        return [
            "",
            "**Explanation** (heatmaps and a written rationale) has been requested and is being "
            "computed; this card will show it once it is ready.",
        ]
    reason = f" Reason: {escape(explanation.reason, 300)}" if explanation.reason else ""
    return [
        "",
        f"**Explanation** (heatmaps and a written rationale) could not be produced.{reason} "
        "The explain link below tries again.",
    ]


def _heatmap_line(explanation: StoredExplanation | None, viewer_url: str) -> str:
    """How many heatmaps the viewer has, linked (signed per call, so never memoised)."""
    if explanation is None or not explanation.ready:
        return ""
    n = len(explanation.heatmaps)
    if n == 0:
        return "\n\nNo heatmap image is available for this explanation."
    what = "1 heatmap" if n == 1 else f"{n} heatmaps"
    return (
        f"\n\n{what} (Grad-CAM: where the classifier looked for each explained finding): "
        f"[open in the viewer]({viewer_url}#explanation)"
    )


def _explanation_link(stored: StoredAnalysis, presenter: Presenter) -> dict[str, str]:
    explanation = stored.explanation
    if explanation is not None and explanation.ready:
        n = len(explanation.heatmaps)
        label = f"View explanation ({n} heatmap{'s' if n != 1 else ''}, rationale)"
    elif explanation is not None and explanation.in_progress:
        label = PENDING_LABEL
    else:
        label = EXPLAIN_LABEL
    return {"label": label, "url": presenter.explain_url(stored.analysis_id), "type": "absolute"}


@dataclass(frozen=True)
class _ResultText:
    summary: str
    indicator: str
    detail: str


#: Card texts by (analysis id, updated_at, framing, study date, study description, today): pure
#: functions of immutable inputs, memoised because the 25-row table is the costliest part of a card.
_TEXTS: OrderedDict[tuple[Any, ...], _ResultText] = OrderedDict()
_TEXTS_LOCK = threading.Lock()
_TEXTS_MAX = 1024


def _result_text(stored: StoredAnalysis, study: LumbarStudy, req: CardRequest) -> _ResultText:
    on_file = req.reports.get(study.resource_id) if study.resource_id else None
    explanation = stored.explanation
    key = (
        stored.analysis_id,
        stored.updated_at,
        req.framing,
        study,
        on_file,
        req.today,
        explanation.version if explanation is not None else None,
    )
    with _TEXTS_LOCK:
        found = _TEXTS.get(key)
    if found is not None:
        return found
    assert stored.result is not None
    worst = stored.result.worst()
    text = _ResultText(
        summary=_summary(stored, study, req),
        indicator=Indicator.for_grade(worst.grade if worst else None).value,
        detail="\n".join([_detail(stored, study, req), *_explanation_lines(explanation)]),
    )
    with _TEXTS_LOCK:
        _TEXTS[key] = text
        while len(_TEXTS) > _TEXTS_MAX:
            _TEXTS.popitem(last=False)
    return text


def result_card(
    stored: StoredAnalysis, study: LumbarStudy, req: CardRequest, presenter: Presenter
) -> dict[str, Any]:
    """Card for a COMPLETE analysis, with the preliminary DiagnosticReport as a create suggestion."""
    if stored.status is not AnalysisStatus.COMPLETE or stored.result is None:
        raise ValueError("result_card needs a complete analysis")
    text = _result_text(stored, study, req)
    viewer_url = presenter.viewer_url(stored.analysis_id)
    card = CleanCard(
        {
            "uuid": _new_uuid(),
            "summary": text.summary,
            "indicator": text.indicator,
            "detail": text.detail + _heatmap_line(stored.explanation, viewer_url),
            "source": {"label": SOURCE_LABEL},
            "overrideReasons": _override_reasons(),
            "links": [
                {"label": "Images with AI findings", "url": viewer_url, "type": "absolute"},
                _explanation_link(stored, presenter),
            ],
        }
    )
    report = presenter.report(stored, study, req.patient_id)
    card["suggestions"] = [
        {
            "label": "File the AI findings as a preliminary report",
            "uuid": _new_uuid(),
            "actions": [
                {
                    "type": "create",
                    "description": "Create a preliminary AI-generated report for radiologist review",
                    "resource": report,
                }
            ],
        }
    ]
    card["selectionBehavior"] = "at-most-one"
    return card


def pending_card(study: LumbarStudy, req: CardRequest) -> dict[str, Any]:
    """The study exists but has no analysis yet: say so; the analysis has been queued."""
    return {
        "uuid": _new_uuid(),
        "summary": _fit(f"{req.framing.value} {_when(study, req)}: AI analysis pending"),
        "indicator": Indicator.INFO.value,
        "detail": (
            f"A lumbar spine MRI of {_when(study, req)} was found and has been queued for AI analysis. "
            "Results will appear in a later card once the analysis is complete."
        ),
        "source": {"label": SOURCE_LABEL},
    }


def unavailable_card(stored: StoredAnalysis, study: LumbarStudy, req: CardRequest) -> dict[str, Any]:
    """The study was tried and cannot be analysed (e.g. no sagittal T2): say why, escaped."""
    what = "could not be analysed" if stored.status is AnalysisStatus.UNANALYSABLE else "analysis failed"
    detail = f"The AI could not read the lumbar spine MRI of {_when(study, req)}."
    if stored.reason:
        detail += f" Reason: {escape(stored.reason, 300)}"
    return {
        "uuid": _new_uuid(),
        "summary": _fit(f"{req.framing.value} {_when(study, req)}: AI {what}"),
        "indicator": Indicator.INFO.value,
        "detail": detail,
        "source": {"label": SOURCE_LABEL},
    }


def other_patient_card(study: LumbarStudy, req: CardRequest) -> dict[str, Any]:
    """The study UID is stored under another patient record: say so, show none of its findings.

    Either the EHR's ImagingStudy or the stored study carries a wrong patient (a mis-filed study, a
    UID collision): findings of another person must never reach this patient's chart.
    """
    return {
        "uuid": _new_uuid(),
        "summary": _fit(
            f"{req.framing.value} {_when(study, req)}: study UID belongs to another patient record; not shown"
        ),
        "indicator": Indicator.WARNING.value,
        "detail": (
            f"The lumbar spine MRI of {_when(study, req)} has a StudyInstanceUID that this service has "
            "stored for a different patient record, so its AI results are not shown here. "
            "Please ask for the study's patient assignment to be checked."
        ),
        "source": {"label": SOURCE_LABEL},
    }


def prune_empty(value: Any) -> Any:
    """Drop None, '', [] and {} members recursively (CDS clients reject empty optional fields).

    A suggestion's `resource` is left as is: it comes validated from cds.fhir (which never emits
    empty elements), and walking a 25-Observation report on every call would cost milliseconds.
    A CleanCard is returned as it is (its builder leaves nothing empty).
    """
    if type(value) is CleanCard:
        return value
    if isinstance(value, Mapping):
        out = {k: (v if k == "resource" else prune_empty(v)) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        items = [prune_empty(v) for v in value]
        return [v for v in items if v not in (None, "", [], {})]
    return value
