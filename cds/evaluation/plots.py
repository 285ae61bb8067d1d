"""The report's plots as small PNG files (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cds.domain import THRESHOLDS, Condition, MeasurementName
from cds.evaluation import metrics as m

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cds.evaluation.aggregate import Pair

DPI = 80
COLOURS = {
    Condition.SPINAL_CANAL: "#1b9e77",
    Condition.LEFT_FORAMINAL: "#d95f02",
    Condition.RIGHT_FORAMINAL: "#7570b3",
    Condition.LEFT_SUBARTICULAR: "#e7298a",
    Condition.RIGHT_SUBARTICULAR: "#66a61e",
}


def _figure(width: float, height: float) -> Figure:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI)


def _save(fig: Figure, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=DPI)
    return path.name


def roc_plot(pairs: Mapping[Condition, Sequence[Pair]], threshold: float, path: Path) -> str:
    fig = _figure(6.0, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    for condition, ps in pairs.items():
        y = [p.truth.present for p in ps]
        s = [p.p_present for p in ps]
        auc = m.auroc(y, s)
        if auc is None:
            continue
        fpr, tpr = m.roc_curve(y, s)
        ax.plot(fpr, tpr, color=COLOURS[condition], label=f"{condition.value} (AUROC {auc:.3f}, n={len(ps)})")
        r = m.rates_at(y, s, threshold)
        if r.sensitivity is not None and r.specificity is not None:
            ax.plot([1 - r.specificity], [r.sensitivity], "o", color=COLOURS[condition])
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"Stenosis present (moderate or severe): ROC; dots = shipped threshold {threshold:g}")
    ax.title.set_fontsize(9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def calibration_plot(classification: Mapping[str, Any], path: Path) -> str:
    fig = _figure(10.0, 2.6)
    for i, condition in enumerate(Condition):
        ax = fig.add_subplot(1, len(Condition), i + 1)
        c = classification.get(condition.value) or {}
        bins = [b for b in c.get("reliability", []) if b["count"]]
        if bins:
            x = [b["mean_probability"] for b in bins]
            y = [b["observed_rate"] for b in bins]
            size = [max(4.0, 60.0 * b["count"] / max(bb["count"] for bb in bins)) for b in bins]
            ax.plot(x, y, "-", color=COLOURS[condition])
            ax.scatter(x, y, s=size, color=COLOURS[condition])
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ece = c.get("ece")
        ax.set_title(f"{condition.value}\nECE {ece:.3f}" if ece is not None else condition.value, fontsize=8)
        ax.set_xlabel("predicted P(present)", fontsize=7)
        if i == 0:
            ax.set_ylabel("observed rate", fontsize=7)
        ax.tick_params(labelsize=6)
    return _save(fig, path)


def confusion_plot(severity: Mapping[str, Any], path: Path) -> str:
    fig = _figure(10.0, 2.5)
    names = ["normal/mild", "moderate", "severe"]
    for i, condition in enumerate(Condition):
        ax = fig.add_subplot(1, len(Condition), i + 1)
        c = (severity.get("per_condition") or {}).get(condition.value) or {}
        cm = np.asarray(c.get("confusion_matrix") or np.zeros((3, 3)), dtype=float)
        ax.imshow(cm, cmap="Blues")
        for (r, col), v in np.ndenumerate(cm):
            ax.text(
                col,
                r,
                f"{int(v)}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if v > cm.max() / 2 else "black",
            )
        ax.set_xticks(range(3), ["N/M", "mod", "sev"], fontsize=6)
        ax.set_yticks(range(3), names, fontsize=6)
        kappa = c.get("kappa")
        ax.set_title(
            f"{condition.value}\nkappa {kappa:.2f}" if kappa is not None else condition.value, fontsize=8
        )
        ax.set_xlabel("reported", fontsize=7)
        if i == 0:
            ax.set_ylabel("truth", fontsize=7)
    return _save(fig, path)


def measurement_plot(pairs: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: Path) -> str:
    shown = [(k, v) for k, v in pairs.items() if v[0]]
    fig = _figure(3.2 * max(1, len(shown)), 3.0)
    cuts = {
        MeasurementName.DSCA_MM2.value: THRESHOLDS[Condition.SPINAL_CANAL],
        MeasurementName.LATERAL_RECESS_DEPTH_MM.value: THRESHOLDS[Condition.LEFT_SUBARTICULAR],
        MeasurementName.FORAMINAL_AREA_RATIO.value: THRESHOLDS[Condition.LEFT_FORAMINAL],
    }
    for i, (name, (pred, truth)) in enumerate(shown):
        ax = fig.add_subplot(1, len(shown), i + 1)
        ax.scatter(truth, pred, s=4, alpha=0.5)
        lo = float(min(min(truth), min(pred)))
        hi = float(max(max(truth), max(pred)))
        ax.plot([lo, hi], [lo, hi], ":", color="grey")
        th = cuts.get(name)
        if th is not None:
            for cut in (th.severe_below, th.moderate_below):
                ax.axvline(cut, color="red", lw=0.5)
                ax.axhline(cut, color="red", lw=0.5)
        mae = m.error_summary(pred, truth).mae
        ax.set_title(f"{name}\nMAE {mae:.2f} (n={len(pred)})", fontsize=8)
        ax.set_xlabel("truth", fontsize=7)
        ax.set_ylabel("pipeline", fontsize=7)
        ax.tick_params(labelsize=6)
    return _save(fig, path)


def dice_plot(per_study: Mapping[str, Sequence[float]], title: str, path: Path) -> str:
    names = [k for k, v in per_study.items() if len(v)]
    fig = _figure(max(4.0, 0.9 * len(names) + 1.5), 3.0)
    ax = fig.add_subplot(1, 1, 1)
    if names:
        ax.boxplot([per_study[n] for n in names], tick_labels=names, showfliers=True)
    ax.axhline(0.90, color="red", lw=0.6, ls="--")
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice per study")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelsize=7, rotation=20)
    return _save(fig, path)
