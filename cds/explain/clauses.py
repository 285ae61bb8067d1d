"""Per-finding clauses: what a language model is asked to word, one finding (or bilateral pair) a row.

Why one row per finding rather than per level: a 0.5B model asked to word a whole level (up to five
findings) dropped findings, mixed up which grade went with which side, and recited normal findings;
in session 13's run only 1 draft in 16 passed the verifier. A row that carries a single finding
can be constrained exactly at decoding time (constraints.RowFacts.for_item: only its grade, side,
condition and numbers, and no sentence end before its grade, condition, side and uncertainty are
stated), so the model words the finding and the clinician-facing facts cannot drift. All rows of a
study are decoded in one batch, so the cost is the longest clause, not the number of rows.

Which findings get a row, their order, the per-level grouping ("L4-L5: <clause>; <clause>"), the
quiet-level sentence and the heatmap sentence are fixed here and in template.compose_clauses; the
verifier still checks the assembled text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cds.domain import Condition, Finding, Level
from cds.explain.backends.base import ChatMessage
from cds.explain.findings import RationaleInput, coerce_input
from cds.explain.prompt import PAIRS, clean_draft, finding_line, retry_note
from cds.explain.template import compose_clauses
from cds.explain.verify import Violation
from cds.explain.wording import condition_phrase, format_measurement

SYSTEM = (
    "You describe one MRI finding of a lumbar level for clinicians, in one short sentence that starts "
    "with the level. Use only the finding given: the same grade, side and numbers, written as given. "
    "Say 'bilateral' only where the finding says bilateral. Write 'flagged as uncertain' when the "
    "finding is marked uncertain. No causes, no advice, no heatmaps, nothing else."
)


@dataclass(frozen=True, eq=False)
class ClauseItem:
    """One row: a described finding, or a left/right pair that shares its grade and uncertainty.

    Compared and hashed by identity (eq=False): rows are keys of one study's drafting, and a
    Finding's measurements (a mapping proxy) are not hashable.
    """

    level: Level
    #: One finding, or the left and the right finding of a bilateral pair (left first).
    findings: tuple[Finding, ...]

    @property
    def bilateral(self) -> bool:
        return len(self.findings) == 2

    @property
    def conditions(self) -> tuple[Condition, ...]:
        return tuple(f.condition for f in self.findings)

    @property
    def uncertain(self) -> bool:
        return any(f.uncertain for f in self.findings)

    def line(self) -> str:
        """The finding as the model sees it (built from the structured finding only)."""
        if not self.bilateral:
            return finding_line(self.findings[0])
        left, right = self.findings
        name = left.condition.deciding_measurement
        phrase = condition_phrase(left.condition, bilateral=True)
        text = f"- {self.level.value} {phrase}: {left.grade.display}"
        if name in left.measurements and name in right.measurements:
            lv = format_measurement(left, name).rsplit(" ", 2)
            rv = format_measurement(right, name).rsplit(" ", 2)
            text += f"; {name.display} {lv[1]} {lv[2]} on the left and {rv[1]} {rv[2]} on the right"
        return text + ("; uncertain" if left.uncertain else "")


def _described(f: Finding) -> bool:
    return f.grade.present or f.uncertain


def clause_items(inp: RationaleInput) -> tuple[ClauseItem, ...]:
    """The rows of a study in level order, each level's findings in the findings' own order.

    Described = moderate/severe or flagged uncertain (the template's rule). A left/right pair is one
    bilateral row only when both sides are moderate/severe with the same grade and uncertainty.
    """
    items: list[ClauseItem] = []
    partner = dict(PAIRS)
    for level in inp.levels:
        done: set[Condition] = set()
        for f in inp.at_level(level):
            if f.condition in done or not _described(f):
                continue
            other = inp.finding(level, partner[f.condition]) if f.condition in partner else None
            if (
                other is not None
                and other.grade is f.grade
                and other.uncertain == f.uncertain
                and f.grade.present
            ):
                items.append(ClauseItem(level, (f, other)))
                done.update((f.condition, other.condition))
            else:
                items.append(ClauseItem(level, (f,)))
                done.add(f.condition)
    return tuple(items)


def described_levels(inp: RationaleInput) -> tuple[Level, ...]:
    """Levels with at least one row."""
    return tuple(dict.fromkeys(item.level for item in clause_items(inp)))


def _f(grade: str, uncertain: bool = False, **measurements: float) -> dict[str, Any]:
    return {"grade": grade, "probability": 0.9, "measurements": measurements, "uncertain": uncertain}


#: Worked examples as chat turns: (levels JSON with exactly one row, the answer clause).
EXAMPLES: tuple[tuple[dict[str, Any], str], ...] = (
    (
        {"L4-L5": {"spinal_canal": _f("severe", dsca_mm2=58.4, ap_diameter_mm=7.1)}},
        "L4-L5: severe central canal stenosis with a dural sac area of 58 mm2 (< 75 mm2).",
    ),
    (
        {
            "L5-S1": {
                "left_foraminal": _f("moderate", foraminal_area_ratio=0.48),
                "right_foraminal": _f("moderate", foraminal_area_ratio=0.51),
            }
        },
        "L5-S1: moderate bilateral neural foraminal narrowing with a foraminal area ratio of 48 % on "
        "the left and 51 % on the right.",
    ),
    (
        {"L3-L4": {"right_subarticular": _f("moderate", True, lateral_recess_depth_mm=3.9)}},
        "L3-L4: moderate right subarticular (lateral recess) stenosis with a lateral recess depth of "
        "3.9 mm (3 mm to < 5 mm), flagged as uncertain.",
    ),
    (
        {"L2-L3": {"left_foraminal": _f("normal_mild", True, foraminal_area_ratio=0.63)}},
        "L2-L3: left neural foraminal narrowing graded normal/mild with a foraminal area ratio of 63 %, "
        "flagged as uncertain.",
    ),
)


def examples() -> tuple[tuple[RationaleInput, ClauseItem, str], ...]:
    out = []
    for levels_json, answer in EXAMPLES:
        inp = coerce_input(levels_json)
        (item,) = clause_items(inp)
        out.append((inp, item, answer))
    return tuple(out)


def _user(item: ClauseItem) -> str:
    return f"Finding at {item.level.value}:\n{item.line()}"


def build_messages(
    inp: RationaleInput, item: ClauseItem, violations: Sequence[Violation] = ()
) -> list[ChatMessage]:
    """System rules, the worked examples as turns, then this row's finding.

    The caller pre-fills the assistant turn (constraints.RowFacts.prefill: the level, and a
    moderate/severe grade). On a retry the violations that concern this row are restated as the
    correct facts.
    """
    messages = [ChatMessage("system", SYSTEM)]
    for _, ex_item, answer in examples():
        messages.append(ChatMessage("user", _user(ex_item)))
        messages.append(ChatMessage("assistant", answer))
    content = _user(item)
    mine = [v for v in violations if concerns(item, v)]
    if mine:
        content += retry_note(inp, mine)
    messages.append(ChatMessage("user", content))
    return messages


def concerns(item: ClauseItem, violation: Violation) -> bool:
    """Whether a violation blames this row: its finding, or its level when no finding is named."""
    if violation.level is None:
        return False
    if violation.level is not item.level:
        return False
    return violation.condition is None or violation.condition in item.conditions


def clean_clause(text: str, level: Level) -> str:
    """A generated clause -> 'L4-L5: ...' without the final full stop (one sentence, no markdown)."""
    body = clean_draft(text)
    prefix = f"{level.value}:"
    if body.startswith(prefix):
        body = body[len(prefix) :]
    body = body.strip().rstrip(".;, ").strip()
    return f"{prefix} {body}" if body else prefix


def compose(inp: RationaleInput, clauses: Sequence[tuple[ClauseItem, str]]) -> str:
    """The rationale around cleaned clauses: one 'L4-L5: a; b' part per level, in level order."""
    parts: dict[Level, list[str]] = {}
    for item, clause in clauses:
        body = clause.removeprefix(f"{item.level.value}:").strip()
        if body:
            parts.setdefault(item.level, []).append(body)
    level_parts = [f"{lv.value}: " + "; ".join(bodies) for lv, bodies in parts.items()]
    return compose_clauses(inp, level_parts)
