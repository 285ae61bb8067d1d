"""Clinician wording shared by the template writer and the prompt: condition phrases and numbers.

Numbers are formatted so that a rounded value never lands on its own threshold: a dural sac area of
74.6 mm2 graded severe (< 75 mm2) is written "74.6 mm2", not "75 mm2 (< 75 mm2)", which would read
as a contradiction. The verifier accepts a written number within half a unit of its last digit.
"""

from __future__ import annotations

from cds.domain import THRESHOLDS, Condition, Finding, Grade, MeasurementName

#: Decimals used by default per measurement unit (percent for ratios).
_DEFAULT_DECIMALS = {
    MeasurementName.DSCA_MM2: 0,
    MeasurementName.AP_DIAMETER_MM: 1,
    MeasurementName.LATERAL_RECESS_DEPTH_MM: 1,
    MeasurementName.FORAMINAL_AREA_RATIO: 0,
    MeasurementName.DISC_HEIGHT_MM: 1,
}


def display_value(name: MeasurementName, value: float) -> float:
    """The value in display units: ratios as percent, everything else unchanged."""
    return value * 100.0 if name is MeasurementName.FORAMINAL_AREA_RATIO else value


def unit_text(name: MeasurementName) -> str:
    return "%" if name is MeasurementName.FORAMINAL_AREA_RATIO else name.unit


def format_number(name: MeasurementName, value: float, cutoffs: tuple[float, ...] = ()) -> str:
    """`value` (raw units) in display units, with enough decimals not to touch a cut-off."""
    shown = display_value(name, value)
    shown_cutoffs = [display_value(name, c) for c in cutoffs]
    decimals = _DEFAULT_DECIMALS[name]
    while decimals < 3:
        text = f"{shown:.{decimals}f}"
        if all(float(text) != c or abs(shown - c) < 1e-9 for c in shown_cutoffs):
            return text
        decimals += 1
    return f"{shown:.3f}"


def format_measurement(finding: Finding, name: MeasurementName) -> str:
    """E.g. 'dural sac area 62 mm2' or 'foraminal area ratio 45 %'."""
    value = finding.measurements[name]
    th = THRESHOLDS[finding.condition]
    cutoffs = (th.moderate_below, th.severe_below) if name is th.measurement else ()
    return f"{name.display} {format_number(name, value, cutoffs)} {unit_text(name)}"


def threshold_text(condition: Condition, grade: Grade) -> str:
    """The grade's range of the deciding measurement, e.g. '< 75 mm2' or '35 % to < 60 %'."""
    return THRESHOLDS[condition].describe(grade)


def condition_phrase(condition: Condition, bilateral: bool = False) -> str:
    """'central canal stenosis', 'left neural foraminal narrowing', 'bilateral ... narrowing'."""
    if not bilateral:
        return condition.display
    if condition in (Condition.LEFT_FORAMINAL, Condition.RIGHT_FORAMINAL):
        return "bilateral neural foraminal narrowing"
    return "bilateral subarticular (lateral recess) stenosis"
