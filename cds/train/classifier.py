"""Train the stage-2 level classifier on synthetic studies, calibrate it, and evaluate the hybrid grade.

Inputs are built exactly as at inference: the shipped axial U-Net segments the cached canonical
slices (cds.train.axial_seg), and ``classify.level_crop`` makes the crop. Targets per condition:
present = grade moderate or severe, severe = grade severe (findings.json of the generator).

Augmentation: small crop shifts, intensity gain/gamma, and a left-right mirror that swaps the
left and right targets (anatomy is mirror-symmetric; the canonical frame fixes the sides).

Calibration: one temperature per output fitted on the validation split by minimising the
negative log-likelihood over a log-spaced grid (temperature scaling keeps the ranking, so AUROC
is unchanged). The card records validation AUROC (present), sensitivity/specificity at 0.5,
expected calibration error before/after, and the quadratic-weighted kappa of the hybrid grade
(measurement rule + model, cds.pipeline.grade) against the generator's grades.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from cds.domain import Condition, Grade
from cds.ml.classifier import ARCHITECTURE, ClassifierConfig, LevelClassifier, output_labels
from cds.ml.spec import InputContract, ModelSpec, write_card
from cds.pipeline import axial as ax
from cds.pipeline import classify as cl
from cds.train.axial_seg import LevelStack, _describe, load_levels, predict_probs, read_split

log = logging.getLogger(__name__)

CONTRACT = InputContract(
    orientation="level crop in the axial canonical frame (rows anterior->posterior, "
    "columns patient right->left), centred on the dural sac of the level's narrowest slice",
    target_spacing_mm=(ax.CANONICAL_SPACING_MM, ax.CANONICAL_SPACING_MM),
    input_size=(cl.CROP_SIZE, cl.CROP_SIZE),
    intensity_normalisation="channels 0-2: T2 slices k-1, k, k+1 as the axial stage normalises them; "
    "channels 3-6: axial U-Net probabilities on slice k (sac; disc+body; facet+flavum+posterior elements; "
    "foramen); channels 7-8: per-pixel maximum over all the level's slices of the foramen and of the "
    "facet+flavum+posterior-element probabilities",
    clip_percentiles=(1.0, 99.0),
)
#: Mirror: swapping patient left and right swaps these conditions.
MIRROR = {
    Condition.LEFT_FORAMINAL: Condition.RIGHT_FORAMINAL,
    Condition.RIGHT_FORAMINAL: Condition.LEFT_FORAMINAL,
    Condition.LEFT_SUBARTICULAR: Condition.RIGHT_SUBARTICULAR,
    Condition.RIGHT_SUBARTICULAR: Condition.LEFT_SUBARTICULAR,
}


@dataclass(frozen=True)
class ClassifierTrainConfig:
    epochs: int = 25
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-3
    seed: int = 0
    threads: int = 1
    widths: tuple[int, ...] = (16, 32, 48, 64)
    version: str = "1.0.0"


@dataclass(frozen=True)
class Example:
    study: str
    crop: np.ndarray  # (C, H, W) float32 (uncropped-margin version for shifting: (C, H+8, W+8))
    grades: dict[Condition, Grade]
    stack_index: int


def targets(grades: dict[Condition, Grade]) -> np.ndarray:
    """(10,) in output order: per condition (present, severe)."""
    out = []
    for c in Condition:
        g = grades[c]
        out += [float(g.present), float(g is Grade.SEVERE)]
    return np.asarray(out, dtype=np.float32)


def _grades(truth: dict[str, Any]) -> dict[Condition, Grade] | None:
    try:
        return {c: Grade(truth[c.value]["grade"]) for c in Condition}
    except (KeyError, ValueError):
        return None


def build_examples(
    stacks: Sequence[LevelStack], seg_network: torch.nn.Module
) -> tuple[list[Example], list[np.ndarray]]:
    """Crops (with an 8-pixel margin for shift augmentation) and the segmentation probabilities."""
    out, probs_all = [], []
    for i, s in enumerate(tqdm(stacks, desc="crops", leave=False)):
        grades = _grades(s.truth)
        probs = predict_probs(seg_network, s.images, torch.device("cpu"))
        probs_all.append(probs)
        if grades is None:
            continue
        out.append(Example(s.study, _wide_crop(s.images, probs), grades, i))
    return out, probs_all


def _wide_crop(images: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The inference crop plus a 4-pixel margin on every side (for shift augmentation), made by the
    inference function itself so that training and inference inputs cannot drift apart."""
    return cl.level_crop(images, probs, size=cl.CROP_SIZE + 8)


def _centre(crop: np.ndarray) -> np.ndarray:
    return crop[:, 4:-4, 4:-4]


def _augment(ex: Example, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    dr, dc = rng.randint(0, 8), rng.randint(0, 8)
    x = ex.crop[:, dr : dr + cl.CROP_SIZE, dc : dc + cl.CROP_SIZE].copy()
    grades = dict(ex.grades)
    if rng.random() < 0.5:
        x = x[:, :, ::-1].copy()
        grades = {MIRROR.get(c, c): g for c, g in ex.grades.items()}
    gain = rng.uniform(0.8, 1.2)
    gamma = rng.uniform(0.8, 1.25)
    x[: cl.N_IMAGE_CHANNELS] = np.clip(x[: cl.N_IMAGE_CHANNELS], 0, None) ** gamma * gain
    return x, targets(grades)


def _logits(network: LevelClassifier, crops: np.ndarray) -> np.ndarray:
    network.eval()
    with torch.inference_mode():
        return np.concatenate(
            [network(torch.from_numpy(crops[i : i + 64])).numpy() for i in range(0, len(crops), 64)]
        )


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-output temperature minimising the validation binary NLL (grid over 0.25..8)."""
    grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 121))
    out = np.ones(logits.shape[1])
    for j in range(logits.shape[1]):
        best, best_t = np.inf, 1.0
        for t in grid:
            p = 1.0 / (1.0 + np.exp(-logits[:, j] / t))
            p = np.clip(p, 1e-6, 1 - 1e-6)
            nll = -np.mean(y[:, j] * np.log(p) + (1 - y[:, j]) * np.log(1 - p))
            if nll < best:
                best, best_t = nll, float(t)
        out[j] = best_t
    return out


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        sel = (p >= lo) & (p < hi) if hi < 1 else (p >= lo) & (p <= hi)
        if sel.any():
            total += sel.mean() * abs(p[sel].mean() - y[sel].mean())
    return float(total)


def train_classifier(
    *,
    data_root: Path,
    seg_model_dir: Path,
    out_dir: Path,
    work_dir: Path,
    config: ClassifierTrainConfig,
    max_train: int = 0,
) -> ModelSpec:
    from cds.ml.loading import load_model, save_weights

    torch.set_num_threads(config.threads)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    work_dir.mkdir(parents=True, exist_ok=True)
    split = read_split(data_root)
    cache = work_dir.parent / "axial_seg" / "cache"
    seg = load_model(seg_model_dir.name, seg_model_dir.parent, device="cpu")
    train_names = split["train"][:max_train] if max_train else split["train"]
    train_stacks = load_levels(data_root, cache, train_names)
    val_stacks = load_levels(data_root, cache, split["validation"])
    train, _ = build_examples(train_stacks, seg.network)
    val, val_probs = build_examples(val_stacks, seg.network)
    log.info("classifier: %d training crops, %d validation crops", len(train), len(val))

    arch = ClassifierConfig(in_channels=cl.IN_CHANNELS, widths=config.widths)
    network = LevelClassifier(arch)
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = max(1, len(train) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.lr, total_steps=config.epochs * steps, pct_start=0.15
    )
    rng = random.Random(config.seed)
    val_x = (
        np.stack([_centre(e.crop) for e in val]) if val else np.zeros((0, cl.IN_CHANNELS, 1, 1), np.float32)
    )
    val_y = np.stack([targets(e.grades) for e in val]) if val else np.zeros((0, 10), np.float32)
    log_path = work_dir / "metrics.jsonl"
    log_path.unlink(missing_ok=True)
    for epoch in range(config.epochs):
        network.train()
        t0 = time.perf_counter()
        order = list(range(len(train)))
        rng.shuffle(order)
        losses = []
        for b in tqdm(range(steps), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False):
            picks = [train[i] for i in order[b * config.batch_size : (b + 1) * config.batch_size]]
            xs, ys = zip(*(_augment(e, rng) for e in picks), strict=True)
            logits = network(torch.from_numpy(np.stack(xs)))
            loss = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(np.stack(ys)))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(loss.item())
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        if len(val):
            record["val_auroc"] = _aurocs(1 / (1 + np.exp(-_logits(network, val_x))), val_y)
        with log_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        tqdm.write(json.dumps(record))

    metrics: dict[str, Any] = {}
    if len(val):
        raw = _logits(network, val_x)
        temps = fit_temperature(raw, val_y)
        network.get_buffer("temperature").copy_(torch.from_numpy(temps.astype(np.float32)))
        cal = 1 / (1 + np.exp(-raw / temps))
        metrics = _metrics(raw, cal, val_y)
        metrics["hybrid_grading"] = hybrid_metrics(
            val,
            [val_stacks[e.stack_index] for e in val],
            [val_probs[e.stack_index] for e in val],
            cal,
            float(seg.spec.thresholds.get("sac_probability", ax.DEFAULT_SAC_THRESHOLD)),
        )
        metrics["temperatures"] = [round(float(t), 4) for t in temps]
    out_dir.mkdir(parents=True, exist_ok=True)
    sha = save_weights(network, out_dir / "model.safetensors")
    spec = ModelSpec(
        name=out_dir.name,
        version=config.version,
        sha256=sha,
        architecture={
            "type": ARCHITECTURE,
            "in_channels": arch.in_channels,
            "widths": list(arch.widths),
            "groups": arch.groups,
            "summary_features": arch.summary_features,
        },
        input=CONTRACT,
        labels=output_labels(),
        thresholds={"present": 0.5},
        metrics=metrics,
        training={
            "seed": config.seed,
            "config": asdict(config),
            "segmentation_model": seg.spec.tag,
            "train_crops": len(train),
            "validation_crops": len(val),
            "data": {
                "train": _describe(data_root, train_names),
                "validation": _describe(data_root, split["validation"]),
            },
            "calibration": "temperature scaling per output on the validation split",
        },
        known_limits=(
            "Trained and calibrated on synthetic studies only; calibration on real scanners is unknown.",
            "Sees one axial crop per level (three T2 slices around the sac-narrowest one, the segmentation "
            "of that slice, and the foramen and facet/flavum segmentation maximised over the level's "
            "slices); "
            "foraminal narrowing is judged from axial slices only (the generator grades it on a parasagittal "
            "plane), so foraminal probabilities are the least certain.",
            "Probabilities depend on the axial segmentation model named in training.segmentation_model; "
            "a new axial_seg needs a retrained (or at least re-calibrated) classifier.",
        ),
    )
    write_card(spec, out_dir)
    (out_dir / "training_log.jsonl").write_text(log_path.read_text(encoding="utf-8"), encoding="utf-8")
    return spec


def _aurocs(p: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    from sklearn.metrics import roc_auc_score

    out: dict[str, float | None] = {}
    for j, c in enumerate(Condition):
        t = y[:, 2 * j]
        out[c.value] = float(roc_auc_score(t, p[:, 2 * j])) if 0 < t.sum() < len(t) else None
    return out


def _metrics(raw: np.ndarray, cal: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    before = 1 / (1 + np.exp(-raw))
    per: dict[str, Any] = {}
    aurocs = _aurocs(cal, y)
    for j, c in enumerate(Condition):
        t, p = y[:, 2 * j], cal[:, 2 * j]
        pos, neg = t == 1, t == 0
        per[c.value] = {
            "auroc_present": aurocs[c.value],
            "sensitivity_at_0.5": float((p[pos] >= 0.5).mean()) if pos.any() else None,
            "specificity_at_0.5": float((p[neg] < 0.5).mean()) if neg.any() else None,
            "ece_before": ece(before[:, 2 * j], t),
            "ece_after": ece(p, t),
            "prevalence": float(t.mean()),
            "n": len(t),
        }
    return {"validation": per}


def hybrid_metrics(
    examples: Sequence[Example],
    stacks: Sequence[LevelStack],
    probs: Sequence[np.ndarray],
    cal: np.ndarray,
    sac_threshold: float = ax.DEFAULT_SAC_THRESHOLD,
) -> dict[str, Any]:
    """Quadratic-weighted kappa of the hybrid grade (rule + model) and of the model alone, per condition."""
    from sklearn.metrics import cohen_kappa_score

    from cds.pipeline.grade import SeverityEstimate, grade_level
    from cds.pipeline.quick_read import measure_level
    from cds.train.axial_seg import _segmentation_of

    truth: dict[Condition, list[int]] = {c: [] for c in Condition}
    hybrid: dict[Condition, list[int]] = {c: [] for c in Condition}
    model: dict[Condition, list[int]] = {c: [] for c in Condition}
    uncertain = 0
    for i, (ex, stack, p) in enumerate(zip(examples, stacks, probs, strict=True)):
        est = {
            c: SeverityEstimate(float(cal[i, 2 * j]), float(cal[i, 2 * j + 1]))
            for j, c in enumerate(Condition)
        }
        measured = measure_level(_segmentation_of(stack, p, sac_threshold), None).by_condition
        for d in grade_level(stack.level, measured, est):
            c = d.finding.condition
            truth[c].append(ex.grades[c].rank)
            hybrid[c].append(d.finding.grade.rank)
            model[c].append(d.model_grade.rank)
            uncertain += int(d.finding.uncertain)
    out: dict[str, Any] = {}
    for c in Condition:
        out[c.value] = {
            "kappa_hybrid": _kappa(cohen_kappa_score, truth[c], hybrid[c]),
            "kappa_model": _kappa(cohen_kappa_score, truth[c], model[c]),
            "confusion_hybrid": _confusion(truth[c], hybrid[c]),
        }
    out["uncertain_share"] = uncertain / max(1, sum(len(v) for v in truth.values()))
    return out


def evaluate_pair(data_root: Path, seg_dir: Path, clf_dir: Path, cache_dir: Path) -> dict[str, Any]:
    """Validation metrics of a shipped (axial_seg, classifier) pair through the inference code:
    calibrated AUROC etc. per condition and the hybrid grade's kappa at the seg card's sac
    threshold. Used to refresh a card after a post-processing threshold changes."""
    from cds.ml.classifier import load_classifier
    from cds.ml.loading import load_model

    seg = load_model(seg_dir.name, seg_dir.parent, device="cpu")
    clf = load_classifier(clf_dir.name, clf_dir.parent, device="cpu")
    split = read_split(data_root)
    stacks = load_levels(data_root, cache_dir, split["validation"])
    val, probs = build_examples(stacks, seg.network)
    x = np.stack([_centre(e.crop) for e in val])
    y = np.stack([targets(e.grades) for e in val])
    cal = 1 / (1 + np.exp(-_logits(clf.network, x)))
    temps = clf.network.get_buffer("temperature").numpy()
    metrics = _metrics(_logits(clf.network, x) * temps, cal, y)
    metrics["hybrid_grading"] = hybrid_metrics(
        val,
        [stacks[e.stack_index] for e in val],
        [probs[e.stack_index] for e in val],
        cal,
        float(seg.spec.thresholds.get("sac_probability", ax.DEFAULT_SAC_THRESHOLD)),
    )
    metrics["evaluated_with"] = {
        "segmentation_model": seg.spec.tag,
        "sac_probability": seg.spec.thresholds.get("sac_probability", ax.DEFAULT_SAC_THRESHOLD),
    }
    return metrics


def _kappa(fn: Any, a: list[int], b: list[int]) -> float | None:
    if len(set(a) | set(b)) < 2:
        return None
    return float(fn(a, b, weights="quadratic", labels=[0, 1, 2]))


def _confusion(truth: list[int], pred: list[int]) -> list[list[int]]:
    m = np.zeros((3, 3), dtype=int)
    for t, p in zip(truth, pred, strict=True):
        m[t, p] += 1
    return m.tolist()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cds.train.classifier``: the same as ``cds train classifier``."""
    import argparse

    from cds.commands.train_pipeline import add_classifier_arguments, run_classifier

    parser = argparse.ArgumentParser(prog="python -m cds.train.classifier", description=__doc__)
    add_classifier_arguments(parser)
    return run_classifier(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
