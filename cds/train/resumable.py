"""One resumable, seeded training loop for the small crop networks (foraminal, subarticular).

Why shared: both trainers run the same schedule (AdamW, one-cycle learning rate, a NumPy RNG for
batch order and augmentation), checkpoint after every epoch (network, optimiser, scheduler, RNG
states, best epoch so far), refuse to resume a checkpoint written for another configuration or
study list, keep the per-epoch log consistent with the checkpoint they resume, and select the
epoch by a validation score. Only the batch loss, the validation record, its score and the
progress line differ, so those are what a trainer passes in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    """What the loop itself needs of a trainer's configuration."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int


def fingerprint(config: Any, train: Sequence[str], val: Sequence[str], ignore: Collection[str] = ()) -> str:
    """A run's identity for ``--resume``: the configuration dataclass (without the fields in
    ``ignore``, which do not change the weights, e.g. the version label or the thread count) and
    the study lists; a checkpoint written under another fingerprint is refused."""
    cfg = {k: v for k, v in asdict(config).items() if k not in ignore}
    blob = json.dumps({"config": cfg, "train": list(train), "val": list(val)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_resumable(
    network: nn.Module,
    n_train: int,
    schedule: Schedule,
    work_dir: Path,
    fingerprint: str,
    resume: bool,
    *,
    batch_loss: Callable[[np.ndarray, np.random.Generator], torch.Tensor],
    validate: Callable[[nn.Module], dict[str, Any]],
    score: Callable[[dict[str, Any]], float],
    describe: Callable[[dict[str, Any]], str],
) -> tuple[nn.Module, dict[str, Any], Path]:
    """Train ``network`` for ``schedule.epochs`` epochs of ``n_train // batch_size`` batches.

    ``batch_loss(indices, rng)`` gives the loss of one batch of training examples (the network
    in train mode; augmentation draws from ``rng``); ``validate(network)`` the epoch's validation
    metrics (network in eval mode is the callee's business), ``score`` their selection score and
    ``describe`` the progress line. Returns the network at its best epoch, the best record
    (``{"score", "epoch", "state", "record"}``) and the path of ``training_log.jsonl``.
    """
    steps = max(1, n_train // schedule.batch_size)
    optimiser = torch.optim.AdamW(network.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=schedule.lr, total_steps=schedule.epochs * steps, pct_start=0.15
    )
    rng = np.random.default_rng(schedule.seed)
    work_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = work_dir / "checkpoint.pt", work_dir / "training_log.jsonl"
    start = 0
    best: dict[str, Any] = {"score": -np.inf, "epoch": 0, "state": None, "record": None}
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, weights_only=False)
        if ckpt.get("fingerprint") != fingerprint:
            raise ValueError(f"{ckpt_path} was written for another config or study list; drop --resume")
        network.load_state_dict(ckpt["network"])
        optimiser.load_state_dict(ckpt["optimiser"])
        scheduler.load_state_dict(ckpt["scheduler"])
        rng.bit_generator.state = ckpt["rng"]["numpy"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        start, best = int(ckpt["epoch"]), ckpt["best"]
        log.info("resuming after epoch %d", start)
    previous = log_path.read_text(encoding="utf-8").splitlines() if log_path.is_file() else []
    kept = [line for line in previous if start and json.loads(line).get("epoch", 0) <= start]
    log_path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    for epoch in range(start, schedule.epochs):
        network.train()
        t0 = time.perf_counter()
        order = rng.permutation(n_train)
        losses: list[float] = []
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{schedule.epochs}", leave=False)
        for b in bar:
            loss = batch_loss(order[b * schedule.batch_size : (b + 1) * schedule.batch_size], rng)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses):.3f}")
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4)}
        record["validation"] = validate(network)
        record["seconds"] = round(time.perf_counter() - t0, 1)
        value = score(record["validation"])
        if value > float(best["score"]):
            state = {k: v.detach().clone() for k, v in network.state_dict().items()}
            best = {"score": value, "epoch": epoch + 1, "state": state, "record": record}
        with log_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        tqdm.write(describe(record))
        torch.save(
            {
                "fingerprint": fingerprint,
                "epoch": epoch + 1,
                "network": network.state_dict(),
                "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()},
                "best": best,
            },
            ckpt_path,
        )
    if best["state"] is not None:
        network.load_state_dict(best["state"])
    return network, best, log_path


__all__ = ["Schedule", "fingerprint", "train_resumable"]
