"""'Where targets are missed and why', written from the measured figures (never canned text).

Each missed target gets the evidence the metrics already hold that points at a cause: the level
labelling (figures restricted to correctly identified levels), the operating point (sensitivity /
specificity at the shipped threshold), calibration, the dominant confusion, measurement bias, or
coverage (levels never analysed). The sentences only restate numbers from metrics.json.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cds.domain import Condition, Grade
from cds.evaluation.targets import lookup


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _level_notes(metrics: Mapping[str, Any]) -> list[str]:
    lv = metrics.get("levels") or {}
    if not lv:
        return []
    offsets = dict(lv.get("label_offsets") or {})
    wrong = {k: v for k, v in offsets.items() if k != "correct"}
    parts = [
        f"Level identification {_pct(lv.get('accuracy'))} of {lv.get('n_levels')} lumbar levels "
        f"({_pct(lv.get('study_accuracy'))} of studies fully right)."
    ]
    if wrong:
        listed = ", ".join(f"{k}: {v}" for k, v in wrong.items())
        parts.append(
            f"Labelled discs that were not the disc of their name (truth - label): {listed}; "
            "a positive offset means the pipeline named a disc one or more levels too cranial."
        )
    flagged = lv.get("wrong_studies_flagged_uncertain")
    if flagged is not None:
        parts.append(
            f"The 'labelling uncertain' flag was raised on {_pct(flagged)} of the studies "
            "with a labelling error."
        )
    cov = metrics.get("coverage") or {}
    if cov.get("levels_analysed_share") is not None:
        reasons = "; ".join(f"{k} ({v})" for k, v in dict(cov.get("reasons") or {}).items())
        parts.append(
            f"Levels analysed: {_pct(cov['levels_analysed_share'])}. Reasons given: {reasons or 'none'}."
        )
    return [" ".join(parts)]


def _classification_note(c: Condition, metrics: Mapping[str, Any]) -> str:
    cl = (metrics.get("classification") or {}).get(c.value) or {}
    at = cl.get("at_threshold") or {}
    correct = cl.get("correct_levels_only") or {}
    text = (
        f"{c.value}: AUROC {_f(cl.get('auroc'))} over {cl.get('n')} reported levels "
        f"(prevalence {_pct(cl.get('prevalence'))}); on correctly identified levels only "
        f"{_f(correct.get('auroc'))} (n={correct.get('n')}). At the shipped threshold "
        f"{at.get('threshold')}: sensitivity {_pct(at.get('sensitivity'))}, specificity "
        f"{_pct(at.get('specificity'))}; ECE {_f(cl.get('ece'))}."
    )
    auc, auc_ok = cl.get("auroc"), correct.get("auroc")
    if auc is not None and auc < 0.6:
        text += " That is close to chance (0.5): the classifier's P(present) does not rank the levels."
    elif at.get("specificity") is not None and at["specificity"] < 0.2:
        text += " At the threshold nearly every level is called positive."
    if auc is not None and auc_ok is not None:
        if auc_ok - auc > 0.03:
            text += " Mislabelled levels cost a visible part of the AUROC."
        else:
            text += " Level labelling errors do not explain the miss (same figure on correct levels)."
    return text


def _severity_note(c: Condition, metrics: Mapping[str, Any]) -> str:
    sv = ((metrics.get("severity") or {}).get("per_condition") or {}).get(c.value) or {}
    cm = sv.get("confusion_matrix")
    text = (
        f"{c.value}: kappa {_f(sv.get('kappa'))} (reported grade), {_f(sv.get('kappa_model_only'))} "
        f"(learned model alone), {_f((sv.get('correct_levels_only') or {}).get('kappa'))} on correctly "
        "identified levels."
    )
    if cm:
        grades = list(Grade)
        off = [(cm[i][j], grades[i], grades[j]) for i in range(3) for j in range(3) if i != j]
        off.sort(key=lambda x: -x[0])
        if off and off[0][0]:
            n, t, p = off[0]
            total = sum(sum(r) for r in cm)
            text += f" Most frequent error: truth {t.display} reported {p.display} ({n} of {total})."
    return text


def _measurement_note(name: str, metrics: Mapping[str, Any]) -> str:
    ms = (metrics.get("measurements") or {}).get(name) or {}
    correct = ms.get("correct_levels_only") or {}
    bias = ms.get("bias")
    direction = "" if bias is None else (" (over-estimates)" if bias > 0 else " (under-estimates)")
    text = (
        f"{name}: MAE {_f(ms.get('mae'), 2)}, median {_f(ms.get('median_ae'), 2)}, 90th percentile "
        f"{_f(ms.get('p90_ae'), 2)}, bias {_f(bias, 2)}{direction}, n={ms.get('n')}; on correctly "
        f"identified levels MAE {_f(correct.get('mae'), 2)} (n={correct.get('n')})."
    )
    mae, mae_ok = ms.get("mae"), correct.get("mae")
    if mae is not None and mae_ok is not None:
        if mae_ok < 0.8 * mae:
            text += " Levels read at the wrong disc (a different anatomy) inflate the error."
        else:
            text += " The error remains on correctly identified levels: it comes from the axial masks."
    sac = (((metrics.get("segmentation") or {}).get("synthetic_axial") or {}).get("dural_sac") or {}).get(
        "mean"
    )
    if sac is not None:
        text += f" Axial dural sac Dice: {_f(sac)}."
    if (ms.get("p90_ae") or 0) > 2 * (ms.get("median_ae") or 0) > 0:
        text += " A minority of gross errors (90th percentile > twice the median) dominates the mean."
    return text


def explain_misses(metrics: Mapping[str, Any], verdicts: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One entry per missed target: the target and the data-backed explanation."""
    out: list[dict[str, str]] = []
    missed = {v["key"]: v for v in verdicts if v["verdict"] == "MISS"}
    level_text = " ".join(_level_notes(metrics))
    for key, v in missed.items():
        if key.startswith("dice_"):
            s = key.removeprefix("dice_")
            d = ((metrics.get("segmentation") or {}).get("synthetic_sagittal") or {}).get(s) or {}
            why = (
                f"Mean {_f(d.get('mean'))}, median {_f(d.get('median'))}, 10th percentile {_f(d.get('p10'))} "
                f"over {d.get('n_studies')} studies: a tail of poor studies (see the worst cases in the "
                "gallery) pulls the mean down."
            )
        elif key == "level_identification":
            why = level_text
        elif key.startswith("auroc_"):
            why = _classification_note(Condition(key.removeprefix("auroc_")), metrics)
        elif key.startswith("kappa_"):
            why = _severity_note(Condition(key.removeprefix("kappa_")), metrics)
        elif key == "dsca_mae":
            why = _measurement_note("dsca_mm2", metrics)
        elif key == "ap_mae":
            why = _measurement_note("ap_diameter_mm", metrics)
        elif key == "spider_dice":
            sp = (metrics.get("segmentation") or {}).get("spider") or {}
            summary = sp.get("summary") or {}
            why = ", ".join(f"{k} {_f(summary.get(k))}" for k in ("disc", "vertebra", "canal"))
        elif key == "pointing_game":
            fa = (metrics.get("explanation") or {}).get("faithfulness") or {}
            by = ", ".join(
                f"{k} {_pct((r or {}).get('rate'))}"
                for k, r in dict(fa.get("pointing_game_by_condition") or {}).items()
            )
            dl = fa.get("deletion") or {}
            e2e = (fa.get("pointing_game_end_to_end") or {}).get("rate")
            why = (
                f"Heatmaps of truth-positive findings on the crop of the true level; by condition: {by}. "
                f"At the level the pipeline named (end to end): {_pct(e2e)}. Deletion check holds for "
                f"{_pct((dl.get('holds') or {}).get('rate'))} (mean drop of the present logit when the top "
                f"region is removed {_f(dl.get('mean_drop_top'))} vs a random region "
                f"{_f(dl.get('mean_drop_random'))}). "
                f"Skipped findings: {fa.get('skipped')}."
            )
            if ((dl.get("holds") or {}).get("rate") or 1.0) < 0.5:
                why += " The maps do not mark what drives the score, so they cannot point at the cause."
        else:
            why = "See the section of this figure."
        out.append({"target": v["target"], "measured": _f(v["measured"]), "wanted": v["wanted"], "why": why})
    if lookup(metrics, ("measurements", "foraminal_area_ratio", "n")) in (None, 0.0):
        out.append(
            {
                "target": "foraminal area ratio (measurement)",
                "measured": "not reported",
                "wanted": "reported",
                "why": "The pipeline does not report a foraminal area ratio in this release, so foraminal "
                "grades come from the classifier alone and are flagged uncertain.",
            }
        )
    return out
