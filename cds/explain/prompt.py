"""The prompt: rules as the system turn, three worked examples as user/assistant turns, then the case.

Why this shape: on these small models the chat template with worked examples as real turns beat
zero-shot (which drops levels) and examples pasted into one message (ARCHITECTURE.md). The case is
rendered as plain lines built only from the structured findings -- no identifiers, dates or free
text reach the model -- with sides pre-paired ("the two sides differ") because calling asymmetric
foraminal grades "bilateral" was the commonest error. The examples' answers pass the verifier
(a test asserts it), so the model is only ever shown text that would be accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cds.domain import Condition, Finding, Level
from cds.explain.backends.base import ChatMessage
from cds.explain.findings import RationaleInput, coerce_input
from cds.explain.verify import Violation, ViolationKind
from cds.explain.wording import condition_phrase, format_measurement, threshold_text

SYSTEM = (
    "You write a short rationale for a lumbar spine MRI decision-support result, for clinicians. "
    "Use only the findings given. Rules: "
    "1) Write 2 to 5 sentences; start each sentence with the level it is about, e.g. 'L4-L5: ...'. "
    "2) Mention every moderate or severe finding with its level, side and grade exactly as given. "
    "3) For foraminal and subarticular findings always say left, right or bilateral; say 'bilateral' only "
    "where the findings say bilateral. "
    "4) Use only the numbers given, as given; never add other numbers. "
    "5) Write 'flagged as uncertain' after every finding marked uncertain. "
    "6) Do not mention levels, findings, causes, advice or heatmaps that are not given."
)

#: Left/right condition pairs (a pair with the same grade is worded 'bilateral').
PAIRS = (
    (Condition.LEFT_FORAMINAL, Condition.RIGHT_FORAMINAL),
    (Condition.LEFT_SUBARTICULAR, Condition.RIGHT_SUBARTICULAR),
)


def finding_line(f: Finding) -> str:
    """One finding as a model sees it: level, condition, grade, deciding measurement and its range."""
    text = f"- {f.level.value} {f.condition.display}: {f.grade.display}"
    name = f.condition.deciding_measurement
    if name in f.measurements:
        rng = threshold_text(f.condition, f.grade)
        text += f"; {format_measurement(f, name)} ({f.grade.display} range {rng})"
    if f.uncertain:
        text += "; uncertain"
    return text


def render_findings(inp: RationaleInput) -> str:
    """The case as the model sees it: shown findings, paired sides, quiet levels, heatmap notes."""
    lines = ["Findings:"]
    for level in inp.levels:
        done: set[Condition] = set()
        for left_c, right_c in PAIRS:
            left, right = inp.finding(level, left_c), inp.finding(level, right_c)
            if left is None or right is None or not (left.grade.present or right.grade.present):
                continue
            done.update((left_c, right_c))
            if left.grade is right.grade and left.uncertain == right.uncertain:
                name = left_c.deciding_measurement
                text = f"- {level.value} {condition_phrase(left_c, bilateral=True)}: {left.grade.display}"
                if name in left.measurements and name in right.measurements:
                    lv = format_measurement(left, name).rsplit(" ", 2)
                    rv = format_measurement(right, name).rsplit(" ", 2)
                    text += f"; {name.display} {lv[1]} {lv[2]} on the left and {rv[1]} {rv[2]} on the right"
                lines.append(text + ("; uncertain" if left.uncertain else ""))
            else:
                lines.append(finding_line(left) + " (the two sides differ: not bilateral)")
                lines.append(finding_line(right) + " (the two sides differ: not bilateral)")
        for f in inp.at_level(level):
            if f.condition not in done and (f.grade.present or f.uncertain):
                lines.append(finding_line(f))
    quiet = [lv.value for lv in inp.levels if not any(f.grade.present for f in inp.at_level(lv))]
    if quiet:
        lines.append("Levels with no moderate or severe finding: " + ", ".join(quiet) + ".")
    absent = [lv.value for lv in Level if lv not in inp.levels]
    if absent:
        lines.append("Not analysed (do not mention): " + ", ".join(absent) + ".")
    if inp.heatmaps:
        for h in inp.heatmaps:
            lines.append(f"Heatmap for {h.level.value} {h.condition.display}: highlights the {h.region}.")
    else:
        lines.append("No heatmap information.")
    return "\n".join(lines)


def _f(grade: str, uncertain: bool = False, **measurements: float) -> dict[str, Any]:
    return {"grade": grade, "probability": 0.9, "measurements": measurements, "uncertain": uncertain}


def _normal_levels(*levels: str) -> dict[str, Any]:
    return {lv: {"spinal_canal": _f("normal_mild", dsca_mm2=140.0)} for lv in levels}


#: Worked examples: (levels JSON, heatmap notes, the answer). Each answer passes the verifier.
EXAMPLES: tuple[tuple[dict[str, Any], dict[str, Any] | None, str], ...] = (
    (
        {
            **_normal_levels("L1-L2", "L2-L3", "L3-L4", "L5-S1"),
            "L4-L5": {
                "spinal_canal": _f("severe", dsca_mm2=58.4, ap_diameter_mm=7.1),
                "left_foraminal": _f("moderate", foraminal_area_ratio=0.42),
                "right_foraminal": _f("normal_mild", foraminal_area_ratio=0.77),
            },
        },
        None,
        "L4-L5: severe central canal stenosis with a dural sac area of 58 mm2 (< 75 mm2). L4-L5: "
        "moderate left neural foraminal narrowing with a foraminal area ratio of 42 %, while the right "
        "neural foramen is normal/mild. L1-L2, L2-L3, L3-L4 and L5-S1: no moderate or severe stenosis.",
    ),
    (
        {
            **_normal_levels("L1-L2", "L2-L3", "L3-L4", "L4-L5"),
            "L5-S1": {
                "spinal_canal": _f("normal_mild", dsca_mm2=121.0),
                "left_foraminal": _f("normal_mild", True, foraminal_area_ratio=0.61),
            },
        },
        None,
        "L1-L2, L2-L3, L3-L4, L4-L5 and L5-S1: no moderate or severe stenosis. L5-S1: the left neural "
        "foraminal narrowing is graded normal/mild but flagged as uncertain, with a foraminal area ratio "
        "of 61 %.",
    ),
    (
        {
            **_normal_levels("L1-L2", "L2-L3", "L3-L4"),
            "L4-L5": {
                "spinal_canal": _f("normal_mild", dsca_mm2=104.0),
                "left_subarticular": _f("normal_mild", lateral_recess_depth_mm=5.4),
                "right_subarticular": _f("severe", True, lateral_recess_depth_mm=2.2),
            },
            "L5-S1": {
                "left_foraminal": _f("moderate", foraminal_area_ratio=0.48),
                "right_foraminal": _f("moderate", foraminal_area_ratio=0.51),
            },
        },
        {"L4-L5": {"right_subarticular": "medial facet"}},
        "L4-L5: severe right subarticular (lateral recess) stenosis with a lateral recess depth of 2.2 "
        "mm (< 3 mm), flagged as uncertain. L5-S1: moderate bilateral neural foraminal narrowing, "
        "foraminal area ratio 48 % on the left and 51 % on the right. L1-L2, L2-L3 and L3-L4: no "
        "moderate or severe stenosis. The heatmap for L4-L5 right subarticular (lateral recess) stenosis "
        "highlights the medial facet.",
    ),
)


def example_inputs() -> tuple[tuple[RationaleInput, str], ...]:
    return tuple((coerce_input(levels, heat), answer) for levels, heat, answer in EXAMPLES)


_GENERAL_FIXES = {
    ViolationKind.UNSUPPORTED_NUMBER: "Use only the numbers given in the findings.",
    ViolationKind.ABSENT_LEVEL: "Mention only the levels listed in the findings.",
    ViolationKind.UNKNOWN_LEVEL: "Name levels only as L1-L2, L2-L3, L3-L4, L4-L5 or L5-S1.",
    ViolationKind.MISSING_SIDE: "Always say left or right for foraminal and subarticular findings.",
    ViolationKind.TOO_LONG: "Write at most 5 short sentences.",
    ViolationKind.UNSUPPORTED_TERM: "Do not mention causes, advice or anything not in the findings.",
    ViolationKind.UNSUPPORTED_HEATMAP: "Mention the heatmap only as given, or not at all.",
    ViolationKind.AMBIGUOUS_GRADE: "Give exactly one grade per finding.",
    ViolationKind.UNTIED_STATEMENT: "Start every sentence with its level.",
}


def retry_note(inp: RationaleInput, violations: Sequence[Violation]) -> str:
    """Constraints for the second draft, phrased as the correct facts rather than as the errors.

    Small models copy what they are shown; quoting the rejected wording back invites repeating it.
    """
    facts: list[str] = []
    seen: set[tuple[Level, Condition]] = set()
    for v in violations:
        if v.level is None or v.condition is None or (v.level, v.condition) in seen:
            continue
        seen.add((v.level, v.condition))
        f = inp.finding(v.level, v.condition)
        if f is None:
            facts.append(f"- {v.level.value} {v.condition.display} was not analysed: do not mention it.")
        elif v.kind is ViolationKind.BILATERAL_MISUSE:
            facts.append(f"- {v.level.value}: left and right differ, so do not write bilateral.")
        else:
            facts.append(finding_line(f).replace("; uncertain", "; flagged as uncertain"))
    general = sorted({_GENERAL_FIXES[v.kind] for v in violations if v.kind in _GENERAL_FIXES})
    note = "\n\nYour previous answer had mistakes. State these findings exactly as written here:\n"
    note += "\n".join(facts) if facts else "- (all findings as listed above)"
    if general:
        note += "\n" + " ".join(general)
    return note


def build_messages(inp: RationaleInput, violations: Sequence[Violation] = ()) -> list[ChatMessage]:
    """System rules, three worked examples as turns, then the case (plus the constraints on a retry)."""
    messages = [ChatMessage("system", SYSTEM)]
    for ex_inp, answer in example_inputs():
        messages.append(ChatMessage("user", render_findings(ex_inp)))
        messages.append(ChatMessage("assistant", answer))
    content = render_findings(inp)
    if violations:
        content += retry_note(inp, violations)
    messages.append(ChatMessage("user", content))
    return messages


def clean_draft(text: str) -> str:
    """Normalise a model draft before verification: one paragraph, no markdown, no label."""
    text = text.replace("**", "").replace("__", "").replace("`", "")
    for label in ("Rationale:", "Answer:", "Assistant:"):
        if text.lstrip().startswith(label):
            text = text.lstrip()[len(label) :]
    paragraph = text.strip().split("\n\n")[0]
    lines = [ln.strip().lstrip("-*• ").strip() for ln in paragraph.splitlines()]
    return " ".join(ln for ln in lines if ln)
