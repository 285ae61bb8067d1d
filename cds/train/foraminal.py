"""``cds train foraminal``: the parasagittal foraminal network (cds.ml.foraminal), resumable.

Data: the train part of ``split.json`` of a ``cds synth`` folder for the weights, its validation
part for epoch selection, temperature fitting and the card's metrics (never the evaluation
split). Each (study, level, side) is one example; both sides share the network (see
cds.pipeline.foramen_crop). Targets: P(grade >= moderate), P(grade = severe) (ordinal, BCE) and
the foraminal area ratio (smooth L1).

Resumable: after every epoch ``<work>/checkpoint.pt`` holds network, optimiser, scheduler, RNG
states and the best epoch so far; ``--resume`` continues from it (refused if the config or the
study list changed). Seeded (Python, NumPy, torch). Every epoch appends a line to
``<work>/training_log.jsonl`` (copied next to the weights at the end).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cds.domain import THRESHOLDS, Condition, Grade, Side
from cds.ml.foraminal import (
    ARCHITECTURE,
    ENSEMBLE,
    OUTPUT_LABELS,
    ForaminalConfig,
    ForaminalEnsemble,
    ForaminalNet,
)
from cds.ml.loading import save_weights
from cds.ml.spec import InputContract, ModelSpec, write_card
from cds.pipeline import foramen_crop as fc
from cds.train.foraminal_data import MARGIN, ForamenExample, build_cache, read_split
from cds.train.ordinal import fit_temperature, ordinal_grade, seed_everything, sigmoid
from cds.train.resumable import Schedule, fingerprint, train_resumable

log = logging.getLogger(__name__)

MODEL_NAME = "foraminal"
GRADE_INDEX = {Grade.NORMAL_MILD: 0, Grade.MODERATE: 1, Grade.SEVERE: 2}


@dataclass(frozen=True)
class ForaminalTrainConfig:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    ratio_weight: float = 4.0
    seed: int = 0
    threads: int = 1
    version: str = "1.0.0"
    stem: int = 12
    widths: tuple[int, ...] = (16, 24, 32)
    #: Independently seeded networks (seed, seed + 1, ...) averaged into one ForaminalEnsemble.
    members: int = 1


@dataclass(frozen=True)
class Arrays:
    """Examples as arrays: x (N, C, W, W) normalised wide crops, y (N, 2), ratio (N,), grade (N,)."""

    x: np.ndarray
    y: np.ndarray
    ratio: np.ndarray
    grade: np.ndarray
    side: np.ndarray  # 0 left, 1 right

    def __len__(self) -> int:
        return len(self.y)


def to_arrays(examples: Sequence[ForamenExample]) -> Arrays:
    x = np.stack([fc.apply_window(e.crop.astype(np.float32), e.lo, e.scale) for e in examples])
    g = np.array([GRADE_INDEX[e.grade] for e in examples], dtype=np.int64)
    y = np.stack([(g >= 1), (g >= 2)], axis=1).astype(np.float32)
    ratio = np.array([e.ratio for e in examples], dtype=np.float32)
    side = np.array([0 if e.side is Side.LEFT else 1 for e in examples], dtype=np.int64)
    return Arrays(x, y, ratio, g, side)


def centre(x: np.ndarray) -> np.ndarray:
    """The inference window (SIZE x SIZE) of wide crops."""
    return np.ascontiguousarray(x[..., MARGIN:-MARGIN, MARGIN:-MARGIN])


def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shifted window (up to MARGIN px = 5 mm: disc-centroid error), intensity gain/offset, noise."""
    n = x.shape[0]
    out = np.empty((n, x.shape[1], fc.SIZE, fc.SIZE), dtype=np.float32)
    for i in range(n):
        r, c = rng.integers(0, 2 * MARGIN + 1, size=2)
        out[i] = x[i, :, r : r + fc.SIZE, c : c + fc.SIZE]
    gain = rng.uniform(0.85, 1.15, size=(n, 1, 1, 1)).astype(np.float32)
    offset = rng.uniform(-0.05, 0.05, size=(n, 1, 1, 1)).astype(np.float32)
    noise = rng.normal(0.0, 0.02, size=out.shape).astype(np.float32)
    return np.clip(out * gain + offset + noise, 0.0, 1.5)


def predict(network: ForaminalNet | ForaminalEnsemble, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """(N, 3) raw outputs (present logit, severe logit, ratio) on the inference windows."""
    network.eval()
    outs = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            outs.append(network(torch.from_numpy(centre(x[i : i + batch]))).numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 3), np.float32)


def ratio_grade(ratio: np.ndarray) -> np.ndarray:
    """FINDINGS.md rule on (estimated) ratios: 0 normal/mild, 1 moderate, 2 severe."""
    th = THRESHOLDS[Condition.LEFT_FORAMINAL]
    return np.where(ratio < th.severe_below, 2, np.where(ratio < th.moderate_below, 1, 0))


def metrics(out: np.ndarray, data: Arrays) -> dict[str, Any]:
    """Per side and overall: AUROC of present, quadratic kappa (ordinal heads and ratio rule), ratio MAE."""
    from sklearn.metrics import cohen_kappa_score, roc_auc_score

    p_present, p_severe, ratio = sigmoid(out[:, 0]), sigmoid(out[:, 1]), out[:, 2]
    rec: dict[str, Any] = {}
    for name, sel in (
        ("left", data.side == 0),
        ("right", data.side == 1),
        ("all", np.ones(len(data), dtype=bool)),
    ):
        y, g = data.y[sel, 0], data.grade[sel]
        r: dict[str, Any] = {"n": int(sel.sum())}
        r["auroc_present"] = float(roc_auc_score(y, p_present[sel])) if 0 < y.sum() < len(y) else None
        r["auroc_severe"] = (
            float(roc_auc_score(data.y[sel, 1], p_severe[sel])) if 0 < data.y[sel, 1].sum() < len(y) else None
        )
        r["auroc_present_from_ratio"] = float(roc_auc_score(y, -ratio[sel])) if 0 < y.sum() < len(y) else None
        r["kappa_ordinal"] = float(
            cohen_kappa_score(g, ordinal_grade(p_present[sel], p_severe[sel]), weights="quadratic")
        )
        r["kappa_ratio_rule"] = float(cohen_kappa_score(g, ratio_grade(ratio[sel]), weights="quadratic"))
        r["ratio_mae"] = float(np.mean(np.abs(ratio[sel] - data.ratio[sel])))
        r["accuracy_ordinal"] = float(np.mean(ordinal_grade(p_present[sel], p_severe[sel]) == g))
        rec[name] = r
    return rec


def selection_score(m: dict[str, Any]) -> float:
    a = m["all"]
    return float((a["auroc_present"] or 0.0) + max(a["kappa_ordinal"], a["kappa_ratio_rule"]))


def _fingerprint(config: ForaminalTrainConfig, train: Sequence[str], val: Sequence[str]) -> str:
    """One member's identity: what changes its weights (not the member count, the version label
    or the thread count), so a finished member can be reused by a larger ensemble."""
    return fingerprint(config, train, val, ignore=("members", "version", "threads"))


def train_foraminal(
    data_root: Path,
    cache_dir: Path,
    out_dir: Path,
    work_dir: Path,
    config: ForaminalTrainConfig,
    *,
    resume: bool = False,
    max_studies: int = 0,
    cached_only: bool = False,
) -> ModelSpec:
    torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    split = read_split(data_root)
    train_names = split["train"][: max_studies or None]
    val_names = split["validation"][: max_studies or None]
    if cached_only:  # train on what an interrupted cache build has prepared so far
        train_names = [n for n in train_names if (cache_dir / f"{n}.npz").is_file()]
        val_names = [n for n in val_names if (cache_dir / f"{n}.npz").is_file()]
    train = to_arrays(build_cache(data_root, cache_dir, train_names))
    val = to_arrays(build_cache(data_root, cache_dir, val_names))
    log.info("%d training and %d validation foramina", len(train), len(val))
    trained: list[tuple[ForaminalNet, dict[str, Any], Path]] = []
    for k in range(config.members):
        member = replace(config, seed=config.seed + k, members=1)
        member_dir = work_dir if config.members == 1 else work_dir / f"member_{k}"
        fingerprint = _fingerprint(member, train_names, val_names)
        trained.append(_train_member(train, val, member, member_dir, fingerprint, resume))
    return finish(trained, val, out_dir, config, data_root, train_names, val_names)


def _train_member(
    train: Arrays,
    val: Arrays,
    config: ForaminalTrainConfig,
    work_dir: Path,
    fingerprint: str,
    resume: bool,
) -> tuple[ForaminalNet, dict[str, Any], Path]:
    """One seeded network, checkpointed every epoch; returns it, its best epoch and its log."""
    seed_everything(config.seed)
    network = ForaminalNet(
        ForaminalConfig(in_channels=fc.IN_CHANNELS, stem=config.stem, widths=config.widths)
    )

    def batch_loss(idx: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        out = network(torch.from_numpy(augment(train.x[idx], rng)))
        y = torch.from_numpy(train.y[idx])
        bce = F.binary_cross_entropy_with_logits(out[:, :2], y)
        reg = F.smooth_l1_loss(out[:, 2], torch.from_numpy(train.ratio[idx]), beta=0.1)
        return bce + config.ratio_weight * reg

    def describe(record: dict[str, Any]) -> str:
        a = record["validation"]["all"]
        return (
            f"epoch {record['epoch']}: loss {record['loss']:.3f} auroc {a['auroc_present']:.3f} "
            f"kappa ord {a['kappa_ordinal']:.3f} rule {a['kappa_ratio_rule']:.3f} mae {a['ratio_mae']:.3f}"
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
    trained: Sequence[tuple[ForaminalNet, dict[str, Any], Path]],
    val: Arrays,
    out_dir: Path,
    config: ForaminalTrainConfig,
    data_root: Path,
    train_names: Sequence[str],
    val_names: Sequence[str],
) -> ModelSpec:
    """Best epochs' weights (one network or the ensemble of the members) + validation
    temperature -> safetensors + card + training log in ``out_dir``."""
    network: ForaminalNet | ForaminalEnsemble
    if len(trained) == 1:
        network = trained[0][0]
    else:
        network = ForaminalEnsemble(trained[0][0].config, members=len(trained))
        for slot, (member, _best, _log) in zip(network.members, trained, strict=True):
            slot.load_state_dict(member.state_dict())
    network.eval()
    network.set_temperature(np.ones(2))
    raw = predict(network, val.x)
    temps = fit_temperature(raw[:, :2], val.y)
    network.set_temperature(temps)
    calibrated = predict(network, val.x)
    val_metrics = metrics(calibrated, val)
    uses_rule = val_metrics["all"]["kappa_ratio_rule"] >= val_metrics["all"]["kappa_ordinal"]
    sha = save_weights(network, out_dir / "model.safetensors")
    spec = ModelSpec(
        name=MODEL_NAME,
        version=config.version,
        sha256=sha,
        architecture={
            "type": ARCHITECTURE if len(trained) == 1 else ENSEMBLE,
            "members": len(trained),
            "in_channels": fc.IN_CHANNELS,
            "stem": config.stem,
            "widths": list(config.widths),
        },
        input=InputContract(
            orientation=(
                "parasagittal crop per (level, side) in the disc's frame: rows cranial->caudal along the "
                "disc normal, columns anterior->posterior, origin the labelled disc centroid of the "
                f"model-oriented sagittal T2; rows start {fc.CRANIAL_TOP_MM:g} mm cranial, columns "
                f"{fc.POSTERIOR_START_MM:g} mm posterior of the centroid; channels = lateral offsets "
                f"{list(fc.LATERAL_OFFSETS_MM)} mm towards the side, medial to lateral, trilinear "
                "between sagittal slices (cds.pipeline.foramen_crop)"
            ),
            target_spacing_mm=(fc.SPACING_MM, fc.SPACING_MM),
            input_size=(fc.SIZE, fc.SIZE),
            intensity_normalisation=(
                "(x - p1) / (p99 - p1), p1/p99 over all of the study's foraminal crops, clipped to [0, 1.5]"
            ),
            clip_percentiles=(1.0, 99.0),
        ),
        labels=OUTPUT_LABELS,
        thresholds={
            "present": 0.5,
            "ratio_severe_below": THRESHOLDS[Condition.LEFT_FORAMINAL].severe_below,
            "ratio_moderate_below": THRESHOLDS[Condition.LEFT_FORAMINAL].moderate_below,
            "grade_from_ratio_rule": 1.0 if uses_rule else 0.0,
        },
        metrics={
            "validation": val_metrics,
            "best_epoch": [int(best["epoch"]) for _net, best, _log in trained],
            "members_validation": [best["record"]["validation"]["all"] for _net, best, _log in trained],
            "temperature": [float(t) for t in temps],
            "grading": "ratio rule" if uses_rule else "ordinal heads",
        },
        training={
            "data": str(data_root),
            "split": "train part of split.json (weights), validation part (epoch, temperature, metrics)",
            "train_studies": len(train_names),
            "validation_studies": len(val_names),
            "first_train_study": train_names[0] if train_names else None,
            "config": asdict(config),
            "command": "cds train foraminal --data DIR --cache-dir DIR",
        },
        known_limits=(
            "trained and validated on synthetic studies only (cds synth); no real foraminal labels",
            "the crop is placed from the sagittal segmentation's disc centroid: a mislabelled level "
            "gives the neighbouring level's foramen",
            "the foraminal area ratio is a learned estimate from the image, not a measurement on a "
            "segmentation; it carries no pixel outline",
        ),
    )
    write_card(spec, out_dir)
    with (out_dir / "training_log.jsonl").open("w", encoding="utf-8") as fh:
        for k, (_net, _best, log_path) in enumerate(trained):
            for line in log_path.read_text(encoding="utf-8").splitlines():
                fh.write(json.dumps({"member": k, **json.loads(line)}) + "\n")
    return spec
