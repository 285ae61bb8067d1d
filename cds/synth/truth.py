"""Ground-truth documents of a study: findings.json (FINDINGS.md shape) and the cause-region rule.

The cause region of a finding is the pathological *excess* tissue tagged while rasterising (see
cds.synth.raster): for central canal stenosis the posterior disc margin, the hypertrophied flavum and both
facets; for a lateral recess the disc margin and facet of that side; for a foramen the foraminal disc
protrusion, the facet and the disc margin of that side.
"""

from __future__ import annotations

from typing import Any

from cds.domain import Condition, Level, Side
from cds.synth.measure import LevelMeasurements
from cds.synth.raster import CauseKind, cause_id


def cause_ids(level: Level, condition: Condition) -> list[int]:
    side = condition.side
    left = side is Side.LEFT
    if condition is Condition.SPINAL_CANAL:
        kinds = [CauseKind.DISC, CauseKind.DISC_LEFT, CauseKind.DISC_RIGHT, CauseKind.FLAVUM]
        kinds += [CauseKind.FACET_LEFT, CauseKind.FACET_RIGHT]
    elif condition in (Condition.LEFT_SUBARTICULAR, Condition.RIGHT_SUBARTICULAR):
        kinds = [
            CauseKind.DISC_LEFT if left else CauseKind.DISC_RIGHT,
            CauseKind.FACET_LEFT if left else CauseKind.FACET_RIGHT,
        ]
    else:
        kinds = [
            CauseKind.DISC_FORAMINAL_LEFT if left else CauseKind.DISC_FORAMINAL_RIGHT,
            CauseKind.FACET_LEFT if left else CauseKind.FACET_RIGHT,
            CauseKind.DISC_LEFT if left else CauseKind.DISC_RIGHT,
        ]
    return [cause_id(level, k) for k in kinds]


def findings_json(meas: dict[Level, LevelMeasurements]) -> tuple[dict[str, Any], dict[str, Any]]:
    levels: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for lv, m in meas.items():
        levels[lv.value] = {}
        for cond in Condition:
            name, value = m.deciding(cond)
            levels[lv.value][cond.value] = {
                "grade": m.grade(cond).value,
                "measurement": {"name": name.value, "value": round(float(value), 4)},
            }
        extra[lv.value] = {
            "dsca_mm2": round(m.dsca_mm2, 3),
            "ap_diameter_mm": round(m.ap_diameter_mm, 3),
            "disc_height_mm": round(m.disc_height_mm, 3),
            "lateral_recess_depth_mm": {s.value: round(v, 3) for s, v in m.recess_mm.items()},
            "foraminal_area_ratio": {s.value: round(v, 4) for s, v in m.foramen_ratio.items()},
            "foraminal_area_mm2": {s.value: round(v, 3) for s, v in m.foramen_area_mm2.items()},
        }
    return levels, extra
