"""Grades come from measurements on the generated anatomy, follow FINDINGS.md, and cover all grades."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from cds.domain import Condition, Grade, Level, Side
from cds.errors import BadRequest
from cds.synth.anatomy import Anatomy, LevelDrivers, ProtrusionKind, sample_anatomy
from cds.synth.dataset import Split, assign_split
from cds.synth.measure import LevelMeasurements, measure_all, measure_level
from cds.synth.pathology import sample_pathology
from cds.synth.raster import SpineModel


def _measurements(dsca: float, recess: float, ratio: float) -> LevelMeasurements:
    return LevelMeasurements(
        level=Level.L4_L5,
        dsca_mm2=dsca,
        ap_diameter_mm=10.0,
        disc_height_mm=9.0,
        narrowest_s=0.0,
        recess_mm={Side.LEFT: recess, Side.RIGHT: recess},
        foramen_ratio={Side.LEFT: ratio, Side.RIGHT: ratio},
        foramen_area_mm2={Side.LEFT: 50.0, Side.RIGHT: 50.0},
    )


@pytest.mark.parametrize(
    ("dsca", "recess", "ratio", "grade"),
    [
        (100.0, 5.0, 0.60, Grade.NORMAL_MILD),
        (99.9, 4.99, 0.599, Grade.MODERATE),
        (75.0, 3.0, 0.35, Grade.MODERATE),
        (74.9, 2.99, 0.349, Grade.SEVERE),
    ],
)
def test_measurement_to_grade_rule_at_the_thresholds(
    dsca: float, recess: float, ratio: float, grade: Grade
) -> None:
    m = _measurements(dsca, recess, ratio)
    for cond in Condition:
        assert m.grade(cond) is grade, cond


def _healthy_anatomy(seed: int) -> Anatomy:
    return sample_anatomy(np.random.default_rng(seed), tuple(LevelDrivers() for _ in Level))


def test_healthy_spine_is_normal_everywhere() -> None:
    anat = _healthy_anatomy(1)
    model = SpineModel(anat)
    for m in measure_all(model, model).values():
        assert all(m.grade(c) is Grade.NORMAL_MILD for c in Condition)
        assert 100 <= m.dsca_mm2 < 320 and 5 <= m.ap_diameter_mm < 25 and 5 < m.disc_height_mm < 20


def test_each_driver_narrows_what_it_should() -> None:
    anat = _healthy_anatomy(2)
    lv = Level.L4_L5
    base = measure_level(SpineModel(anat), SpineModel(anat), lv)

    def with_drivers(d: LevelDrivers) -> LevelMeasurements:
        drivers = list(anat.drivers)
        drivers[lv.index] = d
        a = replace(anat, drivers=tuple(drivers))
        return measure_level(SpineModel(a), SpineModel(a.without_pathology()), lv)

    prot = with_drivers(LevelDrivers(protrusion=ProtrusionKind.CENTRAL, protrusion_mm=8.0))
    assert prot.dsca_mm2 < base.dsca_mm2 - 20
    flav = with_drivers(LevelDrivers(flavum_mm=8.0))
    assert flav.dsca_mm2 < base.dsca_mm2 - 20
    facet = with_drivers(LevelDrivers(facet_left=1.0))
    assert facet.recess_mm[Side.LEFT] < 3.0 <= facet.recess_mm[Side.RIGHT]
    foram = with_drivers(LevelDrivers(foraminal_right_mm=9.0))
    assert foram.foramen_ratio[Side.RIGHT] < 0.6 and foram.foramen_ratio[Side.LEFT] > 0.95
    # the other levels are untouched
    assert base.foramen_ratio[Side.LEFT] == pytest.approx(1.0)


def test_grades_cover_all_three_levels_over_a_small_batch() -> None:
    counts: dict[str, Counter[Grade]] = {
        "canal": Counter(),
        "subarticular": Counter(),
        "foraminal": Counter(),
    }
    for seed in range(3):
        rng = np.random.default_rng(seed)
        anat = sample_pathology(rng, sample_anatomy(rng, tuple(LevelDrivers() for _ in Level)))
        for m in measure_all(SpineModel(anat), SpineModel(anat.without_pathology())).values():
            for cond in Condition:
                family = "canal" if cond is Condition.SPINAL_CANAL else cond.value.split("_")[1]
                counts[family][m.grade(cond)] += 1
    for family, c in counts.items():
        assert set(c) == set(Grade), (family, c)


def test_split_is_patient_level_and_sized() -> None:
    names = [f"SYN-{i:06d}" for i in range(20)]
    parts = assign_split(names, Split(0.7, 0.15, 0.15), seed=3)
    assert [len(parts[k]) for k in ("train", "validation", "test")] == [14, 3, 3]
    assert sorted(n for part in parts.values() for n in part) == names
    assert parts == assign_split(names, Split(0.7, 0.15, 0.15), seed=3)
    with pytest.raises(BadRequest):
        Split.parse("0.5,0.5")
    with pytest.raises(BadRequest):
        Split.parse("a,b,c")
