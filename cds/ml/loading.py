"""Lazy, once-per-process, hash-verified model loading (safetensors).

Why verify: the weights decide clinical findings, so the product must refuse to run with any
file other than the one its card describes (corruption, a half-copied file, a swapped model).
Why once per process: loading costs tens of milliseconds and memory; workers keep the network.
CPU by default; CUDA when available (``CDS`` workers on a GPU host need no configuration).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cds.errors import ModelError
from cds.ml.spec import WEIGHTS_FILE, ModelSpec, model_dir, read_card, sha256_file
from cds.ml.unet import UNet2D, UNetConfig

N = TypeVar("N", bound=torch.nn.Module)
L = TypeVar("L")


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


class VerifiedModelCache(Generic[N, L]):
    """Networks of one kind, each built from its card, hash-verified and loaded once per process.

    Why one class for every model kind: the lock, the (directory, device) key, the verification and
    eval mode must be the same for all of them; each kind only says how its network is built
    (``build``) and what it hands out (``wrap``: one object per process, the same on every call).
    ``freeze`` turns off parameter gradients (inference-only models; Grad-CAM works on private copies).
    """

    def __init__(
        self,
        build: Callable[[ModelSpec], N],
        wrap: Callable[[ModelSpec, N, torch.device], L],
        *,
        freeze: bool = True,
    ) -> None:
        self._build = build
        self._wrap = wrap
        self._freeze = freeze
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], L] = {}

    def get(self, name: str, models_dir: Path | None = None, device: str | None = None) -> L:
        directory = model_dir(name, models_dir).resolve()
        key = (str(directory), device or "")
        with self._lock:
            cached = self._cache.get(key)
            if cached is None:
                spec = read_card(name, models_dir)
                network = self._build(spec)
                load_verified_weights(network, directory, spec)
                dev = select_device(device)
                network.eval().to(dev)
                if self._freeze:
                    for p in network.parameters():
                        p.requires_grad_(False)
                cached = self._wrap(spec, network, dev)
                self._cache[key] = cached
            return cached

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()


_UNETS: VerifiedModelCache[UNet2D, LoadedModel] = VerifiedModelCache(build_network, LoadedModel)


def load_model(name: str, models_dir: Path | None = None, device: str | None = None) -> LoadedModel:
    """The named model, verified and loaded once per process (thread-safe)."""
    return _UNETS.get(name, models_dir, device)


def clear_cache() -> None:
    """Forget loaded models (tests; a worker that must pick up new weights)."""
    _UNETS.clear()
