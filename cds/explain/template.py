"""The deterministic template writer: the fallback that is always correct by construction.

Why it exists: a language model may misstate a level, a side or a grade; this writer cannot. It is
used when no model is configured, when the model's drafts fail verification, and as the worked
examples' answers in the prompt. Its output must always pass cds.explain.verify (a test asserts
that over the whole corpus). Wording: one clause per finding, grouped by level, with the deciding
measurement and the grade's threshold range; left and right share one "bilateral" clause only when
both sides have the same grade and the same uncertainty flag.
"""

from __future__ import annotations

from cds.domain import Condition, Finding, Level
from cds.explain.findings import RationaleInput
from cds.explain.verify import MAX_CHARS
from cds.explain.wording import condition_phrase, format_measurement, threshold_text

#: Above this many findings to describe, clauses drop their numbers (group gracefully, stay short).
MAX_DETAILED_FINDINGS = 8
#: At most this many sentences carry level clauses (the rationale is 2-5 sentences in all).
MAX_LEVEL_SENTENCES = 3

_PAIRS = (
    (Condition.LEFT_FORAMINAL, Condition.RIGHT_FORAMINAL),
    (Condition.LEFT_SUBARTICULAR, Condition.RIGHT_SUBARTICULAR),
)

NO_FINDINGS_SENTENCE = "No findings were available to describe."
BASIS_SENTENCE = (
    "Grades follow the dural sac area, lateral recess depth and foraminal area ratio thresholds of the "
    "grading table."
)


def _described(f: Finding) -> bool:
    return f.grade.present or f.uncertain


def _numbers(f: Finding, detailed: bool) -> str:
    name = f.condition.deciding_measurement
    if not detailed or name not in f.measurements:
        return ""
    return f", {format_measurement(f, name)} ({threshold_text(f.condition, f.grade)})"


def _clause(f: Finding, detailed: bool) -> str:
    if f.grade.present:
        text = f"{f.grade.display} {f.condition.display}{_numbers(f, detailed)}"
        return text + (", flagged as uncertain" if f.uncertain else "")
    return f"{f.condition.display} graded {f.grade.display}, flagged as uncertain"


def _bilateral_clause(left: Finding, right: Finding, detailed: bool) -> str:
    text = f"{left.grade.display} {condition_phrase(left.condition, bilateral=True)}"
    name = left.condition.deciding_measurement
    if detailed and name in left.measurements and name in right.measurements:
        lv = format_measurement(left, name).rsplit(" ", 2)
        rv = format_measurement(right, name).rsplit(" ", 2)
        text += (
            f", {name.display} {lv[1]} {lv[2]} on the left and {rv[1]} {rv[2]} on the right"
            f" ({threshold_text(left.condition, left.grade)})"
        )
    return text + (", flagged as uncertain" if left.uncertain else "")


def _level_clauses(inp: RationaleInput, level: Level, detailed: bool) -> list[str]:
    shown = [f for f in inp.at_level(level) if _described(f)]
    merged: set[Condition] = set()
    clauses: list[str] = []
    for left_c, right_c in _PAIRS:
        left, right = inp.finding(level, left_c), inp.finding(level, right_c)
        if (
            left is not None
            and right is not None
            and left.grade.present
            and left.grade is right.grade
            and left.uncertain == right.uncertain
        ):
            merged.update((left_c, right_c))
    for f in shown:
        if f.condition in merged:
            if f.condition in (Condition.LEFT_FORAMINAL, Condition.LEFT_SUBARTICULAR):
                partner = (
                    Condition.RIGHT_FORAMINAL
                    if f.condition is Condition.LEFT_FORAMINAL
                    else (Condition.RIGHT_SUBARTICULAR)
                )
                right = inp.finding(level, partner)
                assert right is not None
                clauses.append(_bilateral_clause(f, right, detailed))
            continue
        clauses.append(_clause(f, detailed))
    return clauses


def _join_levels(levels: list[Level]) -> str:
    names = [lv.value for lv in levels]
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


def _pack(parts: list[str], n: int) -> list[str]:
    """Split `parts` into at most n consecutive groups of near-equal size (keeps level order)."""
    if len(parts) <= n:
        return [p for p in parts]
    size = -(-len(parts) // n)
    return ["; ".join(parts[i : i + size]) for i in range(0, len(parts), size)]


def _heatmap_sentence(inp: RationaleInput) -> str | None:
    if not inp.heatmaps:
        return None
    parts = [f"the {h.region} for {h.level.value} {h.condition.display}" for h in inp.heatmaps]
    return "The heatmaps highlight " + "; ".join(parts) + "."


def write_template(inp: RationaleInput) -> str:
    """2-5 sentences, level by level, naming every moderate/severe and every uncertain finding.

    Long inputs degrade gracefully: numbers are dropped first, then the heatmap sentence, so the
    text stays within the verifier's length limit while every finding that must be named is.
    """
    n_described = sum(1 for f in inp.findings if _described(f))
    text = _compose(inp, detailed=n_described <= MAX_DETAILED_FINDINGS, heatmaps=True)
    if len(text) > MAX_CHARS:
        text = _compose(inp, detailed=False, heatmaps=True)
    if len(text) > MAX_CHARS:
        text = _compose(inp, detailed=False, heatmaps=False)
    return text


def compose_clauses(inp: RationaleInput, level_parts: list[str]) -> str:
    """The text around per-level clauses written by a language model ('L4-L5: severe ...').

    The clauses are packed into at most MAX_LEVEL_SENTENCES sentences in level order; the sentence
    on quiet levels and the heatmap sentence are this writer's, as in write_template (dropped
    first if the text would exceed the verifier's length limit).
    """
    text = _assemble(inp, level_parts, heatmaps=True)
    return text if len(text) <= MAX_CHARS else _assemble(inp, level_parts, heatmaps=False)


def _compose(inp: RationaleInput, detailed: bool, heatmaps: bool) -> str:
    level_parts: list[str] = []
    for level in inp.levels:
        clauses = _level_clauses(inp, level, detailed)
        if clauses:
            level_parts.append(f"{level.value}: " + "; ".join(clauses))
    return _assemble(inp, level_parts, heatmaps)


def _assemble(inp: RationaleInput, level_parts: list[str], heatmaps: bool) -> str:
    sentences = [_capitalise(p) + "." for p in _pack(level_parts, MAX_LEVEL_SENTENCES)]
    quiet = [lv for lv in inp.levels if not any(f.grade.present for f in inp.at_level(lv))]
    if quiet:
        sentences.append(f"{_join_levels(quiet)}: no moderate or severe stenosis.")
    if not inp.findings:
        sentences.append(NO_FINDINGS_SENTENCE)
    heat = _heatmap_sentence(inp) if heatmaps else None
    if heat:
        sentences.append(heat)
    if len(sentences) < 2:
        sentences.append(BASIS_SENTENCE)
    return " ".join(sentences)


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]
