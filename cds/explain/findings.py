"""The rationale's input boundary: the analyze JSON's `levels` object -> typed findings.

Why a separate parser instead of `AnalysisResult.from_json`: the rationale is usable alone (issue 5),
so its input may come from any caller; a malformed level, grade or measurement must surface as one
clear BadRequest naming the path of the offending value, not as a KeyError deep in the writer.
Only the structured findings cross this boundary -- no identifiers reach the language model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cds.domain import AnalysisResult, Condition, Finding, Grade, Level, MeasurementName
from cds.errors import BadRequest


class RationaleInputError(BadRequest):
    """The findings (or heatmap notes) given to the rationale writer are malformed."""


# A heatmap region description is shown verbatim to clinicians and fed to the model: keep it to
# plain words so that it cannot smuggle numbers, levels or markup into the rationale.
_REGION_RE = re.compile(r"^[A-Za-z][A-Za-z ,'/()-]{0,79}$")
_LEVEL_LIKE_RE = re.compile(r"\b[LlSsTt]\d")


@dataclass(frozen=True)
class HeatmapNote:
    """What the Grad-CAM heatmap of one finding highlights, as a short anatomical description."""

    level: Level
    condition: Condition
    region: str


@dataclass(frozen=True)
class RationaleInput:
    """Everything the rationale may speak about: findings (sorted cranial to caudal) and heatmap notes."""

    findings: tuple[Finding, ...]
    heatmaps: tuple[HeatmapNote, ...] = ()

    @property
    def levels(self) -> tuple[Level, ...]:
        return tuple(sorted({f.level for f in self.findings}, key=lambda lv: lv.index))

    def finding(self, level: Level, condition: Condition) -> Finding | None:
        for f in self.findings:
            if f.level is level and f.condition is condition:
                return f
        return None

    def at_level(self, level: Level) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.level is level)

    @property
    def positives(self) -> tuple[Finding, ...]:
        """Moderate or severe findings: every one of them must be mentioned."""
        return tuple(f for f in self.findings if f.grade.present)

    def heatmap(self, level: Level, condition: Condition) -> HeatmapNote | None:
        for h in self.heatmaps:
            if h.level is level and h.condition is condition:
                return h
        return None


def _sort_key(f: Finding) -> tuple[int, int]:
    return (f.level.index, list(Condition).index(f.condition))


def _enum(enum_type: Any, raw: Any, path: str) -> Any:
    try:
        return enum_type(raw)
    except ValueError:
        allowed = ", ".join(m.value for m in enum_type)
        raise RationaleInputError(f"{path}: unknown value {raw!r} (allowed: {allowed})") from None


def _number(raw: Any, path: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise RationaleInputError(f"{path}: expected a number, got {type(raw).__name__}")
    value = float(raw)
    if not math.isfinite(value):
        raise RationaleInputError(f"{path}: not a finite number")
    return value


def _parse_finding(level: Level, condition: Condition, data: Any, path: str) -> Finding:
    if not isinstance(data, Mapping):
        raise RationaleInputError(f"{path}: expected an object with grade/probability/measurements")
    if "grade" not in data:
        raise RationaleInputError(f"{path}.grade: missing")
    grade = _enum(Grade, data["grade"], f"{path}.grade")
    probability = _number(data.get("probability", 1.0), f"{path}.probability")
    if not 0.0 <= probability <= 1.0:
        raise RationaleInputError(f"{path}.probability: {probability} is outside [0, 1]")
    raw_meas = data.get("measurements", {}) or {}
    if not isinstance(raw_meas, Mapping):
        raise RationaleInputError(f"{path}.measurements: expected an object")
    measurements: dict[MeasurementName, float] = {}
    for name, raw in raw_meas.items():
        mname = _enum(MeasurementName, name, f"{path}.measurements")
        value = _number(raw, f"{path}.measurements.{name}")
        if value < 0:
            raise RationaleInputError(f"{path}.measurements.{name}: negative value {value}")
        if mname is MeasurementName.FORAMINAL_AREA_RATIO and value > 1.5:
            raise RationaleInputError(f"{path}.measurements.{name}: a ratio (0-1) was expected, got {value}")
        measurements[mname] = value
    uncertain = data.get("uncertain", False)
    if not isinstance(uncertain, bool):
        raise RationaleInputError(f"{path}.uncertain: expected true or false")
    return Finding(level, condition, grade, probability, measurements, uncertain)


def parse_levels(levels: Mapping[str, Any]) -> tuple[Finding, ...]:
    """`{"L4-L5": {"spinal_canal": {"grade": ..., ...}}}` -> findings sorted cranial to caudal.

    Also accepts the whole analyze JSON (an object with a "levels" key); the rest is ignored.
    """
    if not isinstance(levels, Mapping):
        raise RationaleInputError("findings: expected an object keyed by level")
    if "levels" in levels and isinstance(levels["levels"], Mapping):
        levels = levels["levels"]
    out: list[Finding] = []
    for raw_level, conditions in levels.items():
        level = _enum(Level, raw_level, "levels")
        if not isinstance(conditions, Mapping):
            raise RationaleInputError(f"levels.{raw_level}: expected an object keyed by condition")
        for raw_cond, data in conditions.items():
            condition = _enum(Condition, raw_cond, f"levels.{raw_level}")
            out.append(_parse_finding(level, condition, data, f"levels.{raw_level}.{raw_cond}"))
    return tuple(sorted(out, key=_sort_key))


def parse_heatmaps(
    notes: Mapping[str, Any] | Iterable[HeatmapNote] | None, findings: tuple[Finding, ...]
) -> tuple[HeatmapNote, ...]:
    """Heatmap notes as `{"L4-L5": {"spinal_canal": "posterior disc margin"}}` or HeatmapNote values.

    A note must belong to a finding that exists, and its region must be a short plain-words
    description (no digits, no level names): the rationale repeats it verbatim.
    """
    if notes is None:
        return ()
    items: list[HeatmapNote] = []
    if isinstance(notes, Mapping):
        for raw_level, per_cond in notes.items():
            level = _enum(Level, raw_level, "heatmaps")
            if not isinstance(per_cond, Mapping):
                raise RationaleInputError(f"heatmaps.{raw_level}: expected an object keyed by condition")
            for raw_cond, region in per_cond.items():
                condition = _enum(Condition, raw_cond, f"heatmaps.{raw_level}")
                if not isinstance(region, str):
                    raise RationaleInputError(f"heatmaps.{raw_level}.{raw_cond}: expected a string")
                items.append(HeatmapNote(level, condition, region))
    else:
        items = list(notes)
    known = {(f.level, f.condition) for f in findings}
    cleaned: list[HeatmapNote] = []
    for note in items:
        path = f"heatmaps.{note.level.value}.{note.condition.value}"
        if (note.level, note.condition) not in known:
            raise RationaleInputError(f"{path}: no such finding")
        region = " ".join(note.region.split())
        if not _REGION_RE.match(region) or _LEVEL_LIKE_RE.search(region):
            raise RationaleInputError(
                f"{path}: region must be up to 80 characters of plain words (no digits or level names)"
            )
        cleaned.append(HeatmapNote(note.level, note.condition, region))
    return tuple(sorted(cleaned, key=lambda h: (h.level.index, list(Condition).index(h.condition))))


def coerce_input(
    findings: Mapping[str, Any] | AnalysisResult | Iterable[Finding] | RationaleInput,
    heatmaps: Mapping[str, Any] | Iterable[HeatmapNote] | None = None,
) -> RationaleInput:
    """Accept the analyze JSON `levels` object, an AnalysisResult, or findings; validate everything."""
    if isinstance(findings, RationaleInput):
        if heatmaps is None:
            return findings
        parsed: tuple[Finding, ...] = findings.findings
    elif isinstance(findings, Mapping):
        parsed = parse_levels(findings)
    elif isinstance(findings, AnalysisResult):
        parsed = tuple(sorted(findings.findings, key=_sort_key))
    else:
        parsed = tuple(findings)
        if not all(isinstance(f, Finding) for f in parsed):
            raise RationaleInputError("findings: expected Finding values")
        parsed = tuple(sorted(parsed, key=_sort_key))
    seen: set[tuple[Level, Condition]] = set()
    for f in parsed:
        if (f.level, f.condition) in seen:
            raise RationaleInputError(f"levels.{f.level.value}.{f.condition.value}: duplicate finding")
        seen.add((f.level, f.condition))
    return RationaleInput(parsed, parse_heatmaps(heatmaps, parsed))
