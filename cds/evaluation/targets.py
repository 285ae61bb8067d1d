"""The issues' targets and the published anchors, next to what was measured.

Targets are issue 4 (synthetic test split and real SPIDER hold-out) and issue 5 (pointing game,
zero unverified rationale text). Anchors are published figures on *real* data, shown for scale
only: the synthetic split is easier in some respects (clean anatomy, exact truth) and harder in
others (no real-data pre-training), so a PASS here is not a claim of parity with them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cds.domain import Condition


class Verdict(StrEnum):
    PASS = "PASS"
    MISS = "MISS"
    NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    path: tuple[str, ...]  # where the measured value lies in metrics.json
    threshold: float
    higher_is_better: bool
    unit: str = ""
    source: str = "issue 4"

    def verdict(self, value: float | None) -> Verdict:
        if value is None:
            return Verdict.NOT_MEASURED
        ok = value >= self.threshold if self.higher_is_better else value <= self.threshold
        return Verdict.PASS if ok else Verdict.MISS

    @property
    def wanted(self) -> str:
        return f"{'>=' if self.higher_is_better else '<='} {self.threshold:g}{self.unit}"


def _auroc_target(c: Condition) -> Target:
    canal = c is Condition.SPINAL_CANAL
    return Target(
        f"auroc_{c.value}",
        f"{c.display} AUROC (stenosis present)",
        ("classification", c.value, "auroc"),
        0.98 if canal else 0.95,
        True,
    )


TARGETS: tuple[Target, ...] = (
    *(
        Target(
            f"dice_{s}",
            f"synthetic {s} Dice (sagittal)",
            ("segmentation", "synthetic_sagittal", s, "mean"),
            0.90,
            True,
        )
        for s in ("canal", "disc", "vertebra")
    ),
    Target("level_identification", "level identification accuracy", ("levels", "accuracy"), 0.98, True),
    *(_auroc_target(c) for c in Condition),
    *(
        Target(
            f"kappa_{c.value}",
            f"{c.display} severity kappa (quadratic)",
            ("severity", "per_condition", c.value, "kappa"),
            0.85,
            True,
        )
        for c in Condition
    ),
    Target("dsca_mae", "dural sac area MAE", ("measurements", "dsca_mm2", "mae"), 8.0, False, " mm2"),
    Target("ap_mae", "canal AP diameter MAE", ("measurements", "ap_diameter_mm", "mae"), 0.7, False, " mm"),
    Target(
        "spider_dice",
        "real SPIDER hold-out mean Dice (disc, vertebra, canal)",
        ("segmentation", "spider", "summary", "mean"),
        0.85,
        True,
    ),
    Target(
        "pointing_game",
        "Grad-CAM pointing-game hit rate",
        ("explanation", "faithfulness", "pointing_game", "rate"),
        0.90,
        True,
        source="issue 5",
    ),
    Target(
        "rationale_unverified",
        "delivered rationales failing verification (pipeline findings)",
        ("explanation", "rationale", "pipeline_findings", "delivered_failing_verification"),
        0.0,
        False,
        source="issue 5",
    ),
)


@dataclass(frozen=True)
class Anchor:
    label: str
    figure: str
    source: str
    compare_with: tuple[str, ...]  # metrics path of our nearest figure
    percent: bool = False  # the published figure is a percentage: show ours as one too


ANCHORS: tuple[Anchor, ...] = (
    Anchor(
        "central canal stenosis AUROC (real MRI)",
        "0.97-0.98",
        "van der Graaf et al. 2025",
        ("classification", "spinal_canal", "auroc"),
    ),
    Anchor(
        "central canal stenosis severity kappa (real MRI)",
        "0.86",
        "van der Graaf et al. 2025",
        ("severity", "per_condition", "spinal_canal", "kappa"),
    ),
    Anchor(
        "spinal canal Dice (real MRI)",
        "0.93-0.96",
        "Bharadwaj et al. 2023; SPINEPS",
        ("segmentation", "spider", "summary", "canal"),
    ),
    Anchor(
        "saliency pointing-game hit rate (chest X-ray, CNN saliency)",
        "59.9 %",
        "CheXlocalize (Saporta et al. 2022)",
        ("explanation", "faithfulness", "pointing_game", "rate"),
        percent=True,
    ),
    Anchor(
        "pointing-game hit rate of radiologists (chest X-ray)",
        "80.1 %",
        "CheXlocalize (Saporta et al. 2022)",
        ("explanation", "faithfulness", "pointing_game", "rate"),
        percent=True,
    ),
)


def lookup(metrics: Mapping[str, Any], path: Sequence[str]) -> float | None:
    node: Any = metrics
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def verdicts(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for t in TARGETS:
        value = lookup(metrics, t.path)
        out.append(
            {
                "key": t.key,
                "target": t.label,
                "wanted": t.wanted,
                "measured": value,
                "verdict": t.verdict(value).value,
                "source": t.source,
            }
        )
    return out


def _as_shown(value: float | None, percent: bool) -> float | str | None:
    if value is None or not percent:
        return value
    return f"{100 * value:.1f} %"


def anchors(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "anchor": a.label,
            "published": a.figure,
            "source": a.source,
            "ours": _as_shown(lookup(metrics, a.compare_with), a.percent),
            "ours_from": "/".join(a.compare_with),
        }
        for a in ANCHORS
    ]
