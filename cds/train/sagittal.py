"""Train the sagittal segmentation U-Net (SPIDER real slices and/or synthetic studies).

Seeded (same data + seed + epochs -> same weights on the same machine), resumable (a checkpoint
after every epoch; rerunning the command continues), and logged per epoch as JSON lines. The
result is written as ``model.safetensors`` + ``card.json`` (cds.ml.spec) with the held-out
Dice figures computed through the product's own inference path.

With synthetic validation studies (cds.train.sagittal_validation) every epoch is scored as the
evaluation scores the product, and the shipped weights are those of the best validation epoch
among the epochs whose monitored SPIDER hold-out Dice stays at or above ``spider_floor``; the
last epoch is shipped only when no validation set is given.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from cds.ml.loading import clear_cache, save_weights
from cds.ml.spec import InputContract, ModelSpec, write_card
from cds.ml.unet import UNet2D, UNetConfig, count_parameters
from cds.pipeline.segment import DEFAULT_THRESHOLDS, LABELS, MODEL_NAME
from cds.train import augment
from cds.train.data import Sample, load_spider_samples, spider_patients, split_patients
from cds.train.loop import train_epoch
from cds.train.metrics import dice_per_class, summarise
from cds.train.sagittal_validation import ValidationStudy, validation_dice

log = logging.getLogger(__name__)

SPIDER_CREDIT = (
    "SPIDER lumbar spine MRI dataset: van der Graaf J.W. et al., Scientific Data 11, 264 (2024), "
    "Zenodo record 10159290, CC BY 4.0"
)

CONTRACT = InputContract(
    orientation="sagittal slice, head up (row 0 cranial), anterior left (column 0 anterior)",
    target_spacing_mm=(0.9375, 0.9375),
    input_size=(320, 256),
    intensity_normalisation="per-image clip to percentiles then scale to [0, 1]",
    clip_percentiles=(0.5, 99.5),
)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    steps_per_epoch: int = 60
    batch_size: int = 8
    crop: tuple[int, int] = (224, 192)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    n_holdout: int = 6
    monitor_patients: int = 6
    spider_train: bool = True
    synth_fraction: float = 0.5
    threads: int = 1
    base_channels: int = 16
    depth: int = 5
    version: str = "1.0.0"
    #: an epoch whose monitored SPIDER hold-out mean Dice falls below this is never selected
    spider_floor: float = 0.85
    warmup_fraction: float = 0.1
    #: weight of the canal class in both loss terms (1.0: the plain dice_ce_loss)
    canal_weight: float = 1.0
    augment: augment.AugmentConfig = field(default_factory=augment.AugmentConfig)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _stack(samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.stack([s.image for s in samples]).astype(np.float32))[:, None]
    labels = torch.from_numpy(np.stack([s.labels for s in samples]).astype(np.int64))
    return images, labels


def dice_ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus soft Dice over the foreground classes (batch-pooled, robust to empty slices)."""
    ce = F.cross_entropy(logits, labels)
    probs = torch.softmax(logits, dim=1)[:, 1:]
    onehot = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    soft_dice = (2 * inter + 1.0) / (denom + 1.0)
    return ce + (1 - soft_dice).mean()


def class_weighted_dice_ce_loss(
    weights: Sequence[float],
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """dice_ce_loss with per-class weights (background first) in the cross-entropy and the Dice mean.

    Why: the canal is the thinnest structure on a sagittal slice, so a one-pixel boundary error costs
    it the most Dice, and off the midline and at stenoses its contrast is low; the plain loss gives
    it the same share as the large vertebrae. Weighting it raises its share of the gradient without
    changing the classes or the output.
    """
    w = torch.tensor([float(x) for x in weights], dtype=torch.float32)
    if w.ndim != 1 or len(w) < 2 or bool((w <= 0).any()):
        raise ValueError(f"class weights must be positive, one per class: {list(weights)}")

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weights_dev = w.to(logits.device)
        ce = F.cross_entropy(logits, labels, weight=weights_dev)
        probs = torch.softmax(logits, dim=1)[:, 1:]
        onehot = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()
        dims = (0, 2, 3)
        inter = (probs * onehot).sum(dims)
        denom = probs.sum(dims) + onehot.sum(dims)
        soft_dice = (2 * inter + 1.0) / (denom + 1.0)
        fg = weights_dev[1:]
        return ce + ((1 - soft_dice) * fg).sum() / fg.sum()

    return loss


def sagittal_loss(canal_weight: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss of a configuration: dice_ce_loss, or the canal-weighted form of it."""
    if canal_weight == 1.0:
        return dice_ce_loss
    weights = [1.0] * len(LABELS)
    weights[LABELS.index("canal")] = canal_weight
    return class_weighted_dice_ce_loss(weights)


class _Sampler:
    """Draws training batches: a fixed share from synthetic studies when both sources are present."""

    def __init__(self, real: list[Sample], synth: list[Sample], synth_fraction: float, seed: int) -> None:
        self.real, self.synth = real, synth
        self.fraction = synth_fraction if (real and synth) else (1.0 if synth else 0.0)
        self.rng = random.Random(seed)

    def batch(self, size: int) -> list[Sample]:
        out = []
        for _ in range(size):
            pool = self.synth if self.rng.random() < self.fraction else self.real
            out.append(self.rng.choice(pool))
        return out


def _grid_dice(network: torch.nn.Module, samples: Sequence[Sample], device: torch.device) -> dict[str, float]:
    """Per-patient Dice on the model grid (cheap, for per-epoch monitoring)."""
    network.eval()
    by_patient: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    with torch.inference_mode():
        for start in range(0, len(samples), 16):
            chunk = samples[start : start + 16]
            images, labels = _stack(chunk)
            pred = network(images.to(device)).argmax(1).cpu().numpy()
            for s, p, t in zip(chunk, pred, labels.numpy(), strict=True):
                preds, truths = by_patient.setdefault(s.patient, ([], []))
                preds.append(p)
                truths.append(t)
    network.train()
    per_patient = {k: dice_per_class(np.stack(p), np.stack(t)) for k, (p, t) in by_patient.items()}
    return summarise(per_patient) if per_patient else {}


@contextmanager
def shipped_layout(out_dir: Path) -> Iterator[Path]:
    """A models folder in which ``out_dir`` is found under the shipped name ``MODEL_NAME``.

    Why: the evaluation goes through the product's inference path (``segment_sagittal_stack``),
    which loads ``<models_dir>/sagittal_seg``; a run written to any other folder name (a trial in
    /tmp, ``models/sagittal_seg_v2``) is reached through a temporary symlink instead of being
    silently skipped or, worse, evaluating the shipped model in its place.
    """
    out_dir = out_dir.resolve()
    if out_dir.name == MODEL_NAME:
        yield out_dir.parent
        return
    with tempfile.TemporaryDirectory(prefix="cds-sagittal-eval-") as tmp:
        (Path(tmp) / MODEL_NAME).symlink_to(out_dir, target_is_directory=True)
        yield Path(tmp)


def evaluate_spider(model_parent: Path, spider_root: Path, patients: Sequence[str]) -> dict[str, Any]:
    """Dice per class on SPIDER patients through segment_sagittal_stack (the product's own path).

    Dice is computed per patient over the patient's whole slice stack (3D), then averaged.
    """
    from cds.pipeline.segment import segment_sagittal_stack
    from cds.train.data import SPIDER_SPACING_MM, read_spider_patient

    per_patient: dict[str, dict[str, float]] = {}
    for patient in tqdm(patients, desc="evaluate", leave=False):
        slices = read_spider_patient(spider_root, patient)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, s in enumerate(slices):
            by_shape.setdefault(s.image.shape, []).append(i)
        preds: list[np.ndarray] = [np.zeros(0)] * len(slices)
        for idx in by_shape.values():
            stack = np.stack([slices[i].image for i in idx])
            for i, m in zip(
                idx, segment_sagittal_stack(stack, SPIDER_SPACING_MM, models_dir=model_parent), strict=True
            ):
                preds[i] = m.label_map()
        truth = np.concatenate([s.labels.ravel() for s in slices])
        per_patient[patient] = dice_per_class(np.concatenate([p.ravel() for p in preds]), truth)
    return {"per_patient": per_patient, "summary": summarise(per_patient) if per_patient else {}}


def _initial_weights(init: Path) -> dict[str, torch.Tensor]:
    """Weights to start from: a model folder (verified against its card) or a training checkpoint."""
    if init.suffix == ".pt":
        return dict(torch.load(init, map_location="cpu", weights_only=False)["network"])
    from cds.ml.loading import load_model

    return dict(load_model(init.name, init.parent, device="cpu").network.state_dict())


def _warm_start_optimiser(optimiser: torch.optim.Optimizer, checkpoint: Path) -> None:
    """Take Adam's moment estimates from the checkpoint the weights come from.

    Why: Adam's first steps from empty moments move every parameter by about the learning rate in
    the sign of its gradient; on a converged network one such step at 8e-5 cost 0.14 Dice on a
    validation study. With the previous run's moments the fine-tuning continues smoothly. Learning
    rates and momenta are set afterwards by this run's scheduler.
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    saved = state.get("optimiser")
    if not saved:
        return
    groups = [dict(g) for g in optimiser.state_dict()["param_groups"]]
    optimiser.load_state_dict(saved)
    for group, mine in zip(optimiser.param_groups, groups, strict=True):
        group.update({k: v for k, v in mine.items() if k != "params"})
    log.info("optimiser moments warm-started from %s", checkpoint)


def train_sagittal(
    *,
    out_dir: Path,
    work_dir: Path,
    spider_root: Path | None,
    synth_samples: Callable[[InputContract], list[Sample]] | None,
    synth_description: dict[str, Any] | None,
    config: TrainConfig,
    init: Path | None = None,
    validation: Sequence[ValidationStudy] = (),
    validation_description: dict[str, Any] | None = None,
    resume: bool = False,
) -> ModelSpec:
    """Train, write ``out_dir/model.safetensors`` + ``card.json``, and evaluate on held-out SPIDER.

    ``init``: a model folder (weights verified against its card) or a ``checkpoint.pt`` whose weights
    start the run, e.g. to add synthetic data to a model trained on SPIDER without starting over.
    ``validation``: synthetic studies scored every epoch; the best eligible epoch is shipped.
    ``resume``: insist on continuing ``work_dir/checkpoint.pt`` (an error when there is none of this
    configuration); without it a matching checkpoint is still continued, a different one replaced.
    """
    torch.set_num_threads(config.threads)
    _seed_everything(config.seed)
    work_dir.mkdir(parents=True, exist_ok=True)

    train_patients: list[str] = []
    holdout: list[str] = []
    if spider_root is not None:
        patients = spider_patients(spider_root)
        if config.spider_train:
            train_patients, holdout = split_patients(patients, config.n_holdout, config.seed)
        else:
            holdout = patients
    real = (
        load_spider_samples(spider_root, train_patients, CONTRACT) if spider_root and train_patients else []
    )
    # per-epoch monitoring on the model grid uses at most `monitor_patients` evaluation patients (cost);
    # the final evaluation covers all of them through the product's inference path
    monitored = holdout[: config.monitor_patients]
    val = load_spider_samples(spider_root, monitored, CONTRACT) if spider_root else []
    synth = synth_samples(CONTRACT) if synth_samples else []
    if not real and not synth:
        raise ValueError("no training data: give --data-spider (with training patients) and/or --data-synth")
    log.info("training samples: %d real, %d synthetic; %d held-out slices", len(real), len(synth), len(val))

    arch = UNetConfig(base_channels=config.base_channels, depth=config.depth, num_classes=len(LABELS))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network = UNet2D(arch)
    if init is not None:
        network.load_state_dict(_initial_weights(init))
    network.to(device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if init is not None and init.suffix == ".pt":
        _warm_start_optimiser(optimiser, init)
    total_steps = config.epochs * config.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.lr, total_steps=total_steps, pct_start=config.warmup_fraction
    )
    gen = torch.Generator().manual_seed(config.seed)
    sampler = _Sampler(real, synth, config.synth_fraction, config.seed)

    checkpoint = work_dir / "checkpoint.pt"
    best_path = work_dir / "best.pt"
    log_path = work_dir / "metrics.jsonl"
    start_epoch = 0
    best: dict[str, Any] | None = None
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if state["config"] == asdict(config):
            network.load_state_dict(state["network"])
            optimiser.load_state_dict(state["optimiser"])
            scheduler.load_state_dict(state["scheduler"])
            gen.set_state(state["generator"])
            sampler.rng.setstate(state["sampler"])
            start_epoch = int(state["epoch"])
            best = state.get("best")
            log.info("resuming after epoch %d", start_epoch)
        elif resume:
            raise ValueError(f"{checkpoint} was written with another configuration; cannot --resume")
        else:
            log.warning("checkpoint config differs from this run; starting afresh")
            log_path.unlink(missing_ok=True)
            best_path.unlink(missing_ok=True)
    elif resume:
        raise ValueError(f"nothing to resume: no {checkpoint}")

    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        losses = train_epoch(
            network,
            lambda: _stack(sampler.batch(config.batch_size)),
            sagittal_loss(config.canal_weight),
            optimiser,
            scheduler,
            steps=config.steps_per_epoch,
            augment_config=config.augment,
            crop=config.crop,
            gen=gen,
            device=device,
            desc=f"epoch {epoch + 1}/{config.epochs}",
        )
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)),
            "lr": float(scheduler.get_last_lr()[0]),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        if val:
            record["holdout_grid_dice"] = _grid_dice(network, val, device)
        if validation:
            summary, _ = validation_dice(network, validation, CONTRACT, dict(DEFAULT_THRESHOLDS), device)
            record["validation_dice"] = summary
            spider_ok = not val or record["holdout_grid_dice"].get("mean", 0.0) >= config.spider_floor
            if spider_ok and (best is None or summary["mean"] > best["validation_dice"]["mean"]):
                best = {
                    k: record[k] for k in ("epoch", "validation_dice", "holdout_grid_dice") if k in record
                }
                torch.save(
                    {"config": asdict(config), "epoch": epoch + 1, "network": network.state_dict()}, best_path
                )
            record["selected_so_far"] = best["epoch"] if best else None
        with log_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        tqdm.write(json.dumps(record))
        torch.save(
            {
                "config": asdict(config),
                "epoch": epoch + 1,
                "network": network.state_dict(),
                "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": gen.get_state(),
                "sampler": sampler.rng.getstate(),
                "best": best,
            },
            checkpoint,
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    network.cpu()
    if best is not None:
        network.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=False)["network"])
    sha = save_weights(network, out_dir / "model.safetensors")
    training = {
        "seed": config.seed,
        "config": {k: v for k, v in asdict(config).items() if k != "augment"},
        "augment": asdict(config.augment),
        "parameters": count_parameters(network),
        "spider": {
            "credit": SPIDER_CREDIT,
            "train_patients": train_patients,
            "held_out_patients": holdout,
            "slices_train": len(real),
        }
        if spider_root
        else None,
        "synthetic": synth_description,
        "synthetic_slices": len(synth),
        "initialised_from": str(init) if init else None,
        "selected_epoch": best,
        "synthetic_validation": validation_description,
    }
    base_metrics: dict[str, Any] = (
        {"synthetic_validation_dice": best["validation_dice"]} if best is not None else {}
    )
    spec = ModelSpec(
        name=out_dir.name,
        version=config.version,
        sha256=sha,
        architecture={"type": "UNet2D", **asdict(arch)},
        input=CONTRACT,
        labels=LABELS,
        thresholds=DEFAULT_THRESHOLDS,
        metrics=base_metrics,
        training=training,
        known_limits=KNOWN_LIMITS,
    )
    write_card(spec, out_dir)
    (out_dir / "training_log.jsonl").write_text(log_path.read_text(encoding="utf-8"), encoding="utf-8")
    if spider_root is not None and holdout:
        from cds.train.gallery import save_gallery

        clear_cache()
        with shipped_layout(out_dir) as models_dir:
            result = evaluate_spider(models_dir, spider_root, holdout)
            spec = replace(
                spec, metrics={**base_metrics, f"{_metric_name(config.spider_train)}_dice": result}
            )
            write_card(spec, out_dir)
            save_gallery(models_dir, spider_root, holdout[:8], work_dir / "gallery.png")
        clear_cache()
    return spec


def _metric_name(spider_train: bool) -> str:
    return "spider_holdout" if spider_train else "spider_all_patients"


KNOWN_LIMITS: tuple[str, ...] = (
    "2D slice model: no through-plane context.",
    "Trained on SPIDER sagittal T2 SPACE (1.5 T Siemens) and synthetic slices; other sequences, "
    "field strengths or strongly different fields of view are untested.",
    "Vertebra class includes posterior elements (SPIDER convention).",
)


def export_checkpoint(
    checkpoint: Path,
    out_dir: Path,
    spider_root: Path | None,
    version: str,
    *,
    synth_description: dict[str, Any] | None = None,
    validation_description: dict[str, Any] | None = None,
    init: Path | None = None,
    known_limits: Sequence[str] = KNOWN_LIMITS,
) -> ModelSpec:
    """Write the weights of a (possibly interrupted) run's checkpoint as a model folder and evaluate it.

    Why: on a shared CPU a long schedule may have to be cut short; the last completed epoch (or the
    best validation epoch, ``best.pt``) is then shipped or used to initialise the next run, with its
    held-out figures measured like any model's. The run's ``metrics.jsonl`` beside the checkpoint is
    copied as the training log, and the exported epoch's validation figures go into the card.
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    epoch = int(state["epoch"])
    log_path = checkpoint.parent / "metrics.jsonl"
    record: dict[str, Any] = {}
    if log_path.is_file():
        lines = log_path.read_text(encoding="utf-8").splitlines()
        (out_dir / "training_log.jsonl").write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
        record = next((r for r in map(json.loads, lines) if int(r["epoch"]) == epoch), {})
    base_metrics: dict[str, Any] = (
        {"synthetic_validation_dice": record["validation_dice"]} if "validation_dice" in record else {}
    )
    cfg = dict(state["config"])
    arch = UNetConfig(
        base_channels=int(cfg["base_channels"]), depth=int(cfg["depth"]), num_classes=len(LABELS)
    )
    network = UNet2D(arch)
    network.load_state_dict(state["network"])
    sha = save_weights(network, out_dir / "model.safetensors")
    holdout: list[str] = []
    train_patients: list[str] = []
    if spider_root is not None:
        patients = spider_patients(spider_root)
        if cfg["spider_train"]:
            train_patients, holdout = split_patients(patients, int(cfg["n_holdout"]), int(cfg["seed"]))
        else:
            holdout = patients
    spec = ModelSpec(
        name=out_dir.name,
        version=version,
        sha256=sha,
        architecture={"type": "UNet2D", **asdict(arch)},
        input=CONTRACT,
        labels=LABELS,
        thresholds=DEFAULT_THRESHOLDS,
        metrics=base_metrics,
        training={
            "exported_from_checkpoint": {"epoch": epoch, "of_epochs": int(cfg["epochs"])},
            "seed": int(cfg["seed"]),
            "config": {k: v for k, v in cfg.items() if k != "augment"},
            "augment": cfg.get("augment"),
            "spider": {
                "credit": SPIDER_CREDIT,
                "train_patients": train_patients,
                "held_out_patients": holdout,
            },
            "synthetic": synth_description,
            "synthetic_validation": validation_description,
            "selected_epoch": {
                k: record[k] for k in ("epoch", "validation_dice", "holdout_grid_dice") if k in record
            }
            or None,
            "initialised_from": str(init) if init else None,
        },
        known_limits=tuple(known_limits),
    )
    write_card(spec, out_dir)
    if holdout and spider_root is not None:
        clear_cache()
        with shipped_layout(out_dir) as models_dir:
            result = evaluate_spider(models_dir, spider_root, holdout)
        clear_cache()
        spec = replace(
            spec, metrics={**base_metrics, f"{_metric_name(bool(cfg['spider_train']))}_dice": result}
        )
        write_card(spec, out_dir)
    return spec


__all__ = [
    "CONTRACT",
    "MODEL_NAME",
    "TrainConfig",
    "class_weighted_dice_ce_loss",
    "evaluate_spider",
    "export_checkpoint",
    "sagittal_loss",
    "shipped_layout",
    "train_sagittal",
]
