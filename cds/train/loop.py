"""One training epoch of a segmentation network, shared by the sagittal and axial trainers.

Why one function: both trainers draw a batch, augment it (spatial, crop, intensity), and step a
Dice + cross-entropy loss under a per-step scheduler; keeping that sequence in one place keeps the
augmentation order and the loss identical for every segmentation model the product ships.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from cds.train import augment


def train_epoch(
    network: torch.nn.Module,
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimiser: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    steps: int,
    augment_config: augment.AugmentConfig,
    crop: tuple[int, int],
    gen: torch.Generator,
    device: torch.device,
    desc: str,
) -> list[float]:
    """Run ``steps`` optimiser steps in train mode with a tqdm bar; returns the loss of each step."""
    network.train()
    losses: list[float] = []
    bar = tqdm(range(steps), desc=desc, leave=False)
    for _ in bar:
        images, labels = next_batch()
        images, labels = augment.spatial(images, labels, augment_config, gen)
        images, labels = augment.random_crop(images, labels, crop, gen)
        images = augment.intensity(images, augment_config, gen)
        loss = loss_fn(network(images.to(device)), labels.to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    return losses
