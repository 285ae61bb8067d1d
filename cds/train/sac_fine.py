"""``cds train sac-fine``: the fine dural-sac U-Net on 0.4 mm crops around the sac, resumable.

Data: the train part of ``split.json`` of a ``cds synth`` folder for the weights, its validation
part for epoch selection and the card's metrics (never the evaluation split); one example per
axial slice through the sac (cds/train/sac_fine_data.py). Loss: cross-entropy against the soft
target plus a soft Dice on the sac channel. Why soft targets and the soft-area metric: the
network's probability *sum* is the measured area (cds/pipeline/sac_refine.py), so the epoch is
chosen on the error of that sum against the target's, not on a thresholded Dice.

Resumable: after every epoch ``<work>/checkpoint.pt`` holds network, optimiser, scheduler, RNG
states and the best epoch so far; ``--resume`` continues from it (refused if the config changed).
Seeded (Python, NumPy, torch). Every epoch appends a line to ``<work>/training_log.jsonl``
(copied next to the weights at the end).
"""

from __future__ import annotations

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
import torch.nn.functional as F
from tqdm import tqdm

from cds.ml.loading import save_weights
from cds.ml.spec import InputContract, ModelSpec, write_card
from cds.ml.unet import UNet2D, UNetConfig
from cds.pipeline import sac_crop as sc
from cds.train.sac_fine_data import MARGIN, StudyCrops, build_cache, read_split

log = logging.getLogger(__name__)

MODEL_NAME = "sac_fine"
LABELS = ("background", "dural_sac")
PIXEL_AREA_MM2 = sc.CROP_SPACING_MM**2


@dataclass(frozen=True)
class SacFineTrainConfig:
    epochs: int = 12
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    dice_weight: float = 0.5
    base_channels: int = 8
    depth: int = 4
    seed: int = 0
    threads: int = 1
    version: str = "1.0.0"

    def unet(self) -> UNetConfig:
        return UNetConfig(
            in_channels=1, num_classes=len(LABELS), base_channels=self.base_channels, depth=self.depth
        )


def _stack(crops: Sequence[StudyCrops]) -> tuple[np.ndarray, np.ndarray]:
    xs = [c.x for c in crops if len(c)]
    ts = [c.t for c in crops if len(c)]
    return np.concatenate(xs).astype(np.float32), np.concatenate(ts).astype(np.float32)


def augment(x: np.ndarray, t: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random CROP_SIZE window of the wide crops (centring error), left-right flip (the canal is
    symmetric; sides do not matter for the sac), gain/offset/gamma and noise (scanner contrast)."""
    n, s = x.shape[0], sc.CROP_SIZE
    xo = np.empty((n, s, s), np.float32)
    to = np.empty((n, s, s), np.float32)
    for i in range(n):
        r, c = rng.integers(0, 2 * MARGIN + 1, size=2)
        xi, ti = x[i, r : r + s, c : c + s], t[i, r : r + s, c : c + s]
        if rng.random() < 0.5:
            xi, ti = xi[:, ::-1], ti[:, ::-1]
        xo[i], to[i] = xi, ti
    gamma = rng.uniform(0.8, 1.25, size=(n, 1, 1)).astype(np.float32)
    gain = rng.uniform(0.85, 1.15, size=(n, 1, 1)).astype(np.float32)
    offset = rng.uniform(-0.05, 0.05, size=(n, 1, 1)).astype(np.float32)
    noise = rng.normal(0.0, 0.02, size=xo.shape).astype(np.float32)
    xo = np.clip(np.power(np.clip(xo, 0, None), gamma) * gain + offset + noise, 0.0, 1.5)
    return xo, to


def centre(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a[:, MARGIN:-MARGIN, MARGIN:-MARGIN])


def loss_fn(logits: torch.Tensor, target: torch.Tensor, dice_weight: float) -> torch.Tensor:
    """Soft cross-entropy + soft Dice of the sac channel; ``target`` (N, H, W) in [0, 1]."""
    soft = torch.stack([1.0 - target, target], dim=1)
    ce = F.cross_entropy(logits, soft)
    p = torch.softmax(logits, dim=1)[:, 1]
    inter = (p * target).sum(dim=(1, 2))
    dice = 1.0 - (2 * inter + 1.0) / (p.sum(dim=(1, 2)) + target.sum(dim=(1, 2)) + 1.0)
    return ce + dice_weight * dice.mean()


def predict(network: UNet2D, x: np.ndarray, batch: int = 128) -> np.ndarray:
    """(N, H, W) inputs -> (N, H, W) sac probabilities."""
    network.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            logits = network(torch.from_numpy(np.ascontiguousarray(x[i : i + batch])).unsqueeze(1))
            out.append(torch.softmax(logits, dim=1)[:, 1].numpy())
    return np.concatenate(out) if out else np.zeros((0, *x.shape[1:]), np.float32)


def evaluate(network: UNet2D, x: np.ndarray, t: np.ndarray) -> dict[str, float]:
    """Per-slice soft-area error (mm2) against the target's area, and the Dice at 0.5."""
    p = predict(network, x)
    area_p = p.sum(axis=(1, 2)) * PIXEL_AREA_MM2
    area_t = t.sum(axis=(1, 2)) * PIXEL_AREA_MM2
    err = area_p - area_t
    pm, tm = p > 0.5, t > 0.5
    dice = 2 * (pm & tm).sum() / max(pm.sum() + tm.sum(), 1)
    return {
        "soft_area_mae_mm2": float(np.abs(err).mean()),
        "soft_area_bias_mm2": float(err.mean()),
        "dice_at_0.5": float(dice),
        "n_slices": len(x),
    }


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_sac_fine(
    *,
    data_root: Path,
    cache_dir: Path,
    out_dir: Path,
    work_dir: Path,
    config: SacFineTrainConfig,
    resume: bool = False,
    max_studies: int = 0,
) -> ModelSpec:
    torch.set_num_threads(config.threads)
    _seed_all(config.seed)
    split = read_split(data_root)
    train_names = split["train"][: max_studies or None]
    val_names = split["validation"][: max_studies or None]
    x_tr, t_tr = _stack(build_cache(data_root, train_names, cache_dir, seed=config.seed))
    x_va, t_va = _stack(build_cache(data_root, val_names, cache_dir, seed=config.seed, jitter_mm=0.0))
    x_va, t_va = centre(x_va), centre(t_va)
    log.info("sac_fine: %d training slices, %d validation slices", len(x_tr), len(x_va))

    network = UNet2D(config.unet())
    opt = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, len(x_tr) // config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.15
    )
    rng = np.random.default_rng(config.seed)
    work_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = work_dir / "checkpoint.pt"
    log_path = work_dir / "training_log.jsonl"
    cfg_json = asdict(config) | {"train": train_names, "validation": val_names}
    start, best = 0, {"epoch": -1, "soft_area_mae_mm2": float("inf")}
    best_state: dict[str, torch.Tensor] | None = None
    if resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, weights_only=False)
        if ck["config"] != cfg_json:
            raise ValueError("checkpoint was written with another config or study list; not resuming")
        network.load_state_dict(ck["network"])
        opt.load_state_dict(ck["optimiser"])
        sched.load_state_dict(ck["scheduler"])
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        start, best, best_state = ck["epoch"] + 1, ck["best"], ck["best_state"]
    elif log_path.exists():
        log_path.unlink()

    for epoch in range(start, config.epochs):
        t0 = time.perf_counter()
        network.train()
        order = rng.permutation(len(x_tr))
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"sac_fine epoch {epoch + 1}/{config.epochs}", leave=False)
        for step in bar:
            idx = np.sort(order[step * config.batch_size : (step + 1) * config.batch_size])
            xb, tb = augment(x_tr[idx], t_tr[idx], rng)
            loss = loss_fn(
                network(torch.from_numpy(xb).unsqueeze(1)), torch.from_numpy(tb), config.dice_weight
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        metrics = evaluate(network, x_va, t_va)
        line = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)),
            "seconds": time.perf_counter() - t0,
        } | metrics
        with log_path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        log.info("sac_fine %s", line)
        if metrics["soft_area_mae_mm2"] < best["soft_area_mae_mm2"]:
            best = {"epoch": epoch + 1} | metrics
            best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
        torch.save(
            {
                "config": cfg_json,
                "epoch": epoch,
                "network": network.state_dict(),
                "optimiser": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "best": best,
                "best_state": best_state,
            },
            ckpt_path,
        )
    if best_state is None:
        raise RuntimeError("no epoch trained")
    network.load_state_dict(best_state)
    return _write_model(network, config, out_dir, data_root, train_names, val_names, best, log_path)


def _generator_info(data_root: Path, names: Sequence[str]) -> dict[str, Any]:
    versions, seeds = set(), []
    for name in names:
        f = json.loads((data_root / name / "truth" / "findings.json").read_text())
        versions.add(f.get("generator_version"))
        seeds.append(f.get("seed"))
    return {"generator_version": sorted(v for v in versions if v), "seeds": seeds}


def _write_model(
    network: UNet2D,
    config: SacFineTrainConfig,
    out_dir: Path,
    data_root: Path,
    train_names: Sequence[str],
    val_names: Sequence[str],
    best: dict[str, Any],
    log_path: Path,
) -> ModelSpec:
    sha = save_weights(network, out_dir / "model.safetensors")
    unet = config.unet()
    info = _generator_info(data_root, train_names)
    spec = ModelSpec(
        name=MODEL_NAME,
        version=config.version,
        sha256=sha,
        architecture={"type": "UNet2D"} | {k: v for k, v in asdict(unet).items()},
        input=InputContract(
            orientation=(
                "square crop around the dural sac centroid found by axial_seg, in axial_seg's canonical "
                "frame (rows anterior->posterior, columns patient right->left), sampled bilinearly from "
                "the native axial slice (cds/pipeline/sac_crop.py)"
            ),
            target_spacing_mm=(sc.CROP_SPACING_MM, sc.CROP_SPACING_MM),
            input_size=(sc.CROP_SIZE, sc.CROP_SIZE),
            intensity_normalisation=(
                "percentiles (1, 99) of the native slice's non-zero pixels (every 2nd row and column) "
                "scaled to [0, 1], clipped at 1.5"
            ),
            clip_percentiles=sc.WINDOW_PERCENTILES,
        ),
        labels=LABELS,
        thresholds={},
        metrics={"validation_best_epoch": best, "validation_studies": len(val_names)},
        training={
            "data": {
                "folder": str(data_root),
                "split_part": "train",
                "studies": len(train_names),
                **info,
            },
            "validation": {"split_part": "validation", "studies": len(val_names)},
            "config": asdict(config),
            "targets": (
                "generator sac label (CSF + roots + cord) on the native slice, bilinear onto the crop (soft)"
            ),
        },
        known_limits=(
            "synthetic training data only (cds synth); not validated on real MRI",
            "needs axial_seg's sac on the slice to centre the crop; a sac missed there is not refined",
            "the area is of the native slice's label, so a narrowing between two thick slices is missed",
        ),
    )
    write_card(spec, out_dir)
    (out_dir / "training_log.jsonl").write_text(log_path.read_text())
    return spec
