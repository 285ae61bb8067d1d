"""``cds train subarticular``: the lateral recess network (cds.ml.subarticular), resumable.

Data: the train part of ``split.json`` of a ``cds synth`` folder for the weights, its validation
part for epoch selection, temperature fitting, the grading decision and the card's metrics (never
the evaluation split). Each (study, level, side) is one example; both sides share the network
(mirrored crops, cds.pipeline.recess_crop). Targets: P(grade >= moderate), P(grade = severe)
(ordinal, BCE) and the lateral recess depth in mm (smooth L1, truth clipped to ``DEPTH_CAP_MM``:
an open recess has no articular process behind it and its "depth" is the field of view).

Which source grades (recorded in the card as ``thresholds.grade_from_depth_rule``): the FINDINGS.md
rule on the estimated depth, or the ordinal heads, whichever has the higher quadratic kappa on the
validation recesses. The card also records, on the same recesses, what the product used before
(classifier 2.0.0's subarticular heads and the measured recess depth), so the grading policy's
choice rests on one comparison.

Resumable: after every epoch ``<work>/checkpoint.pt`` holds network, optimiser, scheduler, RNG
states and the best epoch so far; ``--resume`` continues from it (refused if the config or the
study list changed). Seeded. Every epoch appends a line to ``<work>/training_log.jsonl`` (copied
next to the weights at the end).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cds.domain import THRESHOLDS, Condition, Grade, Side
from cds.ml.loading import save_weights
from cds.ml.spec import InputContract, ModelSpec, write_card
from cds.ml.subarticular import ARCHITECTURE, OUTPUT_LABELS, SubarticularConfig, SubarticularNet
from cds.pipeline import recess_crop as rc
from cds.train.ordinal import fit_temperature, ordinal_grade, seed_everything, sigmoid
from cds.train.resumable import Schedule, fingerprint, train_resumable
from cds.train.subarticular_data import MARGIN, RecessExample, build_cache, read_split

log = logging.getLogger(__name__)

MODEL_NAME = "subarticular"
GRADE_INDEX = {Grade.NORMAL_MILD: 0, Grade.MODERATE: 1, Grade.SEVERE: 2}
DEPTH_CAP_MM = 10.0
#: Image channels of the crop (the others are probabilities and get no intensity augmentation).
IMAGE_CHANNELS = tuple(range(0, rc.IN_CHANNELS, rc.CHANNELS_PER_SLICE))


@dataclass(frozen=True)
class SubarticularTrainConfig:
    epochs: int = 24
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    depth_weight: float = 0.5
    seed: int = 0
    threads: int = 1
    version: str = "1.0.0"
    widths: tuple[int, int, int, int] = (16, 24, 32, 48)
    #: evidence head (version 2 of the network, cds.ml.subarticular) and the weight of its
    #: localisation loss (the present map's spatial softmax mass in the cause region)
    evidence: bool = False
    localisation_weight: float = 0.0


@dataclass(frozen=True)
class Arrays:
    """Examples as arrays; ``baseline`` (N, 2) the classifier's (present, severe), ``rule`` (N,) the
    measured recess depth (mm), both from the product as it was before this model."""

    x: np.ndarray
    y: np.ndarray
    depth: np.ndarray
    grade: np.ndarray
    side: np.ndarray  # 0 left, 1 right
    baseline: np.ndarray
    rule: np.ndarray
    causes: np.ndarray  # (N, SIZE + 2 MARGIN, SIZE + 2 MARGIN) bool

    def __len__(self) -> int:
        return len(self.y)


def to_arrays(examples: Sequence[RecessExample]) -> Arrays:
    n = len(examples)
    width = rc.SIZE + 2 * MARGIN
    x = np.stack([e.crop for e in examples]) if n else np.zeros((0, rc.IN_CHANNELS, width, width), np.float16)
    g = np.array([GRADE_INDEX[e.grade] for e in examples], dtype=np.int64)
    return Arrays(
        x=x,
        y=np.stack([(g >= 1), (g >= 2)], axis=1).astype(np.float32) if n else np.zeros((0, 2), np.float32),
        depth=np.array([e.depth_mm for e in examples], dtype=np.float32),
        grade=g,
        side=np.array([0 if e.side is Side.LEFT else 1 for e in examples], dtype=np.int64),
        baseline=np.array([e.classifier for e in examples], dtype=np.float32).reshape(n, 2),
        rule=np.array([e.rule_depth_mm for e in examples], dtype=np.float32),
        causes=np.stack(
            [e.cause if e.cause is not None else np.zeros((width, width), bool) for e in examples]
        )
        if n
        else np.zeros((0, width, width), bool),
    )


def centre(x: np.ndarray) -> np.ndarray:
    """The inference window (SIZE x SIZE) of wide crops, as float32."""
    return np.ascontiguousarray(x[..., MARGIN:-MARGIN, MARGIN:-MARGIN], dtype=np.float32)


def augment(
    x: np.ndarray, rng: np.random.Generator, causes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Shifted window (up to MARGIN px = 2.4 mm: sac-centre placement error), image gain/offset,
    noise on the image channels; ``causes`` (wide, like ``x``) cut by the same windows."""
    n = x.shape[0]
    out = np.empty((n, x.shape[1], rc.SIZE, rc.SIZE), dtype=np.float32)
    cut = None if causes is None else np.empty((n, rc.SIZE, rc.SIZE), dtype=bool)
    for i in range(n):
        r, c = rng.integers(0, 2 * MARGIN + 1, size=2)
        out[i] = x[i, :, r : r + rc.SIZE, c : c + rc.SIZE]
        if cut is not None and causes is not None:
            cut[i] = causes[i, r : r + rc.SIZE, c : c + rc.SIZE]
    img = list(IMAGE_CHANNELS)
    gain = rng.uniform(0.85, 1.15, size=(n, 1, 1, 1)).astype(np.float32)
    offset = rng.uniform(-0.05, 0.05, size=(n, 1, 1, 1)).astype(np.float32)
    noise = rng.normal(0.0, 0.02, size=(n, len(img), rc.SIZE, rc.SIZE)).astype(np.float32)
    out[:, img] = np.clip(out[:, img] * gain + offset + noise, 0.0, 1.5)
    return out, cut


def localisation_loss(
    log_evidence: torch.Tensor, present: torch.Tensor, causes: torch.Tensor
) -> torch.Tensor:
    """Mean over truth-present recesses with a cause region of -log(the share of the present
    map's spatial softmax inside the region), the region max-pooled to the map's grid (a cell
    counts if any of its pixels is cause). Zero when the batch has none."""
    h, w = log_evidence.shape[-2:]
    region = F.adaptive_max_pool2d(causes[:, None].float(), (h, w))[:, 0] > 0  # (B, h, w)
    sel = (present > 0.5) & region.flatten(1).any(dim=1)
    if not bool(sel.any()):
        return log_evidence.sum() * 0.0
    logp = torch.log_softmax(log_evidence[sel, 0].flatten(1), dim=1)
    inside = logp.masked_fill(~region[sel].flatten(1), float("-inf"))
    return -torch.logsumexp(inside, dim=1).mean()


def predict(network: SubarticularNet, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """(N, 3) raw outputs (present logit, severe logit, depth mm) on the inference windows."""
    network.eval()
    outs = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            outs.append(network(torch.from_numpy(centre(x[i : i + batch]))).numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 3), np.float32)


def depth_grade(depth: np.ndarray) -> np.ndarray:
    """FINDINGS.md rule on (estimated or measured) depths: 0 normal/mild, 1 moderate, 2 severe."""
    th = THRESHOLDS[Condition.LEFT_SUBARTICULAR]
    return np.where(depth < th.severe_below, 2, np.where(depth < th.moderate_below, 1, 0))


def _auroc(y: np.ndarray, score: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else None


def _kappa(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import cohen_kappa_score

    return float(cohen_kappa_score(a, b, weights="quadratic"))


def metrics(out: np.ndarray, data: Arrays) -> dict[str, Any]:
    """Per side and overall: AUROC of present, quadratic kappa (ordinal heads, rule on the estimated
    depth), depth MAE; and on the same recesses the classifier's and the measured rule's figures."""
    p_present, p_severe, depth = sigmoid(out[:, 0]), sigmoid(out[:, 1]), out[:, 2]
    rec: dict[str, Any] = {}
    for name, sel in (("left", data.side == 0), ("right", data.side == 1), ("all", np.ones(len(data), bool))):
        y, g = data.y[sel, 0], data.grade[sel]
        truth_depth = np.minimum(data.depth[sel], DEPTH_CAP_MM)
        b_present, b_severe = data.baseline[sel, 0], data.baseline[sel, 1]
        rec[name] = {
            "n": int(sel.sum()),
            "auroc_present": _auroc(y, p_present[sel]),
            "auroc_severe": _auroc(data.y[sel, 1], p_severe[sel]),
            "auroc_present_from_depth": _auroc(y, -depth[sel]),
            "kappa_ordinal": _kappa(g, ordinal_grade(p_present[sel], p_severe[sel])),
            "kappa_depth_rule": _kappa(g, depth_grade(depth[sel])),
            "depth_mae_mm": float(np.mean(np.abs(np.minimum(depth[sel], DEPTH_CAP_MM) - truth_depth))),
            "accuracy_ordinal": float(np.mean(ordinal_grade(p_present[sel], p_severe[sel]) == g)),
            "baseline": {
                "classifier_auroc_present": _auroc(y, b_present),
                "classifier_kappa": _kappa(g, ordinal_grade(b_present, b_severe)),
                "measured_rule_kappa": _kappa(g, depth_grade(data.rule[sel])),
                "measured_depth_mae_mm": float(
                    np.mean(np.abs(np.minimum(data.rule[sel], DEPTH_CAP_MM) - truth_depth))
                ),
            },
        }
    return rec


def selection_score(m: dict[str, Any]) -> float:
    a = m["all"]
    return float((a["auroc_present"] or 0.0) + max(a["kappa_ordinal"], a["kappa_depth_rule"]))


def _fingerprint(config: SubarticularTrainConfig, train: Sequence[str], val: Sequence[str]) -> str:
    """What changes the weights (not the version label or the thread count)."""
    return fingerprint(config, train, val, ignore=("version", "threads"))


def train_subarticular(
    data_root: Path,
    cache_dir: Path,
    out_dir: Path,
    work_dir: Path,
    config: SubarticularTrainConfig,
    *,
    resume: bool = False,
    max_studies: int = 0,
) -> ModelSpec:
    torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    split = read_split(data_root)
    train_names = split["train"][: max_studies or None]
    val_names = split["validation"][: max_studies or None]
    train = to_arrays(build_cache(data_root, cache_dir, train_names))
    val = to_arrays(build_cache(data_root, cache_dir, val_names))
    if not len(train) or not len(val):
        raise ValueError("no training or no validation recesses (check the data folder and split.json)")
    log.info("%d training and %d validation recesses", len(train), len(val))
    network, best, log_path = _train(
        train, val, config, work_dir, _fingerprint(config, train_names, val_names), resume
    )
    return finish(network, best, log_path, val, out_dir, config, data_root, train_names, val_names)


def _train(
    train: Arrays,
    val: Arrays,
    config: SubarticularTrainConfig,
    work_dir: Path,
    fingerprint: str,
    resume: bool,
) -> tuple[SubarticularNet, dict[str, Any], Path]:
    """The seeded network, checkpointed every epoch; returns it at its best epoch, and its log."""
    network = SubarticularNet(
        SubarticularConfig(in_channels=rc.IN_CHANNELS, widths=config.widths, evidence=config.evidence)
    )
    depth_target = torch.from_numpy(np.minimum(train.depth, DEPTH_CAP_MM))

    def batch_loss(idx: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        x, causes = augment(train.x[idx], rng, train.causes[idx] if config.evidence else None)
        out, log_e = network.forward_with_evidence(torch.from_numpy(x))
        y = torch.from_numpy(train.y[idx])
        bce = F.binary_cross_entropy_with_logits(out[:, :2], y)
        reg = F.smooth_l1_loss(out[:, 2], depth_target[idx], beta=0.5)
        loss = bce + config.depth_weight * reg
        if log_e is not None and causes is not None and config.localisation_weight > 0:
            loss = loss + config.localisation_weight * localisation_loss(
                log_e, y[:, 0], torch.from_numpy(causes)
            )
        return loss

    def describe(record: dict[str, Any]) -> str:
        a = record["validation"]["all"]
        return (
            f"epoch {record['epoch']}: loss {record['loss']:.3f} auroc {a['auroc_present']:.3f} "
            f"kappa ord {a['kappa_ordinal']:.3f} rule {a['kappa_depth_rule']:.3f} "
            f"mae {a['depth_mae_mm']:.2f} mm ({record['seconds']:.0f} s)"
        )

    _, best, log_path = train_resumable(
        network,
        len(train),
        Schedule(config.epochs, config.batch_size, config.lr, config.weight_decay, config.seed),
        work_dir,
        fingerprint,
        resume,
        batch_loss=batch_loss,
        validate=lambda _net: metrics(predict(network, val.x), val),
        score=selection_score,
        describe=describe,
    )
    return network, best, log_path


def finish(
    network: SubarticularNet,
    best: dict[str, Any],
    log_path: Path,
    val: Arrays,
    out_dir: Path,
    config: SubarticularTrainConfig,
    data_root: Path,
    train_names: Sequence[str],
    val_names: Sequence[str],
) -> ModelSpec:
    """Best epoch's weights + validation temperature -> safetensors + card + training log."""
    network.eval()
    network.set_temperature(np.ones(2))
    temps = fit_temperature(predict(network, val.x)[:, :2], val.y)
    network.set_temperature(temps)
    val_metrics = metrics(predict(network, val.x), val)
    uses_rule = val_metrics["all"]["kappa_depth_rule"] >= val_metrics["all"]["kappa_ordinal"]
    sha = save_weights(network, out_dir / "model.safetensors")
    th = THRESHOLDS[Condition.LEFT_SUBARTICULAR]
    spec = ModelSpec(
        name=MODEL_NAME,
        version=config.version,
        sha256=sha,
        architecture={
            "type": ARCHITECTURE,
            "in_channels": rc.IN_CHANNELS,
            "widths": list(config.widths),
            "evidence": config.evidence,
        },
        input=InputContract(
            orientation=(
                "axial crop per (level, side) on the canonical axial grid of cds.pipeline.axial (rows "
                f"anterior->posterior), rows from {rc.ANTERIOR_MM:g} mm anterior of the dural sac's "
                f"probability centre over the level's {rc.N_SLICES} slices nearest the disc centre, "
                f"columns from {rc.MEDIAL_MM:g} mm across the midline towards the side (right recess "
                "mirrored); channels per slice (caudal->cranial): T2, P(dural sac), P(disc + body), "
                "P(facet + flavum + posterior elements) of axial_seg (cds.pipeline.recess_crop)"
            ),
            target_spacing_mm=(rc.SPACING_MM, rc.SPACING_MM),
            input_size=(rc.SIZE, rc.SIZE),
            intensity_normalisation=(
                "T2 channels as the axial segmentation's input: (x - p1) / (p99 - p1) over the slice's "
                "non-zero pixels, clipped to [0, 1.5]; probability channels in [0, 1]"
            ),
            clip_percentiles=(1.0, 99.0),
        ),
        labels=OUTPUT_LABELS,
        thresholds={
            "present": 0.5,
            "depth_severe_below_mm": th.severe_below,
            "depth_moderate_below_mm": th.moderate_below,
            "grade_from_depth_rule": 1.0 if uses_rule else 0.0,
        },
        metrics={
            "validation": val_metrics,
            "best_epoch": int(best["epoch"]),
            "temperature": [float(t) for t in temps],
            "grading": "depth rule on the estimated depth" if uses_rule else "ordinal heads",
        },
        training={
            "data": str(data_root),
            "split": (
                "train part of split.json (weights), validation part (epoch, temperature, grading, metrics)"
            ),
            "train_studies": len(train_names),
            "validation_studies": len(val_names),
            "first_train_study": train_names[0] if train_names else None,
            "config": asdict(config),
            "command": "cds train subarticular --data DIR --cache-dir DIR --work DIR",
        },
        known_limits=(
            "trained and validated on synthetic studies only (cds synth); no real lateral recess labels",
            "the crop is placed from the axial segmentation's dural sac: a lost or displaced sac moves "
            "the crop; a mislabelled level gives the neighbouring level's recess",
            "the lateral recess depth is a learned estimate from the image and the segmentation, not a "
            "measurement on a mask; it carries no pixel outline; truth depths are clipped at "
            f"{DEPTH_CAP_MM:g} mm (open recesses), so larger estimates mean 'wide open'",
        ),
    )
    write_card(spec, out_dir)
    (out_dir / "training_log.jsonl").write_text(log_path.read_text(encoding="utf-8"), encoding="utf-8")
    return spec
