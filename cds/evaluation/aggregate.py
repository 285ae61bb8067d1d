"""From per-study records (cds.evaluation.study) to the report's figures.

Conventions, stated once because every figure depends on them (the report lists them):

* Dice is computed per study over the voxels quick_read segmented (3D: the central sagittal block,
  all slices of every segmented axial level), then averaged over studies. A structure absent from
  both prediction and truth in a study is skipped for that study.
* Level identification: a level counts as identified when the pipeline's disc of that name lies
  on the truth disc of that name. The denominator is every lumbar level of every evaluated study
  (a study that failed or was unanalysable counts as five misses).
* Classification and severity use every (study, level, condition) the pipeline reported, matched
  to the truth *by level name*: a mislabelled level is compared with the truth of the level name
  it was given, exactly as a clinician would read the report. The same figures restricted to
  correctly identified levels are given next to them, to separate labelling errors from
  grading errors. Coverage (the share of truth pairs that got a finding) is reported beside.
* AUROC, sensitivity/specificity and calibration use the learned model's calibrated P(present)
  that the product reports for the condition (the foraminal model's for foraminal conditions, the
  subarticular model's for lateral recess ones, the classifier's for the canal); kappa and the
  confusion matrices use the grade the product reports (hybrid rule + model); the weighted log
  loss uses that model's three-grade distribution (1 - p_present, p_present - p_severe, p_severe).
* 95 % intervals: percentile bootstrap over studies (studies resampled with replacement).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cds.domain import Condition, Grade, Level
from cds.evaluation import metrics as m

BOOTSTRAP_SAMPLES = 200


def conventions() -> list[str]:
    """The convention bullets of this module's docstring, one string each (for the report)."""
    text = (__doc__ or "").split("(the report lists them):", 1)[-1]
    return [" ".join(item.split()) for item in text.split("\n* ") if item.strip()]


BOOTSTRAP_SEED = 20261123


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(float(x), digits)


def dice_of(counts: Sequence[int]) -> float | None:
    return m.OverlapCounts(int(counts[0]), int(counts[1]), int(counts[2])).dice


def dice_section(records: Sequence[Mapping[str, Any]], key: str) -> dict[str, Any]:
    """Mean over studies of the per-study Dice of each structure under ``records[i][key]``."""
    per_class: dict[str, list[float]] = {}
    for rec in records:
        for name, counts in dict(rec.get(key) or {}).items():
            d = dice_of(counts)
            if d is not None:
                per_class.setdefault(name, []).append(d)
    out: dict[str, Any] = {
        name: {
            "mean": _r(float(np.mean(v))),
            "median": _r(float(np.median(v))),
            "p10": _r(float(np.percentile(v, 10))),
            "n_studies": len(v),
        }
        for name, v in per_class.items()
    }
    return out


def study_mean_dice(rec: Mapping[str, Any], key: str = "sagittal_overlap") -> float | None:
    return m.mean_or_none([dice_of(c) for c in dict(rec.get(key) or {}).values()])


# ----------------------------------------------------------------------------------------------
# levels
# ----------------------------------------------------------------------------------------------


def level_section(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    n = len(records)
    per_level = Counter[str]()
    offsets = Counter[str]()
    all_correct = flagged = flagged_wrong = wrong = 0
    for rec in records:
        li = rec.get("level_identification") or {}
        correct = set(li.get("correct", []))
        per_level.update(correct)
        ok = len(correct) == len(Level)
        all_correct += int(ok)
        wrong += int(not ok)
        is_flagged = bool(li.get("uncertain", rec.get("labelling_uncertain", False)))
        flagged += int(is_flagged)
        flagged_wrong += int(is_flagged and not ok)
        for said, true in dict(li.get("found", {})).items():
            if true is None:
                offsets["not on a lumbar disc"] += 1
            else:
                d = Level(true).index - Level(said).index
                offsets["correct" if d == 0 else f"{d:+d} level{'s' if abs(d) > 1 else ''}"] += 1
    total = n * len(Level)
    return {
        "accuracy": _r(sum(per_level.values()) / total) if total else None,
        "study_accuracy": _r(all_correct / n) if n else None,
        "per_level": {lv.value: _r(per_level[lv.value] / n) if n else None for lv in Level},
        "n_studies": n,
        "n_levels": total,
        "label_offsets": dict(offsets.most_common()),
        "uncertain_flag_share": _r(flagged / n) if n else None,
        "wrong_studies_flagged_uncertain": _r(flagged_wrong / wrong) if wrong else None,
    }


# ----------------------------------------------------------------------------------------------
# findings: pairs of (truth, prediction)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One reported (study, level, condition) next to its truth."""

    study: int  # index of the study (bootstrap unit)
    level: Level
    truth: Grade
    grade: Grade
    p_present: float
    p_severe: float
    level_correct: bool

    @property
    def distribution(self) -> tuple[float, float, float]:
        return (1.0 - self.p_present, self.p_present - self.p_severe, self.p_severe)


def finding_pairs(records: Sequence[Mapping[str, Any]]) -> dict[Condition, list[Pair]]:
    out: dict[Condition, list[Pair]] = {c: [] for c in Condition}
    for i, rec in enumerate(records):
        correct = set((rec.get("level_identification") or {}).get("correct", []))
        for level_name, lv in dict(rec.get("levels") or {}).items():
            for cond_name, c in dict(lv.get("conditions", {})).items():
                if c.get("truth") is None or c.get("grade") is None or c.get("p_present") is None:
                    continue
                out[Condition(cond_name)].append(
                    Pair(
                        study=i,
                        level=Level(level_name),
                        truth=Grade(c["truth"]),
                        grade=Grade(c["grade"]),
                        p_present=float(c["p_present"]),
                        p_severe=min(float(c["p_severe"]), float(c["p_present"])),
                        level_correct=level_name in correct,
                    )
                )
    return out


def bootstrap_ci(
    pairs: Sequence[Pair], statistic: Callable[[Sequence[Pair]], float | None], n_studies: int
) -> tuple[float, float] | None:
    """95 % percentile interval of ``statistic`` over studies resampled with replacement."""
    if not pairs or n_studies < 2:
        return None
    by_study: dict[int, list[Pair]] = {}
    for p in pairs:
        by_study.setdefault(p.study, []).append(p)
    ids = list(by_study)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    values = []
    for _ in range(BOOTSTRAP_SAMPLES):
        sample = [p for s in rng.choice(len(ids), size=len(ids), replace=True) for p in by_study[ids[s]]]
        v = statistic(sample)
        if v is not None:
            values.append(v)
    if len(values) < BOOTSTRAP_SAMPLES // 2:
        return None
    lo, hi = np.percentile(values, (2.5, 97.5))
    return (round(float(lo), 4), round(float(hi), 4))


def _auroc(pairs: Sequence[Pair]) -> float | None:
    return m.auroc([p.truth.present for p in pairs], [p.p_present for p in pairs])


def _kappa(pairs: Sequence[Pair]) -> float | None:
    return m.quadratic_weighted_kappa([p.truth.rank for p in pairs], [p.grade.rank for p in pairs])


def classification_section(
    pairs: Mapping[Condition, Sequence[Pair]], threshold: float, n_studies: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for condition, ps in pairs.items():
        y = [p.truth.present for p in ps]
        s = [p.p_present for p in ps]
        correct = [p for p in ps if p.level_correct]
        out[condition.value] = {
            "n": len(ps),
            "prevalence": _r(float(np.mean(y))) if ps else None,
            "auroc": _r(_auroc(ps)),
            "auroc_ci95": bootstrap_ci(ps, _auroc, n_studies),
            "at_threshold": m.rates_at(y, s, threshold).to_json(),
            "reported_grade": m.rates_at(y, [float(p.grade.present) for p in ps], 0.5).to_json()
            | {"threshold": "grade >= moderate"},
            "ece": _r(m.expected_calibration_error(y, s)),
            "reliability": [
                {
                    "lower": b.lower,
                    "upper": b.upper,
                    "count": b.count,
                    "mean_probability": _r(b.mean_probability),
                    "observed_rate": _r(b.observed_rate),
                }
                for b in m.reliability_bins(y, s)
            ],
            "correct_levels_only": {"n": len(correct), "auroc": _r(_auroc(correct))},
        }
    return out


def _most_probable(distribution: Sequence[float]) -> int:
    """Rank of the most probable grade, ties to the milder grade (as SeverityEstimate.grade)."""
    return min(range(len(distribution)), key=lambda r: (-distribution[r], r))


def _constant_guess_loss(truth: Sequence[int]) -> float | None:
    """Weighted log loss of the best image-blind guess: the same probabilities for every case,
    proportional to weight x frequency of each grade in this truth (the weighted-loss optimum)."""
    if not truth:
        return None
    counts = np.bincount(np.asarray(truth, dtype=np.int64), minlength=3).astype(np.float64)
    p = np.asarray(m.RSNA_WEIGHTS) * counts
    p = p / p.sum()
    return m.weighted_log_loss(truth, np.tile(p, (len(truth), 1)))


def _rsna_any_severe(records: Sequence[Mapping[str, Any]]) -> float | None:
    """RSNA's extra term: per study, any severe spinal canal level (weight 4) vs none (weight 1),
    predicted by the highest P(severe) over the reported levels."""
    truth, probs = [], []
    for rec in records:
        levels = dict(rec.get("levels") or {})
        canal = [lv["conditions"].get(Condition.SPINAL_CANAL.value, {}) for lv in levels.values()]
        reported = [c for c in canal if c.get("p_severe") is not None]
        if not canal or not reported:
            continue
        any_severe = any(c.get("truth") == Grade.SEVERE.value for c in canal)
        p = max(float(c["p_severe"]) for c in reported)
        truth.append(int(any_severe))
        probs.append((1.0 - p, p))
    return m.weighted_log_loss(truth, probs, (1.0, 4.0))


def severity_section(
    pairs: Mapping[Condition, Sequence[Pair]], records: Sequence[Mapping[str, Any]], n_studies: int
) -> dict[str, Any]:
    out: dict[str, Any] = {"per_condition": {}}
    losses: dict[Condition, float | None] = {}
    for condition, ps in pairs.items():
        t = [p.truth.rank for p in ps]
        g = [p.grade.rank for p in ps]
        model_only = [_most_probable(p.distribution) for p in ps]
        loss = m.weighted_log_loss(t, [p.distribution for p in ps]) if ps else None
        losses[condition] = loss
        correct = [p for p in ps if p.level_correct]
        out["per_condition"][condition.value] = {
            "n": len(ps),
            "kappa": _r(_kappa(ps)),
            "kappa_ci95": bootstrap_ci(ps, _kappa, n_studies),
            "kappa_model_only": _r(m.quadratic_weighted_kappa(t, model_only)),
            "accuracy": _r(float(np.mean(np.asarray(t) == np.asarray(g)))) if ps else None,
            "confusion_matrix": m.confusion_matrix(t, g).tolist(),
            "weighted_log_loss": _r(loss),
            "truth_counts": [int(t.count(r)) for r in range(3)],
            "correct_levels_only": {"n": len(correct), "kappa": _r(_kappa(correct))},
        }
    groups = {
        "spinal_canal": [Condition.SPINAL_CANAL],
        "neural_foraminal": [Condition.LEFT_FORAMINAL, Condition.RIGHT_FORAMINAL],
        "subarticular": [Condition.LEFT_SUBARTICULAR, Condition.RIGHT_SUBARTICULAR],
    }
    grouped: dict[str, float | None] = {}
    reference: dict[str, float | None] = {}
    for name, conds in groups.items():
        ps = [p for c in conds for p in pairs[c]]
        truth = [p.truth.rank for p in ps]
        grouped[name] = _r(m.weighted_log_loss(truth, [p.distribution for p in ps]))
        reference[name] = _r(_constant_guess_loss(truth))
    grouped["any_severe_spinal"] = _r(_rsna_any_severe(records))
    present = [v for v in grouped.values() if v is not None]
    out["rsna_weighted_log_loss"] = {
        "groups": grouped,
        "mean": _r(float(np.mean(present))) if len(present) == len(grouped) else None,
        "constant_guess_reference": reference,
        "note": "RSNA 2024 style: sample weights 1/2/4 for normal_mild/moderate/severe, one score per "
        "condition group (left and right pooled) plus any-severe-spinal (weights 1/4), averaged; lower is "
        "better. Reference: the best constant guess for the same truth (the weighted grade frequencies, "
        "knowing nothing about the images); a score above it is worse than not looking",
    }
    return out


# ----------------------------------------------------------------------------------------------
# measurements
# ----------------------------------------------------------------------------------------------

#: Report name -> record keys pooled under it (left and right pooled for the side measurements).
MEASUREMENT_GROUPS: Mapping[str, tuple[str, ...]] = {
    "dsca_mm2": ("dsca_mm2",),
    "ap_diameter_mm": ("ap_diameter_mm",),
    "lateral_recess_depth_mm": ("lateral_recess_depth_mm_left", "lateral_recess_depth_mm_right"),
    "foraminal_area_ratio": ("foraminal_area_ratio_left", "foraminal_area_ratio_right"),
}


def truth_usable(key: str, truth: float) -> bool:
    """A generator value that cannot be a measurement of the anatomy it describes is not used as
    truth: an AP diameter of 0 mm next to a non-zero dural sac area (about 2 % of generated
    levels, a generator measurement artefact) would count the generator's error as ours."""
    return not (key == "ap_diameter_mm" and truth <= 0.0)


def measurement_pairs(
    records: Sequence[Mapping[str, Any]], correct_only: bool = False
) -> dict[str, tuple[list[float], list[float]]]:
    """(predicted, truth) per measurement group over every reported level with usable truth."""
    out: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in MEASUREMENT_GROUPS}
    for rec in records:
        correct = set((rec.get("level_identification") or {}).get("correct", []))
        for level_name, lv in dict(rec.get("levels") or {}).items():
            if correct_only and level_name not in correct:
                continue
            values = dict(lv.get("measurements", {}))
            for group, keys in MEASUREMENT_GROUPS.items():
                for key in keys:
                    v = values.get(key) or {}
                    if (
                        v.get("truth") is not None
                        and v.get("predicted") is not None
                        and truth_usable(key, float(v["truth"]))
                    ):
                        out[group][0].append(float(v["predicted"]))
                        out[group][1].append(float(v["truth"]))
    return out


def _unusable_truth(records: Sequence[Mapping[str, Any]], group: str) -> int:
    return sum(
        1
        for rec in records
        for lv in dict(rec.get("levels") or {}).values()
        for key in MEASUREMENT_GROUPS[group]
        if (v := (lv.get("measurements") or {}).get(key) or {}).get("truth") is not None
        and v.get("predicted") is not None
        and not truth_usable(key, float(v["truth"]))
    )


def measurement_section(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    everything = measurement_pairs(records)
    correct = measurement_pairs(records, correct_only=True)
    out: dict[str, Any] = {}
    for name in MEASUREMENT_GROUPS:
        pred, truth = everything[name]
        summary = m.error_summary(pred, truth).to_json()
        out[name] = {
            **{k: _r(v) if isinstance(v, float) else v for k, v in summary.items()},
            "reported": bool(pred),
            "excluded_unusable_truth": _unusable_truth(records, name),
            "correct_levels_only": {
                k: _r(v) if isinstance(v, float) else v
                for k, v in m.error_summary(*correct[name]).to_json().items()
            },
        }
    return out


# ----------------------------------------------------------------------------------------------
# coverage, speed, failures
# ----------------------------------------------------------------------------------------------


def coverage_section(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    status = Counter(str(r.get("status")) for r in records)
    analysed = sum(
        int(bool(lv.get("analysed"))) for r in records for lv in dict(r.get("levels") or {}).values()
    )
    reasons = Counter[str]()
    for r in records:
        for part in str(r.get("reason") or r.get("error") or "").split("; "):
            if part:
                reasons[part.split(":")[0]] += 1
    total = len(records) * len(Level)
    return {
        "studies": len(records),
        "status": dict(status),
        "levels_analysed_share": _r(analysed / total) if total else None,
        "reasons": dict(reasons.most_common(10)),
        "failures": [
            {"study": r["study"], "error": r.get("error")} for r in records if r.get("status") == "failed"
        ][:20],
    }


def speed_section(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    stages: dict[str, list[float]] = {}
    totals = []
    for r in records:
        for k, v in dict(r.get("timings_ms") or {}).items():
            stages.setdefault(k, []).append(float(v))
        if r.get("total_ms") is not None:
            totals.append(float(r["total_ms"]))

    def stat(values: Iterable[float]) -> dict[str, float]:
        v = sorted(values)
        return {"median": round(float(np.median(v)), 1), "p95": round(float(np.percentile(v, 95)), 1)}

    return {
        "note": "wall time of each study inside this evaluation (shared CPU, other work running, first "
        "study includes model loading); bench/quick_read_bench.py is the reference for speed",
        "total_ms": stat(totals) if totals else None,
        "stages_ms": {k: stat(v) for k, v in stages.items()},
    }
