"""A deterministic corpus of finding sets for evaluating rationale writers and the verifier.

Why generated rather than taken from studies: the rationale only sees structured findings, so the
space to cover is the findings' shapes -- 0 to 6 positive findings, asymmetric and symmetric
left/right grades, uncertain flags, a missing level (transitional anatomy), heatmap notes or none --
and a seeded generator covers it reproducibly in milliseconds. Measurements always agree with the
grade (FINDINGS.md thresholds), as the pipeline's hybrid grading guarantees for its output.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from cds.domain import Condition, Grade, Level

DEFAULT_SEED = 20261123
DEFAULT_SIZE = 120

_RANGES: dict[Condition, dict[Grade, tuple[float, float]]] = {
    Condition.SPINAL_CANAL: {
        Grade.NORMAL_MILD: (100.0, 175.0),
        Grade.MODERATE: (75.0, 99.9),
        Grade.SEVERE: (38.0, 74.9),
    },
    **{
        c: {Grade.NORMAL_MILD: (5.0, 7.5), Grade.MODERATE: (3.0, 4.95), Grade.SEVERE: (0.8, 2.95)}
        for c in (Condition.LEFT_SUBARTICULAR, Condition.RIGHT_SUBARTICULAR)
    },
    **{
        c: {Grade.NORMAL_MILD: (0.6, 0.98), Grade.MODERATE: (0.35, 0.595), Grade.SEVERE: (0.08, 0.345)}
        for c in (Condition.LEFT_FORAMINAL, Condition.RIGHT_FORAMINAL)
    },
}

_REGIONS: dict[Condition, tuple[str, ...]] = {
    Condition.SPINAL_CANAL: (
        "posterior disc margin",
        "ligamentum flavum",
        "posterior disc margin and ligamentum flavum",
    ),
    Condition.LEFT_FORAMINAL: ("superior articular facet", "foraminal disc margin", "facet joint"),
    Condition.RIGHT_FORAMINAL: ("superior articular facet", "foraminal disc margin", "facet joint"),
    Condition.LEFT_SUBARTICULAR: ("medial facet", "lateral recess", "ligamentum flavum"),
    Condition.RIGHT_SUBARTICULAR: ("medial facet", "lateral recess", "ligamentum flavum"),
}

_PARTNER = {
    Condition.LEFT_FORAMINAL: Condition.RIGHT_FORAMINAL,
    Condition.RIGHT_FORAMINAL: Condition.LEFT_FORAMINAL,
    Condition.LEFT_SUBARTICULAR: Condition.RIGHT_SUBARTICULAR,
    Condition.RIGHT_SUBARTICULAR: Condition.LEFT_SUBARTICULAR,
}


@dataclass(frozen=True)
class CorpusCase:
    """One finding set: the analyze JSON `levels` object plus optional heatmap notes."""

    name: str
    levels: dict[str, dict[str, dict[str, Any]]]
    heatmaps: dict[str, dict[str, str]] | None

    @property
    def n_positive(self) -> int:
        return sum(1 for conds in self.levels.values() for f in conds.values() if f["grade"] != "normal_mild")


def _value(rng: random.Random, condition: Condition, grade: Grade) -> float:
    lo, hi = _RANGES[condition][grade]
    decimals = 3 if condition in (Condition.LEFT_FORAMINAL, Condition.RIGHT_FORAMINAL) else 1
    return round(min(max(rng.uniform(lo, hi), lo), hi), decimals)


def _finding(rng: random.Random, condition: Condition, grade: Grade, uncertain: bool) -> dict[str, Any]:
    value = _value(rng, condition, grade)
    measurements: dict[str, float] = {condition.deciding_measurement.value: value}
    if condition is Condition.SPINAL_CANAL:
        measurements["ap_diameter_mm"] = round(max(4.0, value / 9.5 + rng.uniform(-1.0, 1.0)), 1)
        measurements["disc_height_mm"] = round(rng.uniform(6.0, 12.0), 1)
    prob = rng.uniform(0.5, 0.7) if uncertain else rng.uniform(0.8, 0.99)
    return {
        "grade": grade.value,
        "probability": round(prob, 3),
        "measurements": measurements,
        "uncertain": uncertain,
    }


def generate_case(rng: random.Random, name: str) -> CorpusCase:
    levels = list(Level)
    if rng.random() < 0.1:  # transitional anatomy / a level that could not be analysed
        levels.remove(rng.choice([Level.L1_L2, Level.L5_S1]))
    pairs = [(lv, c) for lv in levels for c in Condition]
    n_pos = rng.choice([0, 1, 1, 2, 2, 3, 3, 4, 5, 6])
    grades: dict[tuple[Level, Condition], Grade] = {}
    for lv, c in rng.sample(pairs, n_pos):
        grades[(lv, c)] = rng.choice([Grade.MODERATE, Grade.SEVERE])
    # Symmetric pairs on purpose sometimes (so 'bilateral' is legitimately needed), asymmetric otherwise.
    for (lv, c), g in list(grades.items()):
        if c in _PARTNER and (lv, _PARTNER[c]) not in grades and rng.random() < 0.3:
            grades[(lv, _PARTNER[c])] = (
                g if rng.random() < 0.6 else (Grade.SEVERE if g is Grade.MODERATE else Grade.MODERATE)
            )
    n_uncertain = rng.choice([0, 0, 0, 1, 1, 2])
    uncertain = set(rng.sample(pairs, n_uncertain))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for lv, c in pairs:
        g = grades.get((lv, c), Grade.NORMAL_MILD)
        out.setdefault(lv.value, {})[c.value] = _finding(rng, c, g, (lv, c) in uncertain)
    heatmaps: dict[str, dict[str, str]] | None = None
    positives = [k for k, g in grades.items() if g.present]
    if positives and rng.random() < 0.4:
        heatmaps = {}
        for lv, c in sorted(positives, key=lambda k: (k[0].index, list(Condition).index(k[1])))[:3]:
            heatmaps.setdefault(lv.value, {})[c.value] = rng.choice(_REGIONS[c])
    return CorpusCase(name, out, heatmaps)


def generate_corpus(n: int = DEFAULT_SIZE, seed: int = DEFAULT_SEED) -> tuple[CorpusCase, ...]:
    """`n` finding sets, identical for the same (n, seed)."""
    rng = random.Random(seed)
    return tuple(generate_case(rng, f"case-{seed}-{i:04d}") for i in range(n))
