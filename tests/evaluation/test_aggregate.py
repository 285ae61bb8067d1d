"""Aggregation of per-study records into the report's figures, on hand-made records."""

from __future__ import annotations

from typing import Any

import pytest

from cds.domain import Condition, Level
from cds.evaluation import aggregate as agg
from cds.evaluation.misses import explain_misses
from cds.evaluation.report import render
from cds.evaluation.targets import anchors, verdicts


def record(
    name: str,
    canal: dict[str, tuple[str, str, float, float]],
    correct: list[str],
    dsca: dict[str, tuple[float, float]] | None = None,
) -> dict[str, Any]:
    """canal: level -> (truth grade, reported grade, p_present, p_severe); other conditions absent."""
    levels: dict[str, Any] = {}
    for lv in Level:
        got = canal.get(lv.value)
        conditions: dict[str, dict[str, Any]] = {
            c.value: {"truth": "normal_mild", "grade": None, "p_present": None, "p_severe": None}
            for c in Condition
        }
        if got:
            truth, grade, p, ps = got
            conditions["spinal_canal"] = {"truth": truth, "grade": grade, "p_present": p, "p_severe": ps}
        t, pr = (dsca or {}).get(lv.value, (None, None))
        levels[lv.value] = {
            "analysed": got is not None,
            "conditions": conditions,
            "measurements": {"dsca_mm2": {"truth": t, "predicted": pr}},
        }
    return {
        "study": name,
        "status": "complete",
        "levels": levels,
        "level_identification": {
            "found": {lv: lv for lv in correct},
            "correct": correct,
            "uncertain": False,
        },
        "sagittal_overlap": {"disc": [8, 10, 10], "canal": [0, 0, 0]},
        "timings_ms": {"segment_sagittal": 100.0},
        "total_ms": 500.0,
    }


def records() -> list[dict[str, Any]]:
    all_levels = [lv.value for lv in Level]
    a = record(
        "A",
        {"L4-L5": ("severe", "severe", 0.9, 0.8), "L5-S1": ("normal_mild", "normal_mild", 0.2, 0.05)},
        all_levels,
        dsca={"L4-L5": (60.0, 64.0), "L5-S1": (150.0, 140.0)},
    )
    b = record(
        "B",
        {"L4-L5": ("moderate", "normal_mild", 0.6, 0.1), "L5-S1": ("normal_mild", "moderate", 0.7, 0.2)},
        ["L1-L2", "L2-L3", "L3-L4"],
        dsca={"L4-L5": (90.0, 120.0)},
    )
    b["level_identification"]["found"].update({"L4-L5": "L5-S1", "L5-S1": None})
    return [a, b]


def test_dice_is_averaged_over_studies_and_skips_empty_structures() -> None:
    d = agg.dice_section(records(), "sagittal_overlap")
    assert d["disc"]["mean"] == pytest.approx(0.8) and d["disc"]["n_studies"] == 2
    assert "canal" not in d  # empty in prediction and truth everywhere


def test_level_section_counts_levels_and_offsets() -> None:
    lv = agg.level_section(records())
    assert lv["accuracy"] == pytest.approx(8 / 10)
    assert lv["study_accuracy"] == pytest.approx(0.5)
    assert lv["per_level"]["L4-L5"] == pytest.approx(0.5)
    assert lv["label_offsets"] == {"correct": 8, "+1 level": 1, "not on a lumbar disc": 1}


def test_classification_and_severity_from_pairs() -> None:
    recs = records()
    pairs = agg.finding_pairs(recs)
    assert len(pairs[Condition.SPINAL_CANAL]) == 4 and not pairs[Condition.LEFT_FORAMINAL]
    cl = agg.classification_section(pairs, 0.5, len(recs))["spinal_canal"]
    # positives 0.9, 0.6; negatives 0.2, 0.7 -> pairs won: (0.9>0.2, 0.9>0.7, 0.6>0.2) = 3/4
    assert cl["auroc"] == pytest.approx(0.75)
    assert cl["at_threshold"]["sensitivity"] == 1.0 and cl["at_threshold"]["specificity"] == 0.5
    assert cl["correct_levels_only"]["n"] == 2  # study B's L4-L5 / L5-S1 were mislabelled
    sv = agg.severity_section(pairs, recs, len(recs))
    canal = sv["per_condition"]["spinal_canal"]
    assert canal["confusion_matrix"] == [[1, 1, 0], [1, 0, 0], [0, 0, 1]]
    assert canal["truth_counts"] == [2, 1, 1]
    assert sv["rsna_weighted_log_loss"]["groups"]["neural_foraminal"] is None
    assert sv["rsna_weighted_log_loss"]["mean"] is None  # a group without findings: no overall score


def test_measurements_pool_reported_levels_and_split_correct_ones() -> None:
    ms = agg.measurement_section(records())
    assert ms["dsca_mm2"]["n"] == 3
    assert ms["dsca_mm2"]["mae"] == pytest.approx((4 + 10 + 30) / 3, abs=1e-4)  # rounded to 4 places
    assert ms["dsca_mm2"]["correct_levels_only"]["n"] == 2
    assert ms["foraminal_area_ratio"]["reported"] is False


def test_zero_ap_truth_is_excluded_and_counted() -> None:
    recs = records()
    recs[0]["levels"]["L4-L5"]["measurements"]["ap_diameter_mm"] = {"truth": 0.0, "predicted": 3.0}
    recs[0]["levels"]["L5-S1"]["measurements"]["ap_diameter_mm"] = {"truth": 9.0, "predicted": 8.0}
    ap = agg.measurement_section(recs)["ap_diameter_mm"]
    assert ap["n"] == 1 and ap["mae"] == pytest.approx(1.0) and ap["excluded_unusable_truth"] == 1


def metrics_for(recs: list[dict[str, Any]]) -> dict[str, Any]:
    pairs = agg.finding_pairs(recs)
    metrics: dict[str, Any] = {
        "generated_at": "now",
        "command": "cds evaluate --out x",
        "runtime_s": 1.0,
        "machine": {"cpus": 2, "load_start": "1", "load_end": "1"},
        "models": {"classifier": {"version": "1.0.0", "sha256": "ab" * 32}},
        "code": {"commit": "abc", "pipeline_code_digest": "def", "segmentation_replay": "off"},
        "data": {
            "folder": "/data",
            "n_studies": 2,
            "n_available": 2,
            "generator_versions": ["0.1.0"],
            "seed_min": 1,
            "seed_max": 2,
            "overlap": {
                "checked": False,
                "reason": "none",
                "sources": [],
                "unchecked": [],
                "overlapping": [],
            },
        },
        "threshold": 0.5,
        "conventions": ["c"],
        "coverage": agg.coverage_section(recs),
        "segmentation": {
            "synthetic_sagittal": agg.dice_section(recs, "sagittal_overlap"),
            "synthetic_axial": {},
            "spider": None,
            "spider_reason": "no --spider folder given",
        },
        "levels": agg.level_section(recs),
        "classification": agg.classification_section(pairs, 0.5, 2),
        "severity": agg.severity_section(pairs, recs, 2),
        "measurements": agg.measurement_section(recs),
        "explanation": {"faithfulness": {"available": False, "reason": "not importable"}, "rationale": None},
        "speed": agg.speed_section(recs),
        "plots": {"roc": None, "calibration": None, "confusion": None, "measurements": None, "dice": []},
        "gallery": [],
    }
    metrics["targets"] = verdicts(metrics)
    metrics["anchors"] = anchors(metrics)
    metrics["misses"] = explain_misses(metrics, metrics["targets"])
    return metrics


def test_targets_misses_and_report_escape_untrusted_text() -> None:
    recs = records()
    recs[1]["status"] = "failed"
    recs[1]["error"] = "StageError: <script>alert(1)</script>"
    metrics = metrics_for(recs)
    by_key = {t["key"]: t for t in metrics["targets"]}
    assert by_key["level_identification"]["verdict"] == "MISS"
    assert by_key["dsca_mae"]["verdict"] == "MISS"
    assert by_key["spider_dice"]["verdict"] == "not measured"
    level_miss = next(x for x in metrics["misses"] if x["target"].startswith("level identification"))
    assert "+1 level: 1" in level_miss["why"]
    assert any(x["target"].startswith("foraminal area ratio") for x in metrics["misses"])
    html = render(metrics)
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "not available: not importable" in html
    assert "Where targets are missed and why" in html


def test_constant_guess_reference_is_the_weighted_frequency_optimum() -> None:
    # balanced grades: guess (1, 2, 4) / 7 -> (ln 7 + 2 ln 3.5 + 4 ln 1.75) / 7
    import math

    expected = (math.log(7) + 2 * math.log(3.5) + 4 * math.log(1.75)) / 7
    assert agg._constant_guess_loss([0, 1, 2]) == pytest.approx(expected)
    assert agg._constant_guess_loss([]) is None
