"""Train the axial segmentation U-Net on synthetic studies (``cds synth`` output).

Data pass through the product's own code: cds.dicom reads the DICOM, cds.pipeline.axial puts each
slice into the canonical frame (the same function inference uses), and the label volumes are
mapped to ``AXIAL_CLASSES`` with ``axial.class_of_gt``. A per-study cache (``prepare``) keeps the
canonical slices so that the classifier's training reuses them.

Seeded, resumable (checkpoint after every epoch, rerun continues), metrics logged per epoch as
JSON lines; the card carries validation Dice per class and the measurement errors (DSCA, AP
diameter, lateral recess depth) computed through ``quick_read.measure_level`` on predicted masks.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from cds.domain import Condition, Level, MeasurementName, Side
from cds.errors import CdsError
from cds.ml.spec import InputContract, ModelSpec, write_card
from cds.ml.unet import UNet2D, UNetConfig, count_parameters
from cds.pipeline import axial as ax
from cds.train import augment
from cds.train.loop import train_epoch

log = logging.getLogger(__name__)

CONTRACT = InputContract(
    orientation="axial slice resampled through the volume affine: rows anterior->posterior, columns patient "
    "right->left, centred on the slice centre",
    target_spacing_mm=(ax.CANONICAL_SPACING_MM, ax.CANONICAL_SPACING_MM),
    input_size=(ax.CANONICAL_SIZE, ax.CANONICAL_SIZE),
    intensity_normalisation="percentiles (1, 99) of the non-zero pixels scaled to [0, 1], clipped at 1.5",
    clip_percentiles=(1.0, 99.0),
)


#: An affine whose slices already are in the canonical frame (rows posterior, columns left): used
#: when cached canonical slices are measured, so that provenance points stay in canonical pixels.
CANONICAL_AFFINE = np.array(
    [[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)

# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LevelStack:
    """Canonical slices of one level of one study, with ground truth."""

    study: str
    level: Level
    images: np.ndarray  # (S, H, W) float32
    labels: np.ndarray  # (S, H, W) uint8 axial classes
    truth: dict[str, Any]  # findings.json "levels" entry of the level (grades, deciding measurements)
    measured: dict[str, Any] = field(default_factory=dict)  # findings.json "measurements" entry


def read_split(root: Path) -> dict[str, list[str]]:
    path = root / "split.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: generate the data set with `cds synth`")
    data = json.loads(path.read_text(encoding="utf-8"))
    return {k: [Path(str(s)).name for s in v] for k, v in data.items()}


def _level_of_slices(raw: np.ndarray, names: dict[int, str]) -> Level | None:
    """The level whose disc label is most present in the volume (one axial block per level)."""
    counts: dict[Level, int] = {}
    values, n = np.unique(raw, return_counts=True)
    for v, c in zip(values.tolist(), n.tolist(), strict=True):
        name = names.get(int(v), "")
        if name.startswith("disc_"):
            try:
                counts[Level(name[5:])] = counts.get(Level(name[5:]), 0) + int(c)
            except ValueError:
                continue
    return max(counts, key=lambda lv: counts[lv]) if counts else None


def prepare_study(study_dir: Path, cache_dir: Path) -> Path | None:
    """Canonical images + class labels of every axial level block of one study, cached as .npz."""
    from cds.dicom import load_study
    from cds.train.synth_data import read_label_table

    out = cache_dir / f"{study_dir.name}.npz"
    if out.is_file():
        return out
    try:
        study = load_study(study_dir / "dicom")
    except CdsError as exc:
        log.warning("skipping %s: %s", study_dir.name, exc)
        return None
    truth = study_dir / "truth"
    names = read_label_table(truth)
    lut = ax.class_of_gt()
    arrays: dict[str, np.ndarray] = {}
    for volume in study.axial_t2:
        label_file = truth / "labels" / f"{volume.series_uid}.npz"
        if not label_file.is_file():
            continue
        with np.load(label_file) as npz:
            raw = npz["labels"]
        if raw.shape != volume.shape:
            log.warning(
                "skipping a volume of %s: labels %s != image %s", study_dir.name, raw.shape, volume.shape
            )
            continue
        level = _level_of_slices(raw, names)
        if level is None:
            continue
        frame = ax.canonical_frame(volume.affine, volume.shape[1:])
        imgs = np.stack(
            [
                ax.normalise(ax.to_canonical(volume.array[k].astype(np.float32), frame))
                for k in range(volume.shape[0])
            ]
        )
        labs = np.stack(
            [lut[ax.to_canonical(raw[k].astype(np.uint8), frame, order=0)] for k in range(volume.shape[0])]
        )
        key = level.value
        if f"{key}/images" in arrays and arrays[f"{key}/images"].shape[0] >= imgs.shape[0]:
            continue
        arrays[f"{key}/images"] = imgs.astype(np.float16)
        arrays[f"{key}/labels"] = labs.astype(np.uint8)
    if not arrays:
        log.warning("skipping %s: no axial level block with labels", study_dir.name)
        return None
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Write then rename: another training process may read the cache at the same time.
    partial = out.with_name(f".{out.stem}.{os.getpid()}.npz")
    np.savez_compressed(partial, allow_pickle=False, **arrays)
    os.replace(partial, out)
    return out


def load_levels(root: Path, cache_dir: Path, studies: Sequence[str]) -> list[LevelStack]:
    out: list[LevelStack] = []
    for name in tqdm(studies, desc="axial data", leave=False):
        cached = prepare_study(root / name, cache_dir)
        if cached is None:
            continue
        findings = json.loads((root / name / "truth" / "findings.json").read_text(encoding="utf-8"))
        with np.load(cached) as npz:
            for level in Level:
                if f"{level.value}/images" not in npz:
                    continue
                out.append(
                    LevelStack(
                        study=name,
                        level=level,
                        images=npz[f"{level.value}/images"].astype(np.float32),
                        labels=npz[f"{level.value}/labels"],
                        truth=dict(findings["levels"].get(level.value, {})),
                        measured=dict(findings.get("measurements", {}).get(level.value, {})),
                    )
                )
    return out


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AxialTrainConfig:
    epochs: int = 12
    steps_per_epoch: int = 50
    batch_size: int = 8
    crop: tuple[int, int] = (128, 128)
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 1
    base_channels: int = 8
    depth: int = 4
    version: str = "1.0.0"
    #: Extra cross-entropy weight on the dural sac's boundary band (0 = plain Dice + CE).
    sac_boundary_weight: float = 0.0
    augment: augment.AugmentConfig = field(
        default_factory=lambda: augment.AugmentConfig(max_rotation_deg=10.0, scale_range=(0.9, 1.1))
    )


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def sac_boundary_band(labels: torch.Tensor, width: int = 1) -> torch.Tensor:
    """Pixels within ``width`` of the true dural sac's edge (inside or outside), (B, H, W) bool.

    Why: DSCA (the canal grade) is the sac's area, and area errors come from the few pixels on
    its boundary, which a region loss (Dice, mean CE) weighs as little as any interior pixel.
    """
    sac = (labels == ax.SAC).float()[:, None]
    k = 2 * width + 1
    dilated = F.max_pool2d(sac, k, stride=1, padding=width)
    eroded = -F.max_pool2d(-sac, k, stride=1, padding=width)
    return (dilated != eroded)[:, 0]


def boundary_weighted_loss(weight: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Dice + CE (the shared segmentation loss) plus ``weight`` x the mean CE on the sac's boundary band."""
    from cds.train.sagittal import dice_ce_loss

    if weight <= 0:
        return dice_ce_loss

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        band = sac_boundary_band(labels)
        base = dice_ce_loss(logits, labels)
        if not bool(band.any()):
            return base
        ce = F.cross_entropy(logits, labels, reduction="none")
        return base + weight * ce[band].mean()

    return loss


def _slices(stacks: Sequence[LevelStack]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(s.images[k], s.labels[k]) for s in stacks for k in range(s.images.shape[0])]


def _batch(
    pool: Sequence[tuple[np.ndarray, np.ndarray]], size: int, rng: random.Random
) -> tuple[torch.Tensor, torch.Tensor]:
    picks = [rng.choice(pool) for _ in range(size)]
    images = torch.from_numpy(np.stack([p[0] for p in picks]).astype(np.float32))[:, None]
    labels = torch.from_numpy(np.stack([p[1] for p in picks]).astype(np.int64))
    return images, labels


def predict_probs(network: torch.nn.Module, images: np.ndarray, device: torch.device) -> np.ndarray:
    network.eval()
    with torch.inference_mode():
        out = []
        for start in range(0, images.shape[0], 16):
            x = torch.from_numpy(images[start : start + 16, None].astype(np.float32)).to(device)
            out.append(torch.softmax(network(x), dim=1).cpu().numpy())
    return np.concatenate(out)


def dice_per_class(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    out = {}
    for cls, name in enumerate(ax.AXIAL_CLASSES):
        if cls == 0:
            continue
        p, t = pred == cls, truth == cls
        denom = int(p.sum() + t.sum())
        if denom:
            out[name] = float(2 * (p & t).sum() / denom)
    return out


def _segmentation_of(
    stack: LevelStack, probs: np.ndarray, sac_threshold: float = ax.DEFAULT_SAC_THRESHOLD
) -> ax.AxialSegmentation:
    frames = tuple(
        ax.canonical_frame(CANONICAL_AFFINE, (ax.CANONICAL_SIZE, ax.CANONICAL_SIZE))
        for _ in range(stack.images.shape[0])
    )
    return ax.AxialSegmentation(
        stack.images, probs, ax.postprocess(probs, sac_threshold), tuple(range(len(frames))), frames
    )


def measurement_errors(
    stacks: Sequence[LevelStack], probs: Sequence[np.ndarray], sac_threshold: float = ax.DEFAULT_SAC_THRESHOLD
) -> dict[str, Any]:
    """MAE of the measurements taken on predicted masks against the generator's ground truth."""
    return _errors(
        stacks, [_segmentation_of(s, p, sac_threshold) for s, p in zip(stacks, probs, strict=True)]
    )


def _errors(stacks: Sequence[LevelStack], segs: Sequence[ax.AxialSegmentation]) -> dict[str, Any]:
    from cds.pipeline.quick_read import measure_level

    errors: dict[str, list[float]] = {"dsca_mm2": [], "ap_diameter_mm": [], "lateral_recess_depth_mm": []}
    for stack, seg in zip(stacks, segs, strict=True):
        got = measure_level(seg, None).by_condition
        truth = stack.measured
        canal = {m.name: m.value for m in got[Condition.SPINAL_CANAL]}
        for name in (MeasurementName.DSCA_MM2, MeasurementName.AP_DIAMETER_MM):
            if name.value in truth:
                errors[name.value].append(abs(canal[name] - float(truth[name.value])))
        recess = truth.get("lateral_recess_depth_mm") or {}
        for side, cond in (
            (Side.LEFT, Condition.LEFT_SUBARTICULAR),
            (Side.RIGHT, Condition.RIGHT_SUBARTICULAR),
        ):
            if side.value in recess:
                errors["lateral_recess_depth_mm"].append(abs(got[cond][0].value - float(recess[side.value])))
    return {k: {"mae": float(np.mean(v)) if v else None, "n": len(v)} for k, v in errors.items()}


def ground_truth_mask_errors(stacks: Sequence[LevelStack]) -> dict[str, Any]:
    """The same measurements on the ground-truth label maps (upsampled nearest): the error the
    measurement method itself adds, before any segmentation error."""
    segs = []
    for s in stacks:
        up = np.repeat(np.repeat(s.labels, ax.MEASURE_UPSAMPLE, axis=1), ax.MEASURE_UPSAMPLE, axis=2)
        probs = np.zeros((s.labels.shape[0], len(ax.AXIAL_CLASSES), *s.labels.shape[1:]), np.float32)
        frames = tuple(
            ax.canonical_frame(CANONICAL_AFFINE, s.labels.shape[1:]) for _ in range(s.labels.shape[0])
        )
        segs.append(ax.AxialSegmentation(s.images, probs, up, tuple(range(len(frames))), frames))
    return _errors(stacks, segs)


def train_axial(
    *,
    data_root: Path,
    out_dir: Path,
    work_dir: Path,
    config: AxialTrainConfig,
    max_train: int = 0,
    init: Path | None = None,
) -> ModelSpec:
    """Train (or fine-tune from ``init``, a model folder with a card), evaluate, write weights + card."""
    torch.set_num_threads(config.threads)
    _seed(config.seed)
    work_dir.mkdir(parents=True, exist_ok=True)
    split = read_split(data_root)
    cache = work_dir / "cache"
    train_names = split["train"][:max_train] if max_train else split["train"]
    train = load_levels(data_root, cache, train_names)
    val = load_levels(data_root, cache, split["validation"])
    pool = [p for p in _slices(train) if (p[1] == ax.SAC).any()]
    if not pool:
        raise ValueError("no axial training slices found")
    log.info(
        "axial training: %d slices from %d level blocks; validation %d blocks",
        len(pool),
        len(train),
        len(val),
    )

    arch = UNetConfig(
        in_channels=1,
        num_classes=len(ax.AXIAL_CLASSES),
        base_channels=config.base_channels,
        depth=config.depth,
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network = UNet2D(arch)
    if init is not None:
        from cds.ml.loading import load_model

        network.load_state_dict(load_model(init.name, init.parent, device="cpu").network.state_dict())
    network.to(device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total = config.epochs * config.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.lr, total_steps=total, pct_start=0.1
    )
    gen = torch.Generator().manual_seed(config.seed)
    rng = random.Random(config.seed)
    checkpoint, log_path = work_dir / "checkpoint.pt", work_dir / "metrics.jsonl"
    start_epoch = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if state["config"] == asdict(config):
            network.load_state_dict(state["network"])
            optimiser.load_state_dict(state["optimiser"])
            scheduler.load_state_dict(state["scheduler"])
            gen.set_state(state["generator"])
            rng.setstate(state["rng"])
            start_epoch = int(state["epoch"])
            log.info("resuming after epoch %d", start_epoch)
        else:
            log.warning("checkpoint config differs from this run; starting afresh")
            log_path.unlink(missing_ok=True)
    else:
        log_path.unlink(missing_ok=True)
    val_slices = [(s, k) for s in val for k in range(0, s.images.shape[0])]
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        losses = train_epoch(
            network,
            lambda: _batch(pool, config.batch_size, rng),
            boundary_weighted_loss(config.sac_boundary_weight),
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
            "seconds": round(time.perf_counter() - t0, 1),
        }
        if val_slices:
            sub = val_slices[:: max(1, len(val_slices) // 64)]
            imgs = np.stack([s.images[k] for s, k in sub])
            pred = predict_probs(network, imgs, device).argmax(1)
            record["val_dice"] = dice_per_class(pred, np.stack([s.labels[k] for s, k in sub]))
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
                "rng": rng.getstate(),
            },
            checkpoint,
        )

    return _finish(
        network, config, arch, data_root, train_names, len(train), val, init, out_dir, log_path, config.epochs
    )


def _finish(
    network: torch.nn.Module,
    config: AxialTrainConfig,
    arch: UNetConfig,
    data_root: Path,
    train_names: Sequence[str],
    n_train_blocks: int | None,
    val: Sequence[LevelStack],
    init: Path | None,
    out_dir: Path,
    log_path: Path,
    epochs_done: int,
) -> ModelSpec:
    """Evaluate on the validation split, write weights + card + training log."""
    from cds.ml.loading import save_weights

    network.cpu()
    metrics = evaluate(network, val)
    out_dir.mkdir(parents=True, exist_ok=True)
    sha = save_weights(network, out_dir / "model.safetensors")
    spec = ModelSpec(
        name=out_dir.name,
        version=config.version,
        sha256=sha,
        architecture={"type": "UNet2D", **asdict(arch)},
        input=CONTRACT,
        labels=ax.AXIAL_CLASSES,
        thresholds={},
        metrics=metrics,
        training={
            "seed": config.seed,
            "config": {k: v for k, v in asdict(config).items() if k != "augment"},
            "epochs_completed": epochs_done,
            "augment": asdict(config.augment),
            "parameters": count_parameters(network),
            "data": _describe(data_root, train_names),
            "validation_data": _describe(data_root, read_split(data_root)["validation"]),
            "train_level_blocks": n_train_blocks,
            "validation_level_blocks": len(val),
            "initialised_from": _init_tag(init),
        },
        known_limits=(
            "Trained on synthetic axial T2 only (cds synth); real-scanner axial images are untested.",
            "2D slice model, 128 mm field of view around the slice centre: a spine far off-centre is cut.",
            "Foramen class covers root + perineural fat of both sides; side comes from the canonical frame.",
        ),
    )
    write_card(spec, out_dir)
    if log_path.is_file():
        (out_dir / "training_log.jsonl").write_text(log_path.read_text(encoding="utf-8"), encoding="utf-8")
    return spec


def export_checkpoint(
    *, data_root: Path, work_dir: Path, out_dir: Path, init: Path | None = None, max_train: int = 0
) -> ModelSpec:
    """Write a model from the last per-epoch checkpoint of an unfinished run (the card says how
    many epochs of the planned schedule were completed), evaluated like a finished run."""
    state = torch.load(work_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    cfg = dict(state["config"])
    cfg["crop"] = tuple(cfg["crop"])
    aug: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg["augment"].items()}
    cfg["augment"] = augment.AugmentConfig(**aug)
    config = AxialTrainConfig(**cfg)
    arch = UNetConfig(
        in_channels=1,
        num_classes=len(ax.AXIAL_CLASSES),
        base_channels=config.base_channels,
        depth=config.depth,
    )
    network = UNet2D(arch)
    network.load_state_dict(state["network"])
    split = read_split(data_root)
    train_names = split["train"][:max_train] if max_train else split["train"]
    val = load_levels(data_root, work_dir / "cache", split["validation"])
    return _finish(
        network,
        config,
        arch,
        data_root,
        train_names,
        None,
        val,
        init,
        out_dir,
        work_dir / "metrics.jsonl",
        int(state["epoch"]),
    )


def _init_tag(init: Path | None) -> str | None:
    if init is None:
        return None
    from cds.ml.spec import read_card

    return f"{read_card(init.name, init.parent).tag} (sha256 {read_card(init.name, init.parent).sha256[:12]})"


def evaluate(network: torch.nn.Module, val: Sequence[LevelStack]) -> dict[str, Any]:
    """Validation Dice per class (pooled over all slices) and measurement MAE on predicted masks."""
    device = torch.device("cpu")
    probs = [predict_probs(network, s.images, device) for s in tqdm(val, desc="validation", leave=False)]
    pred = np.concatenate([p.argmax(1) for p in probs]) if probs else np.zeros((0,))
    truth = np.concatenate([s.labels for s in val]) if val else np.zeros((0,))
    return {
        "validation_dice": dice_per_class(pred, truth) if probs else {},
        "validation_measurement_error": measurement_errors(val, probs) if probs else {},
        "validation_level_blocks": len(val),
    }


def _describe(root: Path, names: Sequence[str]) -> dict[str, Any]:
    seeds, version = [], None
    for n in names:
        f = root / n / "truth" / "findings.json"
        if f.is_file():
            data = json.loads(f.read_text(encoding="utf-8"))
            seeds.append(data.get("seed"))
            version = data.get("generator_version", version)
    return {"folder": str(root), "studies": len(names), "generator_version": version, "seeds": seeds}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cds.train.axial_seg``: the same as ``cds train axial-seg``."""
    import argparse

    from cds.commands.train_pipeline import add_axial_arguments, run_axial

    parser = argparse.ArgumentParser(prog="python -m cds.train.axial_seg", description=__doc__)
    add_axial_arguments(parser)
    return run_axial(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
