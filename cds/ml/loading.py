"""Lazy, once-per-process, hash-verified model loading (safetensors).

Why verify: the weights decide clinical findings, so the product must refuse to run with any
file other than the one its card describes (corruption, a half-copied file, a swapped model).
Why once per process: loading costs tens of milliseconds and memory; workers keep the network.
CPU by default; CUDA when available (``CDS`` workers on a GPU host need no configuration).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cds.errors import ModelError
from cds.ml.spec import WEIGHTS_FILE, ModelSpec, model_dir, read_card, sha256_file
from cds.ml.unet import UNet2D, UNetConfig

_LOCK = threading.Lock()
_CACHE: dict[tuple[str, str], LoadedModel] = {}


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    network: torch.nn.Module
    device: torch.device


def select_device(preferred: str | None = None) -> torch.device:
    """``preferred`` ("cpu"/"cuda") wins; otherwise CUDA when present, else CPU."""
    if preferred:
        return torch.device(preferred)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_network(spec: ModelSpec) -> UNet2D:
    arch = dict(spec.architecture)
    if arch.get("type") != "UNet2D":
        raise ModelError(f"{spec.name}: unsupported architecture {arch.get('type')!r}")
    try:
        config = UNetConfig(**{k: int(v) for k, v in arch.items() if k != "type"})
    except TypeError as exc:
        raise ModelError(f"{spec.name}: architecture does not match UNetConfig: {exc}") from exc
    if config.num_classes != len(spec.labels):
        raise ModelError(f"{spec.name}: {config.num_classes} output classes but {len(spec.labels)} labels")
    return UNet2D(config)


def verify_weights(path: Path, expected_sha256: str) -> None:
    if not path.is_file():
        raise ModelError(f"weights missing: {path}")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ModelError(
            f"weights hash mismatch for {path.name}: card {expected_sha256[:12]}, file {actual[:12]}"
        )


def save_weights(network: torch.nn.Module, path: Path) -> str:
    """Write a state dict as safetensors and return the file's sha256 (for the card)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})
    return sha256_file(path)


def load_verified_weights(network: torch.nn.Module, directory: Path, spec: ModelSpec) -> None:
    """Check the weights file against the card's sha256, then load it strictly into ``network``.

    Every model the product runs goes through this one check, whatever its architecture.
    """
    weights = directory / WEIGHTS_FILE
    verify_weights(weights, spec.sha256)
    try:
        network.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise ModelError(f"{spec.name}: weights do not fit the network: {exc}") from exc


def load_from_dir(directory: Path, spec: ModelSpec, device: torch.device) -> LoadedModel:
    network = build_network(spec)
    load_verified_weights(network, directory, spec)
    network.eval().to(device)
    for p in network.parameters():
        p.requires_grad_(False)
    return LoadedModel(spec=spec, network=network, device=device)


def load_model(name: str, models_dir: Path | None = None, device: str | None = None) -> LoadedModel:
    """The named model, verified and loaded once per process (thread-safe)."""
    directory = model_dir(name, models_dir).resolve()
    key = (str(directory), device or "")
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is None:
            spec = read_card(name, models_dir)
            cached = load_from_dir(directory, spec, select_device(device))
            _CACHE[key] = cached
        return cached


def clear_cache() -> None:
    """Forget loaded models (tests; a worker that must pick up new weights)."""
    with _LOCK:
        _CACHE.clear()
