"""Model specs: what a set of weights is, what it expects, and how well it did.

A model is a spec plus weights (MONAI bundle idea). The spec lives beside the weights as
``models/<name>/card.json`` and carries the sha256 of ``model.safetensors`` so that loading can
refuse weights that are not the ones the card describes. This module is pure Python (no torch)
so that the web app and reports can read cards cheaply.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cds.errors import ModelError

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"

#: The repository's models/ folder; used when no other folder is given.
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


@dataclass(frozen=True)
class InputContract:
    """How an image must be prepared before the network sees it (and how outputs map back)."""

    orientation: str
    target_spacing_mm: tuple[float, float]
    input_size: tuple[int, int]
    intensity_normalisation: str
    clip_percentiles: tuple[float, float]


@dataclass(frozen=True)
class ModelSpec:
    """Everything the product needs to know about one trained model."""

    name: str
    version: str
    sha256: str
    architecture: Mapping[str, Any]
    input: InputContract
    labels: tuple[str, ...]
    thresholds: Mapping[str, float] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    known_limits: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "architecture", MappingProxyType(dict(self.architecture)))
        object.__setattr__(self, "thresholds", MappingProxyType(dict(self.thresholds)))
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))
        object.__setattr__(self, "training", MappingProxyType(dict(self.training)))

    @property
    def tag(self) -> str:
        """``name@version``, as analyses record which model produced them."""
        return f"{self.name}@{self.version}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "architecture": dict(self.architecture),
            "input": asdict(self.input),
            "labels": list(self.labels),
            "thresholds": dict(self.thresholds),
            "metrics": dict(self.metrics),
            "training": dict(self.training),
            "known_limits": list(self.known_limits),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelSpec:
        try:
            contract = dict(data["input"])
            return cls(
                name=str(data["name"]),
                version=str(data["version"]),
                sha256=str(data["sha256"]),
                architecture=dict(data["architecture"]),
                input=InputContract(
                    orientation=str(contract["orientation"]),
                    target_spacing_mm=_pair(contract["target_spacing_mm"], float),
                    input_size=_pair(contract["input_size"], int),
                    intensity_normalisation=str(contract["intensity_normalisation"]),
                    clip_percentiles=_pair(contract["clip_percentiles"], float),
                ),
                labels=tuple(str(x) for x in data["labels"]),
                thresholds={str(k): float(v) for k, v in dict(data.get("thresholds", {})).items()},
                metrics=dict(data.get("metrics", {})),
                training=dict(data.get("training", {})),
                known_limits=tuple(str(x) for x in data.get("known_limits", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model card is malformed: {exc!r}") from exc


def _pair(value: Any, kind: type) -> Any:
    a, b = value
    return (kind(a), kind(b))


def model_dir(name: str, models_dir: Path | None = None) -> Path:
    return (models_dir or DEFAULT_MODELS_DIR) / name


def read_card(name: str, models_dir: Path | None = None) -> ModelSpec:
    path = model_dir(name, models_dir) / CARD_FILE
    if not path.is_file():
        raise ModelError(f"model card missing for {name!r}: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"model card unreadable for {name!r}: {exc}") from exc
    return ModelSpec.from_json(data)


def write_card(spec: ModelSpec, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CARD_FILE
    path.write_text(json.dumps(spec.to_json(), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
