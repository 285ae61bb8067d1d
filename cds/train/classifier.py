"""Train the stage-2 level classifier on synthetic studies, teach it where to look, calibrate it.

Inputs are built exactly as at inference (cds.train.classifier_data: the DICOM through cds.dicom,
the shipped axial U-Net, ``classify.level_crop``), cached on disk per study. Targets per
condition: present = grade moderate or severe, severe = grade severe (the generator's findings).

Losses (version 2, evidence head): binary cross-entropy on the 10 ordinal outputs; a localisation
loss that puts each positive output's evidence (the spatial softmax of its map, which is the
weighting of the log-sum-exp pooling) into the condition's cause region on the crop; a smooth-L1
regression of the generator's deciding measurements (DSCA, AP diameter, lateral recess depth and
foraminal area ratio per side), which ties the shared features to the quantities that grade.

Augmentation: small crop shifts, intensity gain/gamma, and a left-right mirror that swaps the
left and right targets, cause masks and measurements (the canonical frame fixes the sides).

Calibration: one temperature per output fitted on the validation split by minimising the
negative log-likelihood over a log-spaced grid (temperature scaling keeps the ranking, so AUROC
is unchanged). The epoch is chosen on the validation split too. The card records validation
AUROC (present), sensitivity/specificity at 0.5, expected calibration error before/after, and the
quadratic-weighted kappa of the model's own grade.
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
from cds.train import classifier_data as cd
from cds.train.axial_seg import _describe, read_split

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
    widths: tuple[int, ...] = (16, 24, 32, 32)
    #: The crop is average-pooled 2x first, then one max-pool step: evidence maps of 24 x 24
    #: cells of 3.2 mm on the 96 px crop.
    input_pool: int = 2
    pools: int = 1
    version: str = "2.0.0"
    #: Weight of the localisation loss (cause-region mass of each positive output's map).
    localisation_weight: float = 0.5
    #: Weight of the auxiliary regression of the deciding measurements.
    measure_weight: float = 0.5


def targets(grades: dict[Condition, Grade]) -> np.ndarray:
    """(10,) in output order: per condition (present, severe)."""
    out = []
    for c in Condition:
        g = grades[c]
        out += [float(g.present), float(g is Grade.SEVERE)]
    return np.asarray(out, dtype=np.float32)


_MIRROR_INDEX = [list(Condition).index(MIRROR.get(c, c)) for c in Condition]


def _centre(crop: np.ndarray) -> np.ndarray:
    m = cd.MARGIN
    return crop[..., m:-m, m:-m]


@dataclass(frozen=True)
class Batch:
    x: np.ndarray  # (B, C, 96, 96)
    y: np.ndarray  # (B, 10)
    causes: np.ndarray  # (B, 5, 96, 96) bool
    measures: np.ndarray  # (B, M), NaN = unknown


def _augment(s: cd.LevelSample, rng: random.Random) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shift inside the margin, mirror (swapping left/right targets, masks and measures), gain/gamma."""
    size, span = cl.CROP_SIZE, 2 * cd.MARGIN
    dr, dc = rng.randint(0, span), rng.randint(0, span)
    x = s.crop[:, dr : dr + size, dc : dc + size].copy()
    causes = s.causes[:, dr : dr + size, dc : dc + size]
    grades, measures = dict(s.grades), s.measures
    if rng.random() < 0.5:
        x = x[:, :, ::-1].copy()
        causes = causes[_MIRROR_INDEX, :, ::-1]
        grades = {MIRROR.get(c, c): g for c, g in s.grades.items()}
        measures = measures[list(cd.MEASURE_MIRROR)]
    gain = rng.uniform(0.8, 1.2)
    gamma = rng.uniform(0.8, 1.25)
    x[: cl.N_IMAGE_CHANNELS] = np.clip(x[: cl.N_IMAGE_CHANNELS], 0, None) ** gamma * gain
    return x, targets(grades), np.ascontiguousarray(causes), measures


def _batch(samples: Sequence[cd.LevelSample], rng: random.Random) -> Batch:
    xs, ys, ms, rs = zip(*(_augment(s, rng) for s in samples), strict=True)
    return Batch(np.stack(xs), np.stack(ys), np.stack(ms), np.stack(rs))


def _fixed(samples: Sequence[cd.LevelSample]) -> Batch:
    """Validation: the centred (inference) crop, no augmentation."""
    if not samples:
        return Batch(*(np.zeros((0, 1), np.float32) for _ in range(4)))
    return Batch(
        np.stack([_centre(s.crop) for s in samples]),
        np.stack([targets(s.grades) for s in samples]),
        np.stack([_centre(s.causes) for s in samples]),
        np.stack([s.measures for s in samples]),
    )


def localisation_loss(log_evidence: torch.Tensor, y: torch.Tensor, causes: torch.Tensor) -> torch.Tensor:
    """Mean over positive outputs with a cause region of -log(share of the map's spatial softmax
    inside that region). The spatial softmax of E is exactly the weighting of log-sum-exp
    pooling, so this pushes both the evidence that decides the output and the Grad-CAM maximum
    into the cause region. Regions are max-pooled to the map's grid (a cell counts if any pixel
    of it is cause)."""
    h, w = log_evidence.shape[-2:]
    region = F.adaptive_max_pool2d(causes.float(), (h, w)) > 0  # (B, 5, h, w)
    region = region.repeat_interleave(2, dim=1)  # per output: present and severe share the region
    weight = y * region.flatten(2).any(dim=-1).float()
    if float(weight.sum()) == 0.0:
        return log_evidence.sum() * 0.0
    logq = F.log_softmax(log_evidence.flatten(2), dim=-1)
    inside = torch.logsumexp(logq.masked_fill(~region.flatten(2), -1e4), dim=-1)
    return -(inside * weight).sum() / weight.sum()


def measure_loss(pred: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor:
    if pred is None:
        return torch.zeros(())
    known = torch.isfinite(target)
    if not bool(known.any()):
        return pred.sum() * 0.0
    return F.smooth_l1_loss(pred[known], target[known])


def pointing_proxy(log_evidence: np.ndarray, y: np.ndarray, causes: np.ndarray) -> float | None:
    """Share of positive present-outputs whose evidence maximum (cell centre on the crop) lies
    within DILATION_MM of the cause region on the crop plane: a cheap per-epoch stand-in for
    the pointing game (which measures in 3-D patient space on the traced pipeline)."""
    from scipy import ndimage

    from cds.explain.faithfulness import DILATION_MM

    size = causes.shape[-1]
    hits = n = 0
    for i in range(len(y)):
        for j in range(len(Condition)):
            if y[i, 2 * j] < 0.5 or not causes[i, j].any():
                continue
            emap = log_evidence[i, 2 * j]
            r, c = np.unravel_index(int(np.argmax(emap)), emap.shape)
            scale = size / emap.shape[0]
            pr, pc = int((r + 0.5) * scale), int((c + 0.5) * scale)
            dist = ndimage.distance_transform_edt(~causes[i, j]) * ax.CANONICAL_SPACING_MM
            hits += int(dist[min(pr, size - 1), min(pc, size - 1)] <= DILATION_MM)
            n += 1
    return hits / n if n else None


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


@dataclass(frozen=True)
class DataChoice:
    """Which studies train and validate, and why (recorded in the card)."""

    train: tuple[str, ...]
    validation: tuple[str, ...]
    excluded_validation: tuple[str, ...]  # validation studies the axial_seg model was trained on


def choose_studies(
    data_root: Path,
    seg_training_seeds: Sequence[int],
    *,
    max_train: int = 0,
    max_validation: int = 0,
    cached_only: Path | None = None,
) -> DataChoice:
    """split.json train/validation; validation drops studies the axial U-Net was trained on (its
    segmentation of those is in-sample, so the classifier would look better than it will be).
    ``cached_only``: keep only studies already in that cache folder (time-boxed runs)."""
    split = read_split(data_root)
    seen = {int(s) for s in seg_training_seeds}

    def seed_of(name: str) -> int | None:
        study = data_root / name / "truth" / "findings.json"
        try:
            return int(json.loads(study.read_text(encoding="utf-8"))["seed"])
        except (OSError, KeyError, ValueError):
            return None

    def usable(names: Sequence[str]) -> list[str]:
        if cached_only is None:
            return list(names)
        return [n for n in names if (cached_only / f"{n}.npz").is_file()]

    validation = [n for n in split.get("validation", []) if seed_of(n) not in seen]
    excluded = [n for n in split.get("validation", []) if n not in validation]
    validation = usable(validation)
    train = usable(split.get("train", []))
    if max_validation:
        validation = validation[:max_validation]
    if max_train:
        train = train[:max_train]
    return DataChoice(tuple(train), tuple(validation), tuple(excluded))


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state(rng: random.Random) -> dict[str, Any]:
    return {
        "python": rng.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def _restore_rng(rng: random.Random, state: dict[str, Any]) -> None:
    rng.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _validation_record(network: LevelClassifier, val: Batch) -> dict[str, Any]:
    if not len(val.y):
        return {}
    network.eval()
    logits, maps = [], []
    with torch.inference_mode():
        for i in range(0, len(val.x), 64):
            out = network.training_outputs(torch.from_numpy(val.x[i : i + 64]))
            logits.append(out.logits.numpy())
            if out.log_evidence is not None:
                maps.append(out.log_evidence.numpy())
    p = 1 / (1 + np.exp(-np.concatenate(logits)))
    record: dict[str, Any] = {"val_auroc": _aurocs(p, val.y)}
    if maps:
        record["val_pointing_proxy"] = pointing_proxy(np.concatenate(maps), val.y, val.causes)
    return record


def _selection_score(record: dict[str, Any]) -> float:
    """Epoch choice on the validation split: mean present-AUROC of canal and subarticular (the
    conditions this model decides; foraminal moves to a parasagittal model) plus the pointing
    proxy."""
    aur = record.get("val_auroc", {})
    vals = [
        aur.get(c.value)
        for c in (Condition.SPINAL_CANAL, Condition.LEFT_SUBARTICULAR, Condition.RIGHT_SUBARTICULAR)
    ]
    score = float(np.mean([v for v in vals if v is not None])) if any(v is not None for v in vals) else 0.0
    return score + float(record.get("val_pointing_proxy") or 0.0)


def train_classifier(
    *,
    data_root: Path,
    seg_model_dir: Path,
    out_dir: Path,
    work_dir: Path,
    config: ClassifierTrainConfig,
    cache_root: Path | None = None,
    max_train: int = 0,
    max_validation: int = 0,
    cached_only: bool = False,
    resume: bool = False,
) -> ModelSpec:
    """Train, select the best validation epoch, calibrate, write weights + card + log.

    Resumable: ``work_dir/checkpoint.pt`` is written after every epoch (network, optimiser,
    scheduler, random states, best epoch so far); with ``resume`` a run with the same config and
    studies continues after the last finished epoch. ``work_dir/training_log.jsonl`` gets one
    JSON line per epoch (losses, validation AUROC, pointing proxy, seconds).
    """
    from cds.ml.loading import load_model, save_weights

    torch.set_num_threads(config.threads)
    _seed_all(config.seed)
    work_dir.mkdir(parents=True, exist_ok=True)
    seg = load_model(seg_model_dir.name, seg_model_dir.parent, device="cpu")
    cache = cd.cache_dir_for(cache_root or work_dir / "cache", seg.spec.sha256)
    seg_seeds = seg.spec.training.get("data", {}).get("seeds", [])
    choice = choose_studies(
        data_root,
        seg_seeds,
        max_train=max_train,
        max_validation=max_validation,
        cached_only=cache if cached_only else None,
    )
    train = cd.load_samples(cd.prepare(data_root, choice.train, cache, seg))
    val_samples = cd.load_samples(cd.prepare(data_root, choice.validation, cache, seg))
    log.info("classifier: %d training crops, %d validation crops", len(train), len(val_samples))
    if not train:
        raise ValueError("no training crops")
    val = _fixed(val_samples)

    arch = ClassifierConfig(
        in_channels=cl.IN_CHANNELS,
        widths=config.widths,
        evidence_head=True,
        pools=config.pools,
        num_measures=len(cd.MEASURES),
        input_pool=config.input_pool,
    )
    network = LevelClassifier(arch)
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = max(1, len(train) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.lr, total_steps=config.epochs * steps, pct_start=0.15
    )
    rng = random.Random(config.seed)
    fingerprint = {
        "config": asdict(config),
        "train": list(choice.train),
        "validation": list(choice.validation),
    }
    ckpt_path = work_dir / "checkpoint.pt"
    log_path = work_dir / "training_log.jsonl"
    start_epoch = 0
    best: dict[str, Any] = {"score": -np.inf, "epoch": 0, "state": None, "record": {}}
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, weights_only=False)
        if ckpt.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{ckpt_path} was written for another config or study list; remove it or drop --resume"
            )
        network.load_state_dict(ckpt["network"])
        optimiser.load_state_dict(ckpt["optimiser"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _restore_rng(rng, ckpt["rng"])
        start_epoch, best = int(ckpt["epoch"]), ckpt["best"]
        log.info("resuming after epoch %d", start_epoch)
    kept = [
        line
        for line in (log_path.read_text(encoding="utf-8").splitlines() if log_path.is_file() else [])
        if start_epoch and json.loads(line).get("epoch", 0) <= start_epoch
    ]
    log_path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    for epoch in range(start_epoch, config.epochs):
        network.train()
        t0 = time.perf_counter()
        order = list(range(len(train)))
        rng.shuffle(order)
        parts: dict[str, list[float]] = {"loss": [], "bce": [], "localisation": [], "measures": []}
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False)
        for b in bar:
            batch = _batch(
                [train[i] for i in order[b * config.batch_size : (b + 1) * config.batch_size]], rng
            )
            out = network.training_outputs(torch.from_numpy(batch.x))
            y = torch.from_numpy(batch.y)
            bce = F.binary_cross_entropy_with_logits(out.logits, y)
            loc = (
                localisation_loss(out.log_evidence, y, torch.from_numpy(batch.causes))
                if out.log_evidence is not None
                else torch.zeros(())
            )
            meas = measure_loss(out.measures, torch.from_numpy(batch.measures))
            loss = bce + config.localisation_weight * loc + config.measure_weight * meas
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            for k, v in (("loss", loss), ("bce", bce), ("localisation", loc), ("measures", meas)):
                parts[k].append(float(v.detach()))
            bar.set_postfix(loss=f"{np.mean(parts['loss']):.3f}")
        record: dict[str, Any] = {"epoch": epoch + 1}
        record.update({k: round(float(np.mean(v)), 4) for k, v in parts.items()})
        record.update(_validation_record(network, val))
        record["seconds"] = round(time.perf_counter() - t0, 1)
        score = _selection_score(record)
        if score > float(best["score"]):
            state = {k: v.detach().clone() for k, v in network.state_dict().items()}
            best = {"score": score, "epoch": epoch + 1, "state": state, "record": record}
        with log_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        tqdm.write(json.dumps(record))
        torch.save(
            {
                "fingerprint": fingerprint,
                "epoch": epoch + 1,
                "network": network.state_dict(),
                "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(rng),
                "best": best,
            },
            ckpt_path,
        )

    if best["state"] is not None:
        network.load_state_dict(best["state"])
    metrics: dict[str, Any] = {}
    if len(val.y):
        raw = _logits(network, val.x)
        temps = fit_temperature(raw, val.y)
        network.get_buffer("temperature").copy_(torch.from_numpy(temps.astype(np.float32)))
        cal = 1 / (1 + np.exp(-raw / temps))
        metrics = _metrics(raw, cal, val.y)
        metrics["model_grading"] = model_grading(cal, val.y)
        metrics["temperatures"] = [round(float(t), 4) for t in temps]
        metrics["selected_epoch"] = best["epoch"]
        metrics["selected_epoch_pointing_proxy"] = best["record"].get("val_pointing_proxy")
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
            "evidence_head": arch.evidence_head,
            "pools": arch.num_pools,
            "num_measures": arch.num_measures,
            "input_pool": arch.input_pool,
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
            "validation_crops": len(val.y),
            "data": {
                "train": _describe(data_root, list(choice.train)),
                "validation": _describe(data_root, list(choice.validation)),
                "validation_excluded_seen_by_axial_seg": list(choice.excluded_validation),
            },
            "losses": "BCE on the 10 ordinal outputs + localisation (cause-region share of each positive "
            "output's evidence softmax) + smooth-L1 regression of DSCA, AP diameter, lateral recess depth "
            "and foraminal area ratio per side",
            "calibration": "temperature scaling per output on the validation split",
            "epoch_selection": "best validation score (mean present-AUROC of canal and subarticular + "
            "pointing proxy)",
        },
        known_limits=KNOWN_LIMITS,
    )
    write_card(spec, out_dir)
    (out_dir / "training_log.jsonl").write_text(log_path.read_text(encoding="utf-8"), encoding="utf-8")
    return spec


KNOWN_LIMITS = (
    "Trained and calibrated on synthetic studies only; calibration on real scanners is unknown.",
    "Sees one axial crop per level (three T2 slices around the sac-narrowest one, the segmentation of that "
    "slice, and the foramen and facet/flavum segmentation maximised over the level's slices); foraminal "
    "narrowing is judged from axial slices only (the generator grades it on a parasagittal plane), so "
    "foraminal probabilities are the least certain.",
    "Probabilities depend on the axial segmentation model named in training.segmentation_model; a new "
    "axial_seg needs a retrained (or at least re-calibrated) classifier.",
    "Evidence maps are 24 x 24 cells of 3.2 mm on the crop: a heatmap locates a cause to about one cell, "
    "and only on the crop's slice (the sac-narrowest one of the level).",
)


def model_grading(cal: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Quadratic-weighted kappa of the model's own grade (SeverityEstimate.grade) per condition."""
    from sklearn.metrics import cohen_kappa_score

    from cds.pipeline.grade import SeverityEstimate

    out: dict[str, Any] = {}
    for j, c in enumerate(Condition):
        truth = (y[:, 2 * j] + y[:, 2 * j + 1]).astype(int).tolist()
        pred = [
            SeverityEstimate(float(cal[i, 2 * j]), float(cal[i, 2 * j + 1])).grade.rank for i in range(len(y))
        ]
        out[c.value] = {
            "kappa_model": _kappa(cohen_kappa_score, truth, pred),
            "confusion_model": _confusion(truth, pred),
        }
    return out


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
